"""Universal adversarial perturbation (UAP) for IQA, transferred black-box from a surrogate.

Threat model (black-box transfer): one image-agnostic perturbation p ∈ [−1, 1]^{3×S×S} is learned on
a *surrogate* model (another architecture or seed) and added to every target image,

    x_adv = clip(x + scale·tile(p), 0, 1),      ‖x_adv − x‖∞ ≤ scale = 0.04 (Table S7),

without any access to the target. Objective when fitting (maximized over a set of images, Adam):
``up`` (default) mean f(x + scale·p) — pushing every score up, as the UAP attacks on IQA metrics do
(Shumitskaya et al.; Gushchin et al., Table 1 "Optimised-UAP"); ``down`` its negative; ``mid`` the
mean of L_mid (Eq. S20), which a single image-agnostic p can only partly satisfy.

Size: p is learned at S×S (default 224, the crop size) and applied to any H×W by *tiling* (periodic
repetition, cropped to H×W), not resizing: tiling keeps the pattern's spatial frequencies, which is
where its effect lives, and keeps ‖p‖∞ ≤ 1 exactly. Fitting images of any size work the same way.

``save(path)`` / ``UAP(path=...)`` store and reload p (``torch.save`` of {"perturbation", "scale",
"objective"}), so the gate can reuse one fitted UAP: ``prepare`` (the gate's hook) loads the cached p
or fits it on the surrogate over the images the gate offers and caches it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from training.gate.attacks._registry import register_attack
from training.gate.attacks.base import Attack, FitImages, score_midpoint, seeded_generator
from training.gate.attacks.objectives import l_mid
from training.gate.tensors import eval_mode, iter_image_batches, model_device, predict

__all__ = ["UAP", "tile_to"]

log = logging.getLogger(__name__)

_FIT_OBJECTIVES = ("up", "down", "mid")


def tile_to(p: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat a C×S×S pattern periodically and crop it to C×height×width (differentiable)."""
    reps_h = -(-height // p.shape[-2])
    reps_w = -(-width // p.shape[-1])
    return p.repeat(1, reps_h, reps_w)[:, :height, :width]


@register_attack
class UAP(Attack):
    """UAP (black-box transfer). ℓ∞ with scale = 0.04 (Table S7), one perturbation for all images,
    fitted on ``surrogate`` with Adam (``epochs`` passes over the fitting images, ``lr`` in units of
    p ∈ [−1, 1]) for objective ``up`` | ``down`` | ``mid``; applied by tiling. Call ``fit`` or pass
    ``perturbation`` / ``path``."""

    name: ClassVar[str] = "uap"
    needs_surrogate: ClassVar[bool] = True

    def __init__(
        self,
        surrogate: nn.Module | None = None,
        scale: float = 0.04,
        size: int = 224,
        objective: str = "up",
        epochs: int = 20,
        lr: float = 0.05,
        batch_size: int = 16,
        perturbation: torch.Tensor | None = None,
        path: str | Path | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(scale)
        if objective not in _FIT_OBJECTIVES:
            raise ValueError(f"unknown UAP objective {objective!r}; available: {', '.join(_FIT_OBJECTIVES)}")
        self.surrogate = surrogate
        self.scale = float(scale)
        self.size = int(size)
        self.objective = objective
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.perturbation: torch.Tensor | None = None
        if path is not None:
            self.load(path)
        elif perturbation is not None:
            self.perturbation = self._check(perturbation)

    @staticmethod
    def _check(p: torch.Tensor) -> torch.Tensor:
        if p.ndim != 3 or p.shape[0] != 3:
            raise ValueError("a UAP perturbation must be 3 x S x S")
        return p.detach().float().clamp(-1.0, 1.0).cpu()

    def _loss(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = predict(model, x_adv)
        if self.objective == "up":
            gain = pred
        elif self.objective == "down":
            gain = -pred
        else:
            gain = l_mid(pred, y, score_midpoint(model))
        return -gain.mean()

    def fit(
        self, surrogate: nn.Module | None = None, images: torch.Tensor | Iterable[Any] | None = None
    ) -> UAP:
        """Learn p on ``surrogate`` (default: the one given at construction) over ``images``: a tensor
        N×3×H×W in [0, 1] or a re-iterable of batches (a DataLoader; it is walked ``epochs`` times).
        Fitting images should be at least ``size``×``size``: only the part of p that the images
        cover gets trained. Returns self."""
        model = surrogate if surrogate is not None else self.surrogate
        if model is None or images is None:
            raise ValueError("UAP.fit needs a surrogate model and fitting images")
        device = model_device(model)
        gen = seeded_generator(self.seed)
        init = (torch.rand(3, self.size, self.size, generator=gen) * 2 - 1) * 1e-3
        p = init.to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([p], lr=self.lr)
        with eval_mode(model), torch.enable_grad():
            for _ in range(self.epochs):
                for batch in iter_image_batches(images, self.batch_size):
                    x = batch.detach().to(device, torch.float32)
                    with torch.no_grad():
                        y = predict(model, x)
                    x_adv = (x + self.scale * tile_to(p, x.shape[-2], x.shape[-1])).clamp(0.0, 1.0)
                    loss = self._loss(model, x_adv, y)
                    (grad,) = torch.autograd.grad(loss, p)
                    optimizer.zero_grad(set_to_none=True)
                    p.grad = grad
                    optimizer.step()
                    with torch.no_grad():
                        p.clamp_(-1.0, 1.0)
        self.perturbation = p.detach().cpu()
        return self

    def prepare(self, fit: FitImages) -> dict[str, Any]:
        """Fit p on the surrogate over ``fit``'s images, or reuse the one cached for the same surrogate,
        parameters, scorer and images; says which in the report (``uap_cache``, ``uap_fitted``)."""
        path = fit.cache_path(self.name)
        if path is not None and path.is_file():
            self.load(path)
            log.info("uap: reusing the perturbation cached at %s", path)
            return {"uap_cache": str(path), "uap_fitted": False}
        batches = fit.batches(self.batch_size)
        log.info("uap: fitting on the surrogate over %d images (%d epochs)", sum(len(b) for b in batches),
                 self.epochs)
        self.fit(self.surrogate, batches)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.save(path)
            except OSError as exc:
                log.warning("uap: cannot cache the perturbation at %s (%s)", path, exc)
                path = None
        return {"uap_cache": str(path) if path else None, "uap_fitted": True}

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.perturbation is None:
            raise RuntimeError(
                "UAP has no perturbation: call fit(surrogate, images) or pass path= / perturbation="
            )
        p = tile_to(self.perturbation.to(x.device), x.shape[-2], x.shape[-1])
        return (x + self.scale * p).clamp(0.0, 1.0)

    def save(self, path: str | Path) -> None:
        if self.perturbation is None:
            raise RuntimeError("UAP has no perturbation to save")
        torch.save(
            {"perturbation": self.perturbation, "scale": self.scale, "objective": self.objective}, path
        )

    def load(self, path: str | Path) -> UAP:
        """Load p saved by ``save`` (the stored scale is informational; this object's scale applies)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.perturbation = self._check(state["perturbation"])
        return self

    def extra_repr(self) -> str:
        fitted = self.perturbation is not None
        return f"scale={self.scale}, size={self.size}, objective={self.objective!r}, fitted={fitted}"
