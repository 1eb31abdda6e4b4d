"""Held-out ranking regression test: the shipped model must keep judging damage on unseen photos.

The photos come from the Debian package ``darknet`` (bench/heldout.py), never used for training,
validation or selection. Each is damaged with every kind of bench/damage.py at levels 0..5, encoded
as a client would send it, and scored through the served pipeline (the ONNX artifact of the latest
model-repository version). The floors below sit under the shipped model's own values on this subset
(docs/MODEL.md has the full check), so a later model cannot silently lose a kind of damage again.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.damage import KINDS, LEVELS, render
from bench.heldout import HELDOUT_PACKAGES, heldout_photos
from bench.ranking import agreement, onnx_scorer, ranking_check
from training.data.pristine import WALLPAPER_PACKAGES
from training.preprocessing import decode_image

REPO = Path(__file__).resolve().parents[1]

# Floors per kind for the latest shipped version on darknet's 6 photos at a 768-px long side, ~0.1
# under what v2 measures there (docs/MODEL.md, "Held-out ranking"). v1 fails them: JPEG −0.24,
# WebP −0.53, pixelation 0.39, downscale-upscale 0.47 on the same subset.
FLOORS: dict[str, float] = {  # v2 measured: see the comment of each
    "jpeg": 0.8,  # 0.933
    "webp": 0.8,  # 0.943
    "gaussian_blur": 0.85,  # 0.971
    "motion_blur": 0.9,  # 1.000
    "gaussian_noise": 0.85,  # 0.990
    "pixelation": 0.9,  # 1.000
    "downscale_upscale": 0.9,  # 1.000
    "contrast_loss": 0.8,  # 0.914
    "overexposure": 0.8,  # 0.924
    "underexposure": 0.8,  # 0.905
    "posterize": 0.7,  # 0.810
}


@pytest.fixture(scope="module")
def darknet_photos(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray]]:
    try:
        photos = heldout_photos(packages=("darknet",))
    except OSError as exc:
        if os.environ.get("CI"):
            raise  # CI must run this check: the package comes from Debian's registry
        pytest.skip(f"held-out photos unavailable here: {exc}")
    return [(p.name, decode_image(p.path.read_bytes())) for p in photos]


def test_training_never_reads_the_heldout_packages() -> None:
    assert not set(HELDOUT_PACKAGES) & set(WALLPAPER_PACKAGES)
    for path in (REPO / "training").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for package in HELDOUT_PACKAGES:
            assert f'"{package}"' not in text, f"{path} names held-out package {package}"


def test_damage_grows_with_level() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:160]
    img = np.clip(np.stack([xx, yy, xx + yy], -1) + rng.normal(0, 20, (128, 160, 3)), 0, 255).astype(np.uint8)
    sizes = [len(render("jpeg", img, lv)) for lv in range(1, LEVELS + 1)]
    assert sizes == sorted(sizes, reverse=True)  # lower quality, fewer bytes
    for kind in KINDS:
        errors = []
        for lv in range(LEVELS + 1):
            with Image.open(io.BytesIO(render(kind, img, lv))) as im:
                out = np.asarray(im.convert("RGB"), dtype=np.float64)
            assert out.shape == img.shape, kind
            errors.append(float(np.mean((out - img) ** 2)))
        assert errors[0] == 0.0 and errors[-1] > errors[1], kind  # level 0 is the clean image


def test_agreement_is_spearman_against_level() -> None:
    assert agreement([90, 80, 70, 60, 50, 40], range(6)) == pytest.approx(1.0)
    assert agreement([40, 50, 60, 70, 80, 90], range(6)) == pytest.approx(-1.0)
    assert agreement([50.0] * 6, range(6)) == 0.0


def test_shipped_model_ranks_heldout_damage(darknet_photos: list[tuple[str, np.ndarray]]) -> None:
    scorer, version = onnx_scorer(REPO / "model_repository", "iqa", "latest")
    result = ranking_check({"model": scorer}, darknet_photos, sizes=[768], progress=False)
    per_kind = result["scorers"]["model"]["per_kind"]
    low = {k: round(v, 3) for k, v in per_kind.items() if v < FLOORS[k]}
    assert not low, f"iqa v{version} lost held-out ranking for {low} (floors {FLOORS})"


def test_brisque_peer_convolves_like_the_package() -> None:
    brisque = pytest.importorskip("brisque")
    from bench.brisque_peer import _model

    rng = np.random.default_rng(0)
    gray = rng.random((96, 128))
    ours = _model().calculate_mscn_coefficients(gray, 7, 7 / 6)
    package = brisque.BRISQUE.calculate_mscn_coefficients(_model(), gray, 7, 7 / 6)  # convolve2d
    np.testing.assert_allclose(ours, package, rtol=1e-9, atol=1e-9)
