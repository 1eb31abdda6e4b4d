"""The evaluation engine and its CLIs: the served-score scorer, evaluate.py's report (JSON, tables,
plots, hash in the checkpoint), gating a model-repository version (its TorchScript / torch.export
artifact) like its checkpoint, and --compare (replicate.py: tests/test_replicate.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.gate_fixtures import (
    CALM,
    ci_manifest,
    shipped_thresholds,
    tiny_checkpoint,
    write_gate_config,
)
from tests.iqa_fixtures import small_trained_model, synthetic_images
from training import evaluate
from training.gate.scoring import CropScorer
from training.gate.verdict import ATTACK_THRESHOLDS
from training.preprocessing import PreprocessConfig, eval_crops
from training.utils import load_checkpoint

SMALL = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64, num_eval_crops=5)
PAPER_TABLES = ("Table 1.", "Table 2.", "Table 3.", "Table S8.", "Table S9.", "Table S10.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    tiny_checkpoint(folder / "model.pt", seed=0, spread=CALM)  # calm enough for the shipped thresholds
    tiny_checkpoint(folder / "surrogate" / "best.pt", seed=1)
    write_gate_config(folder / "gate.yaml")
    return folder


@pytest.fixture(scope="module")
def evaluated(work: Path) -> tuple[int, str, Path]:
    """evaluate.py --gate on the tiny checkpoint with every attack type; (exit code, stdout, report dir)."""
    report = work / "report"
    argv = [
        "--checkpoint",
        str(work / "model.pt"),
        "--gate-config",
        str(work / "gate.yaml"),
        "--surrogate",
        str(work / "surrogate" / "best.pt"),
        "--report",
        str(report),
        "--gate",
        "--device",
        "cpu",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.cli(argv)
    return code, out.getvalue(), report


# ------------------------------------------------------------------------------------ CropScorer


@pytest.mark.parametrize("shape", [(96, 128), (128, 96), (96, 96)])
@pytest.mark.parametrize("crops", [1, 5, 9])
def test_crop_scorer_equals_mean_over_eval_crops(shape: tuple[int, int], crops: int) -> None:
    model = small_trained_model(0)
    cfg = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64, num_eval_crops=crops)
    rng = np.random.default_rng(crops)
    images = rng.integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = []
        for img in images:
            stack = torch.from_numpy(eval_crops(img, cfg)).permute(0, 3, 1, 2).float() / 255.0
            expected.append(model.score(stack).mean())
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        served = CropScorer(model, cfg).score(x)
    torch.testing.assert_close(served, torch.stack(expected), rtol=0, atol=1e-4)


def test_crop_scorer_raw_output_and_override() -> None:
    model = small_trained_model(0)
    x = synthetic_images(3, 128)[:, :, :96, :]
    scorer = CropScorer(model, SMALL)
    with torch.no_grad():
        raw = torch.stack([model(scorer.crops(x)[i]).mean() for i in range(3)])
        torch.testing.assert_close(scorer(x), raw, rtol=0, atol=1e-4)
    assert CropScorer(model, SMALL, num_eval_crops=1).num_crops == 1
    assert scorer.preprocess_cfg.num_eval_crops == 5  # the override does not touch the model's config
    with pytest.raises(ValueError, match="smaller than the crop"):
        scorer(torch.rand(1, 3, 32, 32))


def test_crop_scorer_is_differentiable_and_center_crop_only_sees_its_pixels() -> None:
    model = small_trained_model(0)
    x = synthetic_images(2, 128)[:, :, :96, :].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(CropScorer(model, SMALL, num_eval_crops=1)(x).sum(), x)
    assert grad.abs().sum() > 0
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[:, :, 16:80, 32:96] = True  # the 64 px center crop of 96 x 128
    assert grad[~inside].abs().max() == 0
    assert grad[inside].abs().sum() > 0
    (grad5,) = torch.autograd.grad(CropScorer(model, SMALL)(x).sum(), x)
    assert grad5[:, :, :4, :4].abs().sum() > 0  # the corner crops reach the corners


# ----------------------------------------------------------------------------------- evaluate.py


def test_evaluate_writes_report_tables_and_plots(evaluated: tuple[int, str, Path]) -> None:
    code, stdout, report_dir = evaluated
    assert code == 0, stdout
    assert "gate: PASSED" in stdout
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["attacks"]) == {"fgsm", "pgd_2", "perceptual", "uap", "korhonen", "square"}
    judged = 0
    for row in report["gate"]["rows"]:  # passed on the shipped thresholds of every section
        key = next(k for k, v in ATTACK_THRESHOLDS.items() if v[0] == f"metrics.{row['metric']}")
        assert row["threshold"] == shipped_thresholds(row["section"])[key] and row["passed"], row
        judged += 1
    assert judged == 3 * 6 - 1  # RMSE, R and strength per attack; the perceptual attack has no R row
    for name, entry in report["attacks"].items():
        assert entry["status"] == "ok", (name, entry.get("reason"))
        metrics = entry["metrics"]
        assert {"mos_vs_adv", "clean_vs_adv", "r", "r_floor_hits", "mean_abs_delta"} <= set(metrics)
        assert {"ssim_mean", "ssim_min", "psnr_mean", "psnr_min", "linf_max"} <= set(entry["quality"])
        assert entry["seconds"] >= 0
        assert len(entry["per_image"]["adv"]) == entry["n_images"]
        assert (report_dir / f"delta_{name}.png").is_file()
    assert report["attacks"]["fgsm"]["quality"]["linf_max"] <= 0.005 + 1e-6
    assert report["clean"]["served"]["num_crops"] == 5
    assert report["clean"]["attack_scorer"]["num_crops"] == 1
    gn = report["grad_norm"]
    assert gn["status"] == "ok" and len(gn["exact"]) == len(gn["fd"]) == 4 and gn["h"] == 0.01
    assert [row["h"] for row in gn["fd_check"]] == [1e-3, 0.01]  # check_h plus the training step
    assert gn["fd_check"][1]["median_fd"] == gn["median_fd"]
    assert len(report["sweep"]["rows"]) == 4
    assert (report_dir / "grad_norm.png").is_file() and (report_dir / "intensity.png").is_file()
    md = (report_dir / "report.md").read_text()
    for title in PAPER_TABLES:
        assert title in md
    assert "MOS & after attack" in md and "before & after" in md
    assert "Acceptance gate: PASSED" in md
    assert "Finite difference vs exact norm, by step h" in md and "| 0.001 |" in md


def test_report_hash_is_written_into_the_checkpoint(work: Path, evaluated: tuple[int, str, Path]) -> None:
    _, _, report_dir = evaluated
    gate = load_checkpoint(work / "model.pt")["gate"]
    assert gate["passed"] is True and gate["failures"] == []
    assert gate["report_sha256"] == hashlib.sha256((report_dir / "report.json").read_bytes()).hexdigest()
    report = json.loads((report_dir / "report.json").read_text())
    assert gate["weights_sha256"] == report["meta"]["weights_sha256"]
    assert gate["config_sha256"] == report["meta"]["config_sha256"]


def test_uap_is_cached_next_to_the_surrogate(work: Path, evaluated: tuple[int, str, Path]) -> None:
    _, _, report_dir = evaluated
    uap = json.loads((report_dir / "report.json").read_text())["attacks"]["uap"]
    cache = Path(uap["uap_cache"])
    assert cache.parent == (work / "surrogate").resolve() and cache.is_file()


# ------------------------------------------------------------ gating a model-repository version


@pytest.fixture(scope="module")
def repository(work: Path, evaluated: tuple[int, str, Path]) -> Path:
    """work/model.pt, gated by ``evaluated``, exported by export/export.py as <repository>/iqa/1."""
    from export.export import main as export_main

    repo = work / "model_repository"
    argv = ["--checkpoint", str(work / "model.pt"), "--model-repository", str(repo), "--name", "iqa",
            "--version", "1"]
    assert export_main(argv) == 0
    return repo


def _evaluate(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.cli(list(argv))
    return code, out.getvalue()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_model_repository_version_is_gated_like_its_checkpoint(
    work: Path, evaluated: tuple[int, str, Path], repository: Path, tmp_path: Path
) -> None:
    """evaluate.py --model-repository attacks the version's torch.export artifact through autograd
    and measures what the checkpoint's gate measured: the same weights, the same per-image scores
    before and after every attack (to float tolerance), the same verdict, on the same thresholds.
    The version folder is not written to."""
    from training.gate.identity import weights_sha256
    from training.utils import model_from_checkpoint

    version = repository / "iqa" / "1"
    before = _digests(version)
    code, out = _evaluate(
        "--model-repository", str(repository), "--name", "iqa", "--version", "1", "--report",
        str(tmp_path / "v1"), "--gate", "--gate-config", str(work / "gate.yaml"), "--surrogate",
        str(work / "surrogate" / "best.pt"), "--device", "cpu",
    )
    assert code == 0 and "gate: PASSED" in out, out
    assert _digests(version) == before
    report = json.loads((tmp_path / "v1" / "report.json").read_text())
    reference = json.loads((evaluated[2] / "report.json").read_text())
    meta = report["meta"]
    assert meta["artifact"]["kind"] == "program" and meta["artifact"]["path"] == str(version / "model.pt2")
    assert meta["weights_sha256"] == weights_sha256(model_from_checkpoint(work / "model.pt"))
    assert meta["weights_sha256"] == reference["meta"]["weights_sha256"]
    assert meta["paths"] == reference["meta"]["paths"] and meta["manifest"] == str(ci_manifest())
    np.testing.assert_allclose(report["clean"]["scores"], reference["clean"]["scores"], atol=1e-3)
    for name, entry in reference["attacks"].items():
        got = report["attacks"][name]
        assert got["status"] == "ok", (name, got.get("reason"))
        for key in ("clean", "adv"):
            expected = entry["per_image"][key]
            np.testing.assert_allclose(got["per_image"][key], expected, atol=1e-2, err_msg=name)
    assert [r["passed"] for r in report["gate"]["rows"]] == [r["passed"] for r in reference["gate"]["rows"]]
    assert "model_repository" in (tmp_path / "v1" / "report.md").read_text()
    # Same weights, but measured through another artifact: the checkpoint's report is not reused for it.
    from training.gate.config import load_gate_config
    from training.gate.repository import load_version
    from training.gate.run import load_surrogate, reusable_report

    exported, cfg = load_version(version), load_gate_config(work / "gate.yaml")
    surrogate = load_surrogate(work / "surrogate" / "best.pt", torch.device("cpu"))
    assert reusable_report(tmp_path / "v1", exported, cfg, meta["paths"], surrogate) is not None
    assert reusable_report(evaluated[2], exported, cfg, meta["paths"], surrogate) is None
    checkpoint_model = model_from_checkpoint(work / "model.pt")
    assert reusable_report(evaluated[2], checkpoint_model, cfg, meta["paths"], surrogate) is not None


def test_the_torchscript_artifact_a_failing_gate_and_a_version_as_surrogate(
    work: Path, repository: Path, tmp_path: Path
) -> None:
    version = repository / "iqa" / "1"
    common = ["--model-repository", str(repository), "--name", "iqa", "--gate-config",
              str(work / "gate.yaml"), "--device", "cpu", "--gate"]
    code, out = _evaluate(*common, "--artifact", "torchscript", "--attacks", "fgsm", "--report",
                          str(tmp_path / "ts"), "attacks.fgsm.thresholds.rmse_clean_vs_adv_max=0")
    assert code == 1 and "FAIL fgsm clean_vs_adv.rmse" in out, out
    report = json.loads((tmp_path / "ts" / "report.json").read_text())
    assert report["meta"]["artifact"]["kind"] == "torchscript"
    # metadata.json's verdict (given to the checkpoint) names the weights this artifact holds
    assert report["meta"]["recorded_gate"] == {"passed": True, "same_weights": True}
    code, out = _evaluate(*common, "--attacks", "uap", "--surrogate", str(version), "--report",
                          str(tmp_path / "sur"))
    report = json.loads((tmp_path / "sur" / "report.json").read_text())
    assert report["attacks"]["uap"]["status"] == "ok", report["attacks"]["uap"].get("reason")
    assert report["meta"]["surrogate_weights_sha256"] == report["meta"]["weights_sha256"]
    assert _evaluate(*common[:-1], "--report", str(tmp_path / "x"), "--version", "7")[0] == 2
    assert _evaluate(*common)[0] == 2  # no --report: a version folder is never written to


def test_an_artifact_that_differs_from_its_metadata_is_refused(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    with open(copy / "iqa" / "1" / "model.pt2", "ab") as f:
        f.write(b"tampered")
    code = evaluate.cli(["--model-repository", str(copy), "--report", str(tmp_path / "r")])
    assert code == 2 and "does not match the sha256 its metadata.json records" in capsys.readouterr().err


def test_compare_overlays_two_reports(work: Path, evaluated: tuple[int, str, Path]) -> None:
    _, _, report_dir = evaluated
    out = work / "compare"
    code = evaluate.cli(
        ["--compare", str(report_dir), str(report_dir), "--labels", "A", "B", "--report", str(out)]
    )
    assert code == 0
    md = (out / "comparison.md").read_text()
    assert "Cells are A / B." in md and "Table 2." in md
    assert "#### Finite difference vs exact norm, by step h" in md
    assert (out / "compare_grad_norm.png").is_file() and (out / "compare_intensity.png").is_file()


def test_evaluate_usage_errors_exit_2(work: Path) -> None:
    assert evaluate.cli(["--checkpoint", str(work / "missing.pt")]) == 2
    assert (
        evaluate.cli(
            [
                "--checkpoint",
                str(work / "model.pt"),
                "--gate-config",
                str(work / "gate.yaml"),
                "--attacks",
                "nonexistent",
            ]
        )
        == 2
    )
    assert (
        evaluate.cli(
            [
                "--checkpoint",
                str(work / "model.pt"),
                "--gate-config",
                str(work / "gate.yaml"),
                "attacks.fgsm.thresholds.typo_max=1",
            ]
        )
        == 2
    )
