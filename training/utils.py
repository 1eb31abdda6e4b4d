"""Setup helpers shared by train, evaluate and export: device, seeding, checkpoint I/O, config files.

A checkpoint is one dict (torchvision reference-script style)::

    {
      "model": state_dict, "model_name": str, "model_kwargs": dict, "preprocess_cfg": dict,
      "optimizer": state_dict, "scheduler": state_dict, "epoch": int, "args": dict (resolved config),
      "val_metrics": dict, "test_metrics": dict, "data_hash": str,
      "val_scores": list[float]   # predictions on the validation split: the drift reference,
      "gate": dict | None         # verdict written by the acceptance gate (later issue)
    }

Every reader goes through ``load_checkpoint`` / ``model_from_checkpoint`` with ``map_location="cpu"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from training.preprocessing import PreprocessConfig

__all__ = [
    "file_sha256",
    "freeze_batchnorm",
    "load_checkpoint",
    "load_yaml_config",
    "model_from_checkpoint",
    "parse_overrides",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU. Library code never hard-codes a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode (running statistics fixed, affine parameters still train).

    With frozen statistics f is a per-sample function, so NT's f(x + h·d) − f(x) compares the same
    function at two points instead of two different batch normalisations."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise ValueError(f"{path} is not a project checkpoint (expected keys 'model' and 'model_name')")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> nn.Module:
    """Rebuild the registered model a checkpoint was trained as and load its weights (eval mode)."""
    from training.models import create_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    kwargs = dict(ckpt.get("model_kwargs", {}))
    kwargs["backbone_weights"] = "none"  # the checkpoint holds every weight
    kwargs["preprocess_cfg"] = PreprocessConfig.from_dict(ckpt.get("preprocess_cfg", {}))
    model = create_model(ckpt["model_name"], **kwargs)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def file_sha256(paths: Iterable[str | Path]) -> str:
    """One SHA-256 over the bytes of several files (in the given order): a data hash."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` CLI overrides; values are parsed as YAML scalars (numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        # YAML 1.1 reads "1e-05" (no dot, as Python prints small floats) as a string.
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key.strip()] = parsed
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def dump_json(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
