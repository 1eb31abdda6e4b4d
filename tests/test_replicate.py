"""replicate.py end to end on a tiny budget: the paper's tables from a CI-sized run, reusing runs trained
elsewhere, and refusing a report measured on other images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.gate_fixtures import (
    CALM,
    REPO_ROOT,
    ci_manifest,
    tiny_checkpoint,
    write_gate_config,
)
from training import replicate
from training.gate.tables import fmt
from training.utils import load_checkpoint

PAPER_TABLES = ("Table 1.", "Table 2.", "Table 3.", "Table S8.", "Table S9.", "Table S10.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("replicate")
    tiny_checkpoint(folder / "model.pt", seed=0, spread=CALM)  # calm enough for the shipped thresholds
    tiny_checkpoint(folder / "surrogate" / "best.pt", seed=1)
    write_gate_config(folder / "gate.yaml")
    return folder


def test_replicate_end_to_end_on_a_tiny_budget(work: Path, tmp_path: Path) -> None:
    results = tmp_path / "docs" / "RESULTS.md"
    config = REPO_ROOT / "training" / "configs" / "ci.yaml"
    argv = [
        "--config",
        str(config),
        "--manifest",
        str(ci_manifest()),
        "--out",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "1",
        "--lams",
        "0.002",
        "--hs",
        "0.1",
        "--exact-lams",
        "1e-6",
        "--ablation-images",
        "4",
        "--gate-config",
        str(work / "gate.yaml"),
        "--max-images",
        "5",
        "--results-md",
        str(results),
        "--set",
        "device=cpu",
    ]
    assert replicate.cli(argv) == 0
    md = results.read_text()
    for title in PAPER_TABLES:
        assert title in md
    # The targets table carries this run's FGSM before/after RMSE of both models, recomputed here from
    # their per-image scores (not a constant of the paper that the code prints back).
    fgsm = []
    for run in ("baseline", "nt"):
        report = json.loads((tmp_path / "runs" / "eval" / run / "report.json").read_text())
        per_image = report["attacks"]["fgsm"]["per_image"]
        clean, adv = np.asarray(per_image["clean"]), np.asarray(per_image["adv"])
        fgsm.append(float(np.sqrt(np.mean((adv - clean) ** 2))))
    reduction = 100 * (fgsm[0] - fgsm[1]) / fgsm[0]
    row = f"| FGSM before/after RMSE reduction | {fmt(fgsm[0])} | {fmt(fgsm[1])} | {fmt(reduction, 1)}% |"
    assert "## Targets" in md and row in md and "baseline / NT" in md
    assert "Ablation: λ at h = 0.01" in md and "Ablation: h at λ" in md and "reduced budget" in md
    assert "Ablation: the exact form (Eq. 5)" in md
    figures = results.parent / "results"
    pngs = ("grad_norm.png", "intensity.png", "delta_fgsm.png", "ablation_lam.png", "ablation_h.png")
    for png in (*pngs, "ablation_exact.png"):
        assert (figures / png).is_file(), png
    for run in ("baseline", "nt", "surrogate", "ablation/lam0.002_h0.01", "ablation/lam0.001_h0.1"):
        assert (tmp_path / "runs" / run / "best.pt").is_file(), run
    nt_args = load_checkpoint(tmp_path / "runs" / "nt" / "best.pt")["args"]
    assert nt_args["nt"]["lam"] == 0.001 and nt_args["seed"] == 0
    assert load_checkpoint(tmp_path / "runs" / "surrogate" / "best.pt")["args"]["seed"] == 1
    exact_nt = load_checkpoint(tmp_path / "runs" / "ablation" / "exact_lam1e-06" / "best.pt")["args"]["nt"]
    assert exact_nt["mode"] == "exact" and exact_nt["lam"] == 1e-6

    # Restartable: a second call trains and evaluates nothing (the reports keep their bytes).
    before = (tmp_path / "runs" / "eval" / "nt" / "report.json").stat().st_mtime_ns
    assert replicate.cli([*argv, "--skip-train"]) == 0
    assert (tmp_path / "runs" / "eval" / "nt" / "report.json").stat().st_mtime_ns == before


def test_replicate_reuses_runs_trained_elsewhere_and_plans_ablations_on_their_manifest() -> None:
    """A run trained with another output_dir or with the gate at its end has the same weights; the
    ablation grid trains on --ablation-manifest while the main runs keep --manifest."""
    from training.replication.plan import plan_runs
    from training.replication.runs import train_argv, weights_config

    a = {
        "seed": 0,
        "output_dir": "runs/default",
        "nt": {"lam": 0.001},
        "train": {"gate": True, "resume": "x"},
    }
    b = {"seed": 0, "output_dir": "runs/replicate/nt", "nt": {"lam": 0.001}, "train": {"gate": False}}
    assert weights_config(a) == weights_config(b)
    assert weights_config(a) != weights_config({**b, "nt": {"lam": 0.0}})

    args = replicate.get_args_parser().parse_args(
        [
            "--manifest",
            "full.csv",
            "--ablation-manifest",
            "small.csv",
            "--lams",
            "0",
            "0.01",
            "--hs",
            "0.1",
            "--surrogate-epochs",
            "1",
            "--exact-lams",
            "1e-7",
        ]
    )
    plan = plan_runs(args)
    assert {r.manifest for r in plan.lam_runs.values()} | {r.manifest for r in plan.h_runs.values()} == {
        "small.csv"
    }
    assert plan.runs["nt"].manifest is None and plan.runs["surrogate"].epochs == 1
    argv = train_argv(plan.lam_runs[0.01], args, Path("out"))
    assert "data.manifest=small.csv" in argv and "nt.lam=0.01" in argv
    assert "data.manifest=full.csv" in train_argv(plan.runs["nt"], args, Path("out"))
    assert "nt.mode=fd" in argv and plan.runs["nt"].mode == "fd"
    exact = train_argv(plan.exact_runs[1e-7], args, Path("out"))
    assert "nt.mode=exact" in exact and "nt.lam=1e-07" in exact and "data.manifest=small.csv" in exact


def test_replicate_does_not_reuse_a_report_measured_on_other_images(work: Path, tmp_path: Path) -> None:
    """The replication reuses a stored report only under the gate's own reuse check (same weights,
    measurement settings, surrogate *and images*): a report of another manifest's images (``--skip-train
    --manifest other.csv``) is measured again, one of the same images is not."""
    from training.data.manifests import read_manifest, write_manifest
    from training.gate.config import load_gate_config
    from training.replication.evaluation import Evaluator, ablation_config

    cfg = ablation_config(load_gate_config(work / "gate.yaml"), 3)
    test_rows = [r for r in read_manifest(ci_manifest()) if r.split == "test"]
    other = tmp_path / "other.csv"
    write_manifest(test_rows[len(test_rows) // 2 :], other)
    evaluate_ckpt = Evaluator(cfg, None, "cpu", None)
    report_dir = tmp_path / "eval"

    first = evaluate_ckpt(work / "model.pt", report_dir, manifest=str(ci_manifest()))
    second = evaluate_ckpt(work / "model.pt", report_dir, manifest=str(other))
    assert second["meta"]["paths"] != first["meta"]["paths"]
    assert set(second["meta"]["paths"]) <= {r.path for r in test_rows[len(test_rows) // 2 :]}

    measured = (report_dir / "report.json").stat().st_mtime_ns
    third = evaluate_ckpt(work / "model.pt", report_dir, manifest=str(other))
    assert third["meta"]["paths"] == second["meta"]["paths"]
    assert (report_dir / "report.json").stat().st_mtime_ns == measured
