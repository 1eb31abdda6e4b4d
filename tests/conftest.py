"""Shared pytest fixtures. Each section has an owner; add new fixtures in your own section."""

from __future__ import annotations

# =====================================================================================
# BEGIN gateway fixtures (owner: serving/). Real uvicorn subprocesses over a model repo.
#
#   run_gateway(repo, ...)          context manager: start `uvicorn serving.app:app` on a
#                                   free 127.0.0.1 port, wait for /readyz, yield GatewayServer
#                                   (.url, .log()), terminate on exit (also on failure).
#   gateway_factory                 fixture returning run_gateway (for custom env / repos).
#   write_model_version(...)        put model.onnx + metadata.json into <repo>/<name>/<version>/.
#   tiny_model_repository           session fixture: a tiny exported torch model, versions 1 and 3.
#   tiny_gateway                    session fixture: a ready server on tiny_model_repository.
#
# An integration test on a real export only needs:
#       with run_gateway(repo_dir, model_name="iqa") as server:
#           httpx.post(f"{server.url}/score", files={"file": ...})
# =====================================================================================
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from training.preprocessing import PreprocessConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
GATEWAY_START_TIMEOUT_S = 60.0
TINY_MODEL_NAME = "iqa"
TINY_PREPROCESS = PreprocessConfig(short_side=96, max_long_side=128, crop_size=64, num_eval_crops=5)


@dataclass
class GatewayServer:
    """A running gateway subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway_env(
    model_repository: Path, model_name: str, model_version: str, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IQA_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(
        IQA_MODEL_REPOSITORY=str(model_repository),
        IQA_MODEL_NAME=model_name,
        IQA_MODEL_VERSION=str(model_version),
        IQA_LOG_LEVEL="info",
    )
    env.update(extra)
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_up(server: GatewayServer, path: str, timeout: float) -> bool:
    """Poll ``path`` until 200; False if the process died (e.g. port taken). Raises on timeout."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            if httpx.get(f"{server.url}{path}", timeout=2.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway not up on {path} after {timeout:.0f}s; log:\n{server.log()[-4000:]}")


@contextlib.contextmanager
def run_gateway(
    model_repository: Path | str,
    *,
    model_name: str = TINY_MODEL_NAME,
    model_version: str | int = "latest",
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = GATEWAY_START_TIMEOUT_S,
    attempts: int = 3,
    uvicorn_args: tuple[str, ...] = (),
) -> Iterator[GatewayServer]:
    """Run ``uvicorn serving.app:app`` as a subprocess until the ``with`` block ends.

    Waits for /readyz (or only /healthz with ``wait_ready=False``). Retries on a fresh port if the
    process dies during start-up (the free port can be taken between probe and bind).
    """
    log_dir = Path(tempfile.mkdtemp(prefix="iqa-gateway-"))
    server: GatewayServer | None = None
    try:
        for attempt in range(attempts):
            port = free_port()
            log_path = log_dir / f"server-{attempt}.log"
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "serving.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *uvicorn_args,  # e.g. ("--workers", "2")
            ]
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    cmd,
                    cwd=REPO_ROOT,
                    env=_gateway_env(Path(model_repository), model_name, str(model_version), env or {}),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            server = GatewayServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
            if _wait_until_up(server, "/readyz" if wait_ready else "/healthz", timeout):
                break
            if attempt == attempts - 1:
                raise RuntimeError(f"gateway exited with {process.returncode}; log:\n{server.log()[-4000:]}")
        assert server is not None
        yield server
    finally:
        if server is not None:
            _stop(server.process)
        shutil.rmtree(log_dir, ignore_errors=True)


def export_tiny_iqa_onnx(path: Path, seed: int = 0) -> None:
    """Export a tiny IQA-shaped network: ``image`` uint8 [N,H,W,3] -> ``score`` float32 [N] on [0, 100]."""
    torch = pytest.importorskip("torch")

    class TinyIQA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, stride=2)
            self.head = torch.nn.Linear(8, 1)

        def forward(self, image: Any) -> Any:
            x = image.permute(0, 3, 1, 2).float() / 255.0
            x = torch.tanh(self.conv(x)).mean(dim=(2, 3))
            return torch.sigmoid(4.0 * self.head(x)[:, 0]) * 100.0

    torch.manual_seed(seed)
    model = TinyIQA().eval()
    example = torch.zeros((2, 64, 64, 3), dtype=torch.uint8)
    dim = torch.export.Dim
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["score"],
        dynamo=True,
        external_data=False,
        dynamic_shapes={"image": {0: dim("N"), 1: dim("H"), 2: dim("W")}},
        verbose=False,
    )


def write_model_version(
    repository: Path,
    name: str,
    version: int,
    model_file: Path,
    preprocess: PreprocessConfig,
    **metadata: Any,
) -> Path:
    """Create ``<repository>/<name>/<version>/`` with a copy of ``model_file`` and its metadata.json."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(model_file, folder / "model.onnx")
    meta = {"name": name, "version": version, "model_name": "tiny_iqa", "preprocess": preprocess.to_dict()}
    meta.update(metadata)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the tiny model as versions 1 and 3 (2 is an empty folder)."""
    root = tmp_path_factory.mktemp("model_repository")
    onnx_file = root / "tiny.onnx"
    export_tiny_iqa_onnx(onnx_file)
    write_model_version(root, TINY_MODEL_NAME, 1, onnx_file, TINY_PREPROCESS)
    write_model_version(root, TINY_MODEL_NAME, 3, onnx_file, TINY_PREPROCESS)
    (root / TINY_MODEL_NAME / "2").mkdir()
    return root


@pytest.fixture(scope="session")
def gateway_factory() -> Callable[..., contextlib.AbstractContextManager[GatewayServer]]:
    """``run_gateway`` as a fixture, for tests that need their own repository or environment."""
    return run_gateway


@pytest.fixture(scope="session")
def tiny_gateway(tiny_model_repository: Path) -> Iterator[GatewayServer]:
    """A ready gateway serving the tiny model (latest = version 3)."""
    with run_gateway(tiny_model_repository, env={"IQA_ORT_INTRA_OP_THREADS": "1"}) as server:
        yield server


# END gateway fixtures
# =====================================================================================


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest, and most predictably on a shared 2-core machine, on one thread.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# =====================================================================================
# BEGIN hardening fixtures (owner: serving/limits.py, auth.py, shutdown.py). See
# tests/hardening_fixtures.py.
#
#   costly_model_repository   session fixture: models with a real, known cost per request
#                             (5 crops of 224 px): version 1 "slow" (~1 s on one core),
#                             version 2 "medium" (~45 ms). Latest = 2.
# =====================================================================================


@pytest.fixture(scope="session")
def costly_model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.hardening_fixtures import costly_model_repository as build

    return build(tmp_path_factory.mktemp("costly_repository"), {1: (8, 64), 2: (2, 16)})


# END hardening fixtures
# =====================================================================================
