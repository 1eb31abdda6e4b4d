"""Numeric parity of the exported artifacts against eager PyTorch, on real images.

Every image goes through the shared preprocessing (``resize_canonical`` then ``eval_crops`` with the
model's own PreprocessConfig). The eager reference is ``model.score`` on float NCHW crops in [0, 1];
ONNX Runtime gets the uint8 NHWC crops, TorchScript (and the torch.export program, when there is
one) get the same float crops as the reference. ONNX also runs on the full canonical image, a size
other than the crop, because the graph has dynamic height and width.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.torchscript_export import load_program, load_torchscript
from training.preprocessing import eval_crops, load_image_file, resize_canonical

__all__ = [
    "PARITY_TOLERANCE",
    "ParityError",
    "ParityImage",
    "ParityReport",
    "check_parity",
    "load_parity_images",
    "run_onnx",
]

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3  # score units, on a 0..100 scale
MAX_PARITY_IMAGES = 16
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image photos, bundled offline


class ParityError(RuntimeError):
    """An exported artifact disagrees with eager PyTorch beyond the tolerance."""

    def __init__(self, message: str, report: ParityReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityImage:
    name: str
    pixels: np.ndarray  # RGB uint8 H x W x 3, before any resizing


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute score differences (eager PyTorch as the reference)."""

    tolerance: float
    images: list[str]
    n_crops: int
    crop_size: int
    full_sizes: list[list[int]]  # canonical (height, width) of each image, run through ONNX whole
    onnx_crops_max_abs_diff: float
    onnx_full_max_abs_diff: float
    torchscript_crops_max_abs_diff: float
    program_crops_max_abs_diff: float | None  # None when no torch.export program was written
    reference_score_min: float  # eager scores seen, to show the check did not compare constants
    reference_score_max: float

    def failures(self) -> list[str]:
        checks = {
            "ONNX vs PyTorch on crops": self.onnx_crops_max_abs_diff,
            "ONNX vs PyTorch on full canonical images": self.onnx_full_max_abs_diff,
            "TorchScript vs PyTorch on crops": self.torchscript_crops_max_abs_diff,
            "torch.export program vs PyTorch on crops": self.program_crops_max_abs_diff,
        }
        # ``not diff <= tol`` also catches NaN.
        return [f"{what}: max |diff| {diff:.3g} > {self.tolerance:g}"
                for what, diff in checks.items() if diff is not None and not diff <= self.tolerance]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def load_parity_images(source: str | Path | None, limit: int = MAX_PARITY_IMAGES) -> list[ParityImage]:
    """Images for the parity check: a folder of images, a manifest CSV (test split), or, with no
    source, the scikit-image sample photos."""
    if source is None:
        return _sample_images()[:limit]
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    elif source.is_file() and source.suffix.lower() == ".csv":
        paths = _manifest_test_paths(source, limit)
    else:
        raise FileNotFoundError(f"--images must be a folder of images or a manifest .csv: {source}")
    if not paths:
        raise ValueError(f"no parity images found in {source}")
    return [ParityImage(name=str(p), pixels=load_image_file(str(p))) for p in paths]


def _manifest_test_paths(manifest: Path, limit: int) -> list[Path]:
    """Up to ``limit`` test-split paths of a manifest (columns path, mos, split, ...), relative to it."""
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "split"} <= set(reader.fieldnames):
            raise ValueError(f"manifest {manifest} needs the columns 'path' and 'split'")
        rows = [row["path"] for row in reader if row["split"].strip() == "test"]
    return [manifest.parent / p for p in rows[:limit]]


def _sample_images() -> list[ParityImage]:
    from skimage import data

    return [ParityImage(name=f"skimage.data.{n}", pixels=np.asarray(getattr(data, n)(), dtype=np.uint8))
            for n in SAMPLE_IMAGES]


def run_onnx(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """Scores of uint8 N x H x W x 3 pixels from an ONNX Runtime session of the serving graph."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def _torch_scores(fn: Callable[[torch.Tensor], torch.Tensor], batch: np.ndarray) -> np.ndarray:
    # torch.tensor copies: the decoded pixels may be a read-only NumPy view.
    x = torch.tensor(batch).to(torch.float32).div(255.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return fn(x).detach().numpy()


def _max_abs_diff(got: np.ndarray, ref: np.ndarray, what: str) -> float:
    if got.shape != ref.shape:
        raise ParityError(f"{what} returned shape {got.shape}, expected {ref.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    torchscript_path: Path,
    images: list[ParityImage],
    program_path: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare every artifact with eager ``model.score``; raise ParityError beyond ``tolerance``."""
    if not images:
        raise ValueError("the parity check needs at least one image")
    cfg = model.preprocess_cfg
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = load_torchscript(torchscript_path)
    program = load_program(program_path) if program_path is not None else None
    diffs: dict[str, list[float]] = {"onnx": [], "onnx_full": [], "torchscript": [], "program": []}
    refs: list[np.ndarray] = []
    full_sizes: list[list[int]] = []
    for image in images:
        canonical = resize_canonical(image.pixels, cfg)
        crops = eval_crops(canonical, cfg)
        ref = _torch_scores(model.score, crops)
        refs.append(ref)
        diffs["onnx"].append(_max_abs_diff(run_onnx(session, crops), ref, "ONNX"))
        diffs["torchscript"].append(_max_abs_diff(_torch_scores(scripted, crops), ref, "TorchScript"))
        if program is not None:
            diffs["program"].append(_max_abs_diff(_torch_scores(program, crops), ref, "torch.export program"))
        full = canonical[None]
        full_sizes.append(list(canonical.shape[:2]))
        diffs["onnx_full"].append(
            _max_abs_diff(run_onnx(session, full), _torch_scores(model.score, full), "ONNX (full image)"))
    all_refs = np.concatenate(refs)
    report = ParityReport(
        tolerance=tolerance,
        images=[image.name for image in images],
        n_crops=int(all_refs.size),
        crop_size=cfg.crop_size,
        full_sizes=full_sizes,
        onnx_crops_max_abs_diff=max(diffs["onnx"]),
        onnx_full_max_abs_diff=max(diffs["onnx_full"]),
        torchscript_crops_max_abs_diff=max(diffs["torchscript"]),
        program_crops_max_abs_diff=max(diffs["program"]) if diffs["program"] else None,
        reference_score_min=float(all_refs.min()),
        reference_score_max=float(all_refs.max()),
    )
    failures = report.failures()
    if failures:
        raise ParityError("export parity failed: " + "; ".join(failures), report)
    logger.info("parity ok on %d images (%d crops): ONNX %.3g (full image %.3g), TorchScript %.3g, "
                "program %s", len(report.images), report.n_crops, report.onnx_crops_max_abs_diff,
                report.onnx_full_max_abs_diff, report.torchscript_crops_max_abs_diff,
                report.program_crops_max_abs_diff)
    return report
