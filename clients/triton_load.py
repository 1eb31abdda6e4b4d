"""Closed-loop load generator for the IQA models on Triton, and the queue-delay sweep.

    python clients/triton_load.py --url 127.0.0.1:8001 --model iqa_image --concurrency 1 8 32
    python clients/triton_load.py --model iqa --queue-delays 0 500 2000 5000 --concurrency 8
        # needs tritonserver --model-control-mode=explicit: each delay reloads the scorer with it

``iqa_image`` requests carry one encoded photo; ``iqa`` requests carry that photo's preprocessed
crops (what the gateway sends). Each of ``concurrency`` threads sends its next request as soon as
the previous one answered, for ``--seconds``; the table gives images per second and the p50 / p99
latency of a request. Numbers are measured in the run that prints them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python clients/triton_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from clients.triton_common import BYTES_INPUT, CROPS_INPUT, DEFAULT_URL, bytes_array
from training.preprocessing import PreprocessConfig, preprocess_bytes

__all__ = ["LoadResult", "main", "run_closed_loop", "run_load", "sample_photo"]


@dataclass(frozen=True)
class LoadResult:
    model: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def images_per_s(self) -> float:
        return self.requests / self.seconds

    def row(self, label: str = "") -> str:
        return (
            f"| {label or self.model} | {self.concurrency} | {self.images_per_s:.1f} | {self.p50_ms:.1f} "
            f"| {self.p99_ms:.1f} | {self.errors} |"
        )


def sample_photo(side: int = 512) -> bytes:
    """A real photo (scikit-image's astronaut) as JPEG, resized to ``side`` px."""
    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((side, side)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _request(model: str, payload: np.ndarray) -> grpcclient.InferInput:
    if model.endswith("_image"):
        tensor = grpcclient.InferInput(BYTES_INPUT, [len(payload)], "BYTES")
    else:
        tensor = grpcclient.InferInput(CROPS_INPUT, list(payload.shape), "UINT8")
    tensor.set_data_from_numpy(payload)
    return tensor


def run_closed_loop(
    make_sender: Callable[[], Callable[[], object]], concurrency: int, seconds: float, model: str = ""
) -> LoadResult:
    """``concurrency`` closed-loop threads for ``seconds``, each calling its own ``make_sender()``.

    ``make_sender`` runs in the thread (a connection, a session handle) and returns the request
    function; each thread calls it once to warm up, then all start together and each sends its next
    request as soon as the previous one answered. One call is one image.
    """
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    go = threading.Event()
    window = {"deadline": 0.0}

    def worker() -> None:
        send: Callable[[], object] | None = None
        try:
            send = make_sender()
            send()  # connect / warm up outside the measured window
        except Exception:
            send = None
            with lock:
                errors[0] += 1
        barrier.wait()
        go.wait()
        while send is not None and time.monotonic() < window["deadline"]:
            started = time.perf_counter()
            try:
                send()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
        close = getattr(send, "close", None)
        if callable(close):
            close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()  # every thread connected and warm
    began = time.monotonic()
    window["deadline"] = began + seconds
    go.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(model, concurrency, len(latencies), elapsed, float(np.percentile(ms, 50)),
                      float(np.percentile(ms, 99)), errors[0])  # fmt: skip


class _GrpcSender:
    """One gRPC connection that sends ``payload`` to ``model`` on each call."""

    def __init__(self, url: str, model: str, payload: np.ndarray) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.model, self.payload = model, payload

    def __call__(self) -> object:
        return self.client.infer(self.model, [_request(self.model, self.payload)])

    def close(self) -> None:
        self.client.close()


def run_load(url: str, model: str, payload: np.ndarray, concurrency: int, seconds: float) -> LoadResult:
    """``concurrency`` closed-loop gRPC senders to Triton for ``seconds``; one image per request."""
    return run_closed_loop(lambda: _GrpcSender(url, model, payload), concurrency, seconds, model)


def set_queue_delay(url: str, model: str, delay_us: int) -> None:
    """Reload ``model`` with another ``max_queue_delay_microseconds`` (explicit model control)."""
    client = grpcclient.InferenceServerClient(url)
    config = client.get_model_config(model, as_json=True)["config"]
    config.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = str(delay_us)
    client.load_model(model, config=json.dumps(config))
    client.close()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Closed-loop load on the IQA models on Triton")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--model", nargs="+", default=["iqa", "iqa_image"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--side", type=int, default=512, help="side of the JPEG photo sent")
    parser.add_argument(
        "--queue-delays",
        type=int,
        nargs="*",
        default=None,
        help="sweep the scorer's max_queue_delay_microseconds (explicit control)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    photo = sample_photo(args.side)
    crops = preprocess_bytes(photo, served_preprocess() or PreprocessConfig())
    payloads = {"iqa": crops, "iqa_image": bytes_array([photo])}
    print("| model | concurrency | images/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for delay in args.queue_delays or [None]:
        if delay is not None:
            set_queue_delay(args.url, "iqa", delay)
        for model in args.model:
            for concurrency in args.concurrency:
                payload = payloads["iqa_image" if model.endswith("_image") else "iqa"]
                result = run_load(args.url, model, payload, concurrency, args.seconds)
                label = model if delay is None else f"{model}, delay {delay} us"
                print(result.row(label), flush=True)
    return 0


def served_preprocess() -> PreprocessConfig | None:
    """The latest version's PreprocessConfig in ./model_repository (what the gateway would use)."""
    from serving.model_store import resolve_model_version

    try:
        return resolve_model_version(Path("model_repository"), "iqa", "latest").preprocess
    except Exception:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
