"""Run the real ``tritonserver`` of the PyPI wheel ``nvidia-pytriton`` on this machine (CPU, no Docker).

The wheel bundles tritonserver 2.51 with the Python backend only. This module prepares a backend
folder from it (the wheel's ``backends/`` plus the Python-backend stub built for this Python), sets
``LD_LIBRARY_PATH`` (libpython and the wheel's bundled libraries) and runs the server on loopback::

    python -m export.triton_server --model-repository model_repository --config-name cpu \\
        [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]      # what `make triton` runs

``TritonServer`` is the same as a context manager for tests (free ports, wait for readiness, stop or
kill). On Ctrl-C the foreground server gets SIGINT and unloads its models before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TritonInstall", "TritonServer", "find_install", "free_port", "main", "prepare_backends"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-triton"
DEFAULT_BACKENDS = REPO_ROOT / ".triton" / "backends"
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's tritonserver lives inside a virtual environment."""

    root: Path  # site-packages/pytriton/tritonserver
    libs: Path  # site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self, python_version: str) -> Path:
        return self.root / "python_backend_stubs" / python_version / STUB


def find_install(venv: Path = DEFAULT_VENV) -> TritonInstall:
    """Locate the wheel in ``venv``; a clear error names the command that installs it."""
    for site in sorted(Path(venv).glob("lib/python3*/site-packages")):
        root = site / "pytriton" / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return TritonInstall(root=root, libs=site / "nvidia_pytriton.libs")
    raise FileNotFoundError(
        f"no tritonserver in {venv}: run `make triton-install` "
        f"(python3.11 -m venv {venv} && {venv}/bin/pip install nvidia-pytriton==0.7.0)"
    )


def prepare_backends(
    install: TritonInstall, dest: Path = DEFAULT_BACKENDS, python_version: str | None = None
) -> Path:
    """Copy the wheel's backends to ``dest`` and put the stub for ``python_version`` into ``python/``."""
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.stub(python_version)
    if not stub.is_file():
        raise FileNotFoundError(f"the wheel has no Python-backend stub for Python {python_version} ({stub})")
    marker = dest / ".prepared"
    source_id = f"{install.root} {stub.stat().st_mtime_ns}"
    if marker.is_file() and marker.read_text() == source_id:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=dest.parent))
    shutil.copytree(install.root / "backends", staging, dirs_exist_ok=True)
    shutil.copy2(stub, staging / "python" / STUB)
    (staging / ".prepared").write_text(source_id)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(staging, dest)
    return dest


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver needs: libpython3.x and the wheel's bundled libraries."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in parts if p)
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TritonServer:
    """A tritonserver subprocess on loopback; ``start``/``stop`` or use it as a context manager."""

    model_repository: Path
    config_name: str | None = "cpu"
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    model_control: str = "none"  # none | explicit | poll
    load_models: Sequence[str] = ()
    venv: Path = DEFAULT_VENV
    backend_dir: Path = DEFAULT_BACKENDS
    exit_timeout_s: int = 10
    extra_args: Sequence[str] = ()
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        install = find_install(self.venv)
        cmd = [
            str(install.binary),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={prepare_backends(install, self.backend_dir)}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--log-verbose=0",
        ]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd + list(self.extra_args)

    def start(self, wait: bool = True, timeout: float = 180.0) -> TritonServer:
        """Start the server; with ``wait``, block until every model is ready (raises with the log)."""
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=server_env(find_install(self.venv)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        """Triton's /v2/health/ready (every loaded model ready, strict readiness)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}:\n{self.log()[-6000:]}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log()[-6000:]}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (models unload, stubs exit), then SIGKILL of the whole process group if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and its Python-backend stubs (a crash, for failure tests)."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(model_repository: Path, **kwargs: object) -> Iterator[TritonServer]:
    """``with running(repo) as server:`` a ready server, stopped afterwards (also on failure)."""
    server = TritonServer(Path(model_repository), **kwargs)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.stop()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a model repository with the wheel's tritonserver")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument(
        "--config-name", default="cpu", help="--model-config-name (configs/<name>.pbtxt; '' for config.pbtxt)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of all three endpoints")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control", default="none", choices=("none", "explicit", "poll"))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv holding nvidia-pytriton")
    parser.add_argument("--backend-dir", type=Path, default=DEFAULT_BACKENDS)
    parser.add_argument("--print-command", action="store_true", help="print the command and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = get_args_parser().parse_known_args(argv)
    server = TritonServer(
        args.model_repository,
        config_name=args.config_name or None,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control=args.model_control,
        venv=args.venv,
        backend_dir=args.backend_dir,
        extra_args=extra,
    )
    try:
        cmd = server.command()
        env = server_env(find_install(args.venv))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        print(" ".join(cmd))
        return 0
    print(
        f"tritonserver: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  "
        f"(config {args.config_name or 'config.pbtxt'}; Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    # exec: Ctrl-C reaches tritonserver itself, which unloads the models and exits 0.
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
