"""The offline synthetic dataset: built once at CI size, then checked (CPU, offline)."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.build_dataset import main
from training.data.distortions import DISTORTIONS, KADID_TYPES, NUM_LEVELS, apply_distortion, list_distortions
from training.data.manifests import MANIFEST_COLUMNS, SPLITS, read_manifest
from training.data.references import cut_reference, plan_references
from training.data.synthetic import AD_KINDS
from training.preprocessing import SIDE_MULTIPLE, PreprocessConfig, canonical_size
from training.train import data_hash

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "build_dataset.py"


@pytest.fixture(scope="module")
def ci_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ci")
    assert main(["--out", str(out), "--size", "ci", "--seed", "0", "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def rows(ci_build: Path) -> list[dict[str, str]]:
    with open(ci_build / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_columns_exact(ci_build: Path) -> None:
    with open(ci_build / "manifest.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS


def test_dataset_json_records_the_build(ci_build: Path, rows: list[dict[str, str]]) -> None:
    meta = json.loads((ci_build / "dataset.json").read_text())
    for key in ("size", "seed", "preprocess", "n_images", "n_scenes", "distortions", "pristine_source"):
        assert key in meta
    assert meta["size"] == "ci" and meta["seed"] == 0
    assert meta["n_images"] == len(rows)
    assert meta["n_scenes"] == len({r["scene"] for r in rows})
    assert PreprocessConfig.from_dict(meta["preprocess"]).short_side == 96


def test_images_exist_as_canonical_pngs(ci_build: Path, rows: list[dict[str, str]]) -> None:
    cfg = PreprocessConfig.from_dict(json.loads((ci_build / "dataset.json").read_text())["preprocess"])
    for r in rows:
        path = ci_build / r["path"]
        assert not Path(r["path"]).is_absolute() and path.is_file(), r["path"]
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            w, h = im.size
        assert (h, w) == canonical_size(h, w, cfg), r["path"]
        assert min(h, w) == cfg.short_side and max(h, w) <= cfg.max_long_side
        assert h % SIDE_MULTIPLE == 0 and w % SIDE_MULTIPLE == 0


def test_labels_in_range_and_pristine_on_top(rows: list[dict[str, str]]) -> None:
    mos = np.array([float(r["mos"]) for r in rows])
    assert mos.min() >= 0.0 and mos.max() <= 100.0
    best = defaultdict(float)
    for r in rows:
        if r["distortion"] != "pristine":
            best[r["scene"]] = max(best[r["scene"]], float(r["mos"]))
    for r in rows:
        if r["distortion"] == "pristine":
            assert r["level"] == "0" and float(r["mos"]) >= best[r["scene"]]


def test_splits_by_scene_disjoint_and_nonempty(rows: list[dict[str, str]]) -> None:
    scenes_of = defaultdict(set)
    for r in rows:
        scenes_of[r["split"]].add(r["scene"])
    assert set(scenes_of) == set(SPLITS)
    assert all(scenes_of[s] for s in SPLITS)
    assert not scenes_of["train"] & scenes_of["val"]
    assert not scenes_of["train"] & scenes_of["test"]
    assert not scenes_of["val"] & scenes_of["test"]


def test_every_kadid_type_and_ad_kind_with_5_levels_each(rows: list[dict[str, str]]) -> None:
    levels = defaultdict(set)
    for r in rows:
        if r["distortion"] != "pristine":
            levels[r["distortion"]].add(int(r["level"]))
    full = {d for d, lv in levels.items() if lv == set(range(1, NUM_LEVELS + 1))}
    assert {DISTORTIONS[d].kadid_type for d in full} == set(KADID_TYPES)  # all 25 KADID-10k types
    assert set(AD_KINDS) <= full  # and the damage ad images carry (WebP, resolution, exposure, ...)


def test_splits_are_by_source_photo_not_by_patch(ci_build: Path, rows: list[dict[str, str]]) -> None:
    meta = json.loads((ci_build / "dataset.json").read_text())
    split_of_source = {s["scene"]: s["split"] for s in meta["sources"]}
    for r in rows:
        source = r["scene"].split("~")[0]  # a reference patch is named <source>~r<k>
        assert r["split"] == split_of_source[source], r["path"]


def test_full_size_cuts_native_patches_at_several_zooms() -> None:
    rng = np.random.default_rng(0)
    specs = plan_references("wall", 3000, 4500, patch=384, per_source=40, rng=rng)
    assert len(specs) == 40
    zooms = [s.zoom for s in specs]
    assert min(zooms) < 0.3 and max(zooms) > 0.7 and all(z <= 1.0 + 1e-9 for z in zooms)
    assert any(s.render == 2 for s in specs) and any(s.render == 1 for s in specs)
    for s in specs:
        assert 0 <= s.y <= 3000 - s.region and 0 <= s.x <= 4500 - s.region
        img = cut_reference(np.zeros((3000, 4500, 3), np.uint8), s)
        assert img.shape == (384 * s.render, 384 * s.render, 3)
    assert plan_references("small", 300, 500, patch=384, per_source=3, rng=rng) == []


def test_served_size_is_native_within_the_bounds() -> None:
    cfg = PreprocessConfig(sizing="native")
    assert canonical_size(384, 512, cfg) == (384, 512)  # native pixels: no resize
    assert canonical_size(1536, 2048, cfg) == (1536, 2048)
    assert canonical_size(3000, 4000, cfg) == (1536, 2048)  # above the cap: longer side to 2048
    assert canonical_size(100, 300, cfg) == (224, 672)  # below one crop: shorter side up to 224
    assert canonical_size(60, 9000, cfg)[0] == 224  # a banner stays croppable


def test_mean_label_decreases_with_level_for_every_type(rows: list[dict[str, str]]) -> None:
    by = defaultdict(list)
    for r in rows:
        if r["distortion"] != "pristine":
            by[(r["distortion"], int(r["level"]))].append(float(r["mos"]))
    for name in {d for d, _ in by}:
        means = [np.mean(by[(name, lv)]) for lv in range(1, NUM_LEVELS + 1)]
        assert all(a > b for a, b in itertools.pairwise(means)), (name, means)


def test_same_seed_same_manifest_any_worker_count(ci_build: Path, tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--size", "ci", "--seed", "0", "--workers", "1"]) == 0
    assert (tmp_path / "manifest.csv").read_bytes() == (ci_build / "manifest.csv").read_bytes()
    # The provenance hash that checkpoints record names the data, not the build run (its timing).
    assert data_hash(tmp_path / "manifest.csv") == data_hash(ci_build / "manifest.csv")
    first = read_manifest(ci_build / "manifest.csv")[7]
    assert (tmp_path / Path(first.path).relative_to(ci_build)).read_bytes() == Path(first.path).read_bytes()


def test_existing_build_is_not_overwritten_silently(
    ci_build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(ci_build), "--size", "ci"])
    assert exc.value.code != 0
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "huge", "--out", "x"],
        ["--size", "ci"],
        ["--size", "ci", "--out", "x", "--pristine-dir", "/nonexistent/photos"],
        ["--from-dataset", "koniq", "--out", "x"],
    ],
)
def test_bad_cli_arguments_fail_with_one_line(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_distortions_deterministic_and_shape_preserving() -> None:
    img = np.asarray(Image.new("RGB", (48, 32), (120, 60, 200)), dtype=np.uint8).copy()
    img[::3, ::5] = 255
    assert len(list_distortions()) >= 12
    for name in list_distortions():
        a = apply_distortion(name, img, 5, np.random.default_rng(3))
        b = apply_distortion(name, img, 5, np.random.default_rng(3))
        assert a.dtype == np.uint8 and a.shape == img.shape, name
        assert np.array_equal(a, b), name
    with pytest.raises(ValueError):
        apply_distortion("jpeg", img, 6, np.random.default_rng(0))
