"""A model-repository version as a model the gate can attack, so the gate can be re-run on a shipped
version without the (git-ignored) training checkpoint.

``export/export.py`` writes, next to ``model.onnx``, two differentiable PyTorch artifacts of the served
function ``x -> model.score(x)`` (float N×3×c×c crops in [0, 1] -> N scores, clamped to the score
range): a TorchScript module ``model.pt`` and a ``torch.export`` program ``model.pt2``. Both support
autograd with respect to the input, which is all the attacks need. ``metadata.json`` carries the
preprocessing (crop size, score range), the training config (NT's step h, the manifest) and the
sha256 of every artifact, which is checked before the artifact is used.

* ``load_version(version_dir, artifact="auto")`` -> ``ExportedModel`` (``auto``: the ``torch.export``
  program when there is one, else TorchScript).
* ``version_dir(repository, name, version)``: ``<repository>/<name>/<version>`` (``latest``: the
  highest numbered version with a metadata.json).
* ``is_version_dir(path)``: a folder with a metadata.json and one of the artifacts.

Differences from gating the checkpoint: the artifact's output is already clamped, so the attacks
differentiate the clamped score (zero gradient only where a crop's score sits at the edge of the
range, where the checkpoint gate's raw output still has one), and the artifact is frozen in eval mode.
``ExportedModel.weights_state()`` is the state dict under the checkpoint's names, so
``training.gate.identity.weights_sha256`` of a version equals that of the checkpoint it was exported
from: a report on the artifact names the same weights as the verdict in its metadata.json.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.preprocessing import PreprocessConfig
from training.utils import file_sha256

__all__ = ["ARTIFACTS", "ExportedModel", "is_version_dir", "load_version", "version_dir"]

log = logging.getLogger(__name__)

# artifact kind -> file name in a version folder, in the order ``auto`` tries them
ARTIFACTS: dict[str, str] = {"program": "model.pt2", "torchscript": "model.pt"}
# IQAModel's normalisation buffers are non-persistent (not in a checkpoint's state dict); TorchScript
# serialises them anyway.
_NON_PERSISTENT = ("mean", "std")


class ExportedModel(nn.Module):
    """An exported artifact of the served score behind the model interface the gate uses:
    ``forward`` (what the attacks differentiate) and ``score`` are the artifact's clamped score,
    ``preprocess_cfg`` comes from ``metadata`` (metadata.json) and ``artifact_info`` says which file
    was loaded."""

    def __init__(
        self, artifact: nn.Module, metadata: dict[str, Any], info: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.artifact = artifact
        self.metadata = metadata
        self.preprocess_cfg = PreprocessConfig.from_dict(metadata["preprocess"])
        self.artifact_info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.artifact(x).reshape(x.shape[0])

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)  # the artifact clamps already

    def train(self, mode: bool = True) -> ExportedModel:
        """Only the flag: the artifact was exported in eval mode (a ``torch.export`` program refuses
        ``train()`` altogether)."""
        self.training = mode
        return self

    def weights_state(self) -> dict[str, torch.Tensor]:
        """The artifact's weights under the checkpoint's names (what ``weights_sha256`` hashes)."""
        state = {k.removeprefix("model."): v for k, v in self.artifact.state_dict().items()}
        return {k: v for k, v in state.items() if k not in _NON_PERSISTENT}


def is_version_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "metadata.json").is_file() and any((path / f).is_file() for f in ARTIFACTS.values())


def version_dir(repository: str | Path, name: str, version: int | str) -> Path:
    """``<repository>/<name>/<version>``; ``latest`` is the highest numbered version with metadata."""
    model_dir = Path(repository) / name
    if str(version) == "latest":
        versions = sorted(
            int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and (p / "metadata.json").is_file()
        )
        if not versions:
            raise FileNotFoundError(f"no version with a metadata.json under {model_dir}")
        version = versions[-1]
    folder = model_dir / str(int(version))
    if not folder.is_dir():
        raise FileNotFoundError(f"model-repository version not found: {folder}")
    return folder


def _load_artifact(path: Path, kind: str) -> nn.Module:
    if kind == "program":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():  # torch.jit is deprecated in PyTorch 2.14 but still loads
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def load_version(folder: str | Path, artifact: str = "auto") -> ExportedModel:
    """The version in ``folder`` as an ``ExportedModel`` on the CPU (see the module docstring).

    ``artifact`` is ``auto``, ``program`` (model.pt2) or ``torchscript`` (model.pt). The file's sha256
    must match the one metadata.json records for it (ValueError otherwise)."""
    folder = Path(folder)
    meta_path = folder / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no metadata.json in {folder}: not a model-repository version")
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if artifact not in ("auto", *ARTIFACTS):
        raise ValueError(f"--artifact must be auto, {' or '.join(ARTIFACTS)}; got {artifact!r}")
    kinds = list(ARTIFACTS) if artifact == "auto" else [artifact]
    kind = next((k for k in kinds if (folder / ARTIFACTS[k]).is_file()), None)
    if kind is None:
        wanted = " or ".join(ARTIFACTS[k] for k in kinds)
        raise FileNotFoundError(f"{folder} has no {wanted} (export/export.py writes both)")
    path = folder / ARTIFACTS[kind]
    sha = file_sha256([path])
    recorded = ((metadata.get("artifacts") or {}).get(path.name) or {}).get("sha256")
    if recorded is None:
        log.warning("%s records no sha256 for %s: its integrity is not checked", meta_path, path.name)
    elif recorded != sha:
        raise ValueError(f"{path} does not match the sha256 its metadata.json records ({recorded[:12]}…)")
    info = {
        "path": str(path), "kind": kind, "sha256": sha, "name": metadata.get("name"),
        "version": metadata.get("version"), "model_name": metadata.get("model_name"),
    }
    return ExportedModel(_load_artifact(path, kind), metadata, info).eval()
