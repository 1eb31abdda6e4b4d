"""Resolve one model version in the model repository and read its metadata.

Layout (written by ``export/``)::

    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/metadata.json   {"name", "version", "model_name", "preprocess", ...}

``"latest"`` is the highest numeric version folder that holds a ``model.onnx``. Every failure raises
``ModelLoadError`` with a one-line message that names the path and the setting to fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.backends.base import ModelInfo
from serving.errors import ModelLoadError
from training.preprocessing import PreprocessConfig

__all__ = [
    "METADATA_FILE",
    "MODEL_FILE",
    "ModelVersion",
    "list_versions",
    "read_metadata",
    "resolve_model_version",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelVersion:
    """A resolved version folder: where the model lives and how to preprocess its inputs."""

    name: str
    version: int
    path: Path
    preprocess: PreprocessConfig
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.version, str(self.metadata.get("model_name", "")))


def list_versions(repository: Path, name: str) -> list[int]:
    """Numeric version folders of ``name`` that hold a model file, ascending."""
    root = Path(repository) / name
    if not root.is_dir():
        return []
    return sorted(
        int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file()
    )


def resolve_model_version(repository: Path, name: str, version: str | int = "latest") -> ModelVersion:
    """Find ``<repository>/<name>/<version>`` and parse its metadata; ``version`` is "latest" or an int."""
    repository = Path(repository)
    if not repository.is_dir():
        raise ModelLoadError(f"model repository '{repository}' does not exist (IQA_MODEL_REPOSITORY)")
    if not (repository / name).is_dir():
        raise ModelLoadError(f"model '{name}' not found in repository '{repository}' (IQA_MODEL_NAME)")
    versions = list_versions(repository, name)
    if not versions:
        raise ModelLoadError(f"model '{name}' in '{repository}' has no version folder with a {MODEL_FILE}")
    if str(version) == "latest":
        chosen = versions[-1]
    else:
        chosen = int(version)
        if chosen not in versions:
            raise ModelLoadError(
                f"version {chosen} of model '{name}' not found in '{repository}' (IQA_MODEL_VERSION); "
                f"available: {versions}"
            )
    path = repository / name / str(chosen)
    metadata = read_metadata(path / METADATA_FILE)
    preprocess = _preprocess_config(metadata, path / METADATA_FILE)
    if metadata.get("version") not in (None, chosen):
        logger.warning(
            "%s says version %s; serving folder version %d",
            path / METADATA_FILE,
            metadata.get("version"),
            chosen,
        )
    return ModelVersion(name=name, version=chosen, path=path, preprocess=preprocess, metadata=metadata)


def read_metadata(path: Path) -> dict[str, Any]:
    """A ``metadata.json`` as a dict; ModelLoadError (one line) when missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def _preprocess_config(metadata: dict[str, Any], path: Path) -> PreprocessConfig:
    raw = metadata.get("preprocess")
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} has no 'preprocess' object")
    try:
        return PreprocessConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} has an invalid 'preprocess' config: {exc}") from None
