"""The common attack base: device, train/eval mode, 8-bit delivery and the ℓ∞ projection.

Every attack is called as ``attack(model, x) -> x_adv``:

* ``x`` is float N×3×H×W RGB in [0, 1] (the ``IQAModel`` input); it is moved to the device of the
  model's parameters, and ``x_adv`` comes back on that device, detached.
* The model runs in eval mode during the attack and its train/eval mode is put back afterwards.
* Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter ``.grad``
  is ever created or accumulated.
* A real attacker must deliver an image file, so after the attack's own ``perturb`` the result is
  quantized to 8 bits (``quantize_in_ball``) such that ``‖x_adv − x‖∞ ≤ ε`` and ``x_adv ∈ [0, 1]``
  still hold exactly; see that function for the rounding rule.
* Gradient attacks maximize an objective of the raw model output ``model(x)`` (``forward``, not the
  clamped ``score``: the clamp would zero the gradient outside the score range). A query-only attack
  (Square) sees only what is served: ``served_scores``, the clamped score.

What the gate must know about an attack lives on its class, not in name lists elsewhere:
``needs_surrogate`` (a transfer attack: the gate passes ``surrogate=`` and does not run it without
one), ``prepare(FitImages)`` (work before the first call, e.g. fitting a UAP; a no-op by default) and
``on_set`` with ``attack_set(model, batches)``: the gate hands every attack the whole set of images it
runs on as a sequence of batches (sizes may differ between batches). By default each batch is attacked
on its own; a set-level attack (``on_set = True``, the ranking attack) plans over the whole set first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from training.gate.attacks.objectives import Objective
from training.gate.tensors import eval_mode, input_gradient, model_device

__all__ = [
    "Attack",
    "FitImages",
    "project_linf",
    "quantize_8bit",
    "quantize_in_ball",
    "score_midpoint",
    "seeded_generator",
    "served_scores",
    "sign_ascent",
    "validate_images",
]

# Tolerance (in 1/255 units) when locating the 8-bit grid points inside the ε-ball: absorbs float
# error such as 255·(x − 4/255) = 2.9999998 for x on the grid. Worst case it lets a pixel sit
# 1e-4/255 ≈ 4e-7 outside the ball, far below the 1/255 resolution of an image file.
_GRID_TOL = 1e-4


def score_midpoint(model: nn.Module) -> float:
    """Midpoint of the model's score range (50 on [0, 100]): the L_mid switch point (Eq. S20)."""
    cfg = getattr(model, "preprocess_cfg", None)
    if cfg is None:
        return 50.0
    return 0.5 * (float(cfg.score_min) + float(cfg.score_max))


def validate_images(x: torch.Tensor) -> None:
    """Raise ValueError unless x is a float N×3×H×W batch in [0, 1]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError("attack input must be a float RGB tensor of shape N x 3 x H x W")
    if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError("attack input must be in [0, 1]")


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Project onto {‖x_adv − x‖∞ ≤ eps} ∩ [0, 1] (eps None: the box only)."""
    if eps is not None:
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv.clamp(0.0, 1.0)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """round(x·255)/255, clamped to [0, 1]."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def quantize_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Quantize x_adv to the 8-bit grid while keeping ‖x_adv − x‖∞ ≤ eps and x_adv ∈ [0, 1].

    Per pixel the admissible interval is [max(0, x − eps), min(1, x + eps)]. x_adv is rounded to the
    nearest 8-bit level and then clamped to the grid levels inside that interval; this equals plain
    rounding whenever rounding stays in the ball, and otherwise floors/ceils x_adv *toward x* (the
    case ε not a multiple of 1/255, e.g. FGSM's ε = 0.005 = 1.275/255 delivers a 1/255 step).
    If x itself is on the 8-bit grid (real images are) the interval always contains a grid level, so
    the bound holds exactly. For an off-grid x with ε < 1/255 the interval may contain no level; those
    pixels take the level nearest to x (the bound then holds only up to 1/(2·255)).
    """
    x_adv = project_linf(x_adv, x, eps)
    lo = (x - eps).clamp(0.0, 1.0) if eps is not None else torch.zeros_like(x)
    hi = (x + eps).clamp(0.0, 1.0) if eps is not None else torch.ones_like(x)
    lo_level = torch.ceil(lo * 255.0 - _GRID_TOL)
    hi_level = torch.floor(hi * 255.0 + _GRID_TOL)
    q = torch.round(x_adv * 255.0)
    q = torch.min(torch.max(q, lo_level), hi_level)
    # Branch-free (no data-dependent ``if``), so the online probe can trace this function into a graph.
    q = torch.where(lo_level > hi_level, torch.round(x * 255.0), q)
    return q.clamp(0.0, 255.0) / 255.0


def served_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the gateway serves for ``x`` as a flat (N,) tensor: ``model.score`` (the clamped score) when
    the model has one, else its raw output. A score-only (query) attacker sees exactly this."""
    fn = getattr(model, "score", None)
    out = fn(x) if callable(fn) else model(x)
    return out.reshape(x.shape[0])


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from the OS when ``seed`` is None (non-reproducible)."""
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def sign_ascent(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    x_init: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected ℓ∞ steepest ascent: x ← Π_ε(x + α·mask·sign(∇ₓ objective)), ``steps`` times.

    Shared by FGSM / I-FGSM / PGD (mask None) and the Korhonen attack (mask = texture map).
    """
    x_adv = x.clone() if x_init is None else project_linf(x_init, x, eps)
    for _ in range(steps):
        step = alpha * input_gradient(model, x_adv, objective, y).sign()
        if mask is not None:
            step = step * mask
        x_adv = project_linf(x_adv + step, x, eps)
    return x_adv.detach()


@dataclass(frozen=True)
class FitImages:
    """What the gate offers an attack before it runs: images it may fit itself on and a place to cache
    the result. ``batches(batch_size)`` returns N×3×H×W batches in [0, 1]; the cached file of an
    attack is ``cache_dir / f"{name}-{cache_key}.pt"`` (``cache_dir`` None: no caching), where the
    key identifies the surrogate, the attack's parameters, the scorer and the fitting images."""

    batches: Callable[[int], Sequence[torch.Tensor]]
    cache_key: str
    cache_dir: Path | None = None

    def cache_path(self, name: str) -> Path | None:
        return self.cache_dir / f"{name}-{self.cache_key}.pt" if self.cache_dir is not None else None


class Attack(ABC):
    """Base of every attack. Subclasses set ``name``, implement ``perturb`` and call
    ``super().__init__(eps)`` where ``eps`` is the ℓ∞ budget used by the final 8-bit projection
    (None: no ℓ∞ budget, only [0, 1], e.g. the perceptual attack).

    A transfer attack sets ``needs_surrogate = True`` and takes a ``surrogate`` constructor argument;
    an attack that must be fitted before use overrides ``prepare``; an attack whose perturbation of one
    image depends on the other images of the set sets ``on_set = True`` and overrides ``attack_set``."""

    name: ClassVar[str] = ""
    needs_surrogate: ClassVar[bool] = False
    on_set: ClassVar[bool] = False

    def __init__(self, eps: float | None) -> None:
        if eps is not None and not (0.0 < eps <= 1.0 and math.isfinite(eps)):
            raise ValueError(f"{type(self).__name__}: eps must be in (0, 1], got {eps}")
        self.eps = eps

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Return the (continuous) adversarial batch for ``x``; model is already in eval mode and
        ``x`` on its device."""

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.deliver(model, x, self.perturb)

    def deliver(
        self, model: nn.Module, x: torch.Tensor, perturb: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Validate ``x``, move it to the model's device, run ``perturb(model, x)`` in eval mode and
        deliver the result on the 8-bit grid inside the ε-ball (what ``__call__`` does with
        ``self.perturb``; a set-level attack passes a perturbation bound to its plan)."""
        validate_images(x)
        x = x.detach().to(model_device(model), torch.float32)
        with eval_mode(model):
            x_adv = perturb(model, x)
        return quantize_in_ball(x_adv.detach(), x, self.eps)

    def attack_set(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Adversarial batches for a set of images given as batches (yielded in order, lazily). The
        default attacks each batch on its own; a set-level attack (``on_set``) overrides this."""
        for x in batches:
            yield self(model, x)

    def prepare(self, fit: FitImages) -> dict[str, Any]:
        """Called by the gate once before the attack runs; returns facts for the report (default:
        nothing to prepare)."""
        return {}

    def extra_repr(self) -> str:
        return f"eps={self.eps}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
