"""Attack-evaluate a checkpoint and apply the acceptance gate.

    python training/evaluate.py --checkpoint runs/default/best.pt [--attacks all|fgsm,pgd,...]
        [--report DIR] [--manifest CSV] [--split test] [--max-images 200] [--surrogate CKPT]
        [--gate-config training/configs/gate.yaml] [--device auto] [--gate] [key=value ...]

    python training/evaluate.py --compare runs/baseline/report runs/nt/report [--labels baseline NT]
        --report runs/compare

Attack parameters, image count and thresholds come from the gate config (``key=value`` overrides it,
e.g. ``attacks.pgd_2.max_images=50``). Writes report.json, report.md and PNG plots to ``--report``
(default: ``report/`` next to the checkpoint). With ``--gate`` the verdict (with sha256 of
report.json) is written into the checkpoint as ``ckpt["gate"]`` and the exit code is 0 on pass,
1 on fail (the failing rows are printed); 2 is a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from training.data.dataset import ManifestDataset
from training.gate.config import load_gate_config
from training.gate.data import load_eval_data
from training.gate.report import load_report, write_comparison
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
    g.add_argument("--manifest", help="manifest CSV (default: the checkpoint's data.manifest)")
    g.add_argument("--split", help="split to evaluate (default: the gate config's, test)")
    g.add_argument("--max-images", type=int, help="images evaluated (default: the gate config's num_images)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g = p.add_argument_group("attacks and gate")
    g.add_argument("--attacks", default="all", help="'all' or comma-separated sections / attack types")
    g.add_argument("--surrogate", help="surrogate checkpoint of the transfer attacks (overrides the config)")
    g.add_argument("--gate-config", help="gate YAML (default training/configs/gate.yaml)")
    g.add_argument("--gate", action="store_true",
                   help="write the verdict into the checkpoint; exit 1 when the gate fails")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="dotted gate-config overrides")
    g = p.add_argument_group("output")
    g.add_argument("--report", help="report folder (default: report/ next to the checkpoint)")
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


def main(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if not args.checkpoint:
        raise ValueError("--checkpoint is required (or --compare)")
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    if args.max_images is not None:
        overrides["num_images"] = args.max_images
    if args.split:
        overrides["split"] = args.split
    cfg = load_gate_config(args.gate_config, overrides)
    device = resolve_device(args.device)
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt).to(device)
    manifest = args.manifest or (ckpt.get("args") or {}).get("data", {}).get("manifest")
    if not manifest:
        raise ValueError("no --manifest and the checkpoint records no data.manifest")
    split = cfg.get("split", "test")
    dataset = ManifestDataset(manifest, split, model.preprocess_cfg, train=False, cache=False)
    data = load_eval_data(dataset, cfg["num_images"], int(cfg.get("seed", 0)))
    surrogate_path = args.surrogate or cfg.get("surrogate_checkpoint")
    surrogate = load_surrogate(surrogate_path, device)
    report_dir = Path(args.report) if args.report else ckpt_path.parent / "report"
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    meta = {**checkpoint_meta(ckpt, manifest, split), "checkpoint": str(ckpt_path)}
    verdict = run_gate(
        model, data, cfg, report_dir, surrogate=surrogate, surrogate_path=surrogate_path, attacks=attacks,
        h=nt_step(ckpt), meta=meta, title=f"Attack evaluation of {ckpt_path}",
    )
    if args.gate:
        ckpt["gate"] = verdict
        save_checkpoint(ckpt, ckpt_path)
        log.info("gate verdict written into %s", ckpt_path)
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
