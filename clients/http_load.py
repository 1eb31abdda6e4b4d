"""HTTP load for the gateway's ``POST /score``: closed loop (N clients back to back) and open loop
(Poisson arrivals at a fixed rate), recording every answer's status, latency and error code.

    python clients/http_load.py --url http://127.0.0.1:8080 --image photo.jpg --concurrency 32 --requests 3000
    python clients/http_load.py --url ... --image photo.jpg --rate 40 --requests 400   # open loop

Used by the hardening tests (tests/test_hardening_load.py) and bench/soak.py. A transport failure
(refused, reset, timed out) is recorded apart from HTTP answers: the gateway should never cause one.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

__all__ = ["Answer", "LoadResult", "percentile", "post_image", "run_closed_loop", "run_open_loop"]


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    code: str | None = None  # the JSON error code of a 4xx/5xx
    retry_after: str | None = None
    json_body: bool = True


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # transport failures
    wall_s: float = 0.0

    def statuses(self) -> dict[int, int]:
        return dict(sorted(Counter(a.status for a in self.answers).items()))

    def server_errors(self) -> int:
        return sum(a.status >= 500 for a in self.answers)

    def latencies(self, status: int = 200) -> list[float]:
        return [a.seconds for a in self.answers if a.status == status]

    def summary(self, status: int = 200) -> dict[str, object]:
        lat = self.latencies(status)
        return {
            "statuses": self.statuses(),
            "transport_errors": len(self.errors),
            "wall_s": round(self.wall_s, 3),
            "rate_per_s": round(len(self.answers) / self.wall_s, 1) if self.wall_s else None,
            f"p50_{status}_ms": round(percentile(lat, 50) * 1e3, 2),
            f"p99_{status}_ms": round(percentile(lat, 99) * 1e3, 2),
            f"max_{status}_ms": round(max(lat) * 1e3, 2) if lat else None,
        }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def post_image(
    client: httpx.Client, url: str, data: bytes, content_type: str = "image/jpeg", path: str = "/score"
) -> Answer:
    started = time.monotonic()
    response = client.post(f"{url}{path}", content=data, headers={"content-type": content_type})
    seconds = time.monotonic() - started
    code, is_json = None, response.headers.get("content-type", "").startswith("application/json")
    if response.status_code >= 400 and is_json:
        code = response.json().get("error", {}).get("code")
    return Answer(response.status_code, seconds, code, response.headers.get("retry-after"), is_json)


def _worker_loop(
    url: str,
    data: bytes,
    next_job: Callable[[], float | None],
    result: LoadResult,
    lock: threading.Lock,
    timeout_s: float,
    ready: threading.Barrier,
    start: list[float],
) -> None:
    # every client is built (an SSL context each: tens of ms of CPU) before any request is timed
    with httpx.Client(timeout=timeout_s) as client:
        ready.wait()
        while (offset := next_job()) is not None:
            delay = start[0] + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                answer = post_image(client, url, data)
            except httpx.HTTPError as exc:
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                result.answers.append(answer)


def _run(url: str, data: bytes, threads: int, schedule: list[float], timeout_s: float) -> LoadResult:
    """Send at ``schedule`` (seconds after the common start); 0 = as soon as a client is free."""
    result, lock = LoadResult(), threading.Lock()
    jobs = iter(schedule)
    start = [0.0]

    def next_job() -> float | None:
        with lock:
            return next(jobs, None)

    def go() -> None:
        start[0] = time.monotonic()

    ready = threading.Barrier(threads, action=go)
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(_worker_loop, url, data, next_job, result, lock, timeout_s, ready, start)
            for _ in range(threads)
        ]
        for future in futures:
            future.result()
    result.wall_s = time.monotonic() - start[0]
    return result


def run_closed_loop(
    url: str, data: bytes, *, concurrency: int, requests: int, timeout_s: float = 30.0
) -> LoadResult:
    """``requests`` POSTs from ``concurrency`` clients, each sending its next one when answered."""
    return _run(url, data, concurrency, [0.0] * requests, timeout_s)


def run_open_loop(
    url: str,
    data: bytes,
    *,
    rate_per_s: float,
    requests: int,
    threads: int = 32,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> LoadResult:
    """``requests`` POSTs with Poisson arrivals at ``rate_per_s``, whatever the answers' latency.

    Latency is measured from the actual send; ``threads`` must exceed rate x latency (else sends lag).
    """
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=requests)
    return _run(url, data, threads, (np.cumsum(gaps) - gaps[0]).tolist(), timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop clients")
    parser.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    args = parser.parse_args(argv)
    data = args.image.read_bytes()
    if args.rate:
        result = run_open_loop(args.url, data, rate_per_s=args.rate, requests=args.requests)
    else:
        result = run_closed_loop(args.url, data, concurrency=args.concurrency, requests=args.requests)
    print(json.dumps(result.summary()))
    return 1 if result.errors or result.server_errors() else 0


if __name__ == "__main__":
    sys.exit(main())
