"""Attack-evaluate a checkpoint or a model-repository version and apply the acceptance gate.

    python training/evaluate.py --checkpoint runs/default/best.pt [--attacks all|fgsm,pgd,...]
        [--report DIR] [--manifest CSV] [--split test] [--max-images 200] [--surrogate CKPT_OR_VERSION]
        [--gate-config training/configs/gate.yaml] [--device auto] [--gate] [key=value ...]

    python training/evaluate.py --model-repository model_repository --name iqa --version 1 \
        --report DIR [--artifact auto|program|torchscript] [--manifest CSV] [--gate] [...]

    python training/evaluate.py --compare runs/baseline/report runs/nt/report [--labels baseline NT]
        --report runs/compare

Attack parameters, image count and thresholds come from the gate config (``key=value`` overrides it,
e.g. ``attacks.pgd_2.max_images=50``). Writes report.json, report.md and PNG plots to ``--report``
(default for a checkpoint: ``report/`` next to it). With ``--gate`` the exit code is 0 on pass, 1 on
fail (the failing rows are printed); 2 is a usage error. A checkpoint also gets the verdict (with
sha256 of report.json) as ``ckpt["gate"]``; a model-repository version is never written to (its
verdict is in the report). The version's TorchScript (model.pt) or ``torch.export`` (model.pt2)
artifact is what is attacked (``training.gate.repository``), so the gate re-runs on a shipped model
without its training checkpoint; the surrogate (``--surrogate``) is a checkpoint or a version folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import get_dotted
from training.gate.config import load_gate_config
from training.gate.data import load_split
from training.gate.identity import weights_sha256
from training.gate.report import load_report, write_comparison
from training.gate.repository import load_version, version_dir
from training.gate.run import checkpoint_meta, load_surrogate, nt_step, run_gate
from training.gate.tables import fmt
from training.gate.verdict import format_row
from training.utils import (
    load_checkpoint,
    model_from_checkpoint,
    parse_overrides,
    resolve_device,
    save_checkpoint,
)

log = logging.getLogger("evaluate")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Attack-evaluate an NR-IQA checkpoint and gate it.")
    g = p.add_argument_group("model and data")
    g.add_argument("--checkpoint", help="checkpoint to evaluate (training/train.py's best.pt)")
    g.add_argument("--model-repository", help="evaluate a version of this model repository instead")
    g.add_argument("--name", default="iqa", help="model name in --model-repository (default iqa)")
    g.add_argument("--version", default="latest", help="version in --model-repository (default latest)")
    g.add_argument("--artifact", default="auto", choices=("auto", "program", "torchscript"),
                   help="artifact of the version: model.pt2 (program), model.pt (torchscript); "
                        "auto: model.pt2 when present")
    g.add_argument("--manifest", help="manifest CSV (default: the checkpoint's data.manifest)")
    g.add_argument("--split", help="split to evaluate (default: the gate config's, test)")
    g.add_argument("--max-images", type=int, help="images evaluated (default: the gate config's num_images)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g = p.add_argument_group("attacks and gate")
    g.add_argument("--attacks", default="all", help="'all' or comma-separated sections / attack types")
    g.add_argument("--surrogate", help="surrogate of the transfer attacks: a checkpoint or a model-"
                   "repository version folder (overrides the config)")
    g.add_argument("--gate-config", help="gate YAML (default training/configs/gate.yaml)")
    g.add_argument("--gate", action="store_true",
                   help="exit 1 when the gate fails; a checkpoint also gets the verdict written into it")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="dotted gate-config overrides")
    g = p.add_argument_group("output")
    g.add_argument("--report", help="report folder (default: report/ next to the checkpoint; "
                   "required with --model-repository)")
    g.add_argument("--compare", nargs="+", metavar="REPORT_DIR", help="compare reports instead of evaluating")
    g.add_argument("--labels", nargs="+", help="labels of the --compare reports")
    return p


def _compare(args: argparse.Namespace) -> int:
    labels = args.labels or [Path(d).parent.name or Path(d).name for d in args.compare]
    if len(labels) != len(args.compare):
        raise ValueError("--labels needs one label per --compare report")
    if not args.report:
        raise ValueError("--compare needs --report OUT_DIR")
    reports = {label: load_report(d) for label, d in zip(labels, args.compare, strict=True)}
    path = write_comparison(reports, args.report, title=" vs ".join(labels))
    print(f"comparison: {path}")
    return 0


def _print_summary(report: dict[str, Any], verdict: dict[str, Any], report_dir: Path) -> None:
    clean = report["clean"]["served"]
    print(f"clean ({clean['n_images']} images): SROCC {fmt(clean['srocc'])} PLCC {fmt(clean['plcc'])} "
          f"KROCC {fmt(clean['krocc'])} RMSE {fmt(clean['rmse'])}")
    print(f"{'attack':12s} {'n':>4s} {'RMSE b/a':>9s} {'SROCC b/a':>9s} {'R':>6s} {'mean|Δ|':>8s} {'s':>7s}")
    for name, e in report["attacks"].items():
        if e.get("status") != "ok":
            print(f"{name:12s} {e.get('status')}: {e.get('reason', '')}")
            continue
        m = e["metrics"]
        print(f"{name:12s} {e['n_images']:4d} {fmt(m['clean_vs_adv']['rmse']):>9s} "
              f"{fmt(m['clean_vs_adv']['srocc']):>9s} {fmt(m['r']):>6s} {fmt(m['mean_abs_delta']):>8s} "
              f"{fmt(e['seconds'], 1):>7s}")
    gn = report.get("grad_norm", {})
    if gn.get("status") == "ok":
        print(f"grad norm: median exact {fmt(gn['median_exact'], 2)}, median FD {fmt(gn['median_fd'], 2)}, "
              f"Pearson {fmt(gn['pearson'])}")
    print(f"report: {report_dir / 'report.md'} (report.json sha256 {verdict['report_sha256']})")
    print(f"gate: {'PASSED' if verdict['passed'] else 'FAILED'}")
    for row in verdict["failures"]:
        print(f"  FAIL {format_row(row)}")


Target = tuple[nn.Module, dict[str, Any], dict[str, Any], Path]  # model, meta, checkpoint(-like), report dir


def _checkpoint_target(args: argparse.Namespace, device: torch.device) -> Target:
    """(model, meta, the checkpoint dict, report folder) of ``--checkpoint``."""
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt).to(device)
    report_dir = Path(args.report) if args.report else ckpt_path.parent / "report"
    return model, {**checkpoint_meta(ckpt, None, ""), "checkpoint": str(ckpt_path)}, ckpt, report_dir


def _version_target(args: argparse.Namespace, device: torch.device) -> Target:
    """(model, meta, a checkpoint-like dict of its training config, report folder) of a version."""
    if not args.report:
        raise ValueError("--model-repository needs --report DIR (a version folder is never written to)")
    folder = version_dir(args.model_repository, args.name, args.version)
    model = load_version(folder, args.artifact)
    metadata = model.metadata
    like_ckpt = {"args": metadata.get("training_config") or {}, "model_name": metadata.get("model_name"),
                 "data_hash": metadata.get("data_hash")}
    recorded = metadata.get("gate") or {}
    weights = weights_sha256(model)
    if recorded.get("weights_sha256") not in (None, weights):
        log.warning("%s: its metadata.json records a verdict for other weights than the artifact's", folder)
    meta = {
        **checkpoint_meta(like_ckpt, None, ""), "checkpoint": None, "model_repository_version": str(folder),
        "recorded_gate": {"passed": recorded.get("passed"),
                          "same_weights": recorded.get("weights_sha256") == weights},
    }
    return model.to(device), meta, like_ckpt, Path(args.report)


def main(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if bool(args.checkpoint) == bool(args.model_repository):
        raise ValueError("give one of --checkpoint or --model-repository (or --compare)")
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    if args.max_images is not None:
        overrides["num_images"] = args.max_images
    if args.split:
        overrides["split"] = args.split
    cfg = load_gate_config(args.gate_config, overrides)
    device = resolve_device(args.device)
    target = _checkpoint_target if args.checkpoint else _version_target
    model, meta, ckpt, report_dir = target(args, device)
    manifest = args.manifest or get_dotted(ckpt, "args.data.manifest")
    if not manifest:
        raise ValueError("no --manifest and the model records no data.manifest")
    split = cfg.get("split", "test")
    data = load_split(manifest, split, model.preprocess_cfg, cfg["num_images"], int(cfg.get("seed", 0)))
    surrogate_path = args.surrogate or cfg.get("surrogate_checkpoint")
    surrogate = load_surrogate(surrogate_path, device)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    meta.update(manifest=str(manifest), split=split)
    source = args.checkpoint or meta["model_repository_version"]
    verdict = run_gate(
        model, data, cfg, report_dir, surrogate=surrogate, surrogate_path=surrogate_path, attacks=attacks,
        h=nt_step(ckpt), meta=meta, title=f"Attack evaluation of {source}",
    )
    if args.gate and args.checkpoint:
        ckpt["gate"] = verdict
        save_checkpoint(ckpt, Path(args.checkpoint))
        log.info("gate verdict written into %s", args.checkpoint)
    _print_summary(load_report(report_dir), verdict, report_dir)
    return 0 if verdict["passed"] or not args.gate else 1


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
