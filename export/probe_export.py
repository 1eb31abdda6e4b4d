"""Write the FGSM self-probe of an exported scorer version into the model repository as ``<name>_probe``.

    python export/probe_export.py --model-repository model_repository --name iqa --version 2 \\
        [--checkpoint runs/v2_nt/best.pt] [--threshold 17 --linearity-threshold 0.9 --threshold-note "..."]
        [--force]

Writes ``<repository>/<name>_probe/<version>/`` (model.onnx, metadata.json, model.py) through a
staging folder renamed into place after the parity check (ONNX Runtime vs the gate's FGSM in torch on
evaluation crops of the scikit-image sample photos, ≤ 1e-3 score units), then the probe's Triton
configs (export/probe_triton.py). The weights are the scorer version's: ``--checkpoint``, else the
checkpoint its metadata names when that file exists, else its TorchScript ``model.pt`` loaded into the
registered architecture; in every case their digest must equal the gate's ``weights_sha256`` in the
scorer's metadata (when recorded). ``--threshold`` / ``--linearity-threshold`` record the calibrated
``|delta|`` and linearity thresholds the gateway flags with by default (docs/PROBE.md). See docs/PROBE.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python export/probe_export.py`: its folder would shadow the `export` package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

import argparse
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from export.metadata import artifact_digests, runtime_versions, write_metadata
from export.parity import load_parity_images
from export.probe_graph import OUTPUT_NAMES, ProbeContractError, check_probe_parity, export_probe_onnx
from export.probe_triton import probe_model_name, write_probe_configs
from export.triton_config import write_atomic
from export.triton_repository import model_source
from training.gate.attacks.fgsm import FGSM_ALPHA, FGSM_EPS
from training.gate.identity import weights_sha256
from training.preprocessing import PreprocessConfig, eval_crops, resize_canonical
from training.utils import load_checkpoint, model_from_checkpoint

__all__ = ["get_args_parser", "load_version_model", "main", "parity_crops", "write_probe_version"]

logger = logging.getLogger("export.probe")

ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
MODEL_PY = "model.py"
PARITY_IMAGES = 2  # two sample photos -> 2 x num_eval_crops crops


def load_version_model(version_dir: Path, checkpoint: Path | None = None) -> nn.Module:
    """The IQAModel of an exported scorer version, in eval mode (see the module docstring)."""
    meta = json.loads((version_dir / METADATA_FILE).read_text(encoding="utf-8"))
    recorded = (meta.get("checkpoint") or {}).get("path")
    if checkpoint is None and recorded and Path(recorded).is_file():
        checkpoint = Path(recorded)
    if checkpoint is not None:
        model = model_from_checkpoint(load_checkpoint(checkpoint))
    else:
        from training.models import create_model

        kwargs = dict(meta.get("model_kwargs") or {})
        kwargs.update(backbone_weights="none", preprocess_cfg=PreprocessConfig.from_dict(meta["preprocess"]))
        model = create_model(meta["model_name"], **kwargs)
        scripted = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu")
        wanted = set(model.state_dict())  # the script also holds the non-persistent mean/std buffers
        state = {k.removeprefix("model."): v for k, v in scripted.state_dict().items()}
        model.load_state_dict({k: v for k, v in state.items() if k in wanted})
    model.eval()
    expected = (meta.get("gate") or {}).get("weights_sha256")
    if expected and weights_sha256(model) != expected:
        raise ValueError(f"the weights loaded for {version_dir} are not those its gate verdict was given to")
    return model


def parity_crops(cfg: PreprocessConfig, n_images: int = PARITY_IMAGES) -> np.ndarray:
    """Evaluation crops (uint8 N×C×C×3) of the first ``n_images`` scikit-image sample photos."""
    images = load_parity_images(None)[:n_images]
    return np.concatenate([eval_crops(resize_canonical(im.pixels, cfg), cfg) for im in images])


def write_probe_version(
    repository: Path,
    name: str,
    version: int,
    model: nn.Module,
    *,
    crops: np.ndarray,
    threshold: dict[str, Any] | None = None,
    force: bool = False,
    scorer_metadata: dict[str, Any] | None = None,
) -> Path:
    """Export, check and publish ``<repository>/<name>_probe/<version>`` plus its Triton configs."""
    started = time.perf_counter()
    model_dir = Path(repository) / probe_model_name(name)
    target = model_dir / str(version)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    staging.chmod(0o755)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            export_probe_onnx(model, staging / ONNX_FILE)
        parity = check_probe_parity(
            model, staging / ONNX_FILE, crops, crops_per_image=model.preprocess_cfg.num_eval_crops
        )
        write_atomic(staging / MODEL_PY, model_source("probe"))
        cfg = model.preprocess_cfg
        crop_shape = ["N", cfg.crop_size, cfg.crop_size, 3]
        meta = {
            "name": model_dir.name,
            "version": version,
            "scorer": {
                "name": name,
                "version": version,
                "weights_sha256": weights_sha256(model),
                "model_name": (scorer_metadata or {}).get("model_name"),
            },
            "preprocess": cfg.to_dict(),
            "probe": {
                "attack": "fgsm",
                "objective": "mid",
                "eps": FGSM_EPS,
                "alpha": FGSM_ALPHA,
                "delivery": "8-bit, within the eps-ball (training.gate.attacks.base.quantize_in_ball)",
                "source": "training.gate.attacks.fgsm.fgsm_probe",
            },
            "threshold": threshold,
            "io": {
                "inputs": [{"name": "image", "dtype": "uint8", "shape": crop_shape}],
                "outputs": [
                    {"name": OUTPUT_NAMES[0], "dtype": "float32", "shape": ["N"]},
                    {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": ["N"]},
                    {"name": OUTPUT_NAMES[2], "dtype": "float32", "shape": crop_shape},
                    {"name": OUTPUT_NAMES[3], "dtype": "float32", "shape": ["N"]},
                ],
            },
            "parity": parity.to_dict(),
            "artifacts": artifact_digests(staging, [ONNX_FILE]),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - started, 3),
            "versions": runtime_versions(),
        }
        write_metadata(meta, staging / METADATA_FILE)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    write_probe_configs(model_dir, crop_size=model.preprocess_cfg.crop_size)
    logger.info("probe written to %s (parity %s)", target, parity.to_dict())
    return target


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export the FGSM self-probe of a scorer version (iqa_probe)")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", default="iqa", help="the scorer's model name; the probe is <name>_probe")
    parser.add_argument("--version", type=int, required=True, help="the scorer version (also the probe's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights (default: see module doc)")
    parser.add_argument("--threshold", type=float, default=None, help="calibrated |delta| to record")
    parser.add_argument(
        "--linearity-threshold", type=float, default=None, help="calibrated linearity statistic to record"
    )
    parser.add_argument("--threshold-note", default="", help="how the threshold was calibrated (recorded)")
    parser.add_argument("--force", action="store_true", help="replace an existing probe version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    version_dir = args.model_repository / args.name / str(args.version)
    try:
        model = load_version_model(version_dir, args.checkpoint)
        scorer_meta = json.loads((version_dir / METADATA_FILE).read_text(encoding="utf-8"))
        threshold = None
        if args.threshold is not None or args.linearity_threshold is not None:
            threshold = {
                "abs_delta": args.threshold,
                "linearity": args.linearity_threshold,
                "note": args.threshold_note,
            }
        target = write_probe_version(
            args.model_repository,
            args.name,
            args.version,
            model,
            crops=parity_crops(model.preprocess_cfg),
            threshold=threshold,
            force=args.force,
            scorer_metadata=scorer_meta,
        )
    except (ProbeContractError, FileExistsError, FileNotFoundError, ValueError) as exc:
        logger.error("probe export failed: %s", exc)
        return 1
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
