"""Fixtures for the gate / evaluate / replicate tests (CPU, seconds).

* ``tiny_checkpoint``: untrained effnet_lite0 checkpoints on the ci dataset's preprocessing (96×128
  canonical images, 64 px crops) whose BatchNorm statistics are estimated on real ci images and whose
  last layer is rescaled so the scores spread over ``spread`` points around 50: attacks move them,
  nothing saturates. ``spread=CALM`` is calm enough to pass the shipped attack thresholds.
* ``TINY_GATE`` / ``write_gate_config``: every attack type on a few images with tiny budgets, judged
  by the shipped thresholds of its section.
* ``exposure_manifest`` and ``fixture_models``: a generated dataset and hand-built NT-like and
  λ = 0-like models on which the *whole* shipped gate config is asserted to pass and to fail.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from training.data.dataset import ManifestDataset, dataset_preprocess_config
from training.data.manifests import ManifestRow, write_manifest
from training.gate.config import DEFAULT_GATE_CONFIG
from training.models import create_model
from training.preprocessing import PreprocessConfig
from training.utils import load_yaml_config, save_checkpoint

__all__ = [
    "CALM",
    "FIXTURE_PREPROCESS",
    "REPO_ROOT",
    "TINY_GATE",
    "PooledFeatureIQA",
    "ci_manifest",
    "exposure_manifest",
    "fixture_models",
    "shipped_thresholds",
    "tiny_checkpoint",
    "write_gate_config",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def ci_manifest() -> Path:
    """The offline ci dataset, built once per test session into a temporary folder (data/ is not in
    git, so a fresh clone has none)."""
    from training.build_dataset import main as build_dataset

    root = Path(tempfile.mkdtemp(prefix="iqa-ci-data-"))
    atexit.register(shutil.rmtree, root, True)
    if build_dataset(["--out", str(root / "ci"), "--size", "ci"]) != 0:
        raise RuntimeError("building the ci dataset failed")
    return root / "ci" / "manifest.csv"


def shipped_thresholds(section: str) -> dict[str, Any]:
    """The thresholds of an attack section of the shipped training/configs/gate.yaml."""
    return dict(load_yaml_config(DEFAULT_GATE_CONFIG)["attacks"][section]["thresholds"])


# Every attack type once, with budgets of a few steps / queries on a handful of images, judged by the
# *shipped* thresholds of its section (a calm tiny checkpoint, ``tiny_checkpoint(spread=CALM)``,
# passes them; one with the default spread fails FGSM's). The clean floors are off: random weights
# neither rank images nor spread their scores. tests/test_gate.py's fixture models are judged on the
# whole shipped config, clean floors included.
CALM = 1.5
TINY_GATE: dict[str, Any] = {
    "num_images": 6,
    "split": "test",
    "seed": 0,
    "batch_size": 4,
    "fit_logistic": False,
    "surrogate_checkpoint": None,
    "scoring": {"attack_crops": 1},
    "clean": {"srocc_min": None, "plcc_min": None, "krocc_min": None, "rmse_max": None,
              "score_std_min": None},
    "grad_norm": {"enabled": True, "max_images": 4, "h": None, "check_h": [1e-3], "median_max": None},
    "sweep": {"enabled": True, "max_images": 3, "eps": [2 / 255, 4 / 255], "iters": [1, 2]},
    "attacks": {
        "fgsm": {
            "attack": "fgsm",
            "required": True,
            "params": {"eps": 0.005, "alpha": 0.01},
            "thresholds": shipped_thresholds("fgsm"),
        },
        "pgd_2": {
            "attack": "pgd",
            "required": True,
            "params": {"eps": 2 / 255, "steps": 2},
            "thresholds": shipped_thresholds("pgd_2"),
        },
        "perceptual": {
            "attack": "perceptual",
            "required": True,
            "max_images": 3,
            "params": {"lambdas": [1e4], "steps": 2},
            "thresholds": shipped_thresholds("perceptual"),
        },
        "uap": {
            "attack": "uap",
            "required": True,
            "fit_split": "val",
            "fit_images": 4,
            "params": {"scale": 0.04, "size": 64, "epochs": 1, "batch_size": 4},
            "thresholds": shipped_thresholds("uap"),
        },
        "korhonen": {
            "attack": "korhonen",
            "required": True,
            "max_images": 3,
            "params": {"steps": 2},
            "thresholds": shipped_thresholds("korhonen"),
        },
        "square": {
            "attack": "square",
            "required": True,
            "max_images": 3,
            "params": {"n_queries": 6},
            "thresholds": shipped_thresholds("square"),
        },
    },
}


def write_gate_config(path: Path, **changes: Any) -> Path:
    """TINY_GATE with top-level ``changes`` as a YAML file."""
    cfg = copy.deepcopy(TINY_GATE)
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _ci_crops(n: int) -> torch.Tensor:
    pp = dataset_preprocess_config(ci_manifest())
    assert pp is not None
    ds = ManifestDataset(ci_manifest(), "train", pp, train=True, cache=False)
    idx = np.linspace(0, len(ds) - 1, n).astype(int)
    return torch.stack([ds[int(i)][0] for i in idx])


def tiny_checkpoint(path: Path, seed: int = 0, spread: float = 6.0) -> Path:
    """An untrained, calibrated effnet_lite0 checkpoint on the ci preprocessing (see the docstring):
    its scores on the calibration crops have standard deviation ``spread``."""
    pp = dataset_preprocess_config(ci_manifest())
    torch.manual_seed(seed)
    model = create_model("effnet_lite0", backbone_weights="none", preprocess_cfg=pp)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    crops = _ci_crops(32)
    model.train()
    with torch.no_grad():
        model(crops)
        model.eval()
        out = model(crops)
        head = model.head.fc2
        head.weight.mul_(spread / max(float(out.std()), 1e-6))
        head.bias.add_(50.0 - float(model(crops).mean()))
    ckpt = {
        "model": model.state_dict(),
        "model_name": "effnet_lite0",
        "model_kwargs": {},
        "preprocess_cfg": pp.to_dict() if pp else {},
        "epoch": 0,
        "data_hash": "0" * 64,
        "args": {"data": {"manifest": str(ci_manifest())}, "nt": {"lam": 0.0, "h": 0.01}, "seed": seed},
        "val_metrics": {},
        "test_metrics": {},
        "val_scores": [50.0] * 8,
        "gate": None,
    }
    save_checkpoint(ckpt, path)
    return path


# ------------------------------------------------------------ NT-like and λ = 0-like fixture models

FIXTURE_PREPROCESS = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64, num_eval_crops=5)


@functools.lru_cache(maxsize=1)
def exposure_manifest() -> Path:
    """A tiny dataset whose quality shows at low frequency: 20 textured scenes (96×128, the canonical
    size of ``FIXTURE_PREPROCESS``) darkened by a factor 1 − 0.7·t at 5 levels t, MOS = 95 − 80·t plus
    a little noise; scene-wise splits of 8 train, 4 val and 8 test scenes. Built once per session."""
    root = Path(tempfile.mkdtemp(prefix="iqa-exposure-data-"))
    atexit.register(shutil.rmtree, root, True)
    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(7)
    rows = []
    for scene in range(20):
        img = torch.zeros(1, 3, 96, 128)
        for cells, weight in ((3, 0.5), (6, 0.3), (16, 0.15), (48, 0.08)):
            coarse = torch.randn(1, 3, cells, cells * 4 // 3, generator=gen)
            img += weight * nn.functional.interpolate(coarse, size=(96, 128), mode="bicubic")
        img = (0.5 + 0.25 * img[0] / float(img.std())).clamp(0, 1)
        split = "train" if scene < 8 else "val" if scene < 12 else "test"
        for level, t in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
            arr = (img * (1 - 0.7 * t)).permute(1, 2, 0).numpy()
            path = root / f"s{scene:02d}_l{level}.png"
            Image.fromarray((arr * 255).round().astype(np.uint8)).save(path)
            mos = float(np.clip(95 - 80 * t + rng.normal(0, 2), 0, 100))
            rows.append(ManifestRow(path.name, mos, split, f"s{scene:02d}", "exposure", level))
    write_manifest(rows, root / "manifest.csv")
    return root / "manifest.csv"


class PooledFeatureIQA(nn.Module):
    """A hand-built IQA model whose input gradient is known by construction.

    Per crop, φ(x) = the channel means, and the spread and mean step of the luminance after 8×8
    average pooling: low-frequency statistics that one pixel moves by O(1/pixels). score = bias +
    coef · (φ − center) / scale + ⟨pattern, x⟩. Without a pattern ‖∇ₓf‖₁ is of the order of
    Σ|coef / scale| (NT-like); a dense ±a pattern adds a·3·crop² (λ = 0-like)."""

    def __init__(
        self,
        preprocess_cfg: PreprocessConfig,
        coef: torch.Tensor,
        bias: float,
        center: torch.Tensor,
        scale: torch.Tensor,
        pattern: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.preprocess_cfg = preprocess_cfg
        self.register_buffer("coef", coef.float())
        self.register_buffer("center", center.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", torch.tensor(float(bias)))
        self.register_buffer("pattern", pattern.float() if pattern is not None else torch.zeros(0))

    @staticmethod
    def features(x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(x, x.shape[-1] // 8)
        lum = pooled.mean(1)
        step = (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean((1, 2))
        step = step + (lum[:, 1:] - lum[:, :-1]).abs().mean((1, 2))
        return torch.cat([pooled.mean((2, 3)), lum.flatten(1).std(1, keepdim=True), step[:, None]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bias + ((self.features(x) - self.center) / self.scale) @ self.coef
        if self.pattern.numel():
            out = out + (x * self.pattern).flatten(1).sum(1)
        return out

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).clamp(self.preprocess_cfg.score_min, self.preprocess_cfg.score_max)


def _crops(data: Any, cfg: PreprocessConfig, num_crops: int | None = None) -> list[torch.Tensor]:
    """Per batch of an EvalData, its images' crops as the gate's scorer of ``num_crops`` takes them."""
    from training.gate.scoring import CropScorer

    scorer = CropScorer(nn.Identity(), cfg, num_eval_crops=num_crops)
    return [scorer.crops(x) for _, x in data.batches(16)]


def _fit(data: Any, cfg: PreprocessConfig, ridge: float = 1.0) -> dict[str, Any]:
    """A ridge fit of the served score (mean over the crops) of PooledFeatureIQA to the MOS of data."""
    positions = [p for p, _ in data.batches(16)]
    per_image = []
    for crops in _crops(data, cfg):  # the served score averages the per-crop (linear) scores
        per_image.append(PooledFeatureIQA.features(crops.flatten(0, 1)).unflatten(0, crops.shape[:2]).mean(1))
    feats = torch.cat(per_image)
    mos = torch.as_tensor(data.mos, dtype=torch.float64)[[p for pos in positions for p in pos]]
    center, scale = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = ((feats - center) / scale).double()
    gram = z.T @ z + ridge * torch.eye(z.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(gram, z.T @ (mos - mos.mean()))
    return {"preprocess_cfg": cfg, "coef": coef, "bias": float(mos.mean()), "center": center, "scale": scale}


def _pattern(shape: tuple[int, ...], amplitude: float, seed: int, off: torch.Tensor | None) -> torch.Tensor:
    """A dense random ±amplitude pattern, projected off the span of the crops ``off`` (K×3×c×c)."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randint(0, 2, shape, generator=gen) * 2 - 1).double() * amplitude
    if off is not None:
        q, _ = torch.linalg.qr(off.flatten(1).double().T)  # orthonormal basis of the crops' span
        w = w - (q @ (q.T @ w.flatten())).reshape(shape)
    return w.float()


def fixture_models(evaluated: Any, fragility: float = 0.5) -> dict[str, nn.Module]:
    """``nt``, ``lam0`` and ``surrogate`` fixture models for ``evaluated``: an EvalData of the test
    split of ``exposure_manifest()`` loaded with ``FIXTURE_PREPROCESS`` (its ``source`` gives the
    train and val splits).

    * ``nt``: ridge-fitted to the train split's MOS, so it ranks unseen images and spreads its scores
      over the range, with a small input gradient (an NT model).
    * ``lam0``: ``nt`` plus a dense ±``fragility`` pattern orthogonal to every crop the gate's scorers
      take of ``evaluated``: the same clean scores there, an input gradient ~8× larger (a λ = 0
      model, in the only respect the gate judges).
    * ``surrogate``: fitted to the val split, with a ±``fragility``/2 pattern of its own: the source
      of the transfer attacks."""
    cfg, source = FIXTURE_PREPROCESS, evaluated.source
    base = _fit(source.load("train", None, 0), cfg)
    crops = torch.cat([c.flatten(0, 1) for n in (None, 1) for c in _crops(evaluated, cfg, n)])
    shape = (3, cfg.crop_size, cfg.crop_size)
    surrogate = _fit(source.load("val", None, 0), cfg)
    return {
        "nt": PooledFeatureIQA(**base).eval(),
        "lam0": PooledFeatureIQA(**base, pattern=_pattern(shape, fragility, 0, crops)).eval(),
        "surrogate": PooledFeatureIQA(**surrogate, pattern=_pattern(shape, fragility / 2, 1, None)).eval(),
    }
