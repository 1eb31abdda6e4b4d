"""Embedded ONNX Runtime backend: runs ``model.onnx`` in-process (CPU by default, CUDA on request)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.backends.base import ModelInfo
from serving.errors import BackendDown, InternalError, ModelLoadError

__all__ = ["OnnxRuntimeBackend"]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "score"
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` over the export contract: ``image`` uint8 NHWC -> ``score`` [N]."""

    def __init__(
        self,
        model_path: Path,
        info: ModelInfo,
        *,
        intra_op_threads: int = 0,
        use_cuda: bool = False,
    ) -> None:
        self._model_path = Path(model_path)
        self._info = info
        self._intra_op_threads = intra_op_threads
        self._use_cuda = use_cuda
        self._session: ort.InferenceSession | None = None
        self._input_name = INPUT_NAME

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else []

    def _providers(self) -> list[str]:
        if not self._use_cuda:
            return [_CPU]
        if _CUDA in ort.get_available_providers():
            return [_CUDA, _CPU]
        logger.warning("CUDA requested but this onnxruntime build has no %s; using CPU", _CUDA)
        return [_CPU]

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only; ORT warnings about unused initializers are noise
        try:
            session = ort.InferenceSession(str(self._model_path), options, providers=self._providers())
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile...)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load {self._model_path}: {first_line}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
            found = [(i.name, i.type) for i in inputs]
            raise ModelLoadError(
                f"{self._model_path}: expected one uint8 input '{INPUT_NAME}', found {found}"
            )
        if OUTPUT_NAME not in {o.name for o in outputs}:
            found = [o.name for o in outputs]
            raise ModelLoadError(f"{self._model_path}: expected an output '{OUTPUT_NAME}', found {found}")
        self._input_name = inputs[0].name
        self._session = session
        logger.info(
            "onnxruntime session ready: %s (providers %s)",
            self._model_path,
            ", ".join(session.get_providers()),
        )

    def ready(self) -> bool:
        return self._session is not None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise BackendDown("onnxruntime session is not loaded")
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise InternalError(f"backend expects uint8 N x H x W x 3, got {batch.dtype} {batch.shape}")
        (scores,) = session.run([OUTPUT_NAME], {self._input_name: np.ascontiguousarray(batch)})
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        self._session = None
