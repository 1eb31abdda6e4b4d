"""Overload and latency at 70% load on a real gateway: capacity, p50/p99 at 0.7 x capacity, shedding.

    python bench/overload.py                                         # the shipped model (model_repository)
    python bench/overload.py --slots 2 --clients 40 --json

Three phases against one ``uvicorn serving.app:app`` subprocess (``IQA_MAX_CONCURRENCY=--slots``,
``IQA_MAX_QUEUE=--queue``, ``IQA_QUEUE_TIMEOUT_S=--queue-timeout``, one ONNX Runtime thread a slot):

1. capacity: a closed loop with as many clients as slots (no request waits): images per second;
2. 70% load: Poisson arrivals at 0.7 x capacity: p50 and p99 of the answered requests, p99 / p50;
3. overload: ``--clients`` clients back to back: how many 200 and 429, how fast the 429s come.

Numbers are measured in the run that prints them; the client shares the machine with the server.
tests/test_hardening_load.py runs the same phases on a small model.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/overload.py`: the repository root, not bench/ (whose
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # triton.py would shadow the triton package)

import argparse
import json

from bench.soak import photo
from clients.http_load import percentile, run_closed_loop, run_open_loop

__all__ = ["main", "measure"]


def measure(
    repository: Path, *, slots: int, queue: int, queue_timeout: float, clients: int, load_requests: int
) -> dict[str, object]:
    from tests.conftest import run_gateway

    env = {
        "IQA_ORT_INTRA_OP_THREADS": "1",
        "IQA_MAX_CONCURRENCY": str(slots),
        "IQA_MAX_QUEUE": str(queue),
        "IQA_QUEUE_TIMEOUT_S": str(queue_timeout),
        "IQA_LOG_LEVEL": "warning",
    }
    data = photo()
    with run_gateway(repository, env=env) as server:
        run_closed_loop(server.url, data, concurrency=slots, requests=4 * slots)  # warm-up
        capacity = run_closed_loop(server.url, data, concurrency=slots, requests=max(20 * slots, 40))
        rate = len(capacity.answers) / capacity.wall_s
        loaded = run_open_loop(
            server.url, data, rate_per_s=0.7 * rate, requests=load_requests, threads=max(8, 4 * slots)
        )
        storm = run_closed_loop(server.url, data, concurrency=clients, requests=10 * clients)
    lat, shed = loaded.latencies(200), storm.latencies(429)
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return {
        "slots": slots,
        "capacity_per_s": round(rate, 2),
        "capacity_p50_ms": round(percentile(capacity.latencies(200), 50) * 1e3, 1),
        "load70_rate_per_s": round(0.7 * rate, 2),
        "load70_statuses": loaded.statuses(),
        "load70_p50_ms": round(p50 * 1e3, 1),
        "load70_p99_ms": round(p99 * 1e3, 1),
        "load70_p99_over_p50": round(p99 / p50, 2),
        "overload_clients": clients,
        "overload_statuses": storm.statuses(),
        "overload_200_p50_ms": round(percentile(storm.latencies(200), 50) * 1e3, 1),
        "overload_200_max_ms": round(max(storm.latencies(200), default=float("nan")) * 1e3, 1),
        "overload_429_p50_ms": round(percentile(shed, 50) * 1e3, 1),
        "overload_429_p99_ms": round(percentile(shed, 99) * 1e3, 1),
        "server_errors_5xx": capacity.server_errors() + loaded.server_errors() + storm.server_errors(),
        "transport_errors": len(capacity.errors) + len(loaded.errors) + len(storm.errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--queue-timeout", type=float, default=0.5)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--load-requests", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = measure(
        args.model_repository,
        slots=args.slots,
        queue=args.queue,
        queue_timeout=args.queue_timeout,
        clients=args.clients,
        load_requests=args.load_requests,
    )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:24s} {value}")
    return 1 if report["server_errors_5xx"] or report["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
