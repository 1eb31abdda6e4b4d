"""The certified bounds of median smoothing (training/median_smoothing.py) and JPEG purification."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from training.jpeg_purification import jpeg_round_trip
from training.median_smoothing import certify_median, order_statistic_indices, percentile_levels


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P[Binom(n, p) <= k] summed term by term (independent of scipy)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(
    ("n", "z", "alpha", "expected"),
    [
        # R = 0 (p = 0.5), n = 10: cdf(0) = 1/1024, cdf(1) = 11/1024 > 0.01 -> k_lower 1;
        # cdf(8) = 1013/1024 = 0.98926 < 0.99 <= cdf(9) = 1023/1024 -> k_upper 10
        (10, 0.0, 0.02, (1, 10)),
        # alpha/2 = 0.125: cdf(2) = 56/1024 <= 0.125 < cdf(3) = 176/1024 -> 3;
        # cdf(6) = 848/1024 < 0.875 <= cdf(7) = 968/1024 -> 8
        (10, 0.0, 0.25, (3, 8)),
        # p+ = 0.9, n = 20, alpha/2 = 0.25: P[X >= 20] = 0.9^20 = 0.1216 <= 0.25 < P[X >= 19] = 0.3917
        (20, float(norm.ppf(0.9)), 0.5, (1, 20)),
        # p- = 0.1, n = 4: P[X >= 1] = 1 - 0.9^4 = 0.3439 < 0.9 -> no order statistic qualifies
        (4, float(norm.ppf(0.9)), 0.2, (None, None)),
    ],
)
def test_order_statistic_indices_hand_checked(
    n: int, z: float, alpha: float, expected: tuple[int | None, int | None]
) -> None:
    assert order_statistic_indices(n, radius=z * 0.1, sigma=0.1, alpha=alpha) == expected


@pytest.mark.parametrize("n", [16, 32, 64])
@pytest.mark.parametrize("z", [0.25, 0.5, 1.0])
def test_indices_are_the_extreme_qualifying_order_statistics(n: int, z: float) -> None:
    """k_upper is the smallest k with P[Binom(n, p+) <= k-1] >= 1 - α/2 and k_lower the largest with
    P[Binom(n, p-) <= k-1] <= α/2, recomputed here with exact binomial sums."""
    alpha = 0.01
    p_lo, p_hi = norm.cdf(-z), norm.cdf(z)
    k_lower, k_upper = order_statistic_indices(n, radius=z, sigma=1.0, alpha=alpha)
    upper_ok = [k for k in range(1, n + 1) if _binom_cdf(k - 1, n, p_hi) >= 1 - alpha / 2]
    lower_ok = [k for k in range(1, n + 1) if _binom_cdf(k - 1, n, p_lo) <= alpha / 2]
    assert k_upper == (upper_ok[0] if upper_ok else None)
    assert k_lower == (lower_ok[-1] if lower_ok else None)
    if k_lower is not None and k_upper is not None:
        assert k_lower + k_upper == n + 1  # symmetric: p- = 1 - p+


def test_percentile_levels() -> None:
    lo, hi = percentile_levels(0.05, 0.05)
    assert lo == pytest.approx(0.158655, abs=1e-6) and hi == pytest.approx(0.841345, abs=1e-6)
    assert percentile_levels(0.0, 0.1) == (0.5, 0.5)
    with pytest.raises(ValueError):
        percentile_levels(0.1, 0.0)


def test_bounds_contain_the_median_and_widen_with_the_radius() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 130))
        samples = rng.normal(50, 10, n) if trial % 2 else rng.uniform(0, 100, n)
        sigma = float(rng.uniform(0.02, 0.3))
        radii = np.sort(rng.uniform(0, 2 * sigma, 4))
        certs = [certify_median(samples, float(r), sigma, 0.01) for r in radii]
        for cert in certs:
            assert cert.lower <= cert.median <= cert.upper
            assert cert.median == pytest.approx(float(np.median(samples)))
            assert cert.n == n
        for narrow, wide in itertools.pairwise(certs):
            assert wide.lower <= narrow.lower and wide.upper >= narrow.upper


def test_bounds_are_the_chosen_order_statistics() -> None:
    samples = np.arange(64, dtype=float)[::-1] * 1.5  # unsorted on purpose
    cert = certify_median(samples, radius=0.05, sigma=0.1, alpha=0.01)
    assert cert.k_lower == 11 and cert.k_upper == 54  # z = 0.5, n = 64 (see the exact-sum test)
    assert cert.lower == 1.5 * 10 and cert.upper == 1.5 * 53
    assert not cert.abstained


def test_too_few_samples_fall_back_to_the_score_range() -> None:
    cert = certify_median(np.array([40.0, 41.0, 42.0]), radius=0.2, sigma=0.05, alpha=0.01)
    assert cert.abstained and (cert.lower, cert.upper) == (0.0, 100.0)
    assert cert.median == 41.0


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        certify_median(np.array([]), 0.1, 0.1, 0.01)
    with pytest.raises(ValueError):
        certify_median(np.array([1.0, np.nan]), 0.1, 0.1, 0.01)
    with pytest.raises(ValueError):
        order_statistic_indices(8, 0.1, 0.1, 1.5)


def _photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:128]
    base = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_jpeg_round_trip_is_near_idempotent_on_a_jpeg_and_changes_noise() -> None:
    noisy = _photo()
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=75)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    again = jpeg_round_trip(decoded, 75)
    first = jpeg_round_trip(noisy, 75)
    assert again.shape == decoded.shape and again.dtype == np.uint8
    assert np.array_equal(first, decoded)  # the same encoder and settings as a Pillow q=75 save
    recompress = np.abs(again.astype(int) - decoded).mean()
    purify = np.abs(first.astype(int) - noisy).mean()
    assert recompress < 2.0 < purify  # re-encoding a JPEG moves pixels little; noise is removed
    with pytest.raises(ValueError):
        jpeg_round_trip(noisy, 0)
