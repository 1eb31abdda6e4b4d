"""Triton Python model ``<name>`` under ``configs/cpu.pbtxt``: this version's ``model.onnx`` in ONNX Runtime.

The same graph and contract as the onnxruntime-backend configs (``image`` uint8 [N, H, W, 3] ->
``score`` FP32 [N, 1]), for Triton builds that ship only the Python backend (the PyPI wheel's
tritonserver). The dynamic batcher hands ``execute`` several requests; requests of one crop shape run
as one ONNX Runtime call and the scores are split back, one response per request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"


class TritonPythonModel:
    """ONNX Runtime session on the CPU, batched across requests."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        params = json.loads(args["model_config"]).get("parameters", {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", {}).get("string_value", "0") or 0)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape[1:], []).append(i)
        for members in groups.values():
            batch = np.concatenate([arrays[i] for i in members], axis=0)
            try:
                (scores,) = self.session.run(["score"], {self.input_name: np.ascontiguousarray(batch)})
            except Exception as exc:  # e.g. a crop too small for the network: fail these requests only
                error = pb_utils.TritonError(
                    f"onnxruntime: {exc}".splitlines()[0], pb_utils.TritonError.INVALID_ARG
                )
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            scores = np.asarray(scores, dtype=np.float32).reshape(-1, 1)
            start = 0
            for i in members:
                n = len(arrays[i])
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor("score", scores[start : start + n])]
                )
                start += n
        return responses
