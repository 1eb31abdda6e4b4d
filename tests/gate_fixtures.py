"""Small checkpoints and a cheap gate config for the gate / evaluate / replicate tests (CPU, seconds).

The checkpoints are untrained effnet_lite0 models on the ci dataset's preprocessing (96×128 canonical
images, 64 px crops) whose BatchNorm statistics are estimated on real ci images and whose last layer
is rescaled so the scores spread over a few points around 50: attacks move them, nothing saturates.
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
from torch import nn

from training.data.dataset import ManifestDataset, dataset_preprocess_config
from training.models import create_model
from training.utils import save_checkpoint

__all__ = ["REPO_ROOT", "TINY_GATE", "ci_manifest", "tiny_checkpoint", "write_gate_config"]

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


_LOOSE = {"rmse_clean_vs_adv_max": 1e6, "r_min": -1e6, "min_strength": 0.0}

# Every attack type once, with budgets of a few steps / queries on a handful of images.
TINY_GATE: dict[str, Any] = {
    "num_images": 6,
    "split": "test",
    "seed": 0,
    "batch_size": 4,
    "fit_logistic": False,
    "surrogate_checkpoint": None,
    "scoring": {"attack_crops": 1},
    "clean": {"srocc_min": -1.0, "plcc_min": -1.0, "krocc_min": None, "rmse_max": None},
    "grad_norm": {"enabled": True, "max_images": 4, "h": None, "check_h": [1e-3], "median_max": None},
    "sweep": {"enabled": True, "max_images": 3, "eps": [2 / 255, 4 / 255], "iters": [1, 2]},
    "attacks": {
        "fgsm": {
            "attack": "fgsm",
            "required": True,
            "params": {"eps": 0.005, "alpha": 0.01},
            "thresholds": dict(_LOOSE),
        },
        "pgd_2": {
            "attack": "pgd",
            "required": True,
            "params": {"eps": 2 / 255, "steps": 2},
            "thresholds": dict(_LOOSE),
        },
        "perceptual": {
            "attack": "perceptual",
            "required": True,
            "max_images": 3,
            "params": {"lambdas": [1e4], "steps": 2},
            "thresholds": dict(_LOOSE),
        },
        "uap": {
            "attack": "uap",
            "required": True,
            "fit_images": 4,
            "params": {"scale": 0.04, "size": 64, "epochs": 1, "batch_size": 4},
            "thresholds": dict(_LOOSE),
        },
        "korhonen": {
            "attack": "korhonen",
            "required": True,
            "max_images": 3,
            "params": {"steps": 2},
            "thresholds": dict(_LOOSE),
        },
        "square": {
            "attack": "square",
            "required": True,
            "max_images": 3,
            "params": {"n_queries": 6},
            "thresholds": dict(_LOOSE),
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


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained, calibrated effnet_lite0 checkpoint on the ci preprocessing (see the docstring)."""
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
        head.weight.mul_(6.0 / max(float(out.std()), 1e-6))
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
