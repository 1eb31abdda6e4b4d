"""Helpers of the hardening tests (tests/test_hardening_*.py): a model with a chosen cost, and images.

The tiny model of tests/conftest.py scores in a few milliseconds, too fast to keep requests in flight
while a test sends SIGTERM or overloads the gateway. ``export_costly_iqa_onnx`` exports the same
kind of network (uint8 NHWC in, score on [0, 100] out) with a stack of 3x3 convolutions, so one
request costs a known amount of real ONNX Runtime work (``layers`` x ``channels`` sets it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL_NAME, write_model_version
from training.preprocessing import PreprocessConfig

__all__ = ["COSTLY_PREPROCESS", "costly_model_repository", "export_costly_iqa_onnx", "jpeg_bytes"]


def export_costly_iqa_onnx(path: Path, layers: int, channels: int, seed: int = 0) -> None:
    """``image`` uint8 [N,H,W,3] -> ``score`` float32 [N]; ``layers`` full-resolution 3x3 convolutions."""
    torch = pytest.importorskip("torch")

    class CostlyIQA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, channels, kernel_size=3, padding=1)
            self.body = torch.nn.ModuleList(
                torch.nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(layers)
            )
            self.head = torch.nn.Linear(channels, 1)

        def forward(self, image: Any) -> Any:
            x = torch.tanh(self.stem(image.permute(0, 3, 1, 2).float() / 255.0))
            for conv in self.body:
                x = torch.tanh(conv(x))
            return torch.sigmoid(4.0 * self.head(x.mean(dim=(2, 3)))[:, 0]) * 100.0

    torch.manual_seed(seed)
    model = CostlyIQA().eval()
    dim = torch.export.Dim
    torch.onnx.export(
        model,
        (torch.zeros((2, 64, 64, 3), dtype=torch.uint8),),
        str(path),
        input_names=["image"],
        output_names=["score"],
        dynamo=True,
        external_data=False,
        dynamic_shapes={"image": {0: dim("N"), 1: dim("H"), 2: dim("W")}},
        verbose=False,
    )


# five 224-px crops: the shipped model's serving shape, so the cost per request is realistic
COSTLY_PREPROCESS = PreprocessConfig(short_side=224, max_long_side=256, crop_size=224, num_eval_crops=5)


def costly_model_repository(root: Path, versions: dict[int, tuple[int, int]]) -> Path:
    """A repository with ``{version: (layers, channels)}`` costly models (5 crops of 224 px)."""
    for version, (layers, channels) in versions.items():
        onnx_file = root / f"costly-{version}.onnx"
        export_costly_iqa_onnx(onnx_file, layers, channels)
        write_model_version(root, TINY_MODEL_NAME, version, onnx_file, COSTLY_PREPROCESS)
    return root


def jpeg_bytes(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
