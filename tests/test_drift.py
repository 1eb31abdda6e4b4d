"""Score drift (serving/drift.py): PSI and KS on hand-computable cases and against SciPy, the reference
distribution from metadata.json, and the sliding window."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from serving.drift import PSI_EPSILON, DriftWindow, ReferenceDistribution, ks_statistic, psi
from serving.metrics import gate_verdict

# -- PSI and KS ------------------------------------------------------------------------------------


def test_psi_of_two_bins_is_four_tenths_of_ln_9() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5) = 0.4 (ln 1.8 + ln 5) = 0.4 ln 9
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(9), rel=1e-12)
    assert psi([5, 5], [9, 1]) == pytest.approx(0.4 * math.log(9), rel=1e-12)  # counts are normalised


def test_psi_is_zero_for_equal_shares_and_floors_an_empty_bin_at_epsilon() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # actual [1, 0]: the empty bin counts as PSI_EPSILON, not as log(0)
    expected = 0.5 * math.log(2) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [([1, 2, 3, 4], [3, 4, 5, 6], 0.5), ([1, 2, 3], [10, 11], 1.0), ([1, 2, 3], [3, 2, 1], 0.0)],
)
def test_ks_statistic_on_small_samples(a: list[float], b: list[float], d: float) -> None:
    assert ks_statistic(np.sort(a), b) == pytest.approx(d, abs=1e-15)


def test_ks_statistic_equals_scipy_ks_2samp_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    ref = np.round(rng.normal(55, 9, 600), 1)  # rounding makes ties
    for shift in (0.0, 2.0, 10.0):
        sample = np.round(rng.normal(55 + shift, 9, 217), 1)
        got = ks_statistic(np.sort(ref), sample)
        assert got == pytest.approx(stats.ks_2samp(ref, sample).statistic, abs=1e-12)


def test_reference_quantile_bins_and_psi_of_a_window_stuck_in_the_top_bin() -> None:
    ref = ReferenceDistribution.from_scores(np.arange(100.0), bins=10)
    np.testing.assert_allclose(ref.expected, np.full(10, 0.1))  # deciles: 10 scores per bin
    assert ref.edges.size == 9
    window = DriftWindow(ref, size=50)
    for s in np.tile(np.arange(90.0, 100.0), 5):  # every score in the top decile
        window.add(float(s))
    stats = window.compute()
    assert stats is not None and stats.n == 50
    # nine empty bins at epsilon, one bin holding everything
    expected = 9 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1) + 0.9 * math.log(1 / 0.1)
    assert stats.psi == pytest.approx(expected, rel=1e-12)
    assert stats.ks == pytest.approx(0.9)  # F_ref(89) = 0.9, F_window(89) = 0


def test_window_keeps_only_the_last_scores() -> None:
    ref = ReferenceDistribution.from_scores(np.arange(100.0), bins=4)
    window = DriftWindow(ref, size=100)
    assert window.compute() is None
    for s in range(1000):  # 0..899 drop out, 900..999 stay: all above the reference
        window.add(float(s))
    stats = window.compute()
    assert stats is not None and stats.n == 100 and len(window) == 100
    assert stats.ks == 1.0
    for s in range(100):  # now exactly the reference
        window.add(float(s))
    stats = window.compute()
    assert stats is not None and stats.ks == 0.0 and stats.psi == pytest.approx(0.0, abs=1e-12)


def test_reference_from_metadata() -> None:
    assert ReferenceDistribution.from_metadata({}) is None
    assert ReferenceDistribution.from_metadata({"reference_distribution": {"histogram": {}}}) is None
    ref = ReferenceDistribution.from_metadata({"reference_distribution": {"scores": [3.0, 1.0, 2.0, 4.0]}}, 2)
    assert ref is not None
    np.testing.assert_array_equal(ref.scores, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(ref.expected, [0.5, 0.5])


def test_shipped_model_reference_is_usable() -> None:
    meta = json.loads((Path(__file__).parents[1] / "model_repository/iqa/2/metadata.json").read_text())
    ref = ReferenceDistribution.from_metadata(meta, bins=10)
    assert ref is not None and ref.scores.size == 600
    assert ref.expected.min() > 0.09 and ref.expected.max() < 0.11  # quantile bins: no empty bin
    assert gate_verdict(meta) == "passed"


