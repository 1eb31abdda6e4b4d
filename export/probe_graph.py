"""The online FGSM self-probe as an ONNX graph: the gate's ``fgsm_probe`` traced, so serving needs no torch.

Graph contract (``iqa_probe``; the input is the ``iqa`` graph's, at the model's crop size)::

    image:        uint8   [N, C, C, 3]  RGB crops (C = PreprocessConfig.crop_size), N dynamic
    clean_score:  float32 [N]           model.score(x), as the iqa graph serves it
    adv_score:    float32 [N]           model.score of the delivered FGSM image (8-bit, within ±ε)
    perturbation: float32 [N, C, C, 3]  x_adv − x in [0, 1] pixel units (NHWC, like the input)
    grad_l1:      float32 [N]           ‖∇ₓ L_mid‖₁ of each crop, the gradient the step follows
                                        (score points per unit of [0, 1] pixel value)

How (docs/PROBE.md): ``make_fx`` traces ``training.gate.attacks.fgsm.fgsm_probe`` with a symbolic
batch, recording the backward pass autograd runs; the decomposition table rewrites the backward ops
ONNX has no operator for: ``convolution_backward`` (input gradient only) becomes a ``conv2d`` with the
flipped, transposed weight for stride 1 and a ``conv_transpose2d`` with the same weight otherwise, and
the eval-mode ``native_batch_norm_backward`` becomes one multiplication by weight/√(var + eps). Before
tracing, ``AdaptiveAvgPool2d(1)`` is replaced by the equal mean over H, W (its channels-last
implementation traces to an ``as_strided_`` whose backward ONNX cannot express). The traced graph
goes through ``torch.onnx.export(dynamo=True)`` with only the batch axis dynamic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from export.onnx_export import DEFAULT_OPSET, INPUT_NAME, MAX_BATCH, uint8_nhwc_to_float
from export.probe_rewrites import DECOMPOSITIONS, trace_friendly
from training.gate.attacks.fgsm import FGSM_ALPHA, FGSM_EPS, fgsm_probe

__all__ = [
    "OUTPUT_NAMES",
    "PROBE_PARITY_TOLERANCE",
    "ProbeContractError",
    "ProbeParity",
    "check_probe_contract",
    "check_probe_parity",
    "export_probe_onnx",
    "probe_in_torch",
    "trace_probe",
]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("clean_score", "adv_score", "perturbation", "grad_l1")
PROBE_PARITY_TOLERANCE = 1e-3  # score units on 0..100, ONNX Runtime vs the gate's FGSM in torch


class ProbeContractError(ValueError):
    """The probe graph is invalid, breaks its I/O contract, or disagrees with the gate's FGSM."""


class _ProbeFunction(nn.Module):
    """uint8 NHWC crops -> (clean score, FGSM score, NHWC perturbation, gradient ℓ1 norm), as
    ``fgsm_probe`` computes them."""

    def __init__(self, model: nn.Module, eps: float, alpha: float, objective: str) -> None:
        super().__init__()
        self.model = model
        self.eps, self.alpha, self.objective = eps, alpha, objective

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = uint8_nhwc_to_float(image)
        clean, adv, delta, grad_l1 = fgsm_probe(self.model, x, self.eps, self.alpha, self.objective)
        return clean, adv, delta.permute(0, 2, 3, 1), grad_l1


class _Traced(nn.Module):
    def __init__(self, graph: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        clean, adv, delta, grad_l1 = self.graph_module(image)
        return clean, adv, delta, grad_l1


def probe_in_torch(
    model: nn.Module,
    image: torch.Tensor,
    eps: float = FGSM_EPS,
    alpha: float = FGSM_ALPHA,
    objective: str = "mid",
) -> tuple[torch.Tensor, ...]:
    """The probe's outputs computed eagerly in torch (the reference of the parity check)."""
    with torch.no_grad():
        return _ProbeFunction(model.eval(), eps, alpha, objective)(image)


def trace_probe(
    model: nn.Module, crop_size: int, eps: float = FGSM_EPS, alpha: float = FGSM_ALPHA, objective: str = "mid"
) -> torch.fx.GraphModule:
    """``make_fx`` graph (forward, input-gradient backward, forward) of the probe with a symbolic batch."""
    probe = _ProbeFunction(trace_friendly(model), eps, alpha, objective)
    example = torch.zeros((2, crop_size, crop_size, 3), dtype=torch.uint8)  # 2: no 0/1 specialisation
    return make_fx(
        probe, decomposition_table=DECOMPOSITIONS, tracing_mode="symbolic", _allow_non_fake_inputs=True
    )(example)


def export_probe_onnx(
    model: nn.Module,
    path: Path,
    eps: float = FGSM_EPS,
    alpha: float = FGSM_ALPHA,
    objective: str = "mid",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Trace the probe of ``model`` (an IQAModel) and write it as ONNX to ``path`` (checked)."""
    crop = int(model.preprocess_cfg.crop_size)
    graph = trace_probe(model, crop, eps, alpha, objective)
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, crop, crop, 3), dtype=torch.uint8, generator=generator)
    program = torch.onnx.export(
        _Traced(graph).eval(),
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"image": {0: Dim("batch", min=1, max=MAX_BATCH)}},
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))
    check_probe_contract(path, crop)
    return path


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def check_probe_contract(path: Path, crop_size: int) -> None:
    """``onnx.checker`` plus the probe's I/O contract (names, dtypes, a dynamic batch, static crops)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ProbeContractError(f"onnx.checker rejected {path}: {exc}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT_NAME] or tuple(o.name for o in graph.output) != OUTPUT_NAMES:
        raise ProbeContractError(
            f"expected {INPUT_NAME!r} -> {OUTPUT_NAMES}, got {[i.name for i in inputs]} -> "
            f"{[o.name for o in graph.output]}"
        )
    image = inputs[0]
    if image.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ProbeContractError(f"input {INPUT_NAME!r} must be uint8")
    in_dims = _dims(image)
    if len(in_dims) != 4 or isinstance(in_dims[0], int) or in_dims[1:] != [crop_size, crop_size, 3]:
        raise ProbeContractError(
            f"input must be [N, {crop_size}, {crop_size}, 3] with a dynamic N, got {in_dims}"
        )
    expected = {"clean_score": 1, "adv_score": 1, "perturbation": 4, "grad_l1": 1}
    for out in graph.output:
        dims = _dims(out)
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != expected[out.name]:
            raise ProbeContractError(f"output {out.name!r} must be float32 of rank {expected[out.name]}")
        if isinstance(dims[0], int):
            raise ProbeContractError(f"output {out.name!r} must have a dynamic batch axis: {dims}")


@dataclass(frozen=True)
class ProbeParity:
    """ONNX Runtime vs torch over the parity crops: the largest |difference| of the clean and the
    adversarial crop scores, of the image scores (means of ``crops_per_image`` consecutive crops, what
    the gateway serves), the share of perturbation pixels whose FGSM sign differs, and the largest
    relative difference of the gradient's ℓ1 norms."""

    n_crops: int
    clean_max_abs_diff: float
    adv_max_abs_diff: float
    adv_image_max_abs_diff: float
    perturbation_mismatch: float
    grad_l1_max_rel_diff: float = 0.0
    tolerance: float = PROBE_PARITY_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_crops": self.n_crops,
            "clean_max_abs_diff": self.clean_max_abs_diff,
            "adv_max_abs_diff": self.adv_max_abs_diff,
            "adv_image_max_abs_diff": self.adv_image_max_abs_diff,
            "perturbation_mismatch": self.perturbation_mismatch,
            "grad_l1_max_rel_diff": self.grad_l1_max_rel_diff,
            "tolerance": self.tolerance,
        }


# A gradient component within float error of zero has no stable sign: torch itself flips ~1e-4 of the
# pixels between 1 and 2 threads (docs/PROBE.md), which moves one crop's FGSM score by up to ~1e-3.
MAX_PERTURBATION_MISMATCH = 1e-3
MAX_GRAD_L1_REL_DIFF = 1e-3  # float32 sums over C·C·3 terms in a different order


def check_probe_parity(
    model: nn.Module,
    path: Path,
    crops: np.ndarray,
    eps: float = FGSM_EPS,
    alpha: float = FGSM_ALPHA,
    objective: str = "mid",
    tolerance: float = PROBE_PARITY_TOLERANCE,
    crops_per_image: int = 1,
) -> ProbeParity:
    """Run the ONNX probe in ONNX Runtime and the gate's FGSM in torch on the same uint8 crops; raise
    ProbeContractError if a clean crop score or an image's adversarial score (mean of
    ``crops_per_image`` crops) differs by more than ``tolerance``, if more than 0.1 % of the
    perturbation's pixels differ, or if a crop's gradient ℓ1 norm differs by more than 0.1 %."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(crops)})
    clean_ort, adv_ort, delta_ort, grad_ort = outputs
    clean_pt, adv_pt, delta_pt, grad_pt = (
        t.numpy() for t in probe_in_torch(model, torch.from_numpy(crops), eps, alpha, objective)
    )
    adv_diff = np.abs(adv_ort.astype(np.float64) - adv_pt)
    crops_per_image = max(1, min(crops_per_image, len(crops)))
    per_image = len(crops) // crops_per_image * crops_per_image
    image_diff = np.abs(
        adv_ort[:per_image].reshape(-1, crops_per_image).mean(1, dtype=np.float64)
        - adv_pt[:per_image].reshape(-1, crops_per_image).mean(1, dtype=np.float64)
    )
    report = ProbeParity(
        n_crops=len(crops),
        clean_max_abs_diff=float(np.abs(clean_ort - clean_pt).max()),
        adv_max_abs_diff=float(adv_diff.max()),
        adv_image_max_abs_diff=float(image_diff.max()),
        perturbation_mismatch=float((np.round(delta_ort * 255) != np.round(delta_pt * 255)).mean()),
        grad_l1_max_rel_diff=float(
            (np.abs(grad_ort.astype(np.float64) - grad_pt) / np.maximum(np.abs(grad_pt), 1e-12)).max()
        ),
        tolerance=tolerance,
    )
    if (
        max(report.clean_max_abs_diff, report.adv_image_max_abs_diff) > tolerance
        or report.perturbation_mismatch > MAX_PERTURBATION_MISMATCH
        or report.grad_l1_max_rel_diff > MAX_GRAD_L1_REL_DIFF
    ):
        raise ProbeContractError(f"probe graph disagrees with the gate's FGSM in torch: {report.to_dict()}")
    return report
