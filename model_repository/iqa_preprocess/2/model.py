"""Triton Python model ``<name>_preprocess``: encoded image bytes -> evaluation crops.

Input ``image_bytes`` (TYPE_STRING, [B]): JPEG, PNG or WebP files, the bytes a client would POST to
the gateway's ``/score``. Outputs ``crops`` (uint8 [sum of crops, crop, crop, 3]) and ``counts``
(int32 [B], crops per image) for the scorer and the postprocess step of the ``<name>_image`` ensemble.

Decoding and preprocessing are ``training.preprocessing.preprocess_bytes`` with the
``PreprocessConfig`` of the scorer version this folder belongs to (``preprocess.json``, written by
export from that version's ``metadata.json``), so the crops are the gateway's crops. A request with a
file that cannot be decoded gets an INVALID_ARG error on its own response; the other requests of the
batch, and the model, are unaffected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from training.preprocessing import ImageDecodeError, ImageTooLargeError, PreprocessConfig, preprocess_bytes

SPEC_FILE = "preprocess.json"


class TritonPythonModel:
    """Decode + preprocess, one response per request."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
        cfg = PreprocessConfig.from_dict(spec["preprocess"])
        params = json.loads(args["model_config"]).get("parameters", {})
        limit = int(params.get("max_pixels", {}).get("string_value", "0") or 0)
        if limit > 0:  # the gateway's IQA_MAX_PIXELS: the tighter of it and the model's own cap
            cfg = dataclasses.replace(cfg, max_pixels=min(cfg.max_pixels, limit))
        self.cfg = cfg
        self.scorer = spec.get("scorer", {})
        pb_utils.Logger.log_info(
            f"preprocess for {self.scorer.get('name')} version {self.scorer.get('version')}: "
            f"sizing {cfg.sizing}, {cfg.num_eval_crops} crops of {cfg.crop_size} px"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        blobs = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
        if blobs.size == 0:
            return _error("no image in the request", pb_utils.TritonError.INVALID_ARG)
        crops: list[np.ndarray] = []
        for i, blob in enumerate(blobs):
            data = blob if isinstance(blob, bytes) else bytes(blob)
            try:
                crops.append(preprocess_bytes(data, self.cfg))
            except (ImageDecodeError, ImageTooLargeError) as exc:
                return _error(f"image {i} of {blobs.size}: {exc}", pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # an unforeseen decoder failure stays on this request
                return _error(
                    f"image {i} of {blobs.size}: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
                )
        counts = np.array([len(c) for c in crops], dtype=np.int32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("crops", np.ascontiguousarray(np.concatenate(crops, axis=0))),
                pb_utils.Tensor("counts", counts),
            ]
        )

    def finalize(self) -> None:
        pb_utils.Logger.log_info("preprocess finalized")


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
