"""Helpers of the real-Triton tests (tests/test_triton*.py): the wheel's tritonserver on loopback.

Each test module starts one server (``TritonServer`` from ``export/triton_server.py``) with the CPU
config of the scorer; the server needs ``.venv-triton`` (``make triton-install``, which ``make test``
runs). Without it the tests are skipped on a developer's machine and fail under CI.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.triton_server import DEFAULT_VENV, TritonServer, find_install

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
TOL = 1e-3


def require_triton() -> None:
    """Skip (fail under CI) when the wheel's tritonserver is not installed."""
    try:
        find_install(DEFAULT_VENV)
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the Triton venv: {exc}")
        pytest.skip(str(exc))


def start_server(repository: Path = MODEL_REPOSITORY, **kwargs: object) -> TritonServer:
    """A ready tritonserver (CPU config) on free loopback ports; the caller stops it."""
    require_triton()
    server = TritonServer(Path(repository), **kwargs)  # type: ignore[arg-type]
    try:
        return server.start(timeout=240)
    except Exception:
        server.kill()
        raise


def copy_repository(dest: Path) -> Path:
    """A copy of the committed repository at ``dest/model_repository`` that still finds its
    execution environment (``<repository>/../.venv-triton``, see export/triton_config.py)."""
    repo = dest / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns(".*staging*", "__pycache__"))
    (dest / DEFAULT_VENV.name).symlink_to(DEFAULT_VENV)
    return repo


def encode(image: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_bytes() -> dict[str, bytes]:
    """Real photos (scikit-image's, bundled) encoded as JPEG, PNG and WebP, at several sizes."""
    import skimage.data as sd

    astronaut = sd.astronaut()
    big = np.asarray(Image.fromarray(astronaut).resize((1400, 1000), Image.Resampling.BICUBIC))
    return {
        "astronaut.jpg": encode(astronaut, "JPEG", quality=90),
        "chelsea.png": encode(sd.chelsea(), "PNG"),
        "coffee.webp": encode(sd.coffee(), "WEBP", quality=80),
        "rocket.jpg": encode(sd.rocket(), "JPEG", quality=60),
        "camera_gray.png": encode(sd.camera(), "PNG"),
        "astronaut_1400x1000.jpg": encode(big, "JPEG", quality=85),
    }


def bad_bytes() -> dict[str, bytes]:
    """Bytes the gateway answers 400 for: not an image, a truncated JPEG, nothing."""
    import skimage.data as sd

    jpeg = encode(sd.chelsea(), "JPEG")
    return {"garbage": b"this is not an image", "truncated.jpg": jpeg[: len(jpeg) // 3], "empty": b""}


def gateway_scores(
    images: dict[str, bytes], version: int | str = "latest", repository: Path = MODEL_REPOSITORY
) -> dict[str, float]:
    """What the gateway's embedded ONNX Runtime pipeline returns for each image."""
    from serving.backends.onnxruntime_backend import OnnxRuntimeBackend
    from serving.model_store import resolve_model_version
    from serving.pipeline import score_image_bytes
    from serving.settings import Settings

    model = resolve_model_version(repository, "iqa", version)
    backend = OnnxRuntimeBackend(model.model_path, model.info, intra_op_threads=1)
    backend.load()
    limit = Settings().max_pixels
    return {key: score_image_bytes(data, backend, model.preprocess, limit) for key, data in images.items()}
