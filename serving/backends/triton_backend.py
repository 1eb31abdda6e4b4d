"""Remote Triton backend (``IQA_BACKEND=triton``): the gateway's crops scored by ``<name>`` over gRPC.

The gateway still decodes and preprocesses (the one pipeline, ``serving/pipeline.py``) with the
``PreprocessConfig`` of the version it resolved in its own copy of the model repository, and asks
Triton for exactly that version (``model_version`` pinned), so the preprocessing and the network
always belong together.

Readiness follows Triton: a background thread asks ``is_model_ready(name, version)`` every
``poll_s`` seconds with a short deadline, and ``ready()`` returns the last answer without blocking
(it is called on the event loop). When Triton goes away, an in-flight ``infer`` fails fast with
UNAVAILABLE and raises ``BackendDown`` (503), and readiness turns false within ``poll_s``; when it
comes back, the poller sees the model ready again and the gateway serves again, with no restart.
The gRPC channel reconnects with a short backoff (``_CHANNEL_ARGS``) so that takes about a second.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.backends.base import ModelInfo
from serving.errors import BackendDown, InternalError, ModelLoadError

__all__ = ["TritonBackend"]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "score"
_DOWN = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}
# Reconnect quickly after Triton restarts (gRPC's default backoff grows to two minutes).
# Passing channel_args replaces tritonclient's defaults, so its message-size limits are repeated here.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
]


class TritonBackend:
    """Scores uint8 crops with one pinned version of a Triton model, over gRPC."""

    def __init__(
        self,
        url: str,
        info: ModelInfo,
        *,
        model_name: str | None = None,
        timeout_s: float = 10.0,
        poll_s: float = 0.5,
        load_timeout_s: float = 120.0,
    ) -> None:
        self._url = url
        self._info = info
        self._model = model_name or info.name
        self._version = str(info.version)
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._load_timeout_s = load_timeout_s
        self._client: grpcclient.InferenceServerClient | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        """Connect, wait up to ``load_timeout_s`` for the pinned version, check its I/O, start polling."""
        try:
            client = grpcclient.InferenceServerClient(self._url, channel_args=_CHANNEL_ARGS)
        except Exception as exc:  # a malformed URL
            raise ModelLoadError(
                f"cannot create a Triton client for '{self._url}' (IQA_TRITON_URL): {exc}"
            ) from exc
        deadline = time.monotonic() + self._load_timeout_s
        while not self._check(client):
            if time.monotonic() > deadline:
                client.close()
                raise ModelLoadError(
                    f"Triton at {self._url} (IQA_TRITON_URL) has no ready model '{self._model}' version "
                    f"{self._version} after {self._load_timeout_s:.0f} s"
                )
            time.sleep(self._poll_s)
        self._check_io(client)
        self._client = client
        self._ready.set()
        self._poller = threading.Thread(target=self._poll, name="triton-readiness", daemon=True)
        self._poller.start()
        logger.info("triton backend ready: %s model %s version %s", self._url, self._model, self._version)

    def _check(self, client: grpcclient.InferenceServerClient) -> bool:
        try:
            return bool(
                client.is_model_ready(self._model, self._version, client_timeout=max(self._poll_s, 0.2))
            )
        except InferenceServerException:
            return False

    def _check_io(self, client: grpcclient.InferenceServerClient) -> None:
        meta = client.get_model_metadata(self._model, self._version, as_json=True)
        inputs = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
        outputs = {t["name"] for t in meta.get("outputs", [])}
        if inputs.get(INPUT_NAME) != "UINT8" or OUTPUT_NAME not in outputs:
            client.close()
            raise ModelLoadError(
                f"Triton model '{self._model}' version {self._version} does not take '{INPUT_NAME}' UINT8 "
                f"and return '{OUTPUT_NAME}' (inputs {inputs}, outputs {sorted(outputs)})"
            )

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            client = self._client
            if client is None:
                return
            ready = self._check(client)
            if ready != self._ready.is_set():
                logger.warning(
                    "triton model %s version %s %s",
                    self._model,
                    self._version,
                    "is ready again" if ready else f"is not ready at {self._url}",
                )
            if ready:
                self._ready.set()
            else:
                self._ready.clear()

    def ready(self) -> bool:
        return self._client is not None and self._ready.is_set()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        client = self._client
        if client is None:
            raise BackendDown("triton backend is not connected")
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise InternalError(f"backend expects uint8 N x H x W x 3, got {batch.dtype} {batch.shape}")
        tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            result = client.infer(
                self._model,
                [tensor],
                model_version=self._version,
                outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as exc:
            status = str(exc.status())
            if status in _DOWN or status == "StatusCode.NOT_FOUND":
                self._ready.clear()
                logger.warning("triton inference failed (%s): %s", status, exc.message())
                raise BackendDown("the inference server is unavailable") from None
            raise InternalError(f"triton inference failed: {status}") from exc
        scores = result.as_numpy(OUTPUT_NAME)
        if scores is None:
            raise InternalError("triton returned no score")
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        self._stop.set()
        self._ready.clear()
        client, self._client = self._client, None
        if self._poller is not None:
            self._poller.join(timeout=2 * self._poll_s + 1)
        if client is not None:
            client.close()
