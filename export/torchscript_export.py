"""Differentiable PyTorch artifacts: a TorchScript module (``model.pt``) and a torch.export program
(``model.pt2``), both of the float wrapper ``x -> model.score(x)``.

    x:     float32 [N, 3, H, W] RGB in [0, 1]
    score: float32 [N]

TorchScript is what Triton's pytorch backend loads and what gradient-based audits use; PyTorch 2.14
deprecates ``torch.jit`` (a FutureWarning on every call), so those warnings are silenced here, once,
and the deprecation is logged instead. The ``.pt2`` program is the ``torch.jit``-free successor.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from export.onnx_export import image_dims

__all__ = [
    "FloatImageScorer",
    "export_program",
    "export_torchscript",
    "load_program",
    "load_torchscript",
]

logger = logging.getLogger(__name__)


class FloatImageScorer(nn.Module):
    """float NCHW RGB in [0, 1] -> ``model.score`` (N,); the differentiable serving function."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.score(x)


@contextmanager
def _jit_deprecation_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _example_input(model: nn.Module) -> torch.Tensor:
    crop = model.preprocess_cfg.crop_size
    # Batch 2, not 1: an example of size 1 lets tracers specialise the batch axis.
    return torch.rand(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))


def export_torchscript(model: nn.Module, path: Path) -> Path:
    """Trace the float wrapper of ``model`` (eval mode) and save it as TorchScript."""
    logger.info("writing TorchScript (torch.jit is deprecated in PyTorch %s but Triton's pytorch backend "
                "and the gradient audits still load it)", torch.__version__)
    wrapper = FloatImageScorer(model).eval()
    with _jit_deprecation_silenced():
        traced = torch.jit.trace(wrapper, _example_input(model))
        traced.save(str(path))
    return path


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with _jit_deprecation_silenced():
        return torch.jit.load(str(path), map_location="cpu")


def export_program(model: nn.Module, path: Path) -> Path:
    """Save a ``torch.export`` program of the float wrapper with dynamic batch, height and width."""
    batch, height, width = image_dims()
    program = torch.export.export(
        FloatImageScorer(model).eval(),
        (_example_input(model),),
        dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
    )
    torch.export.save(program, str(path))
    return path


def load_program(path: Path) -> nn.Module:
    """The callable module of a saved ``torch.export`` program."""
    return torch.export.load(str(path)).module()
