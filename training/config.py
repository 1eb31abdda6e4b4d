"""Training configuration: built-in defaults <- YAML file (--config) <- ``key=value`` overrides.

Keys are dotted (``nt.lam=0``); an unknown key is an error, so a typo never silently does nothing.
The resolved configuration is saved beside the checkpoint and inside it (``ckpt["args"]``).
``get_dotted`` / ``set_dotted`` read and write a dotted key of any nested mapping (the gate config,
a report, a checkpoint's args).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULTS", "ConfigError", "flatten", "get_dotted", "merge_config", "set_dotted"]


class ConfigError(ValueError):
    """A configuration key or value the training script cannot use."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "output_dir": "runs/default",
    "data": {
        "manifest": "data/full/manifest.csv",
        "num_workers": 0,
        "cache_images": True,
        # Preprocessing; null = take it from the dataset's dataset.json (else PreprocessConfig defaults).
        "short_side": None,
        "max_long_side": None,
        "crop_size": None,
        "num_eval_crops": None,
    },
    "model": {
        "name": "effnet_lite0",
        "backbone_weights": "imagenet",  # imagenet | none | <local path>
        "head_hidden": None,
        "drop_rate": None,
    },
    "nt": {
        "lam": 1e-5,  # 0 = baseline (plain training); calibrated for [0, 100] scores (docs/TRAINING.md)
        "h": 0.01,  # finite-difference step in [0, 1] pixel units
        "mode": "fd",  # fd (Eq. 7) | exact (Eq. 5, double backprop)
        "reg_fraction": 1.0,  # share of each batch the regulariser is evaluated on
    },
    "rank": {
        # Pairwise ranking hinge between damage levels of one reference (training/losses.py);
        # 0 = regression only. margin / cross_gap in score points; cross_gap 0 = no cross-reference pairs.
        "weight": 0.0,
        "margin": 2.0,
        "group_size": 4,
        "cross_gap": 0.0,
    },
    "optim": {
        "loss": "l1",  # l1 | mse | smooth_l1 (the regression part of the IQA loss)
        "lr": 1e-4,
        "head_lr_mult": 10.0,
        "weight_decay": 1e-4,
        "epochs": 6,
        "batch_size": 16,
        "warmup_steps": 50,
        "grad_clip": 10.0,
    },
    "train": {
        "amp": True,  # CUDA only (float16 autocast + GradScaler); ignored on CPU
        "freeze_bn": True,
        "max_steps_per_epoch": None,
        "eval_batch_size": 8,
        "max_val_images": None,  # evenly spaced subset of the val split for per-epoch selection (speed)
        "log_every": 10,
        "resume": None,
        "init_from": None,  # checkpoint whose model weights start this run (fine-tuning; fresh optimizer)
        "gate": False,  # run the acceptance gate at the end (needs the attack suite)
    },
}


def merge_config(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys absent from ``base`` are rejected."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {dotted!r}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section, got {value!r}")
            out[key] = merge_config(out[key], value, prefix=f"{dotted}.")
        else:
            out[key] = value
    return out


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any, *, new_keys: bool = False) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``a.b.c = value``. The key must exist, unless ``new_keys``: then
    missing sections and keys are created (the caller validates the result) and ``value`` replaces
    what was there instead of being merged into it."""
    parts = dotted.split(".")
    if new_keys:
        out = copy.deepcopy(cfg)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node[parts[-1]] = value
        return out
    update: dict[str, Any] = {}
    node = update
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return merge_config(cfg, update)


def get_dotted(obj: Any, dotted: str) -> Any:
    """The value at ``a.b.c`` of nested mappings, or None where the path does not exist."""
    for part in dotted.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
