"""Export a trained checkpoint into a Triton model repository, checked against PyTorch.

    python export/export.py --checkpoint runs/best.pt --model-repository model_repository \\
        --name iqa --version 1 [--images DIR_OR_MANIFEST] [--allow-ungated] [--opset 18]

Writes ``<repository>/<name>/<version>/`` (model.onnx, model.pt, model.pt2, metadata.json) through a
staging folder that is renamed into place only after the parity check passed, then
the Triton family of the version (export/triton_repository.py): ``<name>/config.pbtxt`` and
``configs/{gpu,cpu,torchscript}.pbtxt``, ``<name>/<version>/model.py`` (the CPU config's Python model),
``<name>_preprocess/<version>``, ``<name>_postprocess/<version>`` and the ``<name>_image`` ensemble
pinned to this version. An existing version is never overwritten unless ``--force`` is given. See
docs/EXPORT.md and docs/TRITON.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python export/export.py`: its folder would shadow the `export` package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from torch import nn

from export.metadata import artifact_digests, build_metadata, write_metadata
from export.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    OnnxContractError,
    OnnxExportInfo,
    export_onnx,
)
from export.parity import ParityError, ParityReport, check_parity, load_parity_images
from export.torchscript_export import export_program, export_torchscript
from export.triton_config import (
    DEFAULT_EXECUTION_ENV,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_QUEUE_DELAY_US,
    validate_model_name,
)
from export.triton_repository import write_family_configs, write_scorer_model, write_step_versions
from training.gate.identity import weights_sha256
from training.utils import load_checkpoint, model_from_checkpoint

__all__ = ["ExportError", "ExportResult", "check_gate", "export_version", "get_args_parser", "main"]

logger = logging.getLogger("export")

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
PROGRAM_FILE = "model.pt2"
METADATA_FILE = "metadata.json"
_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export")


class ExportError(RuntimeError):
    """The export was refused (version exists, gate failed, bad arguments); nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    version_dir: Path
    configs: dict[str, Path]
    artifacts: dict[str, dict[str, Any]]
    onnx: OnnxExportInfo
    parity: ParityReport
    seconds: float


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export an IQA checkpoint to a Triton model repository", add_help=True
    )
    src = parser.add_argument_group("source")
    src.add_argument("--checkpoint", required=True, help="checkpoint written by training (training/utils.py)")
    src.add_argument(
        "--allow-ungated",
        action="store_true",
        help="export even if the checkpoint failed the acceptance gate",
    )
    out = parser.add_argument_group("model repository")
    out.add_argument("--model-repository", default="model_repository", help="Triton model repository root")
    out.add_argument("--name", default="iqa", help="model folder name (= Triton model name)")
    out.add_argument(
        "--version",
        type=_positive_int,
        default=None,
        help="version folder number (default: one above the highest existing)",
    )
    out.add_argument("--force", action="store_true", help="replace an existing version folder")
    out.add_argument(
        "--max-batch-size", type=_positive_int, default=DEFAULT_MAX_BATCH_SIZE, help="Triton max_batch_size"
    )
    out.add_argument(
        "--queue-delay-us",
        type=int,
        default=DEFAULT_QUEUE_DELAY_US,
        help="Triton dynamic batching max_queue_delay_microseconds of the scorer (docs/TRITON.md)",
    )
    out.add_argument(
        "--execution-env",
        default=DEFAULT_EXECUTION_ENV,
        help="EXECUTION_ENV_PATH of the Triton Python-backend models (default: the checkout's .venv-triton)",
    )
    chk = parser.add_argument_group("graph and checks")
    chk.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    chk.add_argument(
        "--images",
        default=None,
        help="parity images: a folder or a manifest CSV (its test split); "
        "default: scikit-image sample photos",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def check_gate(
    ckpt: Mapping[str, Any], allow_ungated: bool, weights_sha: str | None = None
) -> dict[str, Any] | None:
    """The acceptance-gate verdict to record. An ungated, failed or stale (given to other weights than
    ``weights_sha``) checkpoint is refused, with the reason (training.gate.verdict.verify_gate: "ungated",
    "stale" or the failing rows), unless ``allow_ungated``."""
    from training.gate.verdict import verify_gate

    ok, reason = verify_gate(ckpt, weights_sha)
    gate = ckpt.get("gate")
    if ok:
        logger.info("acceptance gate: %s", reason)
    elif not allow_ungated:
        raise ExportError(f"refusing to export: {reason}; pass --allow-ungated to export it anyway")
    else:
        logger.warning("exporting despite the acceptance gate (--allow-ungated): %s", reason)
    return dict(gate) if isinstance(gate, Mapping) else None


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _publish(staging: Path, version_dir: Path, force: bool) -> None:
    """Move the finished staging folder to its version number (a rename, so never half-written)."""
    if not version_dir.exists():
        os.rename(staging, version_dir)
        return
    if not force:
        raise ExportError(f"version folder {version_dir} appeared during the export; not overwriting it")
    retired = Path(tempfile.mkdtemp(prefix=f".retired-{version_dir.name}-", dir=version_dir.parent))
    os.rename(version_dir, retired / version_dir.name)
    os.rename(staging, version_dir)
    shutil.rmtree(retired, ignore_errors=True)


def export_version(args: argparse.Namespace) -> ExportResult:
    """Checkpoint -> staged artifacts -> parity -> metadata -> version folder -> Triton configs."""
    started = time.perf_counter()
    if args.opset < MIN_OPSET:
        raise ExportError(f"--opset must be >= {MIN_OPSET}, got {args.opset}")
    model_dir = Path(args.model_repository) / validate_model_name(args.name)
    version = args.version or _next_version(model_dir)
    version_dir = model_dir / str(version)
    if version_dir.exists() and not args.force:
        raise ExportError(
            f"version {version} already exists at {version_dir}; "
            "choose a new --version (or --force to replace it)"
        )
    checkpoint_path = Path(args.checkpoint)
    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt)
    gate = check_gate(ckpt, args.allow_ungated, weights_sha256(model))
    images = load_parity_images(args.images)

    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the serving user must be able to read the version
    try:
        onnx_info = export_onnx(model, staging / ONNX_FILE, opset=args.opset)
        export_torchscript(model, staging / TORCHSCRIPT_FILE)
        program_path = _export_program_if_possible(model, staging / PROGRAM_FILE)
        # <version>/model.py: the CPU config's Python model, inside the version from the start
        write_scorer_model(staging)
        report = check_parity(model, staging / ONNX_FILE, staging / TORCHSCRIPT_FILE, images, program_path)
        names = [ONNX_FILE, TORCHSCRIPT_FILE] + ([PROGRAM_FILE] if program_path else [])
        artifacts = artifact_digests(staging, names)
        seconds = time.perf_counter() - started
        meta = build_metadata(
            name=args.name,
            version=version,
            ckpt=ckpt,
            checkpoint_path=checkpoint_path,
            preprocess=model.preprocess_cfg,
            gate=gate,
            allow_ungated=args.allow_ungated,
            io=_io_contract(model.preprocess_cfg.score_min, model.preprocess_cfg.score_max),
            exporters={
                "onnx": {"exporter": onnx_info.exporter, "opset": onnx_info.opset},
                "torchscript": "torch.jit.trace",
                "program": "torch.export" if program_path else None,
            },
            parity=report.to_dict(),
            artifacts=artifacts,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            export_seconds=seconds,
        )
        write_metadata(meta, staging / METADATA_FILE)
        _publish(staging, version_dir, args.force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    write_step_versions(model_dir.parent, args.name, version, model.preprocess_cfg)
    configs = write_family_configs(
        model_dir.parent,
        args.name,
        version=version,
        cfg=model.preprocess_cfg,
        max_batch_size=args.max_batch_size,
        queue_delay_us=args.queue_delay_us,
        env_path=args.execution_env,
    )
    return ExportResult(
        version_dir=version_dir,
        configs=configs,
        artifacts=artifacts,
        onnx=onnx_info,
        parity=report,
        seconds=seconds,
    )


def _export_program_if_possible(model: nn.Module, path: Path) -> Path | None:
    """The .pt2 program is optional: a model torch.export cannot capture still gets ONNX + TorchScript."""
    try:
        return export_program(model, path)
    except Exception as exc:  # any torch.export failure: skip the optional artifact, say why
        logger.warning(
            "torch.export program not written (%s: %s)",
            type(exc).__name__,
            next(iter(str(exc).splitlines()), ""),
        )
        path.unlink(missing_ok=True)
        return None


def _io_contract(score_min: float, score_max: float) -> dict[str, Any]:
    score = {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N"], "range": [score_min, score_max]}
    return {
        "onnx": {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "dtype": "uint8",
                    "shape": ["N", "H", "W", 3],
                    "layout": "NHWC RGB",
                    "range": [0, 255],
                }
            ],
            "outputs": [score],
        },
        "torch": {
            "inputs": [
                {
                    "name": "x",
                    "dtype": "float32",
                    "shape": ["N", 3, "H", "W"],
                    "layout": "NCHW RGB",
                    "range": [0.0, 1.0],
                }
            ],
            "outputs": [score],
        },
    }


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _summary(result: ExportResult) -> str:
    p = result.parity
    lines = [
        f"exported {result.version_dir} in {result.seconds:.1f} s "
        f"(ONNX via {result.onnx.exporter}, opset {result.onnx.opset})"
    ]
    lines += [
        f"  {name:<14} {info['bytes']:>11,d} B  sha256 {info['sha256'][:16]}"
        for name, info in result.artifacts.items()
    ]
    lines += [f"  {path}" for path in result.configs.values()]
    program = "n/a" if p.program_crops_max_abs_diff is None else f"{p.program_crops_max_abs_diff:.2e}"
    lines.append(
        f"parity on {len(p.images)} images / {p.n_crops} crops of {p.crop_size}px, max |diff| "
        f"(tolerance {p.tolerance:g}): ONNX crops {p.onnx_crops_max_abs_diff:.2e}, "
        f"ONNX full images {p.onnx_full_max_abs_diff:.2e}, "
        f"TorchScript {p.torchscript_crops_max_abs_diff:.2e}, torch.export {program}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    _configure_logging()
    try:
        result = export_version(args)
    except (ExportError, ParityError, OnnxContractError, FileNotFoundError, ValueError) as exc:
        logger.error("export failed: %s", exc)
        return 1
    print(_summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
