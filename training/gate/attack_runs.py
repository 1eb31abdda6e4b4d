"""Running the attack sections of a gate config on the evaluated images.

``run_section(name, entry, ctx)`` builds the section's attack from the registry, gives a transfer
attack (``needs_surrogate``) the surrogate, lets the attack ``prepare`` itself (the UAP fits or loads
its perturbation on images of another split than the evaluated one, ``fit_split``), hands it the
section's images as one set of batches (``attack_set``: a set-level attack, ``on_set``, such as the
ranking attack, plans over the whole set; the others attack batch by batch) and returns the
section's result: per-image scores, SSIM / PSNR / ℓ∞, ``training.gate.metrics.attack_metrics``,
``set_level`` and the time. An attack that raises is an
"error" result (a gate failure), not a crash of the whole report; a transfer attack without a
surrogate is "not run". ``run_sweep(ctx)`` is the I-FGSM intensity sweep (Fig. 6) over ε × steps.

``EvalContext`` holds what every section shares: the config, the images, the scorers and the
surrogate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.gate.attacks import Attack, FitImages, attack_class, create_attack, measure_attack
from training.gate.data import EvalData, fit_data
from training.gate.identity import config_sha256
from training.gate.metrics import attack_metrics
from training.gate.scoring import CropScorer
from training.metrics import iqa_metrics

__all__ = ["EvalContext", "not_run", "run_section", "run_sweep"]

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What every measurement of one evaluation shares. ``served`` scores as the gateway does;
    ``scorer`` is what the attacks see (``scoring.attack_crops``); ``surrogate`` (on the attack
    scorer's crops) and its weights hash ``surrogate_id`` are None without a surrogate; fitted
    attacks are cached in ``cache_dir`` (None: not cached)."""

    cfg: dict[str, Any]
    data: EvalData
    served: CropScorer
    scorer: CropScorer
    surrogate: CropScorer | None
    surrogate_id: str | None
    cache_dir: Path | None

    @property
    def batch_size(self) -> int:
        return int(self.cfg.get("batch_size") or 16)


def _attack_data(attack: Attack, ctx: EvalContext, data: EvalData, desc: str) -> dict[str, np.ndarray]:
    """Per-image clean / adversarial scores and SSIM / PSNR / ℓ∞ of ``attack`` on ``data``. The attack
    gets the whole set as batches (``attack_set``), so a set-level attack plans over all of ``data``."""
    cols = {k: np.empty(len(data)) for k in ("clean", "adv", "ssim", "psnr", "linf")}
    groups: list[list[int]] = []

    def inputs() -> Iterator[torch.Tensor]:  # lazily, so only a set-level attack holds every batch
        for positions, x in data.batches(ctx.batch_size):
            groups.append(positions)
            yield x

    total = -(-len(data) // ctx.batch_size)
    adversarial = attack.attack_set(ctx.scorer, inputs())
    answered = 0
    for k, x_adv in enumerate(
        tqdm(adversarial, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=2.0)
    ):
        positions = groups[k]  # the k-th result answers the k-th batch, which has been drawn by now
        answered += len(positions)
        res = measure_attack(ctx.scorer, torch.stack([data.images[i] for i in positions]), x_adv)
        for key, values in (
            ("clean", res.clean_scores), ("adv", res.adv_scores), ("ssim", res.ssim),
            ("psnr", res.psnr), ("linf", res.linf),
        ):
            cols[key][positions] = values.numpy()
    if answered != len(data):
        raise RuntimeError(f"{type(attack).__name__}.attack_set answered {answered} of {len(data)} images")
    return cols


def _prepare(attack: Attack, entry: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    """Let an attack that fits itself (one that overrides ``prepare``: the UAP) fit on ``fit_images``
    images of the section's ``fit_split`` (default val), never on evaluated ones (``fit_data``); the
    cache key names the surrogate, parameters, crops and those images. Returns the facts for the
    report, with the fitting set under ``fit``."""
    if type(attack).prepare is Attack.prepare:
        return {}
    fit = fit_data(ctx.data, str(entry.get("fit_split", "val")), entry.get("fit_images"),
                   int(ctx.cfg.get("seed", 0)))
    key = {
        "surrogate": ctx.surrogate_id,
        "params": entry.get("params") or {},
        "crops": ctx.scorer.preprocess_cfg.to_dict(),
        "images": fit.paths,
    }
    facts = attack.prepare(FitImages(
        batches=lambda batch_size: [x for _, x in fit.load().batches(batch_size)],
        cache_key=config_sha256(key)[:16],
        cache_dir=ctx.cache_dir,
    ))
    return {**facts, "fit": {"split": fit.split, "n_images": len(fit.paths), "paths": fit.paths}}


def not_run(name: str, entry: dict[str, Any], reason: str) -> dict[str, Any]:
    """The result of a section that was not run (``status`` "not run"), with the reason."""
    return {
        "status": "not run", "reason": reason, "attack": entry["attack"],
        "required": bool(entry.get("required", True)), "params": entry.get("params") or {},
    }


def _quality(cols: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "ssim_mean": float(cols["ssim"].mean()), "ssim_min": float(cols["ssim"].min()),
        "psnr_mean": float(cols["psnr"].mean()), "psnr_min": float(cols["psnr"].min()),
        "linf_mean": float(cols["linf"].mean()), "linf_max": float(cols["linf"].max()),
    }


def _run_entry(name: str, entry: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    kind = entry["attack"]
    params = dict(entry.get("params") or {})
    if attack_class(kind).needs_surrogate:
        if ctx.surrogate is None:
            log.warning(
                "!!! %s (%s) is a transfer attack and NO SURROGATE model is available: NOT RUN. "
                "Set surrogate_checkpoint in the gate config or pass --surrogate.", name, kind,
            )
            return not_run(name, entry, "no surrogate checkpoint")
        params["surrogate"] = ctx.surrogate
    data = ctx.data.head(entry.get("max_images"))
    start = time.perf_counter()
    attack = create_attack(kind, **params)
    extra = _prepare(attack, entry, ctx)
    cols = _attack_data(attack, ctx, data, desc=name)
    score_range = ctx.scorer.preprocess_cfg
    metrics = attack_metrics(
        data.mos, cols["clean"], cols["adv"], beta1=score_range.score_max, beta2=score_range.score_min,
        fit_logistic=bool(ctx.cfg.get("fit_logistic", False)),
    )
    seconds = time.perf_counter() - start
    log.info(
        "%s: n=%d mean|Δ|=%.3f RMSE(before, after)=%.3f R=%.3f SSIM=%.4f (%.1fs)", name, len(data),
        metrics["mean_abs_delta"], metrics["clean_vs_adv"]["rmse"], metrics["r"], cols["ssim"].mean(),
        seconds,
    )
    return {
        "status": "ok", "attack": kind, "required": bool(entry.get("required", True)),
        "params": entry.get("params") or {}, "repr": repr(attack), "n_images": len(data),
        "set_level": attack.on_set,
        "metrics": metrics, "quality": _quality(cols), "seconds": seconds,
        "per_image": {"mos": data.mos.tolist(), **{k: v.tolist() for k, v in cols.items()}},
        **extra,
    }


def run_section(name: str, entry: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    """The result of the attack section ``name`` of the config (see the module docstring)."""
    try:
        return _run_entry(name, entry, ctx)
    except Exception as exc:  # a broken attack is a gate failure, not a crash of the whole report
        log.exception("attack %s failed", name)
        result = not_run(name, entry, f"{type(exc).__name__}: {exc}")
        result["status"] = "error"
        return result


def run_sweep(ctx: EvalContext) -> dict[str, Any]:
    """Fig. 6 data: I-FGSM (L_mid) for every (ε, iterations) of the ``sweep`` section."""
    section = ctx.cfg.get("sweep") or {}
    data = ctx.data.head(section.get("max_images"))
    rows = []
    for eps in section.get("eps") or []:
        for iters in section.get("iters") or []:
            attack = create_attack("ifgsm", eps=float(eps), steps=int(iters), objective="mid")
            cols = _attack_data(attack, ctx, data, desc=f"sweep eps={eps:.4f} K={iters}")
            m = iqa_metrics(cols["adv"], cols["clean"])
            rows.append({
                "eps": float(eps), "iters": int(iters), "mean_ssim": float(cols["ssim"].mean()),
                "rmse": m["rmse"], "srocc": m["srocc"],
                "mean_abs_delta": float(np.abs(cols["adv"] - cols["clean"]).mean()),
            })
    return {"status": "ok", "n_images": len(data), "rows": rows}
