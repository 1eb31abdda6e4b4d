"""Low-level tensor helpers of the gate, shared by the attacks and the gradient-norm measurement.

* ``model_device``: where a model's parameters live (library code never hard-codes a device).
* ``eval_mode``: run a model in eval mode and put its train/eval mode back afterwards.
* ``predict``: the raw model output as a flat (N,) tensor.
* ``input_gradient``: ∇ₓ of an objective of that output, w.r.t. the input only (no parameter .grad).
* ``iter_image_batches``: image batches from a tensor or from a loader of batches.

Nothing here knows about attacks or metrics: both import from this module, never from each other's
internals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["eval_mode", "input_gradient", "iter_image_batches", "model_device", "predict"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a parameter-free module."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and put every submodule's own train/eval mode back afterwards.

    Restoring per module, not ``model.train(was_training)``: a wrapper whose flag differs from its
    children's (a fresh ``CropScorer`` around an eval-mode model) would otherwise leave the wrapped
    model in train mode, and a later forward would overwrite its BatchNorm statistics."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Raw model output as a flat (N,) tensor."""
    return model(x).reshape(x.shape[0])


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
) -> torch.Tensor:
    """∇ₓ Σᵢ objective(f(xᵢ), yᵢ) by ``torch.autograd.grad`` (input only; no parameter .grad)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = objective(predict(model, x), y).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def iter_image_batches(data: torch.Tensor | Iterable[Any], batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Yield image batches from a tensor (split into ``batch_size`` chunks) or from an iterable of
    tensors / (images, ...) tuples / {"image": ...} dicts (a DataLoader)."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 3:
            data = data.unsqueeze(0)
        yield from torch.split(data, batch_size)
        return
    for item in data:
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            yield item["image"]
        elif isinstance(item, (tuple, list)):
            yield item[0]
        else:
            raise TypeError(f"cannot take an image batch from a {type(item).__name__}")
