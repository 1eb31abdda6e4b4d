"""End to end, as a user runs it: build the ci dataset, train a baseline and an NT model, export the
NT model, serve it with uvicorn, and score real JPEG and PNG bytes over HTTP.

Every step runs the project's real command line in a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
from serving.model_store import resolve_model_version
from serving.pipeline import score_image_bytes
from tests.conftest import run_gateway
from tests.gate_fixtures import ci_manifest
from training.data.dataset import read_split
from training.utils import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def manifest() -> Path:
    return ci_manifest()


def _train(workdir: Path, manifest: Path, name: str, lam: float) -> Path:
    out = workdir / name
    proc = _run(
        "training/train.py",
        "--config",
        "training/configs/ci.yaml",
        f"data.manifest={manifest}",
        f"output_dir={out}",
        f"nt.lam={lam}",
    )
    assert "SROCC" in proc.stdout and "RMSE" in proc.stdout
    return out / "best.pt"


@pytest.fixture(scope="module")
def checkpoints(workdir: Path, manifest: Path) -> dict[str, Path]:
    return {
        "baseline": _train(workdir, manifest, "baseline", 0.0),
        "nt": _train(workdir, manifest, "nt", 0.001),
    }


@pytest.fixture(scope="module")
def repository(workdir: Path, checkpoints: dict[str, Path], manifest: Path) -> Path:
    repo = workdir / "model_repository"
    _run(
        "export/export.py",
        "--checkpoint",
        str(checkpoints["nt"]),
        "--model-repository",
        str(repo),
        "--name",
        "iqa",
        "--version",
        "1",
        "--images",
        str(manifest),
        "--allow-ungated",  # the ci run is not gated: tests/test_gate.py covers the gate itself
    )
    return repo


def test_training_writes_a_complete_checkpoint(checkpoints: dict[str, Path], manifest: Path) -> None:
    n_val = len(read_split(manifest, "val"))
    for name, path in checkpoints.items():
        ckpt = load_checkpoint(path)
        assert ckpt["args"]["nt"]["lam"] == (0.0 if name == "baseline" else 0.001)
        for split in ("val_metrics", "test_metrics"):
            assert set(ckpt[split]) >= {"srocc", "plcc", "krocc", "rmse"}
            assert 0 <= ckpt[split]["rmse"] <= 100
        assert len(ckpt["val_scores"]) == n_val
        assert all(0 <= s <= 100 for s in ckpt["val_scores"])
        log = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        assert [r["split"] for r in log] == ["val", "val", "test"]
        assert (path.parent / "config.yaml").is_file()
    # the same seed and data: the baseline and NT runs differ only by the regulariser
    base, nt = (load_checkpoint(p) for p in checkpoints.values())
    assert base["data_hash"] == nt["data_hash"]
    assert any(not torch.equal(base["model"][k], nt["model"][k]) for k in base["model"])


def test_resume_continues_from_last_epoch(
    workdir: Path, checkpoints: dict[str, Path], manifest: Path
) -> None:
    last = checkpoints["baseline"].parent / "last.pt"
    out = workdir / "resumed"
    _run(
        "training/train.py",
        "--config",
        "training/configs/ci.yaml",
        f"data.manifest={manifest}",
        f"output_dir={out}",
        "nt.lam=0",
        "optim.epochs=3",
        "--resume",
        str(last),
    )
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["split"] == "val"] == [2]


def test_init_from_starts_from_a_checkpoints_weights_with_ranking_batches(
    workdir: Path, checkpoints: dict[str, Path], manifest: Path
) -> None:
    """train.init_from loads the weights (fine-tuning); with lr 0 they come out unchanged, through a
    run on grouped ranking batches (rank.weight > 0) and NT."""
    out = workdir / "finetuned"
    _run(
        "training/train.py",
        "--config",
        "training/configs/ci.yaml",
        f"data.manifest={manifest}",
        f"output_dir={out}",
        f"train.init_from={checkpoints['nt']}",
        "optim.lr=0",
        "optim.epochs=1",
        "rank.weight=1.0",
    )
    start, tuned = load_checkpoint(checkpoints["nt"])["model"], load_checkpoint(out / "best.pt")["model"]
    assert start.keys() == tuned.keys()
    assert all(torch.equal(start[k], tuned[k]) for k in start)


def test_bad_cli_arguments_give_one_line_errors(manifest: Path) -> None:
    for args in (["nt.lam=-1"], ["no.such.key=1"], ["data.manifest=/nonexistent/manifest.csv"]):
        proc = subprocess.run(
            [sys.executable, "training/train.py", "--config", "training/configs/ci.yaml", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("train.py: error:")


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_images(manifest: Path) -> dict[str, bytes]:
    rows = read_split(manifest, "test")
    img = np.asarray(Image.open(rows[0].path).convert("RGB"))
    return {"jpeg": _encode(img, "JPEG"), "png": _encode(img, "PNG")}


@pytest.fixture(scope="module")
def gateway(repository: Path) -> Iterator[str]:
    with run_gateway(repository, model_name="iqa") as server:
        yield server.url


def test_gateway_serves_the_exported_model(
    gateway: str, repository: Path, test_images: dict[str, bytes]
) -> None:
    version = resolve_model_version(repository, "iqa", "latest")
    backend = OnnxRuntimeBackend(version.model_path, version.info)
    backend.load()
    jpeg = httpx.post(
        f"{gateway}/score", files={"file": ("ad.jpg", test_images["jpeg"], "image/jpeg")}, timeout=60
    )
    png = httpx.post(
        f"{gateway}/score", content=test_images["png"], headers={"Content-Type": "image/png"}, timeout=60
    )
    for resp, data in ((jpeg, test_images["jpeg"]), (png, test_images["png"])):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == "iqa" and body["version"] == 1
        assert 0.0 <= body["score"] <= 100.0
        assert body["score"] == pytest.approx(score_image_bytes(data, backend, version.preprocess), abs=1e-4)


def test_exported_scores_match_pytorch(
    repository: Path, checkpoints: dict[str, Path], test_images: dict[str, bytes]
) -> None:
    """The served score of a PNG equals the PyTorch checkpoint's multi-crop score of the same pixels."""
    from training.preprocessing import preprocess_bytes
    from training.utils import model_from_checkpoint

    model = model_from_checkpoint(checkpoints["nt"])
    version = resolve_model_version(repository, "iqa", "latest")
    crops = preprocess_bytes(test_images["png"], model.preprocess_cfg)
    with torch.no_grad():
        x = torch.from_numpy(crops).float().div(255).permute(0, 3, 1, 2)
        torch_score = float(model.score(x).mean())
    backend = OnnxRuntimeBackend(version.model_path, version.info)
    backend.load()
    assert score_image_bytes(test_images["png"], backend, version.preprocess) == pytest.approx(
        torch_score, abs=1e-3
    )


def test_corrupt_upload_is_a_json_4xx(gateway: str, test_images: dict[str, bytes]) -> None:
    truncated = test_images["jpeg"][: len(test_images["jpeg"]) // 3]
    for payload in (truncated, b"not an image at all"):
        resp = httpx.post(f"{gateway}/score", files={"file": ("x.jpg", payload, "image/jpeg")}, timeout=60)
        assert 400 <= resp.status_code < 500
        assert resp.json()["error"]["code"]
