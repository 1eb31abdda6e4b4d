"""ONNX export of the serving graph and the check of its I/O contract.

The graph takes what the gateway and Triton send (raw pixels) and returns what they serve::

    image: uint8  [N, H, W, 3]  RGB, N/H/W dynamic
    score: float32 [N]          model.score(), clamped to [score_min, score_max]

Inside the graph: cast to float, /255, NHWC -> NCHW, then ``model.score`` (mean/std normalisation is
already part of the model). The dynamo exporter (``torch.export``) is tried first; where it fails,
or cannot honour the requested opset, the TorchScript-based exporter (``dynamo=False``) is used.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "OnnxContractError",
    "OnnxExportInfo",
    "UInt8ImageScorer",
    "check_onnx_contract",
    "export_onnx",
    "image_dims",
    "uint8_nhwc_to_float",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "score"
DEFAULT_OPSET = 18
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18  # lower opsets need a version conversion that fails on this graph (Pad)
# Bounds handed to torch.export for the dynamic axes. Sides below two backbone strides (64 px) make the
# last feature map 1x1, a case the tracer specialises on; the preprocessing never produces them.
MAX_BATCH = 4096
MIN_SIDE = 64
MAX_SIDE = 8192


class OnnxContractError(ValueError):
    """The exported ONNX file is invalid or does not match the serving I/O contract."""


@dataclass(frozen=True)
class OnnxExportInfo:
    path: Path
    exporter: str  # "dynamo" or "torchscript" (the fallback)
    opset: int


def uint8_nhwc_to_float(image: torch.Tensor) -> torch.Tensor:
    """The graphs' input step: uint8 NHWC RGB pixels -> float NCHW in [0, 1] (the IQAModel input)."""
    return image.to(torch.float32).div(255.0).permute(0, 3, 1, 2)


class UInt8ImageScorer(nn.Module):
    """uint8 NHWC RGB pixels -> float NCHW in [0, 1] -> ``model.score`` (N,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.score(uint8_nhwc_to_float(image))


def image_dims() -> tuple[Dim, Dim, Dim]:
    """The (batch, height, width) dynamic dimensions shared by the ONNX and torch.export programs."""
    return (
        Dim("batch", min=1, max=MAX_BATCH),
        Dim("height", min=MIN_SIDE, max=MAX_SIDE),
        Dim("width", min=MIN_SIDE, max=MAX_SIDE),
    )


def export_onnx(model: nn.Module, path: Path, opset: int = DEFAULT_OPSET) -> OnnxExportInfo:
    """Write the serving graph of ``model`` (an IQAModel in eval mode) to ``path`` and check it."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum of {MIN_OPSET}")
    wrapper = UInt8ImageScorer(model).eval()
    crop = model.preprocess_cfg.crop_size
    # Batch 2, not 1: an example of size 1 lets the tracer specialise the batch axis.
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, crop, crop, 3), dtype=torch.uint8, generator=generator)
    exporter = "dynamo"
    if opset < DYNAMO_MIN_OPSET:  # skip an attempt whose opset down-conversion is known to fail
        failure = f"the dynamo exporter implements opset >= {DYNAMO_MIN_OPSET} only"
    else:
        failure = _export_dynamo(wrapper, example, path, opset)
    if failure is not None:
        logger.warning("dynamo ONNX export unusable (%s); using the TorchScript-based exporter", failure)
        _export_torchscript_based(wrapper, example, path, opset)
        exporter = "torchscript"
    actual_opset = check_onnx_contract(path)
    logger.info("ONNX graph written with the %s exporter, opset %d: %s", exporter, actual_opset, path)
    return OnnxExportInfo(path=path, exporter=exporter, opset=actual_opset)


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str | None:
    """Export with torch.export; returns None on success, else why the result cannot be used."""
    batch, height, width = image_dims()
    try:
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: batch, 1: height, 2: width}},
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path))
    except Exception as exc:  # any exporter failure means: try the other exporter
        first_line = next(iter(str(exc).splitlines()), "")
        return f"{type(exc).__name__}: {first_line}"
    got = _default_opset(onnx.load(str(path), load_external_data=False))
    if got != opset:
        return f"it wrote opset {got} instead of the requested {opset}"
    return None


def _export_torchscript_based(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The caller already logged that this (deprecated) exporter is in use; its other notes are
        # harmless (strided slices are not constant-folded).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )


def _default_opset(model_proto: onnx.ModelProto) -> int:
    for entry in model_proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise OnnxContractError("the ONNX model imports no default-domain opset")


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """Shape of a graph input/output: an int for a fixed axis, the symbol (or '?') for a dynamic one."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_onnx_contract(path: Path) -> int:
    """``onnx.checker`` (full check) plus the serving I/O contract; returns the default-domain opset."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxContractError(f"onnx.checker rejected {path}: {exc}") from exc
    model_proto = onnx.load(str(path), load_external_data=False)
    graph = model_proto.graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise OnnxContractError(f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got "
                                f"{[i.name for i in inputs]} -> {[o.name for o in graph.output]}")
    image, score = inputs[0], graph.output[0]
    if image.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise OnnxContractError(f"input {INPUT_NAME!r} must be uint8")
    if score.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxContractError(f"output {OUTPUT_NAME!r} must be float32")
    in_dims, out_dims = _dims(image), _dims(score)
    if len(in_dims) != 4 or in_dims[3] != 3 or any(isinstance(d, int) for d in in_dims[:3]):
        raise OnnxContractError(f"input {INPUT_NAME!r} must be [N, H, W, 3] with dynamic N, H, W; "
                                f"got {in_dims}")
    if len(out_dims) != 1 or isinstance(out_dims[0], int):
        raise OnnxContractError(f"output {OUTPUT_NAME!r} must be [N] with a dynamic N; got {out_dims}")
    return _default_opset(model_proto)
