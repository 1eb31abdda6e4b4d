"""Rewrites that keep the probe's traced graph exact and cheap in ONNX Runtime (export/probe_graph.py).

``trace_friendly(model)`` returns a frozen eval-mode copy of an IQA model that computes the same
function and input gradient with a backward ONNX can express and ONNX Runtime runs fast:

* ``AdaptiveAvgPool2d(1)`` becomes the equal mean over H, W (its channels-last implementation traces
  to an ``as_strided_`` whose backward ONNX cannot express);
* batch norms are folded into the convolutions that feed them (kept only if the copy still agrees);
* ReLU6 / hardtanh masks its gradient from its saved *output*, so ONNX Runtime fuses the forward's
  Conv + Clip and does not keep the pre-activation alive for the backward;
* a TF-"SAME" convolution with symmetric padding (EfficientNet-Lite's stride-1 ``ZeroPad2d`` + conv)
  takes the padding into the convolution: its backward is then one flipped-kernel convolution of
  the input's size, with no Pad that crops the padded gradient (kept only if the copy still agrees).

``DECOMPOSITIONS`` rewrites the backward ops ONNX has no operator for, input gradients only:
``convolution_backward`` becomes a ``conv2d`` with the flipped, per-group transposed kernel for stride
1 (ONNX Runtime's Conv kernels are much faster than ConvTranspose) and a ``conv_transpose2d`` with the
same weight otherwise; the eval-mode ``native_batch_norm_backward`` becomes one multiplication.

Tried and not kept (docs/PROBE.md, "Cost"): masks as clipped 1×1 depthwise convolutions (to stay in
ONNX Runtime's NCHWc layout) were slower than the comparisons; stride-2 backwards as four phase
convolutions lost more to the interleaving transpose than ConvTranspose costs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["DECOMPOSITIONS", "trace_friendly"]

logger = logging.getLogger(__name__)
_aten = torch.ops.aten


class _GlobalMeanPool(nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a plain mean over H, W (the same values; a traceable backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class _HardtanhFromOutput(torch.autograd.Function):
    """hardtanh whose backward masks the gradient with the saved *output* y: (lo < y < hi) equals
    hardtanh_backward's (lo < x < hi) exactly, and leaves the pre-activation x unused, so ONNX Runtime
    fuses the forward's Conv + Clip and does not keep x alive for the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        y = F.hardtanh(x, lo, hi)
        ctx.save_for_backward(y)
        ctx.bounds = (lo, hi)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (y,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        return grad * ((y > lo) & (y < hi)).to(grad.dtype), None, None  # Where is slow in ORT


class _Hardtanh(nn.Module):
    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HardtanhFromOutput.apply(x, self.lo, self.hi)


def _fold_batch_norms(model: nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d registered right after the Conv2d that feeds it into that
    conv's weight and bias (in place). Which conv feeds which BN is read from registration order, so
    the caller checks the folded model against the original numerically."""
    for module in list(model.modules()):
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
                continue
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            conv.weight, conv.bias = weight, bias
            setattr(module, bn_name, nn.Identity())


def _fold_padding(conv: nn.Module) -> nn.Module:
    """A conv behind symmetric TF-"SAME" zero padding (``static_padding`` ZeroPad2d, no own padding) as
    an equal ``nn.Conv2d`` with that padding; any other module unchanged."""
    pad = getattr(conv, "static_padding", None)
    if not (isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)) or tuple(conv.padding) != (0, 0):
        return conv
    left, right, top, bottom = (int(p) for p in pad.padding)
    if left != right or top != bottom:
        return conv  # asymmetric (stride 2): the backward keeps its crop
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, (top, left), conv.dilation,
        conv.groups, bias=conv.bias is not None,
    )  # fmt: skip
    folded.weight, folded.bias = conv.weight, conv.bias
    return folded


def _agrees(a: nn.Module, b: nn.Module, crop: int) -> bool:
    x = torch.rand((2, 3, crop, crop), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max()) <= 1e-4


def trace_friendly(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` that computes the same function with a cheaper backward (the
    module docstring): batch-norm folding and padding folding are each kept only if the copy still
    agrees with ``model`` within 1e-4 score units."""
    clone = copy.deepcopy(model).eval()
    for module in list(clone.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1), [1, 1]):
                setattr(module, name, _GlobalMeanPool())
            elif isinstance(child, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
                setattr(module, name, _Hardtanh(float(child.min_val), float(child.max_val)))
    crop = int(getattr(getattr(model, "preprocess_cfg", None), "crop_size", 64))
    folded = copy.deepcopy(clone)
    _fold_batch_norms(folded)
    if _agrees(folded, clone, crop):
        clone = folded
    else:
        logger.warning("batch norms not folded: the folded copy disagrees with the model")
    padded = copy.deepcopy(clone)
    for module in list(padded.modules()):
        for name, child in list(module.named_children()):
            if (new := _fold_padding(child)) is not child:
                setattr(module, name, new)
    if _agrees(padded, clone, crop):
        clone = padded
    else:
        logger.warning("convolution padding not folded: the folded copy disagrees with the model")
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


def _conv_input_grad(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """``aten.convolution_backward`` for a 2-D convolution, input gradient only."""
    if transposed or weight.ndim != 4:
        raise NotImplementedError("the probe graph supports 2-D, non-transposed convolutions")
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if list(stride) == [1, 1]:
        # Stride 1: the transposed convolution is a convolution with the flipped kernel whose in/out
        # channels are swapped per group; ONNX Runtime's Conv kernels are much faster than ConvTranspose.
        cout, cin_g = int(weight.shape[0]), int(weight.shape[1])
        flipped = (
            weight.reshape(groups, cout // groups, cin_g, kh, kw)
            .transpose(1, 2)
            .reshape(groups * cin_g, cout // groups, kh, kw)
            .flip(2, 3)
        )
        pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
        return F.conv2d(grad_out, flipped, None, 1, pad, list(dilation), groups), None, None
    # Output padding that restores the input size: in = (o − 1)·s − 2p + d·(k − 1) + 1 + op.
    extra = [
        int(inp.shape[2 + i])
        - ((int(grad_out.shape[2 + i]) - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k - 1) + 1)
        for i, k in enumerate((kh, kw))
    ]
    grad_in = F.conv_transpose2d(
        grad_out, weight, None, list(stride), list(padding), extra, groups, list(dilation)
    )
    return grad_in, None, None


def _batch_norm_input_grad(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    save_mean: torch.Tensor | None,
    save_invstd: torch.Tensor | None,
    train: bool,
    eps: float,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, None, None]:
    """Eval-mode ``native_batch_norm_backward``, input gradient only: grad · weight / √(var + eps)."""
    if train or running_var is None:
        raise NotImplementedError("the probe graph needs batch norm in eval mode (running statistics)")
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shape = [1, -1] + [1] * (grad_out.ndim - 2)
    return grad_out * scale.reshape(shape), None, None


DECOMPOSITIONS = {
    _aten.convolution_backward.default: _conv_input_grad,
    _aten.native_batch_norm_backward.default: _batch_norm_input_grad,
}


