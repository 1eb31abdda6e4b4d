"""Triton Python model ``<name>_postprocess``: crop scores -> one score per image.

Inputs ``crop_scores`` (FP32 [N, 1], the scorer's output) and ``counts`` (int32 [B], crops per image,
from the preprocess step); output ``score`` (FP32 [B]). Each image's score is the mean of its crop
scores, clamped to ``[score_min, score_max]`` of the version's ``PreprocessConfig``: what the gateway
returns (``serving.pipeline.Scorer``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from training.preprocessing import PreprocessConfig

SPEC_FILE = "preprocess.json"


class TritonPythonModel:
    """Average the crops of each image, one response per request."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
        cfg = PreprocessConfig.from_dict(spec["preprocess"])
        self.low, self.high = float(cfg.score_min), float(cfg.score_max)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        scores = pb_utils.get_input_tensor_by_name(request, "crop_scores").as_numpy().reshape(-1)
        counts = pb_utils.get_input_tensor_by_name(request, "counts").as_numpy().reshape(-1)
        if counts.size == 0 or counts.min() < 1 or int(counts.sum()) != scores.size:
            message = f"{scores.size} crop scores do not split into images of {counts.tolist()} crops"
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            )
        bounds = np.cumsum(counts)[:-1]
        means = np.array([np.mean(part, dtype=np.float64) for part in np.split(scores, bounds)])
        if not np.all(np.isfinite(means)):
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("model returned a non-finite score", pb_utils.TritonError.INTERNAL)
            )
        out = np.clip(means, self.low, self.high).astype(np.float32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("score", out)])
