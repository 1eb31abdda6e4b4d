"""The evaluation engine of the acceptance gate: clean metrics, the attack suite, gradient norms and
the FGSM intensity sweep of one model on one set of canonical test images, as a report dict.

What is attacked is the *served* score: ``training.scoring.CropScorer`` over whole canonical images
(``scoring.attack_crops`` of the gate config picks the crop count the attacks see; Table 1 always
uses the model's own crops). Images of different canonical sizes are batched by size.

``evaluate_model(model, data, cfg, surrogate=...)`` returns::

    {"meta": {...}, "clean": {"served": metrics, "attack_scorer": metrics},
     "attacks": {name: {"status": "ok" | "not run" | "error", "metrics": attack_metrics(...),
                        "quality": {...}, "per_image": {...}, "seconds": s, ...}},
     "grad_norm": grad_norm_report(...), "sweep": {"rows": [...]}, "seconds": {...}}

The gate config (training/configs/gate.yaml) is validated by ``validate_config``; thresholds are the
gate's business (training/gate.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.attacks import UAP, Attack, create_attack, is_attack, run_attack
from training.attacks.base import eval_mode, model_device
from training.data.dataset import ManifestDataset
from training.metrics import attack_metrics, grad_norm_report, iqa_metrics, relative_rmse
from training.scoring import CropScorer

__all__ = [
    "SURROGATE_ATTACKS",
    "EvalData",
    "add_derived_metrics",
    "config_sha256",
    "evaluate_model",
    "load_eval_data",
    "measurement_sha256",
    "select_attacks",
    "validate_config",
    "weights_sha256",
]

log = logging.getLogger(__name__)

# Transfer attacks: their gradients come from a surrogate model, never from the target.
SURROGATE_ATTACKS = frozenset({"uap", "korhonen"})

_TOP_KEYS = {
    "num_images", "split", "seed", "batch_size", "fit_logistic", "surrogate_checkpoint",
    "scoring", "clean", "grad_norm", "sweep", "attacks",
}
_SECTION_KEYS = {
    "scoring": {"attack_crops"},
    "grad_norm": {"enabled", "max_images", "h", "check_h", "median_max"},
    "sweep": {"enabled", "max_images", "eps", "iters"},
}
_ATTACK_KEYS = {"attack", "params", "thresholds", "required", "enabled", "max_images", "fit_images"}


# ----------------------------------------------------------------------------------------- config


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the engine's part of a gate config (unknown keys, attack names); returns it."""
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise ValueError(f"gate config: unknown key(s) {sorted(unknown)}")
    missing = {"num_images", "attacks", "scoring"} - set(cfg)
    if missing:
        raise ValueError(f"gate config: missing key(s) {sorted(missing)}")
    for section, keys in _SECTION_KEYS.items():
        extra = set(cfg.get(section) or {}) - keys
        if extra:
            raise ValueError(f"gate config: unknown key(s) {sorted(extra)} in {section!r}")
    if not isinstance(cfg["attacks"], dict):
        raise ValueError("gate config: 'attacks' must be a mapping of name -> attack section")
    for name, entry in cfg["attacks"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"gate config: attack {name!r} must be a mapping")
        extra = set(entry) - _ATTACK_KEYS
        if extra:
            raise ValueError(f"gate config: unknown key(s) {sorted(extra)} in attack {name!r}")
        if not is_attack(str(entry.get("attack", ""))):
            kind = entry.get("attack")
            raise ValueError(f"gate config: attack {name!r}: {kind!r} is not a registered attack")
    return cfg


def measurement_sha256(cfg: dict[str, Any]) -> str:
    """SHA-256 of what the evaluation *measures*: the config without its verdict settings (thresholds,
    ``required`` flags, the clean floors, gradient-norm ceilings, the surrogate's path; the surrogate
    is identified by its weights). Two reports with the same weights and this hash hold the same
    numbers, so the gate can re-judge a report under new thresholds without re-running the attacks."""
    measured = copy.deepcopy(cfg)
    measured.pop("clean", None)
    measured.pop("surrogate_checkpoint", None)
    for entry in (measured.get("attacks") or {}).values():
        entry.pop("thresholds", None)
        entry.pop("required", None)
    if isinstance(measured.get("grad_norm"), dict):
        measured["grad_norm"] = {k: v for k, v in measured["grad_norm"].items()
                                 if k in {"enabled", "max_images", "h", "check_h"}}
    return config_sha256(measured)


def config_sha256(cfg: dict[str, Any]) -> str:
    """SHA-256 of the resolved config (canonical JSON), so overrides change the hash too."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def select_attacks(cfg: dict[str, Any], requested: list[str] | None) -> list[str]:
    """Attack sections to run: ``None`` / ``["all"]`` = every enabled section; otherwise each token is
    a section name (``pgd_2``) or an attack type (``pgd`` = every pgd section)."""
    entries = cfg["attacks"]
    enabled = [n for n, e in entries.items() if e.get("enabled", True)]
    if not requested or requested == ["all"]:
        return enabled
    chosen: list[str] = []
    for token in requested:
        hits = [n for n in entries if n == token or entries[n]["attack"] == token]
        if not hits:
            raise ValueError(f"--attacks: {token!r} is neither a section nor an attack type of the config")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict (names and bytes, sorted): identifies the weights that were gated,
    independent of the checkpoint file (which the gate verdict itself rewrites)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """Canonical test images (float 3×H×W in [0, 1], CPU; sizes may differ) with their MOS."""

    images: list[torch.Tensor]
    mos: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def head(self, k: int | None) -> EvalData:
        """The first ``k`` images (None: all); subsets of the gate are prefixes of one seeded order."""
        k = len(self) if k is None else min(int(k), len(self))
        return EvalData(self.images[:k], self.mos[:k], self.paths[:k])

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(positions, N×3×H×W batch) with images grouped by size, ``batch_size`` at most."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(self.images):
            groups.setdefault(tuple(img.shape), []).append(i)
        for positions in groups.values():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                yield chunk, torch.stack([self.images[i] for i in chunk])


def select_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    """A seeded random order of ``n`` of ``n_total`` items (all when n is None)."""
    order = np.random.default_rng(seed).permutation(n_total)
    return [int(i) for i in order[: (n_total if n is None else min(n, n_total))]]


def load_eval_data(dataset: ManifestDataset, num_images: int | None, seed: int = 0) -> EvalData:
    """Canonical images and MOS of a seeded random subset of a manifest split."""
    indices = select_indices(len(dataset), num_images, seed)
    images = []
    for i in tqdm(indices, desc="load images", leave=False, dynamic_ncols=True, mininterval=2.0):
        arr = np.array(dataset.canonical(i), dtype=np.uint8, copy=True)  # writable, contiguous
        images.append(torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0))
    mos = np.asarray([dataset.rows[i].mos for i in indices], dtype=np.float64)
    return EvalData(images, mos, [str(dataset.rows[i].path) for i in indices])


# ----------------------------------------------------------------------------------------- engine


@dataclass
class _Context:
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


def _scores(scorer: CropScorer, data: EvalData, batch_size: int) -> np.ndarray:
    out = np.empty(len(data))
    with eval_mode(scorer), torch.no_grad():
        for positions, x in data.batches(batch_size):
            out[positions] = scorer.score(x.to(model_device(scorer))).cpu().numpy()
    return out


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _attack_data(attack: Attack, ctx: _Context, data: EvalData, desc: str) -> dict[str, np.ndarray]:
    """Per-image clean / adversarial scores and SSIM / PSNR / ℓ∞ of ``attack`` on ``data``."""
    cols = {k: np.empty(len(data)) for k in ("clean", "adv", "ssim", "psnr", "linf")}
    total = -(-len(data) // ctx.batch_size)
    for positions, x in tqdm(
        data.batches(ctx.batch_size), total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=2.0
    ):
        res = run_attack(attack, ctx.scorer, x)
        for key, values in (
            ("clean", res.clean_scores), ("adv", res.adv_scores), ("ssim", res.ssim),
            ("psnr", res.psnr), ("linf", res.linf),
        ):
            cols[key][positions] = values.numpy()
    return cols


def _uap_cache_path(entry: dict[str, Any], ctx: _Context, fit: EvalData) -> Path | None:
    if ctx.cache_dir is None:
        return None
    key = {
        "surrogate": ctx.surrogate_id,
        "params": entry.get("params") or {},
        "crops": ctx.scorer.preprocess_cfg.to_dict(),
        "images": fit.paths,
    }
    return ctx.cache_dir / f"uap-{config_sha256(key)[:16]}.pt"


def _prepare_uap(attack: Attack, entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    """Fit the UAP on the surrogate over the first ``fit_images`` images, or reuse the cached one."""
    assert isinstance(attack, UAP) and ctx.surrogate is not None
    fit = ctx.data.head(entry.get("fit_images"))
    path = _uap_cache_path(entry, ctx, fit)
    if path is not None and path.is_file():
        attack.load(path)
        log.info("uap: reusing the perturbation cached at %s", path)
        return {"uap_cache": str(path), "uap_fitted": False}
    log.info("uap: fitting on the surrogate over %d images (%d epochs)", len(fit), attack.epochs)
    batches = [x for _, x in fit.batches(attack.batch_size)]
    attack.fit(ctx.surrogate, batches)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            attack.save(path)
        except OSError as exc:
            log.warning("uap: cannot cache the perturbation at %s (%s)", path, exc)
            path = None
    return {"uap_cache": str(path) if path else None, "uap_fitted": True}


# Extra preparation per attack type (after create_attack, before running).
_PREPARE: dict[str, Callable[[Attack, dict[str, Any], _Context], dict[str, Any]]] = {"uap": _prepare_uap}


def _not_run(name: str, entry: dict[str, Any], reason: str) -> dict[str, Any]:
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


def _run_entry(name: str, entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    kind = entry["attack"]
    params = dict(entry.get("params") or {})
    if kind in SURROGATE_ATTACKS:
        if ctx.surrogate is None:
            log.warning(
                "!!! %s (%s) is a transfer attack and NO SURROGATE model is available: NOT RUN. "
                "Set surrogate_checkpoint in the gate config or pass --surrogate.", name, kind,
            )
            return _not_run(name, entry, "no surrogate checkpoint")
        params["surrogate"] = ctx.surrogate
    data = ctx.data.head(entry.get("max_images"))
    start = time.perf_counter()
    attack = create_attack(kind, **params)
    extra = _PREPARE[kind](attack, entry, ctx) if kind in _PREPARE else {}
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
        "metrics": metrics, "quality": _quality(cols), "seconds": seconds,
        "per_image": {"mos": data.mos.tolist(), **{k: v.tolist() for k, v in cols.items()}},
        **extra,
    }


def _attack_entry(name: str, entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    try:
        return _run_entry(name, entry, ctx)
    except Exception as exc:  # a broken attack is a gate failure, not a crash of the whole report
        log.exception("attack %s failed", name)
        result = _not_run(name, entry, f"{type(exc).__name__}: {exc}")
        result["status"] = "error"
        return result


def _grad_norms(ctx: _Context, h: float) -> dict[str, Any]:
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


def _sweep(ctx: _Context) -> dict[str, Any]:
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


def _clean(ctx: _Context) -> dict[str, Any]:
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


def add_derived_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Fill in metrics that are functions of the stored per-image scores (the clean score spread, the
    relative RMSE of each attack) where a report measured by an older version lacks them; in place."""
    served = report.get("clean", {}).get("served")
    scores = report.get("clean", {}).get("scores")
    if isinstance(served, dict) and scores and "score_std" not in served:
        served["score_std"] = float(np.std(np.asarray(scores, dtype=np.float64)))
    for entry in (report.get("attacks") or {}).values():
        per_image, metrics = entry.get("per_image"), entry.get("metrics")
        missing = isinstance(metrics, dict) and "rel_rmse" not in metrics
        if entry.get("status") == "ok" and per_image and missing:
            metrics["rel_rmse"] = relative_rmse(per_image["clean"], per_image["adv"])
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
    ctx = _Context(
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
                report["attacks"][name] = _timed(seconds, name, partial(_attack_entry, name, entry, ctx))
            else:
                reason = "not requested" if entry.get("enabled", True) else "disabled in the gate config"
                report["attacks"][name] = _not_run(name, entry, reason)
        gn, sw = cfg.get("grad_norm") or {}, cfg.get("sweep") or {}
        report["grad_norm"] = (
            _timed(seconds, "grad_norm", partial(_grad_norms, ctx, float(gn.get("h") or h)))
            if gn.get("enabled", True) else {"status": "not run"}
        )
        run_sweep = sw.get("enabled", True) and sw.get("eps") and sw.get("iters")
        report["sweep"] = (
            _timed(seconds, "sweep", partial(_sweep, ctx)) if run_sweep else {"status": "not run", "rows": []}
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
    }
    return report
