"""The acceptance gate: thresholds over the evaluation report, the verdict written into a checkpoint,
and its check at export time.

* ``load_gate_config(path, overrides)``: training/configs/gate.yaml plus dotted ``key=value``
  overrides, validated (unknown keys and unknown threshold names are errors).
* ``check_report(report, cfg)``: one row per threshold (section, metric, value, op, threshold,
  passed); a required attack that did not run, or any attack that raised, is a failing row.
* ``run_gate(...)``: evaluate, judge, write report.json / report.md / plots; returns the verdict dict
  ``{"passed", "failures", "reason", "report_sha256", "report_dir", "config_sha256",
  "weights_sha256", "time", "seconds"}`` that goes into ``ckpt["gate"]``.
* ``gate_checkpoint(model, ckpt, test_loader, report_dir)``: the entry point of training/train.py.
* ``verify_gate(ckpt) -> (ok, reason)``: for the export step; ok only for a passed verdict.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from training.attacks.base import model_device
from training.data.dataset import ManifestDataset
from training.evaluation import (
    EvalData,
    add_derived_metrics,
    config_sha256,
    evaluate_model,
    load_eval_data,
    measurement_sha256,
    select_attacks,
    validate_config,
    weights_sha256,
)
from training.report import load_report, write_report
from training.utils import load_checkpoint, load_yaml_config, model_from_checkpoint, parse_overrides

__all__ = [
    "ATTACK_THRESHOLDS",
    "CLEAN_THRESHOLDS",
    "DEFAULT_GATE_CONFIG",
    "GRAD_NORM_THRESHOLDS",
    "check_report",
    "checkpoint_meta",
    "format_row",
    "gate_checkpoint",
    "load_gate_config",
    "load_surrogate",
    "nt_step",
    "run_gate",
    "verify_gate",
]

log = logging.getLogger(__name__)

DEFAULT_GATE_CONFIG = Path(__file__).resolve().parent / "configs" / "gate.yaml"

# threshold name -> (path of the value inside the section's result, comparison the value must pass)
ATTACK_THRESHOLDS: dict[str, tuple[str, str]] = {
    "rmse_clean_vs_adv_max": ("metrics.clean_vs_adv.rmse", "<="),
    "srocc_clean_vs_adv_min": ("metrics.clean_vs_adv.srocc", ">="),
    "rmse_mos_vs_adv_max": ("metrics.mos_vs_adv.rmse", "<="),
    "srocc_mos_vs_adv_min": ("metrics.mos_vs_adv.srocc", ">="),
    "r_min": ("metrics.r", ">="),
    "min_strength": ("metrics.mean_abs_delta", ">="),
    "rel_rmse_clean_vs_adv_max": ("metrics.rel_rmse", "<="),
}
CLEAN_THRESHOLDS: dict[str, tuple[str, str]] = {
    "srocc_min": ("served.srocc", ">="),
    "plcc_min": ("served.plcc", ">="),
    "krocc_min": ("served.krocc", ">="),
    "rmse_max": ("served.rmse", "<="),
    "score_std_min": ("served.score_std", ">="),
}
GRAD_NORM_THRESHOLDS: dict[str, tuple[str, str]] = {"median_max": ("median_exact", "<=")}
_GRAD_NORM_SETTINGS = {"enabled", "max_images", "h", "check_h"}


# ----------------------------------------------------------------------------------------- config


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"gate override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


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
        _set_dotted(cfg, key, value)
    validate_config(cfg)
    _check_threshold_names(cfg)
    return cfg


# ---------------------------------------------------------------------------------------- verdict


def _lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _row(section: str, metric: str, value: Any, op: str, threshold: Any) -> dict[str, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        ok = math.isfinite(number) and (number <= threshold if op == "<=" else number >= threshold)
    else:
        ok = False  # missing or NaN metric: the gate cannot vouch for it
    return {
        "section": section,
        "metric": metric,
        "value": value,
        "op": op,
        "threshold": threshold,
        "passed": bool(ok),
    }


def _threshold_rows(
    section: str, result: Any, thresholds: Mapping[str, Any], table: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    rows = []
    for key, (path, op) in table.items():
        threshold = thresholds.get(key)
        if threshold is None:
            continue
        metric = path.removeprefix("metrics.").removeprefix("served.")
        rows.append(_row(section, metric, _lookup(result, path), op, float(threshold)))
    return rows


def check_report(report: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Judge an evaluation report against the thresholds of ``cfg``: ``{"passed", "rows", "failures"}``."""
    rows = _threshold_rows("clean", report.get("clean"), cfg.get("clean") or {}, CLEAN_THRESHOLDS)
    for name, entry in cfg["attacks"].items():
        result = report.get("attacks", {}).get(name) or {"status": "not run", "reason": "missing"}
        status = result.get("status")
        if status == "ok":
            rows += _threshold_rows(name, result, entry.get("thresholds") or {}, ATTACK_THRESHOLDS)
        elif status == "error" or entry.get("required", True):
            value = f"{status} ({result.get('reason', '')})"
            rows.append(
                {
                    "section": name,
                    "metric": "status",
                    "value": value,
                    "op": "==",
                    "threshold": "ok",
                    "passed": False,
                }
            )
    gn = cfg.get("grad_norm") or {}
    if any(gn.get(k) is not None for k in GRAD_NORM_THRESHOLDS):
        rows += _threshold_rows("grad_norm", report.get("grad_norm"), gn, GRAD_NORM_THRESHOLDS)
    failures = [r for r in rows if not r["passed"]]
    return {"passed": not failures, "rows": rows, "failures": failures}


def format_row(row: Mapping[str, Any]) -> str:
    """'pgd_2 clean_vs_adv.rmse = 17.2 (must be <= 15)'."""
    value = row["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    threshold = row["threshold"]
    limit = f"{threshold:.4g}" if isinstance(threshold, float) else str(threshold)
    return f"{row['section']} {row['metric']} = {shown} (must be {row['op']} {limit})"


def _reason(failures: list[Mapping[str, Any]]) -> str:
    if not failures:
        return "passed"
    return "failed: " + "; ".join(format_row(r) for r in failures)


# ------------------------------------------------------------------------------------------ runs


def nt_step(ckpt: Mapping[str, Any] | None, default: float = 0.01) -> float:
    """The finite-difference step h the model was trained with (``args.nt.h``), else ``default``."""
    h = _lookup(ckpt or {}, "args.nt.h")
    return float(h) if isinstance(h, (int, float)) and h > 0 else default


def load_surrogate(path: str | Path | None, device: torch.device) -> nn.Module | None:
    """The surrogate model of the transfer attacks, or None (with a loud warning) if there is none."""
    if not path or not Path(path).is_file():
        log.warning(
            "!!! no surrogate checkpoint (%s): the transfer attacks (uap, korhonen) will NOT RUN",
            path or "unset",
        )
        return None
    return model_from_checkpoint(load_checkpoint(path)).to(device).eval()


def _cache_dir(surrogate_path: str | Path | None, report_dir: Path) -> Path:
    """Fitted UAPs are cached next to the surrogate (shared by every gated model), else in the report."""
    if surrogate_path and Path(surrogate_path).is_file():
        folder = Path(surrogate_path).resolve().parent
        if os.access(folder, os.W_OK):
            return folder
    return report_dir


def _reusable_report(
    model: nn.Module, data: EvalData, cfg: dict[str, Any], report_dir: Path, surrogate: nn.Module | None
) -> dict[str, Any] | None:
    path = report_dir / "report.json"
    if not path.is_file():
        return None
    report = load_report(report_dir)
    meta = report.get("meta", {})
    surrogate_sha = weights_sha256(surrogate) if surrogate is not None else None
    same = (
        meta.get("weights_sha256") == weights_sha256(model)
        and meta.get("measurement_sha256") == measurement_sha256(cfg)
        and meta.get("surrogate_weights_sha256") == surrogate_sha
        and meta.get("paths") == list(data.paths)
    )
    return report if same else None


def run_gate(
    model: nn.Module,
    data: EvalData,
    cfg: dict[str, Any],
    report_dir: str | Path,
    *,
    surrogate: nn.Module | None = None,
    surrogate_path: str | Path | None = None,
    attacks: list[str] | None = None,
    h: float = 0.01,
    meta: Mapping[str, Any] | None = None,
    title: str = "Attack evaluation",
    reuse: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data``, judge the report, write it; returns the verdict dict.

    With ``reuse``, an existing ``report_dir/report.json`` measured on the same weights, images,
    surrogate and measurement settings (``measurement_sha256``) is re-judged instead of re-run:
    thresholds do not change what the attacks measure."""
    report_dir = Path(report_dir)
    # Only a report of every enabled section can be re-judged (``--attacks all`` is the full set too).
    full = attacks is None or set(select_attacks(cfg, attacks)) == set(select_attacks(cfg, None))
    report = _reusable_report(model, data, cfg, report_dir, surrogate) if reuse and full else None
    if report is None:
        report = evaluate_model(
            model,
            data,
            cfg,
            attacks=attacks,
            surrogate=surrogate,
            h=h,
            cache_dir=_cache_dir(surrogate_path, report_dir),
        )
    else:
        log.info("re-judging the measurements in %s (same weights, images and attack settings)", report_dir)
        add_derived_metrics(report)
        report["meta"].update({"config": cfg, "config_sha256": config_sha256(cfg)})
    report["meta"].update(meta or {})
    report["meta"]["surrogate_checkpoint"] = str(surrogate_path) if surrogate is not None else None
    verdict = check_report(report, cfg)
    report["gate"] = verdict
    sha = write_report(report, report_dir, title)
    for row in verdict["failures"]:
        log.warning("gate FAIL: %s", format_row(row))
    log.info("gate %s; report %s (sha256 %s)", "PASSED" if verdict["passed"] else "FAILED", report_dir, sha)
    return {
        "passed": verdict["passed"],
        "failures": verdict["failures"],
        "reason": _reason(verdict["failures"]),
        "report_sha256": sha,
        "report_dir": str(report_dir),
        "config_sha256": config_sha256(cfg),
        "weights_sha256": report["meta"]["weights_sha256"],
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": report["seconds"]["total"],
    }


def checkpoint_meta(ckpt: Mapping[str, Any], manifest: str | Path | None, split: str) -> dict[str, Any]:
    return {
        "model_name": ckpt.get("model_name"),
        "epoch": ckpt.get("epoch"),
        "data_hash": ckpt.get("data_hash"),
        "nt": _lookup(ckpt, "args.nt"),
        "manifest": str(manifest) if manifest else None,
        "split": split,
    }


def gate_checkpoint(
    model: nn.Module,
    ckpt: Mapping[str, Any],
    test_loader: DataLoader | None,
    report_dir: str | Path,
    gate_cfg_path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    surrogate_path: str | Path | None = None,
) -> dict[str, Any]:
    """Gate a freshly trained model (training/train.py): the test split comes from ``test_loader``'s
    dataset when it is a ManifestDataset, else from the checkpoint's manifest. Returns the verdict."""
    cfg = load_gate_config(gate_cfg_path, overrides)
    dataset = getattr(test_loader, "dataset", None)
    manifest = _lookup(ckpt, "args.data.manifest")
    if not isinstance(dataset, ManifestDataset):
        if not manifest:
            raise ValueError("gate: no test loader and no data.manifest in the checkpoint's args")
        dataset = ManifestDataset(
            manifest, cfg.get("split", "test"), model.preprocess_cfg, train=False, cache=False
        )
    data = load_eval_data(dataset, cfg["num_images"], int(cfg.get("seed", 0)))
    surrogate_path = surrogate_path or cfg.get("surrogate_checkpoint")
    surrogate = load_surrogate(surrogate_path, model_device(model))
    meta = checkpoint_meta(ckpt, manifest, cfg.get("split", "test"))
    return run_gate(
        model,
        data,
        cfg,
        report_dir,
        surrogate=surrogate,
        surrogate_path=surrogate_path,
        h=nt_step(ckpt),
        meta=meta,
    )


def verify_gate(ckpt: Mapping[str, Any], weights_sha: str | None = None) -> tuple[bool, str]:
    """Export-time check: (True, ...) only if ``ckpt["gate"]`` is a verdict with ``passed`` True.
    The reason says "ungated" for a checkpoint without a verdict, or lists the failing rows.

    ``weights_sha`` (``weights_sha256`` of the model about to be exported) also ties the verdict to
    those weights: a verdict recorded for other weights (a checkpoint trained further, or weights
    swapped in after the gate) or one that records no weights hash is "stale" and does not pass."""
    gate = ckpt.get("gate")
    if not isinstance(gate, Mapping):
        return False, "ungated: the checkpoint has no acceptance-gate verdict (training/evaluate.py --gate)"
    if gate.get("passed") is True:
        judged = gate.get("weights_sha256")
        if weights_sha is not None and judged != weights_sha:
            judged = f"weights {str(judged)[:12]}" if judged else "a verdict with no weights hash"
            return False, (
                f"stale: the gate verdict was given to other weights ({judged}; these are "
                f"{weights_sha[:12]}); re-run training/evaluate.py --gate on this checkpoint"
            )
        return True, f"passed (report sha256 {str(gate.get('report_sha256', ''))[:12]})"
    failures = gate.get("failures") or []
    if failures:
        return False, _reason(list(failures))
    return False, f"failed: {gate.get('reason') or 'no failing rows recorded'}"
