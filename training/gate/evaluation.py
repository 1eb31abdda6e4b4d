"""The evaluation engine of the acceptance gate: clean metrics, the attack suite, gradient norms and
the FGSM intensity sweep of one model on one set of canonical test images, assembled into a report.

What is attacked is the *served* score: ``training.gate.scoring.CropScorer`` over whole canonical
images (``scoring.attack_crops`` of the gate config picks the crop count the attacks see; Table 1
always uses the model's own crops). Images of different canonical sizes are batched by size. The attack
sections are run by ``training.gate.attack_runs``; this module measures the rest and assembles::

    {"meta": {...}, "clean": {"served": metrics, "attack_scorer": metrics},
     "attacks": {name: {"status": "ok" | "not run" | "error", "metrics": attack_metrics(...),
                        "quality": {...}, "per_image": {...}, "seconds": s, ...}},
     "grad_norm": grad_norm_report(...), "sweep": {"rows": [...]}, "seconds": {...},
     "plcc_logistic": {"fitted", "failed", "where"}}

(``evaluate_model(model, data, cfg, surrogate=...)``). The gate config is validated by
``training.gate.config``; thresholds are the verdict's business (``training.gate.verdict``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.gate.attack_runs import EvalContext, not_run, run_section, run_sweep
from training.gate.config import select_attacks, validate_config
from training.gate.data import EvalData
from training.gate.defenses import run_defenses
from training.gate.grad_norms import grad_norm_report
from training.gate.identity import config_sha256, measurement_sha256, weights_sha256
from training.gate.metrics import r_floor_hits, relative_rmse
from training.gate.scoring import CropScorer
from training.gate.tensors import eval_mode, model_device
from training.metrics import iqa_metrics

__all__ = ["add_derived_metrics", "evaluate_model", "plcc_logistic_summary"]


def _scores(scorer: CropScorer, data: EvalData, batch_size: int) -> np.ndarray:
    out = np.empty(len(data))
    with eval_mode(scorer), torch.no_grad():
        for positions, x in data.batches(batch_size):
            out[positions] = scorer.score(x.to(model_device(scorer))).cpu().numpy()
    return out


def _grad_norms(ctx: EvalContext, h: float) -> dict[str, Any]:
    section = ctx.cfg.get("grad_norm") or {}
    data = ctx.data.head(section.get("max_images"))
    batches = list(data.batches(ctx.batch_size))
    report = grad_norm_report(
        ctx.scorer,
        [x for _, x in batches],
        h=h,
        batch_size=ctx.batch_size,
        check_hs=[float(v) for v in section.get("check_h") or ()],
    )
    order = [p for positions, _ in batches for p in positions]
    for key in ("exact", "fd"):  # back to the data order
        values = np.empty(len(order))
        values[order] = report[key]
        report[key] = values.tolist()
    report.update(status="ok", n_images=len(data), mos=data.mos.tolist())
    return report


def _clean(ctx: EvalContext) -> dict[str, Any]:
    """Table 1 with the served scorer, plus the attack scorer's clean metrics when it differs."""
    fit_logistic = bool(ctx.cfg.get("fit_logistic", False))
    scores = _scores(ctx.served, ctx.data, ctx.batch_size)
    clean: dict[str, Any] = {
        "served": {**iqa_metrics(scores, ctx.data.mos, fit_logistic), "score_std": float(np.std(scores)),
                   "n_images": len(ctx.data), "num_crops": ctx.served.num_crops},
        "scores": scores.tolist(),
        "mos": ctx.data.mos.tolist(),
    }
    if ctx.scorer.num_crops != ctx.served.num_crops:
        attack_scores = _scores(ctx.scorer, ctx.data, ctx.batch_size)
        clean["attack_scorer"] = {**iqa_metrics(attack_scores, ctx.data.mos, fit_logistic),
                                  "n_images": len(ctx.data), "num_crops": ctx.scorer.num_crops}
    return clean


def plcc_logistic_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Where the 4-parameter logistic fit behind PLCC failed and raw Pearson was used instead:
    ``{"fitted": fit_logistic, "failed": count, "where": ["clean.served", "fgsm.mos_vs_adv", ...]}``."""
    where = []
    clean = report.get("clean") or {}
    for key in ("served", "attack_scorer"):
        if (clean.get(key) or {}).get("plcc_logistic_failed"):
            where.append(f"clean.{key}")
    for name, entry in (report.get("attacks") or {}).items():
        for pair, values in (entry.get("metrics") or {}).items():
            if isinstance(values, dict) and values.get("plcc_logistic_failed"):
                where.append(f"{name}.{pair}")
    fitted = bool(((report.get("meta") or {}).get("config") or {}).get("fit_logistic", False))
    return {"fitted": fitted, "failed": len(where), "where": where}


def add_derived_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Fill in metrics that are functions of the stored per-image scores (the clean score spread, the
    relative RMSE of each attack and defense row, the images on R's floor) and of the stored metrics
    (where the PLCC logistic fit failed) where a report measured by an older version lacks them; in
    place."""
    served = report.get("clean", {}).get("served")
    scores = report.get("clean", {}).get("scores")
    if isinstance(served, dict) and scores and "score_std" not in served:
        served["score_std"] = float(np.std(np.asarray(scores, dtype=np.float64)))
    for entry in (report.get("attacks") or {}).values():
        per_image, metrics = entry.get("per_image"), entry.get("metrics")
        if entry.get("status") != "ok" or not per_image or not isinstance(metrics, dict):
            continue
        if "rel_rmse" not in metrics:
            metrics["rel_rmse"] = relative_rmse(per_image["clean"], per_image["adv"])
        if "r_floor_hits" not in metrics:
            metrics["r_floor_hits"] = r_floor_hits(per_image["clean"], per_image["adv"])
    defenses = report.get("defenses") or {}
    for row in defenses.get("rows") or []:  # defense rows measured before rel_rmse was recorded
        clean = (defenses.get("defenses", {}).get(row["defense"]) or {}).get("clean_scores")
        if "rel_rmse" not in row and clean:
            row["rel_rmse"] = row["rmse_clean_vs_adv"] / max(float(np.std(clean)), 1e-12)
    if "plcc_logistic" not in report:
        report["plcc_logistic"] = plcc_logistic_summary(report)
    return report


def _timed(seconds: dict[str, float], key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    out = fn()
    seconds[key] = time.perf_counter() - start
    return out


def evaluate_model(
    model: nn.Module,
    data: EvalData,
    cfg: dict[str, Any],
    *,
    attacks: list[str] | None = None,
    surrogate: nn.Module | None = None,
    h: float = 0.01,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the evaluation described by the gate config ``cfg`` on ``data`` (see the module docstring).

    ``model`` and ``surrogate`` are used on their own devices, in eval mode (their modes are put back
    afterwards); ``attacks`` selects sections (``select_attacks``); ``h`` is the finite-difference
    step when the config leaves it null; ``cache_dir`` is where a fitted UAP is cached (None: not).
    """
    validate_config(cfg)
    if len(data) == 0:
        raise ValueError("no images to evaluate")
    started = time.time()
    scorer = CropScorer(model, num_eval_crops=(cfg.get("scoring") or {}).get("attack_crops"))
    ctx = EvalContext(
        cfg=cfg, data=data, served=CropScorer(model), scorer=scorer,
        surrogate=CropScorer(surrogate, scorer.preprocess_cfg) if surrogate is not None else None,
        surrogate_id=weights_sha256(surrogate) if surrogate is not None else None,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {"meta": {}, "clean": {}, "attacks": {}, "seconds": seconds}
    with eval_mode(model), eval_mode(surrogate if surrogate is not None else nn.Identity()):
        report["clean"] = _timed(seconds, "clean", partial(_clean, ctx))
        selected = select_attacks(cfg, attacks)
        for name, entry in cfg["attacks"].items():
            if name in selected:
                report["attacks"][name] = _timed(seconds, name, partial(run_section, name, entry, ctx))
            else:
                reason = "not requested" if entry.get("enabled", True) else "disabled in the gate config"
                report["attacks"][name] = not_run(name, entry, reason)
        gn, sw = cfg.get("grad_norm") or {}, cfg.get("sweep") or {}
        report["grad_norm"] = (
            _timed(seconds, "grad_norm", partial(_grad_norms, ctx, float(gn.get("h") or h)))
            if gn.get("enabled", True) else {"status": "not run"}
        )
        sweep_on = sw.get("enabled", True) and sw.get("eps") and sw.get("iters")
        report["sweep"] = (
            _timed(seconds, "sweep", partial(run_sweep, ctx))
            if sweep_on else {"status": "not run", "rows": []}
        )
        report["defenses"] = (  # the gateway's robust modes as defense rows (training.gate.defenses)
            _timed(seconds, "defenses", partial(run_defenses, ctx))
            if (cfg.get("defenses") or {}).get("enabled", False) else run_defenses(ctx)
        )
    seconds["total"] = sum(seconds.values())
    report["meta"] = {
        "started": started,
        "n_images": len(data),
        "paths": data.paths,
        "served_crops": ctx.served.num_crops,
        "attack_crops": scorer.num_crops,
        "preprocess": scorer.preprocess_cfg.to_dict(),
        "device": str(model_device(model)),
        "torch": torch.__version__,
        "weights_sha256": weights_sha256(model),
        "surrogate_weights_sha256": ctx.surrogate_id,
        "config": cfg,
        "config_sha256": config_sha256(cfg),
        "measurement_sha256": measurement_sha256(cfg),
        "artifact": getattr(model, "artifact_info", None),
    }
    report["plcc_logistic"] = plcc_logistic_summary(report)
    return report
