"""A tiny IQA model with every layer kind of the shipped EfficientNet-Lite (conv + batch norm + ReLU6,
depthwise stride-1 and stride-2 convs, a 1x1 projection, a residual add, AdaptiveAvgPool2d head), so the
probe graph's decompositions are all exercised in seconds; and a model repository with its scorer and
its probe (``iqa/1``, ``iqa_probe/1``) for real-gateway tests."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.models.base import IQAModel
from training.preprocessing import PreprocessConfig

__all__ = ["PROBE_PREPROCESS", "TinyEffNetIQA", "random_crops", "tiny_effnet", "write_probe_repository"]

PROBE_PREPROCESS = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64, num_eval_crops=5)


def _bn(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.copy_(0.2 * torch.randn(channels, generator=gen))
    bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen))
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        bn.bias.copy_(0.1 * torch.randn(channels, generator=gen))
    return bn


class TinyEffNetIQA(IQAModel):
    """stem conv s2 + BN + ReLU6 -> depthwise s1 (residual) -> depthwise s2 -> 1x1 -> pool -> linear."""

    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__(PROBE_PREPROCESS)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), _bn(width, gen), nn.ReLU6())
        self.dw1 = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False), _bn(width, gen),
                                 nn.ReLU6())
        self.dw2 = nn.Sequential(nn.Conv2d(width, width, 5, 2, 2, groups=width, bias=False), _bn(width, gen),
                                 nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), _bn(2 * width, gen))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, 1)
        nn.init.constant_(self.head.bias, 50.0)
        nn.init.normal_(self.head.weight, std=20.0, generator=gen)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.dw1(x)
        return self.project(self.dw2(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(feats).flatten(1)).squeeze(1)


def tiny_effnet(seed: int = 0) -> TinyEffNetIQA:
    return TinyEffNetIQA(seed).eval()


def random_crops(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """n uint8 size×size×3 crops: smooth colour fields plus noise (not constant, so gradients differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, (n, 1, 1, 3))
    ramp = np.linspace(-30, 30, size)[None, :, None, None] * rng.uniform(-1, 1, (n, 1, 1, 3))
    noise = rng.normal(0, 12, (n, size, size, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


_BUILT: dict[int, Path] = {}  # seed -> a repository built once per test process (export takes ~20 s)


def write_probe_repository(
    root: Path, threshold: float = 1.0, seed: int = 0, linearity_threshold: float | None = None
) -> Path:
    """``root/iqa/1`` (the scorer graph of ``tiny_effnet(seed)``) and ``root/iqa_probe/1`` (its probe,
    through export/probe_export.py with ``threshold`` and ``linearity_threshold`` recorded as the
    calibrated ones; None: no linearity threshold, so linearity never flags).

    The export runs once per seed and test process; later calls copy it and rewrite only the recorded
    threshold, so several test modules share one build."""
    if seed not in _BUILT:
        build_dir = Path(tempfile.mkdtemp(prefix=f"probe_repository_{seed}_"))
        atexit.register(shutil.rmtree, build_dir, True)
        _BUILT[seed] = _build(build_dir, seed)
    shutil.copytree(_BUILT[seed], root, dirs_exist_ok=True)
    meta_path = root / "iqa_probe" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["threshold"] = {"abs_delta": threshold, "linearity": linearity_threshold, "note": "test fixture"}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return root


def _build(root: Path, seed: int) -> Path:
    from export.onnx_export import export_onnx
    from export.probe_export import write_probe_version

    model = tiny_effnet(seed)
    version = root / "iqa" / "1"
    version.mkdir(parents=True)
    export_onnx(model, version / "model.onnx")
    meta = {"name": "iqa", "version": 1, "model_name": "tiny_effnet"}
    meta["preprocess"] = PROBE_PREPROCESS.to_dict()
    (version / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    write_probe_version(root, "iqa", 1, model, crops=random_crops(5, seed=99),
                        threshold={"abs_delta": 1.0, "note": "test fixture"})
    return root
