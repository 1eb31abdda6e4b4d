"""The transport-agnostic inference backend protocol the pipeline talks to.

A backend turns a batch of preprocessed crops (uint8 N x H x W x 3, raw RGB pixels) into one score
per crop (float32 [N]). Embedded ONNX Runtime and a remote Triton server are two implementations;
the pipeline and the HTTP routes never know which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the served model version."""

    name: str
    version: int
    architecture: str = ""


@runtime_checkable
class Backend(Protocol):
    """What the scoring pipeline needs from an inference runtime.

    ``load`` raises ``serving.errors.ModelLoadError`` with a one-line message when the model cannot
    be loaded; ``infer`` raises ``serving.errors.BackendDown`` when the runtime is unavailable.
    """

    @property
    def model_info(self) -> ModelInfo: ...

    def load(self) -> None: ...

    def ready(self) -> bool: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
