"""Evaluating the replication's checkpoints with the gate's attacks, reusing stored reports.

``Evaluator(cfg, surrogate_path, device, manifest)`` evaluates checkpoints with one gate config and one
surrogate (``training.gate.run.run_gate``), on the test images of a manifest (loaded once per manifest,
preprocessing and image count). A stored report is reused exactly when the gate would reuse it
(``training.gate.run.reusable_report``: the same weights, images, surrogate and measurement
settings), and then it is returned as it is, not re-judged or rewritten. ``ablation_config`` reduces
the gate config to what the ablations report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from training.data.dataset import ManifestDataset
from training.gate.data import EvalData, load_eval_data
from training.gate.evaluation import add_derived_metrics
from training.gate.report import load_report
from training.gate.run import nt_step, reusable_report, run_gate
from training.utils import load_checkpoint, model_from_checkpoint, resolve_device

__all__ = ["Evaluator", "ablation_config"]

log = logging.getLogger("replicate")


class Evaluator:
    """Evaluates checkpoints with one gate config and surrogate; reuses the reports the gate would."""

    def __init__(
        self, cfg: dict[str, Any], surrogate_path: Path | None, device: str | None, manifest: str | None
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(device or "auto")
        self.surrogate_path = surrogate_path
        self.surrogate: nn.Module | None = None
        if surrogate_path is not None and surrogate_path.is_file():
            self.surrogate = model_from_checkpoint(load_checkpoint(surrogate_path)).to(self.device)
        self.manifest = manifest
        self._data: dict[tuple[str, str, int | None], EvalData] = {}

    def _images(self, manifest: str, model: Any, num_images: int | None) -> EvalData:
        key = (manifest, model.preprocess_cfg.to_json(), num_images)
        if key not in self._data:
            ds = ManifestDataset(
                manifest, self.cfg.get("split", "test"), model.preprocess_cfg, train=False, cache=False
            )
            self._data[key] = load_eval_data(ds, num_images, int(self.cfg.get("seed", 0)), manifest=manifest)
        return self._data[key]

    def __call__(
        self,
        ckpt_path: Path,
        report_dir: Path,
        cfg: dict[str, Any] | None = None,
        title: str = "",
        manifest: str | None = None,
    ) -> dict[str, Any]:
        """The report of ``ckpt_path`` in ``report_dir`` under ``cfg`` (default: the evaluator's) on
        the test images of ``manifest`` (default: the evaluator's, else the checkpoint's)."""
        cfg = cfg or self.cfg
        ckpt = load_checkpoint(ckpt_path)
        model = model_from_checkpoint(ckpt).to(self.device)
        manifest = manifest or self.manifest or ckpt["args"]["data"]["manifest"]
        data = self._images(manifest, model, cfg["num_images"])
        stored = reusable_report(report_dir, model, cfg, data.paths, self.surrogate)
        if stored is not None:
            log.info("reusing the evaluation in %s", report_dir)
            return add_derived_metrics(stored)
        meta = {
            "checkpoint": str(ckpt_path),
            "manifest": str(manifest),
            "split": cfg.get("split", "test"),
            "model_name": ckpt.get("model_name"),
            "nt": ckpt.get("args", {}).get("nt"),
            "test_metrics": ckpt.get("test_metrics"),
        }
        run_gate(
            model,
            data,
            cfg,
            report_dir,
            surrogate=self.surrogate,
            surrogate_path=self.surrogate_path,
            h=nt_step(ckpt),
            meta=meta,
            title=title or f"Attack evaluation of {ckpt_path}",
            reuse=False,  # checked above
        )
        return load_report(report_dir)


def ablation_config(cfg: dict[str, Any], num_images: int | None) -> dict[str, Any]:
    """The gate config reduced to what the ablations report: clean metrics and FGSM, measured but not
    judged (no floors or ceilings: an ablation run is a data point, not a release candidate)."""
    fgsm = {
        k: {key: value for key, value in v.items() if key not in ("thresholds", "required")}
        for k, v in cfg["attacks"].items()
        if v["attack"] == "fgsm"
    }
    if not fgsm:
        raise ValueError("the gate config has no fgsm section, which the ablations need")
    out = {
        **{k: v for k, v in cfg.items() if k != "clean"},
        "attacks": fgsm,
        "grad_norm": {**(cfg.get("grad_norm") or {}), "enabled": False},
        "sweep": {**(cfg.get("sweep") or {}), "enabled": False},
    }
    if num_images is not None:
        out["num_images"] = num_images
    return out
