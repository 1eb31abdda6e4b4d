"""Planning a replication: every training run it needs, resolved from the CLI and the training config.

``plan_runs(args)`` returns a ``Plan``: the three main runs (``baseline``, λ = 0; ``nt``; ``surrogate``,
seed + 1, λ = 0, the source of the transfer attacks) from one seed, and the ablation grids (λ at
h = 0.01, h at a fixed λ, λ of the exact form of Eq. 5) on the ablation budget and manifest.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from training import train as train_script

__all__ = ["Plan", "Run", "plan_runs"]


@dataclass(frozen=True)
class Run:
    """One training run: folder under --out, seed, NT weight and step, budget."""

    name: str
    seed: int
    lam: float
    h: float
    epochs: int | None
    max_steps: int | None
    manifest: str | None = None  # None: --manifest (else the config's)
    mode: str = "fd"  # nt.mode: "fd" (Eq. 7) or "exact" (Eq. 5, double backpropagation)


@dataclass
class Plan:
    """Every run of a replication: the three main runs and the two ablation grids."""

    manifest: str
    runs: dict[str, Run]
    lam_runs: dict[float, Run]
    h_runs: dict[float, Run]
    exact_runs: dict[float, Run]
    h_lam: float
    epochs: int  # budget of the main runs, resolved from the config and the CLI
    max_steps: int | None


def plan_runs(args: argparse.Namespace) -> Plan:
    """The runs of the replication ``args`` describe (replicate.py's parser)."""
    argv = ["--config", args.config, *args.set]
    if args.manifest:
        argv.append(f"data.manifest={args.manifest}")
    cfg = train_script.resolve_config(train_script.get_args_parser().parse_args(argv))
    seed = args.seed if args.seed is not None else int(cfg["seed"])
    lam = args.lam if args.lam is not None else float(cfg["nt"]["lam"])
    h = float(cfg["nt"]["h"])
    h_lam = args.h_lam if args.h_lam is not None else lam
    epochs, steps = args.epochs, args.max_steps_per_epoch
    ab_epochs, ab_steps = args.ablation_epochs or epochs, args.ablation_max_steps or steps
    return Plan(
        manifest=str(cfg["data"]["manifest"]),
        runs={
            "baseline": Run("baseline", seed, 0.0, h, epochs, steps),
            "nt": Run("nt", seed, lam, h, epochs, steps),
            "surrogate": Run("surrogate", seed + 1, 0.0, h, args.surrogate_epochs or epochs, steps),
        },
        lam_runs={
            v: Run(f"ablation/lam{v:g}_h0.01", seed, v, 0.01, ab_epochs, ab_steps, args.ablation_manifest)
            for v in args.lams
        },
        h_runs={
            v: Run(
                f"ablation/lam{h_lam:g}_h{v:g}", seed, h_lam, v, ab_epochs, ab_steps, args.ablation_manifest
            )
            for v in args.hs
        },
        exact_runs={
            v: Run(
                f"ablation/exact_lam{v:g}", seed, v, h, ab_epochs, ab_steps, args.ablation_manifest, "exact"
            )
            for v in args.exact_lams
        },
        h_lam=h_lam,
        epochs=int(epochs if epochs is not None else cfg["optim"]["epochs"]),
        max_steps=steps if steps is not None else cfg["train"].get("max_steps_per_epoch"),
    )
