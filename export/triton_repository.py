"""Write the Triton family of an exported scorer version: Python models, their configs, the ensemble.

For scorer ``<name>`` version ``V`` (docs/TRITON.md)::

    <name>/V/model.py                       ONNX Runtime in the Python backend (configs/cpu.pbtxt)
    <name>/config.pbtxt, configs/*.pbtxt    export/triton_config.py
    <name>_preprocess/V/model.py            decode + preprocess (training.preprocessing)
    <name>_preprocess/V/preprocess.json     the PreprocessConfig of <name>/V/metadata.json
    <name>_preprocess/config.pbtxt, warmup/image_bytes
    <name>_postprocess/V/model.py, preprocess.json, config.pbtxt, warmup/counts
    <name>_image/config.pbtxt, 1/           the ensemble, every step pinned to V

``export/export.py`` calls ``write_scorer_model`` into its staging folder (so the scorer version
appears complete or not at all), then ``write_step_versions`` and ``write_family_configs`` after
publishing it. For versions exported
before this module existed::

    python -m export.triton_repository --model-repository model_repository --name iqa [--versions 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from export.triton_config import (
    DEFAULT_EXECUTION_ENV,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_QUEUE_DELAY_US,
    write_atomic,
    write_triton_configs,
)
from export.triton_ensemble import (
    WARMUP_COUNTS_FILE,
    WARMUP_IMAGE_FILE,
    render_ensemble_config,
    render_postprocess_config,
    render_preprocess_config,
    step_names,
    warmup_counts,
    warmup_image_bytes,
)
from training.preprocessing import PreprocessConfig

__all__ = [
    "MODEL_FILE",
    "SPEC_FILE",
    "main",
    "model_source",
    "preprocess_spec",
    "regenerate",
    "write_family_configs",
    "write_scorer_model",
    "write_step_versions",
    "write_version_models",
]

logger = logging.getLogger("export.triton")

MODEL_FILE = "model.py"
SPEC_FILE = "preprocess.json"
ENSEMBLE_VERSION = 1


def model_source(kind: str) -> bytes:
    """The source of a Triton Python model (``preprocess``, ``scorer``, ``postprocess``)."""
    from export.triton_models import SOURCES

    return resources.files("export.triton_models").joinpath(SOURCES[kind]).read_bytes()


def preprocess_spec(name: str, version: int, cfg: PreprocessConfig) -> str:
    """``preprocess.json`` of the pre/postprocess steps of scorer version ``version``."""
    spec = {"scorer": {"name": name, "version": version}, "preprocess": cfg.to_dict()}
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def _publish_folder(files: dict[str, str | bytes], target: Path, force: bool) -> None:
    """Write ``files`` into a staging folder beside ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; not overwriting it")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        for filename, content in files.items():
            write_atomic(staging / filename, content)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".retired-{target.name}-", dir=target.parent))
            os.rename(target, retired / target.name)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_scorer_model(scorer_dir: Path) -> Path:
    """``<name>/V/model.py``, the CPU config's Python model (export writes it into its staging folder)."""
    write_atomic(Path(scorer_dir) / MODEL_FILE, model_source("scorer"))
    return Path(scorer_dir) / MODEL_FILE


def write_step_versions(repository: Path, name: str, version: int, cfg: PreprocessConfig) -> list[Path]:
    """``<name>_preprocess/V`` and ``<name>_postprocess/V`` (model.py, preprocess.json), each renamed
    into place whole; derived from scorer version V, so an existing folder is replaced."""
    names = step_names(name)
    spec = preprocess_spec(name, version, cfg)
    written = []
    for kind in ("preprocess", "postprocess"):
        target = Path(repository) / names[kind] / str(version)
        _publish_folder({MODEL_FILE: model_source(kind), SPEC_FILE: spec}, target, force=True)
        written.append(target)
    return written


def write_version_models(repository: Path, name: str, version: int, cfg: PreprocessConfig) -> list[Path]:
    """All per-version Python models of an existing scorer version ``<name>/V``."""
    scorer = write_scorer_model(Path(repository) / name / str(version))
    return [scorer, *write_step_versions(repository, name, version, cfg)]


def write_family_configs(
    repository: Path,
    name: str,
    *,
    version: int,
    cfg: PreprocessConfig,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    env_path: str = DEFAULT_EXECUTION_ENV,
) -> dict[str, Path]:
    """Every config of the family, the warm-up inputs, and the ensemble pinned to ``version``."""
    repository = Path(repository)
    names = step_names(name)
    paths = write_triton_configs(
        repository / name,
        crop_size=cfg.crop_size,
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        env_path=env_path,
    )
    pre, post, ens = (repository / names[k] for k in ("preprocess", "postprocess", "ensemble"))
    files: dict[str, tuple[Path, str | bytes]] = {
        "preprocess": (pre / "config.pbtxt", render_preprocess_config(name, env_path=env_path)),
        "preprocess_warmup": (pre / "warmup" / WARMUP_IMAGE_FILE, warmup_image_bytes()),
        "postprocess": (
            post / "config.pbtxt",
            render_postprocess_config(name, num_crops=cfg.num_eval_crops, env_path=env_path),
        ),
        "postprocess_warmup": (post / "warmup" / WARMUP_COUNTS_FILE, warmup_counts(cfg.num_eval_crops)),
        "ensemble": (
            ens / "config.pbtxt",
            render_ensemble_config(
                name, version=version, max_batch_size=max_batch_size, num_crops=cfg.num_eval_crops
            ),
        ),
        "ensemble_version": (ens / str(ENSEMBLE_VERSION) / ".gitkeep", b""),
    }
    for path, content in files.values():
        write_atomic(path, content)
    paths.update({key: path for key, (path, _) in files.items() if not key.endswith(("_warmup", "_version"))})
    return paths


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _read_preprocess(version_dir: Path) -> PreprocessConfig:
    meta = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
    return PreprocessConfig.from_dict(meta["preprocess"])


def regenerate(
    repository: Path,
    name: str,
    versions: Sequence[int] | None = None,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    env_path: str = DEFAULT_EXECUTION_ENV,
    force: bool = True,
) -> dict[str, Path]:
    """(Re)write the family for existing scorer versions; the ensemble is pinned to the newest."""
    model_dir = Path(repository) / name
    existing = _versions(model_dir)
    if not existing:
        raise FileNotFoundError(f"no version folder under {model_dir}")
    chosen = sorted(versions) if versions else existing
    missing = sorted(set(chosen) - set(existing))
    if missing:
        raise FileNotFoundError(f"versions {missing} not found under {model_dir}; found {existing}")
    for version in chosen:
        cfg = _read_preprocess(model_dir / str(version))
        write_version_models(repository, name, version, cfg)
        logger.info("wrote the Triton models of %s version %d", name, version)
    newest = existing[-1]
    return write_family_configs(
        repository,
        name,
        version=newest,
        cfg=_read_preprocess(model_dir / str(newest)),
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        env_path=env_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Triton models and configs of exported versions")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", default="iqa")
    parser.add_argument("--versions", type=int, nargs="*", default=None, help="default: every version")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US)
    parser.add_argument(
        "--execution-env",
        default=DEFAULT_EXECUTION_ENV,
        help="EXECUTION_ENV_PATH of the Python-backend models",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        paths = regenerate(
            args.model_repository,
            args.name,
            args.versions,
            max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
            env_path=args.execution_env,
        )
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        logger.error("cannot write the Triton models: %s", exc)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
