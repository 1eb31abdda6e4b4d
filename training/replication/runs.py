"""The training runs of a replication: train, resume or reuse each planned run (training/train.py,
in-process).

``train_run(run, args, out)`` returns ``out/<run>/best.pt``: reused when it was trained with the same
resolved config (``weights_config``: output folder, resume and gate settings do not count), resumed
from an unfinished ``last.pt`` of the same config, trained otherwise; with ``--skip-train`` an existing
best.pt is reused whatever its config, and a missing one gives None.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from training import train as train_script
from training.replication.plan import Run
from training.utils import load_checkpoint

__all__ = ["train_argv", "train_run", "weights_config"]

log = logging.getLogger("replicate")


def train_argv(run: Run, args: argparse.Namespace, out: Path, resume: Path | None = None) -> list[str]:
    """training/train.py's command line for ``run`` under ``out`` (resuming ``resume`` if given)."""
    overrides = [
        f"seed={run.seed}",
        f"nt.lam={run.lam}",
        f"nt.h={run.h}",
        f"nt.mode={run.mode}",
        "train.gate=false",
        *args.set,
    ]
    manifest = run.manifest or args.manifest
    if manifest:
        overrides.append(f"data.manifest={manifest}")
    if run.epochs is not None:
        overrides.append(f"optim.epochs={run.epochs}")
    if run.max_steps is not None:
        overrides.append(f"train.max_steps_per_epoch={run.max_steps}")
    argv = ["--config", args.config, "--output-dir", str(out / run.name)]
    if args.device:
        argv += ["--device", args.device]
    if resume is not None:
        argv += ["--resume", str(resume)]
    return [*argv, *overrides]


# Settings that do not change the trained weights: a run trained elsewhere (another output_dir, with
# or without the gate at its end, resumed or not) is the same run.
_NOT_WEIGHTS = {"output_dir": None, "train": ("resume", "gate")}


def weights_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A resolved training config without the settings that do not change the trained weights."""
    train = {k: v for k, v in cfg.get("train", {}).items() if k not in _NOT_WEIGHTS["train"]}
    return {**{k: v for k, v in cfg.items() if k != "output_dir"}, "train": train}


def train_run(run: Run, args: argparse.Namespace, out: Path) -> Path | None:
    """best.pt of ``run``: reused if trained with the same config, resumed or trained otherwise."""
    parser = train_script.get_args_parser()
    wanted = weights_config(train_script.resolve_config(parser.parse_args(train_argv(run, args, out))))
    best, last = out / run.name / "best.pt", out / run.name / "last.pt"
    if best.is_file():
        ckpt = load_checkpoint(best)
        if args.skip_train or ("test_metrics" in ckpt and weights_config(ckpt.get("args", {})) == wanted):
            log.info("%s: reusing %s", run.name, best)
            return best
    if args.skip_train:
        return None
    resume = None
    if last.is_file():
        state = load_checkpoint(last)
        unfinished = int(state["epoch"]) + 1 < int(wanted["optim"]["epochs"])
        if unfinished and weights_config(state.get("args", {})) == wanted:
            resume = last
    log.info(
        "%s: training (seed %d, λ %g, h %g, %s)%s",
        run.name,
        run.seed,
        run.lam,
        run.h,
        run.mode,
        f", resuming {last}" if resume else "",
    )
    code = train_script.main(parser.parse_args(train_argv(run, args, out, resume)))
    if code != 0 or not best.is_file():
        raise RuntimeError(f"training {run.name} failed (exit {code})")
    return best
