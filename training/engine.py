"""One training epoch and one evaluation pass; everything they need comes in as arguments."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.nt import NTConfig, nt_loss
from training.utils import freeze_batchnorm

__all__ = ["EpochStats", "evaluate", "predict", "train_one_epoch"]

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    loss: float = 0.0
    iqa_loss: float = 0.0
    reg: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "iqa_loss": self.iqa_loss,
            "reg": self.reg,
            "steps": self.steps,
            "seconds": self.seconds,
            "lr": self.lr,
            **self.extra,
        }


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def _iqa_loss(
    criterion: Callable[..., torch.Tensor],
    pred: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor | None,
    level: torch.Tensor | None,
) -> torch.Tensor:
    """The IQA loss in float32 (AMP or not), with the batch's ranking groups when it has them."""
    if group is None:
        return criterion(pred.float(), target)
    return criterion(pred.float(), target, group, level)


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: DataLoader,
    device: torch.device,
    nt_cfg: NTConfig,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    freeze_bn: bool = True,
    grad_clip: float | None = None,
    max_steps: int | None = None,
    log_every: int = 10,
    desc: str = "train",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> EpochStats:
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    stats = EpochStats()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    start = time.perf_counter()
    bar = tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=2.0)
    for step, batch in enumerate(bar):
        if step >= total:
            break
        x, y, *ranking = (t.to(device, non_blocking=True) for t in batch)
        group, level = ranking if ranking else (None, None)

        with _autocast(device, amp):
            out = nt_loss(model, x, y, partial(_iqa_loss, criterion, group=group, level=level), nt_cfg)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(optimizer)
        else:
            out.loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {step}; lower optim.lr or nt.lam")
        stats.steps += 1
        stats.loss += loss
        stats.iqa_loss += float(out.iqa_loss)
        stats.reg += float(out.reg)
        if step % log_every == 0:
            bar.set_postfix(loss=f"{loss:.3f}", reg=f"{float(out.reg):.1f}")
            if on_step is not None:
                on_step(step, {"loss": loss, "iqa_loss": float(out.iqa_loss), "reg": float(out.reg)})
    n = max(stats.steps, 1)
    stats.loss, stats.iqa_loss, stats.reg = stats.loss / n, stats.iqa_loss / n, stats.reg / n
    stats.seconds = time.perf_counter() - start
    stats.lr = optimizer.param_groups[0]["lr"]
    return stats


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval") -> np.ndarray:
    """Served scores (``model.score``, clamped) averaged over each image's evaluation crops."""
    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = []
    for x, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=2.0):
        x = x.to(device, non_blocking=True)
        b, k = x.shape[:2]
        s = model.score(x.flatten(0, 1)).float().view(b, k).mean(1)
        preds.append(s.cpu().numpy())
    model.train(was_training)
    return np.concatenate(preds).astype(np.float64)


def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval"
) -> tuple[dict[str, float], np.ndarray]:
    """Clean metrics (SROCC, PLCC, KROCC, RMSE) of the model's predictions against MOS."""
    from training.metrics import iqa_metrics

    preds = predict(model, loader, device, desc)
    mos = loader.dataset.mos  # type: ignore[attr-defined]
    return iqa_metrics(preds, mos), preds
