"""What /metrics costs the gateway: throughput with metrics on vs off, measured in one run.

    python bench/metrics_overhead.py [--model-repository model_repository] [--name iqa] [--version latest]
        [--rounds 16] [--requests 32] [--concurrency 2] [--scrape-interval 1] [--threads 1] [--json]
    python bench/metrics_overhead.py --micro      # microseconds per call of the recording functions

Two real gateways (``uvicorn serving.app:app`` subprocesses) serve the same model, one with
IQA_METRICS_ENABLED=true and one with false. Rounds alternate which one is loaded first (on, off,
then off, on, ...) so that drift of a shared machine falls on both alike. In a round each gateway
gets ``--requests`` POST /score of the same photo-like JPEGs from ``--concurrency`` closed-loop
clients; while the metrics-on gateway is loaded, a scraper also GETs its /metrics every
``--scrape-interval`` seconds (Prometheus's default is 15 s: 1 s is a heavy scraper), so the cost of
being scraped counts too.

The cost of an image is measured twice: the gateway process's CPU seconds (user + system, from
/proc) ÷ requests, which is what bounds throughput on a saturated server and is little disturbed by
other load on a shared machine, and wall seconds ÷ requests, the throughput the clients saw. Each is
reported as the ratio on ÷ off of the summed costs and as the median of the per-round ratios.
Target: ≤ 1.02.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/metrics_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image


def photo_jpegs(n: int, side: int = 512) -> list[bytes]:
    """``n`` photo-like 4:3 JPEGs (smooth gradients, texture, noise), quality 90."""
    out = []
    h, w = round(side * 3 / 4), side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for seed in range(n):
        rng = np.random.default_rng(seed)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 37 + yy / 53 + phase[0])], -1) * 200
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_round(url: str, images: list[bytes], requests: int, concurrency: int) -> float:
    """Wall seconds for ``requests`` POST /score from ``concurrency`` closed-loop clients."""
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                headers = {"content-type": "image/jpeg"}
                http.post(f"{url}/score", content=images[i % len(images)], headers=headers).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - start


@contextlib.contextmanager
def scraping(url: str, interval: float) -> Iterator[list[int]]:
    """GET ``url``/metrics every ``interval`` seconds until the block ends; yields the scrape count."""
    stop = threading.Event()
    count = [0]

    def scrape() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.wait(interval):
                http.get(f"{url}/metrics").raise_for_status()
                count[0] += 1

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()


def micro_costs(model_repository: str, name: str, version: str, n: int = 20000) -> dict[str, float]:
    """Microseconds per call of the recording functions, in-process, on the model's reference."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
    from prometheus_client.exposition import generate_latest

    from serving.metrics import GatewayMetrics
    from serving.model_store import resolve_model_version
    from serving.pipeline import ScoreResult

    model = resolve_model_version(Path(model_repository), name, version)
    registry = CollectorRegistry()  # what serving.metrics.activate builds in single-process mode
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    metrics = GatewayMetrics(registry)
    metrics.set_model(model.info, model.metadata)
    timings = {"decode": 0.01, "validate": 1e-6, "preprocess": 0.002, "infer": 0.05, "postprocess": 1e-5}
    result = ScoreResult(score=55.0, crops=5, timings=timings)
    metrics.drift_config = dataclasses.replace(metrics.drift_config, recompute_every=n + 1)  # timed apart
    for _ in range(metrics.drift_config.window):
        metrics.observe_result(result)  # a full window for update_drift
    calls = {
        "observe_result (no drift recompute)": (lambda: metrics.observe_result(result), n),
        "observe_request": (lambda: metrics.observe_request("/score", 200, 0.05), n),
        "update_drift (PSI + KS of a full window)": (metrics.update_drift, n // 100),
        "one scrape (text exposition of the registry)": (lambda: generate_latest(registry), n // 100),
    }
    out = {}
    for label, (call, repeats) in calls.items():
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[label] = 1e6 * (time.perf_counter() - start) / repeats
    return out


def _ratio(a: float, b: float) -> float:
    """a / b; NaN when b is 0 (a round shorter than one CPU clock tick)."""
    return a / b if b > 0 else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default="model_repository")
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", default="latest")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--requests", type=int, default=32, help="requests per gateway per round")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--scrape-interval", type=float, default=1.0, help="seconds; 0 = no scraping")
    p.add_argument("--threads", type=int, default=1, help="IQA_ORT_INTRA_OP_THREADS of each gateway")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--micro", action="store_true", help="only time the recording functions in-process")
    args = p.parse_args(argv)
    if args.micro:
        for label, us in micro_costs(args.model_repository, args.name, args.version).items():
            print(f"{label}: {us:.1f} us per call")
        return 0

    images = photo_jpegs(args.images)
    from tests.conftest import GatewayServer, run_gateway  # the gateway subprocess the tests and benches use

    common = {"IQA_ORT_INTRA_OP_THREADS": str(args.threads), "IQA_LOG_LEVEL": "warning"}
    wall: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    scrapes = 0
    on_env, off_env = common | {"IQA_METRICS_ENABLED": "true"}, common | {"IQA_METRICS_ENABLED": "false"}
    repository = Path(args.model_repository).resolve()
    quiet = ("--log-level", "warning", "--no-access-log")

    def gateway(env: dict[str, str]) -> contextlib.AbstractContextManager[GatewayServer]:
        return run_gateway(repository, model_name=args.name, model_version=args.version, env=env,
                           uvicorn_args=quiet)  # fmt: skip

    with gateway(on_env) as on, gateway(off_env) as off:
        servers = {"on": on, "off": off}
        assert httpx.get(f"{on.url}/metrics").status_code == 200
        assert httpx.get(f"{off.url}/metrics").status_code == 404
        for server in servers.values():  # warm-up: lazy init, first-request paths
            load_round(server.url, images, 2 * args.concurrency, args.concurrency)
        for r in range(args.rounds):
            for which in ("on", "off") if r % 2 == 0 else ("off", "on"):
                server = servers[which]
                scrape = which == "on" and args.scrape_interval > 0
                with contextlib.ExitStack() as stack:
                    count = stack.enter_context(scraping(server.url, args.scrape_interval)) if scrape else [0]
                    cpu0 = cpu_seconds(server.process.pid)
                    wall[which].append(load_round(server.url, images, args.requests, args.concurrency))
                    cpu[which].append(cpu_seconds(server.process.pid) - cpu0)
                scrapes += count[0]

    result: dict[str, object] = {
        "model": f"{args.name}/{args.version}",
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "scrape_interval_s": args.scrape_interval,
        "scrapes": scrapes,
    }
    print(
        f"model {result['model']}, {args.rounds} rounds x {args.requests} requests per gateway, "
        f"concurrency {args.concurrency}, /metrics scraped every {args.scrape_interval:g} s "
        f"({scrapes} scrapes)",
        file=sys.stderr if args.json else sys.stdout,
    )
    for name, seconds in (("cpu", cpu), ("wall", wall)):
        per_image = {k: [1000 * s / args.requests for s in v] for k, v in seconds.items()}
        ratio = _ratio(sum(seconds["on"]), sum(seconds["off"]))
        round_ratios = [_ratio(a, b) for a, b in zip(seconds["on"], seconds["off"], strict=True)]
        result[name] = {
            "ms_per_image_on": statistics.fmean(per_image["on"]),
            "ms_per_image_off": statistics.fmean(per_image["off"]),
            "ratio_on_off": ratio,
            "median_round_ratio": statistics.median(round_ratios),
            "round_ratios": round_ratios,
        }
        if args.json:
            continue
        print(f"\n{name} ms per image")
        print("| round | on | off | on ÷ off |")
        print("|---|---|---|---|")
        for r, (a, b) in enumerate(zip(per_image["on"], per_image["off"], strict=True)):
            print(f"| {r} | {a:.2f} | {b:.2f} | {_ratio(a, b):.3f} |")
        print(
            f"{name}: metrics on ÷ off {ratio:.4f} ({100 * (ratio - 1):+.2f}%), "
            f"median round ratio {statistics.median(round_ratios):.4f}; target <= 1.02"
        )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
