"""Inference backends by name; ``IQA_BACKEND`` picks one. A new runtime registers a factory here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from serving.backends.base import Backend, ModelInfo
from serving.errors import ModelLoadError
from serving.settings import Settings

if TYPE_CHECKING:  # model_store imports backends.base; keep the package import acyclic
    from serving.model_store import ModelVersion

__all__ = ["BACKENDS", "Backend", "BackendFactory", "ModelInfo", "create_backend"]

BackendFactory: TypeAlias = "Callable[[ModelVersion, Settings], Backend]"


def _onnxruntime(model: ModelVersion, settings: Settings) -> Backend:
    from serving.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        model.model_path,
        model.info,
        intra_op_threads=settings.ort_intra_op_threads,
        use_cuda=settings.ort_use_cuda,
    )


def _triton(model: ModelVersion, settings: Settings) -> Backend:
    try:
        from serving.backends.triton_backend import TritonBackend
    except ImportError as exc:
        raise ModelLoadError(
            f"IQA_BACKEND=triton needs tritonclient ({exc}): pip install -e '.[serve,triton]'"
        ) from None

    return TritonBackend(
        settings.triton_url,
        model.info,
        model_name=settings.triton_model_name or model.name,
        timeout_s=settings.triton_timeout_s,
        poll_s=settings.triton_poll_s,
        load_timeout_s=settings.triton_load_timeout_s,
    )


BACKENDS: dict[str, BackendFactory] = {"onnxruntime": _onnxruntime, "triton": _triton}


def create_backend(model: ModelVersion, settings: Settings) -> Backend:
    """Build (but do not load) the backend named by ``settings.backend`` for ``model``."""
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ModelLoadError(f"unknown backend '{settings.backend}' (IQA_BACKEND); known: {known}") from None
    return factory(model, settings)
