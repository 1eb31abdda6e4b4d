"""How visible an adversarial example is, and ``run_attack``: attack + scores + quality in one call
(``measure_attack`` is the scores + quality part for adversarial images made elsewhere).

``adversarial_quality(x, x_adv)`` gives per-sample
* ``ssim``: SSIM (piq, data_range = 1, 11×11 Gaussian window, per-channel average, piq's automatic
  downsampling for images larger than 256 px); needs H, W ≥ 11;
* ``psnr``: PSNR in dB (piq; identical images give 80 dB because piq adds 1e-8 to the MSE);
* ``linf``: ‖x_adv − x‖∞ in [0, 1] pixel units (×255 for 8-bit levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import piq
import torch
from torch import nn

from training.gate.attacks.base import Attack, validate_images
from training.gate.tensors import eval_mode, model_device

__all__ = ["AttackResult", "adversarial_quality", "measure_attack", "run_attack", "score_images"]


def adversarial_quality(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample SSIM, PSNR (dB) and ℓ∞ distance between clean ``x`` and adversarial ``x_adv``."""
    if x.shape != x_adv.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    with torch.no_grad():
        x = x.detach().float().clamp(0.0, 1.0)
        x_adv = x_adv.detach().to(x.device).float().clamp(0.0, 1.0)
        ssim = piq.ssim(x_adv, x, data_range=1.0, reduction="none")
        psnr = piq.psnr(x_adv, x, data_range=1.0, reduction="none")
        linf = (x_adv - x).abs().flatten(1).amax(1)
    return {"ssim": ssim, "psnr": psnr, "linf": linf}


def score_images(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Served scores (``model.score``: clamped to the score range; ``model(x)`` for a plain module)
    in eval mode, without gradients, as a CPU (N,) tensor."""
    device = model_device(model)
    fn = getattr(model, "score", model)
    chunks = torch.split(x, batch_size) if batch_size else (x,)
    with eval_mode(model), torch.no_grad():
        out = [fn(c.to(device, torch.float32)).reshape(c.shape[0]).cpu() for c in chunks]
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class AttackResult:
    """Outcome of ``run_attack``; every tensor is on the CPU, one entry per image."""

    x_adv: torch.Tensor  # N×3×H×W adversarial images on the 8-bit grid
    clean_scores: torch.Tensor  # (N,) served scores f(x)
    adv_scores: torch.Tensor  # (N,) served scores f(x_adv)
    ssim: torch.Tensor  # (N,)
    psnr: torch.Tensor  # (N,) dB
    linf: torch.Tensor  # (N,) in [0, 1] units

    @property
    def delta(self) -> torch.Tensor:
        """f(x_adv) − f(x) per image."""
        return self.adv_scores - self.clean_scores

    def summary(self) -> dict[str, float]:
        """Means over the batch (for logs and reports)."""
        return {
            "mean_abs_delta": float(self.delta.abs().mean()),
            "mean_delta": float(self.delta.mean()),
            "mean_ssim": float(self.ssim.mean()),
            "mean_psnr": float(self.psnr.mean()),
            "max_linf": float(self.linf.max()),
        }


def measure_attack(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch_size: int | None = None
) -> AttackResult:
    """Clean / adversarial served scores of ``x`` and ``x_adv`` and the quality of ``x_adv``."""
    x_cpu = x.detach().float().cpu()
    x_adv = x_adv.detach().float().cpu()
    quality = adversarial_quality(x_cpu, x_adv)
    return AttackResult(
        x_adv=x_adv,
        clean_scores=score_images(model, x_cpu, batch_size),
        adv_scores=score_images(model, x_adv, batch_size),
        ssim=quality["ssim"].cpu(),
        psnr=quality["psnr"].cpu(),
        linf=quality["linf"].cpu(),
    )


def run_attack(
    attack: Attack, model: nn.Module, x: torch.Tensor, batch_size: int | None = None
) -> AttackResult:
    """Attack ``x`` (N×3×H×W in [0, 1]) in chunks of ``batch_size`` (None: one batch) and report
    clean / adversarial served scores and the quality of the adversarial images. The chunks go to
    ``attack.attack_set`` together, so a set-level attack still plans over all of ``x``."""
    validate_images(x)
    chunks = torch.split(x, batch_size) if batch_size else (x,)
    x_adv = torch.cat([c.cpu() for c in attack.attack_set(model, chunks)])
    return measure_attack(model, x, x_adv, batch_size)
