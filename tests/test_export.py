"""Export: artifacts, ONNX contract, numeric parity (ONNX / TorchScript / torch.export vs eager),
Triton config, metadata, and the refusals (existing version, missing checkpoint, broken parity).

CPU only and offline: a randomly initialised model on a small PreprocessConfig, its BatchNorm
statistics calibrated and its last layer scaled so the scores and gradients are not constant.
The ``exported`` fixture is parametrized over the model registry, so every test that uses it runs for
each registered architecture: a new model gets export-parity tests for free.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import export.onnx_export as onnx_export
import export.parity as parity_module
from export.export import ExportError, _publish, check_gate, main
from export.metadata import HISTOGRAM_BINS, QUANTILES
from export.onnx_export import DEFAULT_OPSET, MIN_OPSET
from export.parity import SAMPLE_IMAGES, load_parity_images
from export.torchscript_export import load_program, load_torchscript
from export.triton_config import render_config
from training.models import create_model, list_models
from training.preprocessing import PreprocessConfig, eval_crops, resize_canonical
from training.utils import file_sha256, model_from_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_CFG = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64)
TOL = 1e-3
NAME = "iqa"


def _calibrate(model: nn.Module, crop: int, seed: int = 0) -> nn.Module:
    """Give a random model BatchNorm statistics and an output spread of a few score units."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, crop, crop, generator=generator))
    model.eval()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        spread = float(model(torch.rand(8, 3, crop, crop, generator=generator)).std())
        last_linear.weight.mul_(min(5.0 / max(spread, 1e-6), 1e3))
    return model


def _write_checkpoint(path: Path, model_name: str = "effnet_lite0") -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, backbone_weights="none", preprocess_cfg=SMALL_CFG)
    model = _calibrate(model, SMALL_CFG.crop_size)
    val_scores = np.random.default_rng(0).uniform(20, 80, size=64).tolist()
    ckpt: dict[str, Any] = {
        "model": model.state_dict(),
        "model_name": model_name,
        "model_kwargs": {},
        "preprocess_cfg": SMALL_CFG.to_dict(),
        "epoch": 1,
        "args": {"model": model_name, "lr": 1e-3},
        "val_metrics": {"srcc": 0.5, "plcc": 0.6},
        "test_metrics": {"srcc": 0.45, "plcc": 0.55},
        "data_hash": "0" * 64,
        "val_scores": val_scores,
    }
    save_checkpoint(ckpt, path)
    return path


def _write_manifest(folder: Path) -> Path:
    """Smooth random photos-to-be (120x160 -> canonical 96x128), three test rows and one train row."""
    rng = np.random.default_rng(1)
    rows = []
    for i, split in enumerate(["test", "train", "test", "test"]):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((160, 120), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, size=(120, 160, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "mos": 50.0 + i, "split": split})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "mos", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _cli(checkpoint: Path, repo: Path, version: int = 1, *extra: str, gated: bool = False) -> list[str]:
    """Export arguments; the fixtures' checkpoints are ungated, so ``--allow-ungated`` unless ``gated``."""
    return [
        "--checkpoint",
        str(checkpoint),
        "--model-repository",
        str(repo),
        "--name",
        NAME,
        "--version",
        str(version),
        *extra,
        *([] if gated else ["--allow-ungated"]),
    ]


def _staging_leftovers(model_dir: Path) -> list[Path]:
    return [p for p in model_dir.glob(".*")] if model_dir.exists() else []


def _eager_scores(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    x = torch.tensor(batch).float().div(255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model.score(x).numpy()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_manifest(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module", params=list_models())
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, manifest: Path
) -> SimpleNamespace:
    """One CLI export per registered model (parity images: the manifest's test split)."""
    model_name = request.param
    root = tmp_path_factory.mktemp(f"export-{model_name}")
    checkpoint = _write_checkpoint(root / "ckpt.pt", model_name)
    repo = root / "model_repository"
    assert main(_cli(checkpoint, repo, 1, "--images", str(manifest))) == 0
    model_dir = repo / NAME
    version_dir = model_dir / "1"
    return SimpleNamespace(
        model_name=model_name,
        checkpoint=checkpoint,
        manifest=manifest,
        repo=repo,
        model_dir=model_dir,
        version_dir=version_dir,
        model=model_from_checkpoint(checkpoint),
        metadata=json.loads((version_dir / "metadata.json").read_text()),
    )


def test_artifacts_exist(exported: SimpleNamespace) -> None:
    for name in ("model.onnx", "model.pt", "model.pt2", "metadata.json"):
        assert (exported.version_dir / name).is_file(), name
    assert (exported.model_dir / "config.pbtxt").is_file()
    assert (exported.model_dir / "configs" / "gpu.pbtxt").is_file()
    assert _staging_leftovers(exported.model_dir) == []


def test_onnx_graph_contract(exported: SimpleNamespace) -> None:
    path = exported.version_dir / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    (image,), (score,) = graph.input, graph.output
    assert (image.name, score.name) == ("image", "score")
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert score.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = image.type.tensor_type.shape.dim
    assert len(in_dims) == 4 and in_dims[3].dim_value == 3
    assert all(d.dim_param and not d.HasField("dim_value") for d in in_dims[:3])  # dynamic N, H, W
    (out_dim,) = score.type.tensor_type.shape.dim
    assert out_dim.dim_param == in_dims[0].dim_param  # output batch axis is the input's
    opset = next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= MIN_OPSET


def test_onnx_matches_pytorch_on_crops_full_image_and_batches(exported: SimpleNamespace) -> None:
    onnx_path = exported.version_dir / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = exported.model
    (first, *_) = load_parity_images(exported.manifest)
    canonical = resize_canonical(first.pixels, SMALL_CFG)
    assert canonical.shape == (96, 128, 3)
    crops = eval_crops(canonical, SMALL_CFG)
    for batch in (crops[:1], crops[:3], crops, canonical[None]):
        got = session.run(["score"], {"image": batch})[0]
        ref = _eager_scores(model, batch)
        assert got.shape == (len(batch),) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)
    assert np.ptp(_eager_scores(model, crops)) > 1e-2, "test model is constant: parity would prove nothing"


def test_torchscript_gradient_matches_eager(exported: SimpleNamespace) -> None:
    scripted = load_torchscript(exported.version_dir / "model.pt")
    for shape in ((2, 3, 64, 64), (1, 3, 96, 128)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
        x_ts, x_eager = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (g_ts,) = torch.autograd.grad(scripted(x_ts).sum(), x_ts)
        (g_eager,) = torch.autograd.grad(exported.model.score(x_eager).sum(), x_eager)
        assert g_eager.abs().max() > 0
        torch.testing.assert_close(g_ts, g_eager, rtol=1e-4, atol=1e-6)


def test_program_matches_eager_at_several_batch_sizes(exported: SimpleNamespace) -> None:
    program = load_program(exported.version_dir / "model.pt2")
    for batch in (1, 3):
        x = torch.rand(batch, 3, 64, 96, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            torch.testing.assert_close(program(x), exported.model.score(x), rtol=0, atol=TOL)


def test_triton_config(exported: SimpleNamespace) -> None:
    text = (exported.model_dir / "config.pbtxt").read_text()
    assert re.search(r'^name: "(.+)"$', text, re.M).group(1) == exported.model_dir.name
    assert int(re.search(r"^max_batch_size: (\d+)$", text, re.M).group(1)) > 0
    assert 'platform: "onnxruntime_onnx"' in text
    assert "dims: [ -1, -1, 3 ]" in text and "reshape: { shape: [ ] }" in text
    assert "model_warmup" in text and "dims: [ 64, 64, 3 ]" in text and "kind: KIND_CPU" in text
    assert "dynamic_batching" in text and "latest" in text
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")
    gpu = (exported.model_dir / "configs" / "gpu.pbtxt").read_text()
    assert "kind: KIND_GPU" in gpu and gpu.replace("KIND_GPU", "KIND_CPU") == text


def test_render_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        render_config("../evil", crop_size=224)
    with pytest.raises(ValueError):
        render_config("iqa", crop_size=224, max_batch_size=0)


def test_metadata(exported: SimpleNamespace) -> None:
    meta = exported.metadata
    ckpt = torch.load(exported.checkpoint, map_location="cpu", weights_only=False)
    assert (meta["name"], meta["version"], meta["model_name"]) == (NAME, 1, exported.model_name)
    assert meta["preprocess"] == SMALL_CFG.to_dict()
    assert meta["training_config"] == ckpt["args"] and meta["data_hash"] == ckpt["data_hash"]
    assert meta["clean_metrics"] == {"val": ckpt["val_metrics"], "test": ckpt["test_metrics"]}
    ref = meta["reference_distribution"]
    assert ref["scores"] == pytest.approx(ckpt["val_scores"]) and ref["n"] == len(ckpt["val_scores"])
    assert ref["mean"] == pytest.approx(np.mean(ckpt["val_scores"]))
    assert list(ref["quantiles"]) == [f"{q:.2f}" for q in QUANTILES]
    assert len(ref["histogram"]["counts"]) == HISTOGRAM_BINS and sum(ref["histogram"]["counts"]) == ref["n"]
    assert ref["histogram"]["range"] == [0.0, 100.0]
    assert meta["gate"] is None
    parity = meta["parity"]
    assert parity["passed"] and parity["n_crops"] == 3 * SMALL_CFG.num_eval_crops
    assert len(parity["images"]) == 3  # the manifest's test rows only
    assert parity["full_sizes"] == [[96, 128]] * 3
    assert (
        max(
            parity[k]
            for k in (
                "onnx_crops_max_abs_diff",
                "onnx_full_max_abs_diff",
                "torchscript_crops_max_abs_diff",
                "program_crops_max_abs_diff",
            )
        )
        <= TOL
    )
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"]) and meta["exported_at"]
    assert set(meta["artifacts"]) == {"model.onnx", "model.pt", "model.pt2"}
    for name, info in meta["artifacts"].items():
        assert info["sha256"] == file_sha256([exported.version_dir / name])


def test_reexport_to_existing_version_is_refused(
    exported: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    before = file_sha256([exported.version_dir / "model.onnx"])
    with caplog.at_level(logging.ERROR):
        assert main(_cli(exported.checkpoint, exported.repo, 1)) != 0
    assert "already exists" in caplog.text
    assert file_sha256([exported.version_dir / "model.onnx"]) == before


def test_unsafe_model_name_is_refused(tmp_path: Path) -> None:
    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "x.pt"),
                "--model-repository",
                str(tmp_path / "repo"),
                "--name",
                "../escape",
                "--version",
                "1",
            ]
        )
        != 0
    )
    assert not (tmp_path / "escape").exists() and not (tmp_path / "repo").exists()


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(_cli(tmp_path / "missing.pt", tmp_path / "repo")) != 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "checkpoint not found" in errors[0]
    assert not (tmp_path / "repo" / NAME / "1").exists()


def test_gate_verdicts() -> None:
    with pytest.raises(ExportError, match="ungated"):
        check_gate({}, allow_ungated=False)
    assert check_gate({}, allow_ungated=True) is None
    assert check_gate({"gate": {"passed": True}}, allow_ungated=False) == {"passed": True}
    row = {"section": "fgsm", "metric": "rmse_clean_vs_adv", "value": 12.0, "op": "<=", "threshold": 8.0}
    failed = {"gate": {"passed": False, "failures": [row]}}
    with pytest.raises(ExportError, match="fgsm"):
        check_gate(failed, allow_ungated=False)
    assert check_gate(failed, allow_ungated=True) == failed["gate"]


def test_export_refuses_an_ungated_or_failed_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CLI exits non-zero, says why, and writes no version folder."""
    ckpt = torch.load(_write_checkpoint(tmp_path / "base.pt"), map_location="cpu", weights_only=False)
    for name, gate in (
        ("ungated", None),
        (
            "failed",
            {
                "passed": False,
                "failures": [{"section": "pgd_2", "metric": "r", "value": 0.2, "op": ">=", "threshold": 0.7}],
            },
        ),
        ("stale", {"passed": True, "weights_sha256": "0" * 64}),  # passed, but for other weights
    ):
        ckpt["gate"] = gate
        path = tmp_path / f"{name}.pt"
        save_checkpoint(ckpt, path)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(_cli(path, tmp_path / "repo", gated=True)) != 0
        expected = {"ungated": "ungated", "failed": "pgd_2", "stale": "stale: the gate verdict was given"}
        assert "refusing to export" in caplog.text and expected[name] in caplog.text
        assert not (tmp_path / "repo" / NAME / "1").exists()


def test_broken_parity_fails_and_leaves_no_version(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_run_onnx = parity_module.run_onnx
    monkeypatch.setattr(parity_module, "run_onnx", lambda session, batch: real_run_onnx(session, batch) + 0.5)
    checkpoint = _write_checkpoint(tmp_path / "ckpt.pt")
    repo = tmp_path / "repo"
    with caplog.at_level(logging.ERROR):  # --images as a folder this time
        assert main(_cli(checkpoint, repo, 1, "--images", str(manifest.parent))) != 0
    assert "parity failed" in caplog.text and "ONNX vs PyTorch" in caplog.text
    model_dir = repo / NAME
    assert not (model_dir / "1").exists()
    assert _staging_leftovers(model_dir) == []
    assert not (model_dir / "config.pbtxt").exists()


def test_parity_image_sources(manifest: Path) -> None:
    samples = load_parity_images(None)  # scikit-image photos, bundled with the package (offline)
    assert [s.name for s in samples] == [f"skimage.data.{n}" for n in SAMPLE_IMAGES]
    assert all(s.pixels.dtype == np.uint8 and s.pixels.ndim == 3 and s.pixels.shape[2] == 3 for s in samples)
    assert len(load_parity_images(manifest)) == 3  # test split only
    assert len(load_parity_images(manifest.parent)) == 4  # every image in the folder
    with pytest.raises(FileNotFoundError):
        load_parity_images(manifest.parent / "nope")


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET])
def test_torchscript_based_exporter_fallback(
    opset: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opset 17, or a failing dynamo exporter: the TorchScript-based one writes an equivalent graph."""
    monkeypatch.setattr(onnx_export, "_export_dynamo", lambda *args: "simulated dynamo failure")
    model = model_from_checkpoint(_write_checkpoint(tmp_path / "ckpt.pt"))
    info = onnx_export.export_onnx(model, tmp_path / "model.onnx", opset=opset)
    assert (info.exporter, info.opset) == ("torchscript", opset)
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    for shape in ((1, 64, 64, 3), (3, 96, 128, 3)):
        batch = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        np.testing.assert_allclose(
            session.run(["score"], {"image": batch})[0], _eager_scores(model, batch), rtol=0, atol=TOL
        )


def test_force_replaces_a_version_by_rename(tmp_path: Path) -> None:
    model_dir = tmp_path / NAME
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "old").write_text("old")
    staging = model_dir / ".staging-1-x"
    staging.mkdir()
    (staging / "new").write_text("new")
    with pytest.raises(ExportError):
        _publish(staging, model_dir / "1", force=False)
    _publish(staging, model_dir / "1", force=True)
    assert [p.name for p in (model_dir / "1").iterdir()] == ["new"]
    assert [p.name for p in model_dir.iterdir()] == ["1"]


def test_cli_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "export/export.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--model-repository" in result.stdout
