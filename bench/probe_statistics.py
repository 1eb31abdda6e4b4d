"""Which one-gradient probe statistic separates attacked from clean images? (docs/PROBE.md, issue 13)

    python bench/probe_statistics.py [--manifest data/full/manifest.csv] [--version 2]
        [--skip 150] [--images 24] [--attacks fgsm pgd_2] [--attack-crops 1]
        [--calibration-images 150 [--false-flag 0.01]] [--json out.json]

The served probe reports Δ+ = score(x + ε·s) − score(x), s = sign ∇ₓ L_mid at x (the gate's FGSM step,
delivered on the 8-bit grid). This experiment computes, in torch on the shipped model, statistics
that reuse the same gradient (one backward) and cost only extra forwards:

* ``abs_delta_plus``   |Δ+|, the served statistic;
* ``abs_delta_minus``  |Δ−|, Δ− = score(x − ε·s) − score(x), the reverse step;
* ``curvature``        |Δ+ + Δ−| (second difference along s);
* ``asymmetry``        |Δ−| − |Δ+|, and ``forward_excess`` = |Δ+| − |Δ−| (its negative, so that the
                       max over crops of either direction is reported);
* ``log_ratio``        log((|Δ−| + 0.1) / (|Δ+| + 0.1));
* ``*_4``              the same at a 4/255 step (ε = 4/255, α = 2ε: the projection makes it 4 levels);
* ``grad_l1``          ε₈·‖∇ₓ score‖₁, the first-order prediction of |Δ+| (ε₈ = 1/255, no forward);
* ``linearity_gap``    1 − |Δ+| / (ε₈·‖∇ₓ score‖₁) (how far the step falls short of the linear gain).

Each per-crop score is the served (clamped) one; an image's statistic uses the mean over crops of
each score, like the gateway (``all``: the 5 eval crops); ``crop_mean`` / ``crop_max`` / ``crop_min``
aggregate each crop's own statistic instead (the gateway's delta averages signed per-crop deltas, and
L_mid pushes crops on either side of the midpoint in opposite directions, so they cancel), and
``centre`` is the centre crop alone (the only crop an ``--attack-crops 1`` attack changes entirely; a
reference, not a deployable statistic: a real attacker perturbs every crop).

Images: the gate's seeded order of the synthetic test split, images ``--skip`` .. ``--skip + --images``
(by default the detection set of bench/probe_detector.py). Attacks: the gate's registry with gate.yaml's
parameters, attacking the served score through ``CropScorer`` (bench/probe_detector.py's code), the
attacked images cached under ``--cache-dir``. ROC AUC per attack and statistic: attacked positive,
the same images clean negative, higher statistic = attacked (AUC < 0.5: lower when attacked).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # bench/triton.py would shadow the package torch probes for
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn

from bench.probe_detector import ATTACKS, _cached_attack, _uint8
from export.probe_export import load_version_model
from training.gate.attacks.base import quantize_in_ball, score_midpoint, served_scores
from training.gate.attacks.fgsm import FGSM_ALPHA, FGSM_EPS
from training.gate.attacks.objectives import make_objective
from training.gate.data import EvalData, load_split
from training.gate.run import load_surrogate
from training.gate.scoring import CropScorer
from training.gate.tensors import predict
from training.preprocessing import PreprocessConfig, eval_crops

LEVEL = 1.0 / 255.0
BIG_EPS = 4.0 / 255.0
STATISTICS = ("abs_delta_plus", "abs_delta_minus", "curvature", "asymmetry", "forward_excess", "log_ratio",
              "abs_delta_plus_4", "abs_delta_minus_4", "curvature_4", "asymmetry_4", "forward_excess_4",
              "grad_l1", "linearity_gap")


def crop_scores(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-crop served scores of x (K×3×c×c in [0, 1]) and of its steps along ±s at ε and 4/255, s the
    sign of ∇ₓ L_mid at x with the label y = f(x) (``fgsm_step``'s gradient), plus ε₈·‖∇ₓ f‖₁."""
    cfg = model.preprocess_cfg
    objective = make_objective("mid", score_midpoint(model))
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        pred = predict(model, x_in)
        y = pred.detach()
        (grad,) = torch.autograd.grad(objective(pred, y).sum(), x_in)
    s = grad.sign()
    steps = {"plus": (FGSM_EPS, FGSM_ALPHA, 1.0), "minus": (FGSM_EPS, FGSM_ALPHA, -1.0),
             "plus_4": (BIG_EPS, 2 * BIG_EPS, 1.0), "minus_4": (BIG_EPS, 2 * BIG_EPS, -1.0)}
    stepped = [quantize_in_ball(x + sign * alpha * s, x, eps) for eps, alpha, sign in steps.values()]
    with torch.no_grad():
        scores = served_scores(model, torch.cat(stepped)).reshape(len(steps), x.shape[0])
    out = {name: scores[i] for i, name in enumerate(steps)}
    out["clean"] = y.clamp(float(cfg.score_min), float(cfg.score_max))
    out["grad_l1"] = LEVEL * grad.abs().flatten(1).sum(1)  # |∂L_mid/∂x| = |∂f/∂x|
    return out


def image_statistics(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """The statistics of one image from the (crop-averaged) scores of ``crop_scores``."""
    v = {k: float(t.mean()) for k, t in scores.items()}
    out: dict[str, float] = {}
    for tag in ("", "_4"):
        dp, dm = v["plus" + tag] - v["clean"], v["minus" + tag] - v["clean"]
        out["abs_delta_plus" + tag] = abs(dp)
        out["abs_delta_minus" + tag] = abs(dm)
        out["curvature" + tag] = abs(dp + dm)
        out["asymmetry" + tag] = abs(dm) - abs(dp)
        out["forward_excess" + tag] = abs(dp) - abs(dm)  # −asymmetry: its max over crops is −(min asymmetry)
    out["log_ratio"] = float(np.log((out["abs_delta_minus"] + 0.1) / (out["abs_delta_plus"] + 0.1)))
    out["grad_l1"] = v["grad_l1"]
    out["linearity_gap"] = 1.0 - out["abs_delta_plus"] / max(v["grad_l1"], 1e-9)
    return out


AGGREGATES = ("all", "centre", "crop_mean", "crop_max", "crop_min")


def statistics_set(model: nn.Module, images: Sequence[torch.Tensor], cfg: PreprocessConfig
                   ) -> dict[str, list[dict[str, float]]]:
    """Per image and aggregate (``AGGREGATES``), its statistics: ``all`` from the crop-mean scores (the
    gateway's delta), ``centre`` from the centre crop alone, ``crop_mean`` / ``crop_max`` / ``crop_min``
    the mean / max / min over crops of each crop's own statistic."""
    centre = 0 if cfg.num_eval_crops == 1 else 4  # 5 crops: 4 corners then the centre; 9: a 3×3 grid
    rows: dict[str, list[dict[str, float]]] = {agg: [] for agg in AGGREGATES}
    for img in images:
        crops = torch.from_numpy(eval_crops(_uint8(img), cfg)).float().div(255.0).permute(0, 3, 1, 2)
        scores = crop_scores(model, crops.contiguous())
        per_crop = [image_statistics({k: t[i : i + 1] for k, t in scores.items()}) for i in range(len(crops))]
        rows["all"].append(image_statistics(scores))
        rows["centre"].append(per_crop[centre])
        for agg, fn in (("crop_mean", np.mean), ("crop_max", np.max), ("crop_min", np.min)):
            rows[agg].append({s: float(fn([c[s] for c in per_crop])) for s in STATISTICS})
    return rows


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {s: round(float(np.median([r[s] for r in rows])), 3) for s in STATISTICS}


def _rates(rows: dict[str, list[dict[str, float]]], thresholds: dict[str, dict[str, float]]
           ) -> dict[str, dict[str, float]]:
    """Share of images whose statistic exceeds its threshold, per aggregate and statistic."""
    return {agg: {s: round(float(np.mean([r[s] > t for r in rows[agg]])), 3) for s, t in th.items()}
            for agg, th in thresholds.items()}


def auc_table(clean: dict[str, list[dict[str, float]]], adv: dict[str, list[dict[str, float]]]
              ) -> dict[str, dict[str, float]]:
    labels = np.r_[np.zeros(len(clean["all"])), np.ones(len(adv["all"]))]
    return {agg: {s: round(float(roc_auc_score(labels, [r[s] for r in clean[agg] + adv[agg]])), 3)
                  for s in STATISTICS} for agg in AGGREGATES}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default="data/full/manifest.csv")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--gate-config", default="training/configs/gate.yaml")
    p.add_argument("--surrogate", default="runs/surrogate/best.pt")
    p.add_argument("--skip", type=int, default=150, help="images of the seeded test order to skip")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--calibration-images", type=int, default=0,
                   help="first N images of the order (N <= --skip): per statistic a threshold at the "
                        "(1 - --false-flag) quantile of their values, and each attack's detection rate at it")
    p.add_argument("--false-flag", type=float, default=0.01)
    p.add_argument("--attacks", nargs="*", default=["fgsm", "pgd_2"], choices=ATTACKS)
    p.add_argument("--attack-crops", type=int, default=1, help="crops the attacks see (default: centre)")
    p.add_argument("--uap-fit-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/probe_statistics"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    version_dir = args.model_repository / args.name / str(args.version)
    model = load_version_model(version_dir)
    cfg = model.preprocess_cfg
    data = load_split(args.manifest, "test", cfg, args.skip + args.images, args.seed)
    data = EvalData(data.images[args.skip :], data.mos[args.skip :], data.paths[args.skip :], data.source)
    clean = statistics_set(model, data.images, cfg)
    report: dict[str, Any] = {"model": f"{args.name}/{args.version}", "images": len(data),
                              "attack_crops": args.attack_crops, "attacks": {},
                              "clean_median": _medians(clean["all"])}
    thresholds: dict[str, dict[str, float]] = {}
    if args.calibration_images:
        if args.calibration_images > args.skip:
            raise SystemExit("--calibration-images must not exceed --skip (the sets would overlap)")
        cal_data = load_split(args.manifest, "test", cfg, args.calibration_images, args.seed)
        cal = statistics_set(model, cal_data.images, cfg)
        thresholds = {agg: {s: float(np.quantile([r[s] for r in cal[agg]], 1.0 - args.false_flag))
                            for s in STATISTICS} for agg in AGGREGATES}
        report["calibration"] = {"images": args.calibration_images, "quantile": 1.0 - args.false_flag,
                                 "thresholds": thresholds,
                                 "false_flag_rate_detection_set": _rates(clean, thresholds)}
    gate = yaml.safe_load(Path(args.gate_config).read_text())
    # eval(): a new nn.Module is in train mode, and the attacks' eval_mode() puts the wrapper's mode
    # back on the whole tree, which would leave the model in train mode (batch statistics) afterwards.
    scorer = CropScorer(model, num_eval_crops=args.attack_crops).eval()
    transfer = bool(set(args.attacks) & {"uap", "korhonen"})
    raw_surrogate = load_surrogate(args.surrogate, torch.device("cpu")) if transfer else None
    surrogate = CropScorer(raw_surrogate, scorer.preprocess_cfg).eval() if raw_surrogate is not None else None
    for name in args.attacks:
        t0 = time.perf_counter()
        adv_images = _cached_attack(name, gate["attacks"][name], scorer, surrogate, data, args)
        if model.training:
            raise RuntimeError(f"the attack {name} left the model in train mode")
        adv = statistics_set(model, adv_images, cfg)
        report["attacks"][name] = {
            "auc": auc_table(clean, adv),
            "attacked_median": _medians(adv["all"]),
            **({"detection_rate": _rates(adv, thresholds)} if thresholds else {}),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, json.dumps(report["attacks"][name]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
