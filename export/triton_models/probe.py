"""Triton Python model ``<name>_probe`` under ``configs/cpu.pbtxt``: the version's probe graph in ORT.

The same graph and contract as the onnxruntime-backend configs (``image`` uint8 [N, C, C, 3] ->
``clean_score`` / ``adv_score`` / ``grad_l1`` FP32 [N, 1], ``perturbation`` FP32 [N, C, C, 3]), for
Triton builds that ship only the Python backend (the PyPI wheel's tritonserver). Requests batched by
the dynamic batcher run as one ONNX Runtime call and are split back, one response per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"
OUTPUTS = ("clean_score", "adv_score", "perturbation", "grad_l1")


class TritonPythonModel:
    """ONNX Runtime session on the CPU, batched across requests."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        try:
            batch = np.ascontiguousarray(np.concatenate(arrays))
            outputs = self.session.run(list(OUTPUTS), {"image": batch})
        except Exception as exc:  # fail this batch's requests, never the model
            message = f"onnxruntime: {exc}".splitlines()[0]
            error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        clean, adv, perturbation, grad_l1 = (np.asarray(o, dtype=np.float32) for o in outputs)
        responses, start = [], 0
        for array in arrays:
            end = start + len(array)
            tensors = [
                pb_utils.Tensor("clean_score", clean[start:end].reshape(-1, 1)),
                pb_utils.Tensor("adv_score", adv[start:end].reshape(-1, 1)),
                pb_utils.Tensor("perturbation", perturbation[start:end]),
                pb_utils.Tensor("grad_l1", grad_l1[start:end].reshape(-1, 1)),
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
            start = end
        return responses
