"""``metadata.json`` of an exported version: provenance, clean metrics, the drift reference, checks.

The reference score distribution is the model's own predictions on the validation split
(``ckpt["val_scores"]``): the raw list plus a summary (mean, std, quantiles, a fixed-range histogram),
which the gateway's drift monitoring compares live scores against.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.preprocessing import PreprocessConfig
from training.utils import dump_json, file_sha256

__all__ = [
    "HISTOGRAM_BINS",
    "QUANTILES",
    "artifact_digests",
    "build_metadata",
    "runtime_versions",
    "score_distribution",
    "write_metadata",
]

METADATA_SCHEMA_VERSION = 1
HISTOGRAM_BINS = 20
QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


def score_distribution(scores: Iterable[float], cfg: PreprocessConfig, split: str = "val") -> dict[str, Any]:
    """Raw scores plus mean, std, quantiles and a histogram on [score_min, score_max]."""
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("the reference score distribution needs at least one score")
    low, high = cfg.score_min, cfg.score_max
    # Scores are clamped to the range when served, so out-of-range values count in the edge bins.
    counts, edges = np.histogram(np.clip(arr, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    return {
        "split": split,
        "n": int(arr.size),
        "scores": arr.tolist(),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "quantiles": {f"{q:.2f}": float(v)
                      for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES), strict=True)},
        "histogram": {"range": [low, high], "bins": HISTOGRAM_BINS,
                      "edges": edges.tolist(), "counts": counts.astype(int).tolist()},
    }


def artifact_digests(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{file name: {"sha256", "bytes"}}`` for the artifact files in ``folder``."""
    return {name: {"sha256": file_sha256([folder / name]), "bytes": (folder / name).stat().st_size}
            for name in names}


def runtime_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def build_metadata(
    *,
    name: str,
    version: int,
    ckpt: Mapping[str, Any],
    checkpoint_path: Path,
    preprocess: PreprocessConfig,
    gate: Mapping[str, Any] | None,
    allow_ungated: bool,
    io: Mapping[str, Any],
    exporters: Mapping[str, Any],
    parity: Mapping[str, Any],
    artifacts: Mapping[str, Any],
    exported_at: str,
    export_seconds: float,
) -> dict[str, Any]:
    """Assemble the metadata dict (``ckpt`` is the checkpoint dict of ``training.utils``)."""
    val_scores = ckpt.get("val_scores")
    return {
        "schema_version": METADATA_SCHEMA_VERSION,
        "name": name,
        "version": version,
        "model_name": ckpt["model_name"],
        "model_kwargs": dict(ckpt.get("model_kwargs") or {}),
        "preprocess": preprocess.to_dict(),
        "io": dict(io),
        "training_config": ckpt.get("args"),
        "data_hash": ckpt.get("data_hash"),
        "checkpoint": {"path": str(checkpoint_path), "sha256": file_sha256([checkpoint_path]),
                       "epoch": ckpt.get("epoch")},
        "clean_metrics": {"val": ckpt.get("val_metrics"), "test": ckpt.get("test_metrics")},
        "reference_distribution": score_distribution(val_scores, preprocess) if val_scores else None,
        "gate": dict(gate) if gate is not None else None,
        "allow_ungated": allow_ungated,
        "exporters": dict(exporters),
        "parity": dict(parity),
        "artifacts": dict(artifacts),
        "exported_at": exported_at,
        "export_seconds": round(export_seconds, 3),
        "versions": runtime_versions(),
    }


def write_metadata(meta: Mapping[str, Any], path: Path) -> Path:
    dump_json(meta, path)
    return path
