"""Replicate the NT paper's baseline-vs-NT comparison on our data and write docs/RESULTS.md.

    python training/replicate.py [--config training/configs/default.yaml] [--manifest CSV]
        [--out runs/replicate] [--epochs N] [--max-steps-per-epoch N]
        [--ablation-epochs N] [--ablation-max-steps N] [--lams 0 0.0005 ...] [--hs 0.001 0.01 ...]
        [--skip-train] [--max-images N] [--results-md docs/RESULTS.md] [--results-dir docs/results]

Trains (training/train.py, in-process) from the same seed and data: ``baseline`` (nt.lam = 0),
``nt`` (nt.lam of the config or ``--lam``) and ``surrogate`` (seed + 1, baseline: the source of the
transfer attacks); evaluates baseline and NT with the same gate attacks (training/configs/gate.yaml);
then the λ ablation at h = 0.01 and the h ablation at fixed λ (Fig. 7, Table 4), on a budget that
``--ablation-epochs`` / ``--ablation-max-steps`` may reduce, evaluated on clean SROCC and FGSM.

Restartable: a run whose best.pt was trained with the same resolved config is reused, an interrupted
run resumes from its last.pt, and an evaluation whose report.json the gate would reuse (the same
weights, images, surrogate and measurement settings) is not repeated. ``--skip-train`` never trains
(missing main runs are an error, missing ablation runs are left out).

This file is the CLI; the work is done by ``training.replication`` (plan, runs, evaluation, targets,
results, figures).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from training.gate.config import load_gate_config
from training.replication.evaluation import Evaluator, ablation_config
from training.replication.plan import plan_runs
from training.replication.results import write_results
from training.replication.runs import train_run
from training.replication.targets import target_rows

log = logging.getLogger("replicate")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Baseline vs NT replication (Tables 1-4, Fig. 4, 6, 7).")
    g = p.add_argument_group("training")
    g.add_argument("--config", default="training/configs/default.yaml", help="training YAML")
    g.add_argument("--manifest", help="manifest CSV (offline, LIVEC or KonIQ from build_dataset.py)")
    g.add_argument("--out", default="runs/replicate", help="folder of all runs and reports")
    g.add_argument("--seed", type=int, help="seed of baseline and NT (default: the config's); surrogate +1")
    g.add_argument("--lam", type=float, help="λ of the NT run (default: the config's nt.lam)")
    g.add_argument("--epochs", type=int, help="optim.epochs of the main runs")
    g.add_argument("--max-steps-per-epoch", type=int, help="train.max_steps_per_epoch of the main runs")
    g.add_argument("--device", help="auto | cpu | cuda (training and evaluation)")
    g.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more training overrides")
    g.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    g.add_argument("--surrogate-epochs", type=int, help="optim.epochs of the surrogate (default --epochs)")
    g = p.add_argument_group("ablations (Fig. 7, Table 4)")
    g.add_argument(
        "--lams",
        nargs="*",
        type=float,
        default=[0.0, 0.0005, 0.001, 0.002, 0.003],
        help="λ values at h = 0.01 (empty: no λ ablation)",
    )
    g.add_argument(
        "--hs",
        nargs="*",
        type=float,
        default=[0.001, 0.01, 0.1, 1.0],
        help="h values at λ = --h-lam (empty: no h ablation)",
    )
    g.add_argument("--h-lam", type=float, help="λ of the h ablation (default: the NT run's λ)")
    g.add_argument(
        "--exact-lams",
        nargs="*",
        type=float,
        default=[1e-8, 3e-8, 1e-7, 1e-6],
        help="λ values of the exact form, Eq. 5, λ·‖∇ₓf‖₁² by double backpropagation (about 3.5× the "
        "step time of Eq. 7; its λ is smaller because ‖∇ₓf‖₁ exceeds the finite difference; empty: none)",
    )
    g.add_argument("--ablation-epochs", type=int, help="optim.epochs of ablation runs (default --epochs)")
    g.add_argument("--ablation-max-steps", type=int, help="max steps per epoch of ablation runs")
    g.add_argument("--ablation-images", type=int, help="test images of the ablation evaluations")
    g.add_argument(
        "--ablation-manifest",
        help="manifest of the ablation runs (default --manifest), e.g. a "
        "smaller offline set so the grid fits a CPU budget; each run is evaluated on its own",
    )
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--gate-config", help="gate YAML of the attacks (default training/configs/gate.yaml)")
    g.add_argument("--gate-set", nargs="*", default=[], metavar="key=value", help="gate-config overrides")
    g.add_argument("--max-images", type=int, help="test images of the baseline / NT evaluations")
    g.add_argument("--results-md", default="docs/RESULTS.md", help="where RESULTS.md is written")
    g.add_argument("--results-dir", help="folder of the RESULTS.md plots (default: results/ beside it)")
    return p


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    plan = plan_runs(args)
    ckpts: dict[str, Path | None] = {}
    grids = (plan.lam_runs, plan.h_runs, plan.exact_runs)
    for run in [*plan.runs.values(), *(r for grid in grids for r in grid.values())]:
        if run.name not in ckpts:
            ckpts[run.name] = train_run(run, args, out)
    main_ckpts = {name: ckpts[name] for name in plan.runs}
    missing = [name for name, path in main_ckpts.items() if path is None]
    if missing:
        raise FileNotFoundError(f"--skip-train: no best.pt for {', '.join(missing)} under {out}")

    gate_overrides = list(args.gate_set) + ([f"num_images={args.max_images}"] if args.max_images else [])
    cfg = load_gate_config(args.gate_config, gate_overrides)
    evaluate = Evaluator(cfg, main_ckpts["surrogate"], args.device, args.manifest)
    reports = {}
    for name in ("baseline", "nt"):
        path = main_ckpts[name]
        assert path is not None
        reports[name] = evaluate(path, out / "eval" / name, title=f"Attack evaluation: {name}")
    ab_cfg = ablation_config(cfg, args.ablation_images or args.max_images)
    ablations: dict[str, dict[float, dict[str, Any]]] = {"lam": {}, "h": {}, "exact": {}}
    for key, grid in (("lam", plan.lam_runs), ("h", plan.h_runs), ("exact", plan.exact_runs)):
        for value, run in grid.items():
            path = ckpts[run.name]
            if path is None:
                log.warning("ablation %s has no checkpoint; left out", run.name)
                continue
            report_dir = out / "eval" / run.name
            ablations[key][value] = evaluate(
                path, report_dir, ab_cfg, title=f"Ablation {run.name}", manifest=run.manifest
            )
    path = write_results(args, plan, reports, ablations)
    print(f"results: {path}")
    for r in target_rows(reports["baseline"], reports["nt"]):
        change = "n/a" if r["change"] is None else f"{r['change']:.3g}{r['unit']}"
        print(f"  {r['name']}: {change} (target {r['target']}) {'met' if r['met'] else 'NOT met'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded in RESULTS.md
    try:
        return main(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"replicate.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
