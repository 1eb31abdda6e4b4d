"""The gate config (training/configs/gate.yaml): loading with overrides, validation, attack selection.

* ``load_gate_config(path, overrides)``: the YAML plus dotted ``key=value`` overrides, validated
  (unknown keys, unregistered attack types and unknown threshold names are errors).
* ``validate_config(cfg)``: the evaluation engine's part of that check (keys and attack types).
* ``select_attacks(cfg, requested)``: the attack sections a run covers (``--attacks``).

What a config *measures* and what it only *judges* is told apart in ``training.gate.identity``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from training.config import set_dotted
from training.gate.attacks import Attack, attack_class, is_attack
from training.gate.defenses import validate_defenses
from training.gate.verdict import ATTACK_THRESHOLDS, CLEAN_THRESHOLDS, GRAD_NORM_THRESHOLDS
from training.utils import load_yaml_config, parse_overrides

__all__ = ["DEFAULT_GATE_CONFIG", "load_gate_config", "select_attacks", "validate_config"]

DEFAULT_GATE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gate.yaml"

_TOP_KEYS = {
    "num_images", "split", "seed", "batch_size", "fit_logistic", "surrogate_checkpoint",
    "scoring", "clean", "grad_norm", "sweep", "attacks", "defenses",
}
_SECTION_KEYS = {
    "scoring": {"attack_crops"},
    "grad_norm": {"enabled", "max_images", "h", "check_h", "median_max"},
    "sweep": {"enabled", "max_images", "eps", "iters"},
}
_ATTACK_KEYS = {
    "attack", "params", "thresholds", "required", "enabled", "max_images", "fit_images", "fit_split",
}
_FIT_SPLITS = ("train", "val")  # an attack fits itself on these, never on the evaluated split
_GRAD_NORM_SETTINGS = {"enabled", "max_images", "h", "check_h"}


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the engine's part of a gate config (unknown keys, attack names); returns it."""
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise ValueError(f"gate config: unknown key(s) {sorted(unknown)}")
    missing = {"num_images", "attacks", "scoring"} - set(cfg)
    if missing:
        raise ValueError(f"gate config: missing key(s) {sorted(missing)}")
    for section, keys in _SECTION_KEYS.items():
        extra = set(cfg.get(section) or {}) - keys
        if extra:
            raise ValueError(f"gate config: unknown key(s) {sorted(extra)} in {section!r}")
    if not isinstance(cfg["attacks"], dict):
        raise ValueError("gate config: 'attacks' must be a mapping of name -> attack section")
    for name, entry in cfg["attacks"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"gate config: attack {name!r} must be a mapping")
        extra = set(entry) - _ATTACK_KEYS
        if extra:
            raise ValueError(f"gate config: unknown key(s) {sorted(extra)} in attack {name!r}")
        if not is_attack(str(entry.get("attack", ""))):
            kind = entry.get("attack")
            raise ValueError(f"gate config: attack {name!r}: {kind!r} is not a registered attack")
        _check_fit_split(name, entry, str(cfg.get("split", "test")))
    validate_defenses(cfg)
    return cfg


def _check_fit_split(name: str, entry: Mapping[str, Any], split: str) -> None:
    """A fitted attack (one that overrides ``prepare``: the UAP) fits on train or val images
    (``fit_split``, default val), never on the split it is evaluated on."""
    if attack_class(str(entry["attack"])).prepare is Attack.prepare and "fit_split" not in entry:
        return
    fit_split = entry.get("fit_split", "val")
    if fit_split == split:
        raise ValueError(f"gate config: attack {name!r} would be fitted on the evaluated split "
                         f"{split!r}; set its fit_split to another split")
    if fit_split not in _FIT_SPLITS:
        raise ValueError(f"gate config: attack {name!r}: fit_split must be one of {_FIT_SPLITS}, "
                         f"got {fit_split!r}")


def _check_threshold_names(cfg: Mapping[str, Any]) -> None:
    unknown = set(cfg.get("clean") or {}) - set(CLEAN_THRESHOLDS)
    for name, entry in cfg["attacks"].items():
        unknown |= {f"{name}.{k}" for k in set(entry.get("thresholds") or {}) - set(ATTACK_THRESHOLDS)}
    unknown |= set(cfg.get("grad_norm") or {}) - set(GRAD_NORM_THRESHOLDS) - _GRAD_NORM_SETTINGS
    if unknown:
        raise ValueError(f"gate config: unknown threshold(s) {sorted(unknown)}")


def load_gate_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> dict[str, Any]:
    """The gate config at ``path`` (default training/configs/gate.yaml) with dotted overrides
    (``{"num_images": 20}`` or ``["num_images=20"]``), validated."""
    cfg = copy.deepcopy(load_yaml_config(path or DEFAULT_GATE_CONFIG))
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        cfg = set_dotted(cfg, key, value, new_keys=True)
    validate_config(cfg)
    _check_threshold_names(cfg)
    return cfg


def select_attacks(cfg: dict[str, Any], requested: list[str] | None) -> list[str]:
    """Attack sections to run: ``None`` / ``["all"]`` = every enabled section; otherwise each token is
    a section name (``pgd_2``) or an attack type (``pgd`` = every pgd section)."""
    entries = cfg["attacks"]
    enabled = [n for n, e in entries.items() if e.get("enabled", True)]
    if not requested or requested == ["all"]:
        return enabled
    chosen: list[str] = []
    for token in requested:
        hits = [n for n in entries if n == token or entries[n]["attack"] == token]
        if not hits:
            raise ValueError(f"--attacks: {token!r} is neither a section nor an attack type of the config")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
