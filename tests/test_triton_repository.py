"""The committed Triton family, without a server: every config is a valid ModelConfig (the GPU and
TorchScript ones included, which this machine cannot load), the files are exactly what export
writes, and the ensemble's pinned version is the one the gateway serves."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from export.triton_config import DEFAULT_QUEUE_DELAY_US, render_config
from export.triton_ensemble import render_ensemble_config
from export.triton_repository import regenerate
from serving.model_store import resolve_model_version
from training.preprocessing import PreprocessConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
FAMILY = ("iqa", "iqa_preprocess", "iqa_postprocess", "iqa_image")


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _family_files(root: Path) -> dict[str, bytes]:
    """Every file of the family except the scorer's exported artifacts."""
    skip = {"model.onnx", "model.pt", "model.pt2", "metadata.json"}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for name in FAMILY
        for p in sorted((root / name).rglob("*"))
        if p.is_file() and p.name not in skip and "__pycache__" not in p.parts
    }


def test_every_config_is_a_valid_model_config() -> None:
    configs = sorted(MODEL_REPOSITORY.glob("*/config.pbtxt")) + sorted(
        MODEL_REPOSITORY.glob("*/configs/*.pbtxt")
    )
    assert len(configs) == 10  # iqa (4), iqa_image, iqa_preprocess, iqa_postprocess, iqa_probe (3)
    for path in configs:
        config = _parse(path)
        assert config.name == path.parent.name if path.name == "config.pbtxt" else path.parent.parent.name
    scorer = {p.stem: _parse(p) for p in (MODEL_REPOSITORY / "iqa" / "configs").glob("*.pbtxt")}
    scorer["default"] = _parse(MODEL_REPOSITORY / "iqa" / "config.pbtxt")
    assert scorer["default"].platform == scorer["gpu"].platform == "onnxruntime_onnx"
    assert scorer["gpu"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert scorer["cpu"].backend == "python" and scorer["torchscript"].platform == "pytorch_libtorch"
    for config in scorer.values():
        assert config.max_batch_size >= 5 and config.version_policy.latest.num_versions == 2
        assert config.dynamic_batching.max_queue_delay_microseconds == DEFAULT_QUEUE_DELAY_US
        assert not config.dynamic_batching.preferred_batch_size
        assert len(config.model_warmup) == 1
    for name in ("iqa_preprocess", "iqa_postprocess"):
        config = _parse(MODEL_REPOSITORY / name / "config.pbtxt")
        assert config.backend == "python" and len(config.model_warmup) == 1
        assert config.parameters["EXECUTION_ENV_PATH"].string_value.endswith("/.venv-triton")
        for warm in config.model_warmup[0].inputs.values():
            if warm.input_data_file:
                assert (MODEL_REPOSITORY / name / "warmup" / warm.input_data_file).is_file()


def test_committed_family_is_what_export_writes(tmp_path: Path) -> None:
    copy = tmp_path / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for name in FAMILY[1:]:
        shutil.rmtree(copy / name)
    for stale in (copy / "iqa").rglob("*.p*txt"):
        stale.unlink()
    regenerate(copy, "iqa")
    assert _family_files(copy) == _family_files(MODEL_REPOSITORY), (
        "re-run: python -m export.triton_repository"
    )


def test_ensemble_pins_the_version_the_gateway_serves() -> None:
    served = resolve_model_version(MODEL_REPOSITORY, "iqa", "latest")
    ensemble = _parse(MODEL_REPOSITORY / "iqa_image" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "iqa_preprocess",
        "iqa",
        "iqa_postprocess",
    ]
    assert {s.model_version for s in ensemble.ensemble_scheduling.step} == {served.version}
    assert ensemble.parameters["scorer_version"].string_value == str(served.version)
    for version_dir in sorted(p for p in (MODEL_REPOSITORY / "iqa").iterdir() if p.name.isdigit()):
        preprocess = PreprocessConfig.from_dict(
            json.loads((version_dir / "metadata.json").read_text())["preprocess"]
        )
        for step in ("iqa_preprocess", "iqa_postprocess"):
            spec = json.loads((MODEL_REPOSITORY / step / version_dir.name / "preprocess.json").read_text())
            assert PreprocessConfig.from_dict(spec["preprocess"]) == preprocess
            assert spec["scorer"] == {"name": "iqa", "version": int(version_dir.name)}


def test_warmup_inputs_and_bad_values() -> None:
    blob = (MODEL_REPOSITORY / "iqa_preprocess" / "warmup" / "image_bytes").read_bytes()
    (length,) = struct.unpack("<I", blob[:4])
    assert length == len(blob) - 4 and Image.open(io.BytesIO(blob[4:])).format == "PNG"
    assert struct.unpack("<i", (MODEL_REPOSITORY / "iqa_postprocess" / "warmup" / "counts").read_bytes()) == (
        5,
    )
    with pytest.raises(ValueError, match="cannot hold"):
        render_ensemble_config("iqa", version=1, max_batch_size=4, num_crops=5)
    with pytest.raises(ValueError):
        render_config("iqa", crop_size=224, queue_delay_us=-1)
