"""The gateway's robust scoring modes as defense rows of the gate (``defenses`` in the gate config).

Each configured defense wraps the attack scorer (``scoring.attack_crops``) as a module with the two
faces the attacks expect: ``forward`` (what a white-box attacker differentiates) and ``score`` (the
defended served value). The attacks of the listed sections are re-run *adaptively*, against the
defended scorer, and every row reports the clean SROCC / PLCC vs MOS and the attacked RMSE and mean
|Δ| of the defended scores (the benchmark's SROCC_clear / SROCC_adv and D_score, Gushchin et al.):

* ``plain``: the attack scorer itself (the gate's own attack rows, on the same images and crops).
* ``median``: median smoothing as ``?mode=median`` serves it (noise on the canonical image, clip,
  8-bit rounding, n copies, median; ``training.median_smoothing`` gives the certified bounds). The
  attack differentiates an expectation over ``attack_copies`` fresh noise draws (EOT) with the
  rounding passed straight through; the score is the median of n copies.
* ``jpeg``: JPEG purification as ``?mode=jpeg`` serves it (``training.jpeg_purification``). The
  round trip has no gradient: the attack uses BPDA with the identity (the gradient of the scorer at
  the purified image, applied to the input), an adaptive attack.

``run_defenses(ctx)`` returns ``{"status", "required", "rows", "defenses", "seconds"}``; the section
is informational unless ``required: true`` (then a defense that did not run fails the verdict).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from training.gate.attack_runs import EvalContext
from training.gate.attacks import create_attack
from training.gate.scoring import CropScorer
from training.gate.tensors import eval_mode, model_device
from training.jpeg_purification import jpeg_round_trip
from training.median_smoothing import certify_median
from training.metrics import iqa_metrics

__all__ = [
    "DEFENSE_KEYS",
    "JpegScorer",
    "MedianSmoothedScorer",
    "build_defense",
    "run_defenses",
    "validate_defenses",
]

log = logging.getLogger(__name__)

DEFENSE_KEYS = {"enabled", "required", "max_images", "attacks", "modes"}
_MODE_PARAMS = {  # max_images: a cap on the section's images for this defense (median is costly)
    "plain": {"max_images"},
    "median": {"n", "sigma", "radius", "alpha", "attack_copies", "seed", "max_images"},
    "jpeg": {"quality", "max_images"},
}


def _quantize_ste(z: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to 8 bits as the gateway's uint8 crops do; identity gradient inside."""
    z = z.clamp(0.0, 1.0)
    return z + (torch.round(z * 255.0) / 255.0 - z).detach()


class MedianSmoothedScorer(nn.Module):
    """Median smoothing of ``scorer`` at noise σ (see the module docstring)."""

    def __init__(self, scorer: CropScorer, n: int = 32, sigma: float = 0.05, radius: float = 0.025,
                 alpha: float = 0.01, attack_copies: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.scorer, self.preprocess_cfg = scorer, scorer.preprocess_cfg
        self.n, self.sigma, self.radius, self.alpha = int(n), float(sigma), float(radius), float(alpha)
        self.attack_copies = int(attack_copies)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator).to(x.device) * self.sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """EOT: the mean raw score over ``attack_copies`` noisy, 8-bit copies (differentiable)."""
        return torch.stack([self.scorer(_quantize_ste(x + self._noise(x)))
                            for _ in range(self.attack_copies)]).mean(0)

    @torch.no_grad()
    def samples(self, x: torch.Tensor) -> np.ndarray:
        """n × N served scores of n noisy copies of each image."""
        return np.stack([self.scorer.score(_quantize_ste(x + self._noise(x))).cpu().numpy()
                         for _ in range(self.n)])

    def certify(self, x: torch.Tensor) -> list[Any]:
        cfg = self.preprocess_cfg
        return [certify_median(col, self.radius, self.sigma, self.alpha, (cfg.score_min, cfg.score_max))
                for col in self.samples(x).T]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([c.median for c in self.certify(x)], dtype=torch.float64)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    images = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([jpeg_round_trip(np.ascontiguousarray(im), quality) for im in images])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0


class JpegScorer(nn.Module):
    """JPEG purification at ``quality`` before ``scorer``; BPDA (identity) gradient through it."""

    def __init__(self, scorer: CropScorer, quality: int = 75) -> None:
        super().__init__()
        self.scorer, self.preprocess_cfg, self.quality = scorer, scorer.preprocess_cfg, int(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scorer(x + (_jpeg(x, self.quality) - x).detach())

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.scorer.score(_jpeg(x, self.quality))


def build_defense(mode: str, scorer: CropScorer, params: dict[str, Any]) -> nn.Module:
    """The defended scorer of one ``modes`` entry (plain: ``scorer`` itself)."""
    if mode not in _MODE_PARAMS:
        raise ValueError(f"unknown defense {mode!r}; expected one of {sorted(_MODE_PARAMS)}")
    unknown = set(params) - _MODE_PARAMS[mode]
    if unknown:
        raise ValueError(f"defense {mode!r}: unknown parameter(s) {sorted(unknown)}")
    params = {k: v for k, v in params.items() if k != "max_images"}
    if mode == "median":
        return MedianSmoothedScorer(scorer, **params)
    if mode == "jpeg":
        return JpegScorer(scorer, **params)
    return scorer


_GRADIENT = {"plain": "exact", "median": "EOT over attack_copies noise draws, rounding straight-through",
             "jpeg": "BPDA (identity through the JPEG round trip)"}


def _clean(defense: nn.Module, data: Any, batch_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    scores = np.empty(len(data))
    certs: list[Any] = [None] * len(data)
    device = model_device(defense)
    for positions, x in data.batches(batch_size):
        x = x.to(device)
        if isinstance(defense, MedianSmoothedScorer):
            batch = defense.certify(x)
            for p, c in zip(positions, batch, strict=True):
                certs[p], scores[p] = c, c.median
        else:
            with torch.no_grad():
                scores[positions] = defense.score(x).cpu().numpy()
    extra: dict[str, Any] = {}
    if certs[0] is not None:
        cfg = defense.preprocess_cfg
        delta = [max(c.upper - c.median, c.median - c.lower) for c in certs]
        extra = {"certificate": {
            "radius": certs[0].radius, "n": certs[0].n, "sigma": certs[0].sigma, "alpha": certs[0].alpha,
            "mean_lower": float(np.mean([c.lower for c in certs])),
            "mean_upper": float(np.mean([c.upper for c in certs])),
            "mean_cert_rd": float(np.mean(delta)) / (cfg.score_max - cfg.score_min),
            "abstained": int(sum(c.abstained for c in certs)),
        }}
    return scores, extra


def _attacked(defense: nn.Module, attack: Any, data: Any, batch_size: int) -> np.ndarray:
    adv = np.empty(len(data))
    device = model_device(defense)
    for positions, x in data.batches(batch_size):
        x_adv = attack(defense, x.to(device))
        if isinstance(defense, MedianSmoothedScorer):
            adv[positions] = defense.score(x_adv).numpy()
        else:
            with torch.no_grad():
                adv[positions] = defense.score(x_adv).cpu().numpy()
    return adv


def _rows(mode: str, defense: nn.Module, section: dict[str, Any], ctx: EvalContext, data: Any) -> tuple[
        list[dict[str, Any]], dict[str, Any]]:
    start = time.perf_counter()
    clean, extra = _clean(defense, data, ctx.batch_size)
    clean_m = iqa_metrics(clean, data.mos)
    summary = {"clean": {**clean_m, "score_std": float(np.std(clean))}, "clean_scores": clean.tolist(),
               "gradient": _GRADIENT[mode], **extra}
    rows = []
    for name in section.get("attacks") or []:
        entry = ctx.cfg["attacks"][name]
        t0 = time.perf_counter()
        adv = _attacked(defense, create_attack(entry["attack"], **(entry.get("params") or {})), data,
                        ctx.batch_size)
        before_after = iqa_metrics(adv, clean)
        rows.append({
            "defense": mode, "attack": name, "n_images": len(data),
            "clean_srocc": clean_m["srocc"], "clean_plcc": clean_m["plcc"],
            "adv_srocc": iqa_metrics(adv, data.mos)["srocc"],
            "rmse_clean_vs_adv": before_after["rmse"],
            # scale-free: a defense that squeezes every score into a narrow band looks robust in points
            "rel_rmse": before_after["rmse"] / max(float(np.std(clean)), 1e-12),
            "mean_abs_delta": float(np.abs(adv - clean).mean()),
            "adv_scores": adv.tolist(), "seconds": time.perf_counter() - t0,
        })
        log.info("defense %s vs %s: clean SROCC %.3f, RMSE(before, after) %.2f, mean|Δ| %.2f",
                 mode, name, clean_m["srocc"], before_after["rmse"], rows[-1]["mean_abs_delta"])
    summary["seconds"] = time.perf_counter() - start
    return rows, summary


def run_defenses(ctx: EvalContext) -> dict[str, Any]:
    """Every configured defense against every listed attack section (see the module docstring)."""
    section = ctx.cfg.get("defenses") or {}
    required = bool(section.get("required", False))
    if not section.get("enabled", False):
        return {"status": "not run", "reason": "disabled in the gate config", "required": required}
    data = ctx.data.head(section.get("max_images"))
    start = time.perf_counter()
    result: dict[str, Any] = {"status": "ok", "required": required, "n_images": len(data),
                              "attack_crops": ctx.scorer.num_crops, "rows": [], "defenses": {}}
    try:
        for mode, params in (section.get("modes") or {}).items():
            defense = build_defense(str(mode), ctx.scorer, dict(params or {}))
            cap = (params or {}).get("max_images")
            with eval_mode(ctx.scorer):
                rows, summary = _rows(str(mode), defense, section, ctx, data.head(cap) if cap else data)
            result["rows"] += rows
            result["defenses"][mode] = {"params": dict(params or {}), **summary}
    except Exception as exc:  # reported (and failing only when required), never a crash of the report
        log.exception("defense evaluation failed")
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    result["seconds"] = time.perf_counter() - start
    return result


def validate_defenses(cfg: dict[str, Any]) -> None:
    """Check the ``defenses`` section: known keys, defenses and parameters and, when enabled, that its
    attacks are white-box sections of this config."""
    section = cfg.get("defenses")
    if section is None:
        return
    if not isinstance(section, dict) or set(section) - DEFENSE_KEYS:
        raise ValueError(f"gate config: 'defenses' takes only {sorted(DEFENSE_KEYS)}")
    for mode, params in (section.get("modes") or {}).items():
        if mode not in _MODE_PARAMS or set(params or {}) - _MODE_PARAMS[mode]:
            raise ValueError(f"gate config: defenses.modes.{mode}: unknown defense or parameter")
    if not section.get("enabled", False):
        return  # a disabled section's attack list refers to nothing it runs
    from training.gate.attacks import attack_class

    for name in section.get("attacks") or []:
        entry = (cfg.get("attacks") or {}).get(name)
        if entry is None or attack_class(str(entry["attack"])).needs_surrogate:
            raise ValueError(f"gate config: defenses.attacks: {name!r} is not a white-box attack section")
