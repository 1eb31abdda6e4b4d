"""Running the acceptance gate: evaluate a model, judge the report, write it, return the verdict.

* ``run_gate(model, data, cfg, report_dir, ...)``: evaluate (or re-judge a reusable report), judge
  (``training.gate.verdict``), write report.json / report.md / plots; returns the verdict dict
  ``{"passed", "failures", "reason", "report_sha256", "report_dir", "config_sha256",
  "weights_sha256", "time", "seconds"}`` that goes into ``ckpt["gate"]``.
* ``reusable_report(report_dir, model, cfg, paths, surrogate)``: the stored report when it holds the
  numbers this evaluation would measure (same weights, images, surrogate and measurement settings,
  ``training.gate.identity``), else None. The gate and the replication both decide reuse with it.
* ``gate_checkpoint(model, ckpt, test_loader, report_dir)``: the entry point of training/train.py.
* ``load_surrogate``, ``nt_step``, ``checkpoint_meta``: what training/evaluate.py and the replication
  need around ``run_gate``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from training.config import get_dotted
from training.data.dataset import ManifestDataset
from training.gate.attacks import attack_class, list_attacks
from training.gate.config import load_gate_config, select_attacks
from training.gate.data import EvalData, load_eval_data
from training.gate.evaluation import add_derived_metrics, evaluate_model
from training.gate.identity import config_sha256, measurement_sha256, weights_sha256
from training.gate.report import load_report, write_report
from training.gate.repository import ARTIFACTS, is_version_dir, load_version
from training.gate.tensors import model_device
from training.gate.verdict import check_report, failure_reason, format_row
from training.utils import load_checkpoint, model_from_checkpoint

__all__ = ["checkpoint_meta", "gate_checkpoint", "load_surrogate", "nt_step", "reusable_report", "run_gate"]

log = logging.getLogger(__name__)


def nt_step(ckpt: Mapping[str, Any] | None, default: float = 0.01) -> float:
    """The finite-difference step h the model was trained with (``args.nt.h``), else ``default``."""
    h = get_dotted(ckpt or {}, "args.nt.h")
    return float(h) if isinstance(h, (int, float)) and h > 0 else default


def load_surrogate(path: str | Path | None, device: torch.device) -> nn.Module | None:
    """The surrogate model of the transfer attacks, or None (with a loud warning) if there is none.
    ``path`` is a checkpoint, or a model-repository version folder (or its model.pt / model.pt2),
    loaded with ``training.gate.repository.load_version``."""
    path = Path(path) if path else None
    if path is not None and path.name in ARTIFACTS.values() and is_version_dir(path.parent):
        kind = next(k for k, f in ARTIFACTS.items() if f == path.name)
        return load_version(path.parent, kind).to(device).eval()
    if path is not None and is_version_dir(path):
        return load_version(path).to(device).eval()
    if path is None or not path.is_file():
        log.warning(
            "!!! no surrogate checkpoint or model-repository version (%s): the transfer attacks (%s) "
            "will NOT RUN",
            path or "unset",
            ", ".join(n for n in list_attacks() if attack_class(n).needs_surrogate),
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


def _artifact_id(info: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    """What identifies an exported artifact for reuse: its kind and bytes (not the path it was read from);
    None for a checkpoint's eager model."""
    return (info.get("kind"), info.get("sha256")) if info else None


def reusable_report(
    report_dir: str | Path,
    model: nn.Module,
    cfg: dict[str, Any],
    paths: Sequence[str],
    surrogate: nn.Module | None,
) -> dict[str, Any] | None:
    """``report_dir/report.json`` if it measured ``model``'s weights on the images at ``paths`` with
    ``surrogate`` under the measurement settings of ``cfg``, through the same artifact (a checkpoint's
    eager model, or one exported file: ``meta.artifact``); None when there is none or it differs."""
    path = Path(report_dir) / "report.json"
    if not path.is_file():
        return None
    report = load_report(path)
    meta = report.get("meta", {})
    surrogate_sha = weights_sha256(surrogate) if surrogate is not None else None
    same = (
        meta.get("weights_sha256") == weights_sha256(model)
        and meta.get("measurement_sha256") == measurement_sha256(cfg)
        and meta.get("surrogate_weights_sha256") == surrogate_sha
        and meta.get("paths") == list(paths)
        and _artifact_id(meta.get("artifact")) == _artifact_id(getattr(model, "artifact_info", None))
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
    report = reusable_report(report_dir, model, cfg, data.paths, surrogate) if reuse and full else None
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
        "reason": failure_reason(verdict["failures"]),
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
        "nt": get_dotted(ckpt, "args.nt"),
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
    manifest = get_dotted(ckpt, "args.data.manifest")
    if not isinstance(dataset, ManifestDataset):
        if not manifest:
            raise ValueError("gate: no test loader and no data.manifest in the checkpoint's args")
        dataset = ManifestDataset(
            manifest, cfg.get("split", "test"), model.preprocess_cfg, train=False, cache=False
        )
    data = load_eval_data(dataset, cfg["num_images"], int(cfg.get("seed", 0)), manifest=manifest)
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
