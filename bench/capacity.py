"""Capacity of one gateway replica: images per second over HTTP, and the replicas a target load needs.

    python bench/capacity.py [--sides 512 1024 2048] [--concurrency 1 2 4 8] [--seconds 10]
        [--ort-threads 0] [--target 1000] [--utilization 0.7] [--json runs/capacity.json]

One run. It starts the real gateway (``python -m serving``: uvicorn, the committed default model in
``model_repository``, ONNX Runtime, ``IQA_ORT_INTRA_OP_THREADS=--ort-threads``) on a free loopback
port and sends it a fixed set of photos (scikit-image's astronaut, coffee and chelsea as JPEG q90,
square, ``--sides`` px) with ``clients.triton_load.run_closed_loop``: ``concurrency`` threads, each
POSTing its next image to ``/score`` as soon as the previous answer came, for ``--seconds`` per cell.
A non-200 answer counts as an error, not an image. The gateway's admission queue is widened for the
run (``IQA_MAX_QUEUE``, ``IQA_QUEUE_TIMEOUT_S``) so the sweep measures throughput, not load shedding.

Per side, a replica's capacity is its best images/s over the concurrencies; the replicas for
``--target`` images/s are ``ceil(target / capacity)`` at 100% and at ``--utilization`` (the headroom
an autoscaler keeps). The load generator runs on the same machine, so it takes CPU from the server
on a small box: the figures are a floor for a replica that has its cores to itself.

It also reads the server process's CPU time (``/proc/<pid>/stat``, all its threads) around each
cell: CPU-seconds per image is what the work costs, whatever else runs on the machine, and
``--replica-cpus / cpu_s_per_image`` is the throughput of a replica that gets those CPUs in full
(the "CPU-bound" columns; on a shared machine they are the better estimate of a dedicated one).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/capacity.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import httpx

from clients.triton_load import LoadResult, run_closed_loop

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea")
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Capacity:
    side: int
    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    replicas_at_full: int
    replicas_at_utilization: int
    cpu_s_per_image: float
    cpu_bound_images_per_s: float
    cpu_bound_replicas_at_utilization: int


@dataclass(frozen=True)
class Cell:
    load: LoadResult
    cpu_s_per_image: float


def photo_set(side: int) -> list[bytes]:
    """The fixed photos as ``side`` x ``side`` JPEG q90 (scikit-image's sample images)."""
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.resize((side, side), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gateway(ort_threads: int, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """``python -m serving`` on a free loopback port, ready; yields (url, pid); terminated on exit."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IQA_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(
        IQA_HOST="127.0.0.1",
        IQA_PORT=str(port),
        IQA_MODEL_REPOSITORY=str(REPO_ROOT / "model_repository"),
        IQA_ORT_INTRA_OP_THREADS=str(ort_threads),
        IQA_LOG_LEVEL="warning",
        IQA_MAX_QUEUE="1024",
        IQA_QUEUE_TIMEOUT_S="120",
    )
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        cmd = [sys.executable, "-m", "serving"]
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"gateway not ready:\n{log.read().decode(errors='replace')[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


class _HttpSender:
    """One keep-alive connection POSTing the photos in turn; raises on a non-200 answer."""

    def __init__(self, url: str, photos: list[bytes], offset: int) -> None:
        self._client = httpx.Client(base_url=url, timeout=120)
        self._photos = photos
        self._i = offset

    def __call__(self) -> object:
        body = self._photos[self._i % len(self._photos)]
        self._i += 1
        resp = self._client.post("/score", content=body, headers={"Content-Type": "image/jpeg"})
        resp.raise_for_status()
        return resp.json()["score"]

    def close(self) -> None:
        self._client.close()


def sender_factory(url: str, photos: list[bytes]) -> Callable[[], _HttpSender]:
    counter = iter(range(1 << 30))
    return lambda: _HttpSender(url, photos, next(counter))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def capacity(
    side: int, cells: Sequence[Cell], target: float, utilization: float, replica_cpus: float
) -> Capacity:
    best_cell = max(cells, key=lambda c: c.load.images_per_s)
    best = best_cell.load
    rate = best.images_per_s
    cpu = best_cell.cpu_s_per_image
    cpu_rate = replica_cpus / cpu if cpu > 0 else 0.0
    return Capacity(
        side=side,
        concurrency=best.concurrency,
        images_per_s=rate,
        p50_ms=best.p50_ms,
        p99_ms=best.p99_ms,
        replicas_at_full=math.ceil(target / rate) if rate > 0 else 0,
        replicas_at_utilization=math.ceil(target / (rate * utilization)) if rate > 0 else 0,
        cpu_s_per_image=cpu,
        cpu_bound_images_per_s=cpu_rate,
        cpu_bound_replicas_at_utilization=math.ceil(target / (cpu_rate * utilization)) if cpu_rate > 0 else 0,
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load = parser.add_argument_group("load")
    load.add_argument("--sides", type=int, nargs="+", default=[512, 1024, 2048])
    load.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    load.add_argument("--seconds", type=float, default=10.0, help="measured window per cell")
    server = parser.add_argument_group("gateway")
    server.add_argument("--ort-threads", type=int, default=0, help="IQA_ORT_INTRA_OP_THREADS, 0: ORT's own")
    server.add_argument("--env", nargs="*", default=[], metavar="IQA_X=V", help="more gateway settings")
    plan = parser.add_argument_group("capacity plan")
    plan.add_argument("--target", type=float, default=1000.0, help="images per second to serve")
    plan.add_argument("--utilization", type=float, default=0.7, help="planned CPU share per replica")
    plan.add_argument("--replica-cpus", type=float, default=2.0, help="CPUs of one replica (its limit)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    cells: list[Cell] = []
    plans: list[Capacity] = []
    with gateway(args.ort_threads, extra) as (url, pid):
        print("| side px | concurrency | images/s | p50 ms | p99 ms | errors | server CPU s/image |")
        print("|---|---|---|---|---|---|---|")
        for side in args.sides:
            photos = photo_set(side)
            rows = []
            for c in args.concurrency:
                before = cpu_seconds(pid)
                result = run_closed_loop(sender_factory(url, photos), c, args.seconds, model=f"{side}")
                used = cpu_seconds(pid) - before  # includes the senders' warm-up requests (one each)
                cell = Cell(result, used / (result.requests + c) if result.requests else 0.0)
                rows.append(cell)
                print(f"{result.row()} {cell.cpu_s_per_image:.3f} |", flush=True)
            cells += rows
            plans.append(capacity(side, rows, args.target, args.utilization, args.replica_cpus))
    load_after = os.getloadavg()
    pct = round(args.utilization * 100)
    print(f"\nTarget {args.target:.0f} images/s: replicas = ceil(target / capacity), at 100% and {pct}%")
    cpus = f"{args.replica_cpus:g}"
    print(
        f"| side px | images/s per replica | at c | p50 ms | p99 ms | replicas 100% | replicas {pct}% "
        f"| CPU s/image | CPU-bound images/s ({cpus} CPUs) | CPU-bound replicas {pct}% |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        print(
            f"| {p.side} | {p.images_per_s:.1f} | {p.concurrency} | {p.p50_ms:.0f} | {p.p99_ms:.0f} "
            f"| {p.replicas_at_full} | {p.replicas_at_utilization} | {p.cpu_s_per_image:.3f} "
            f"| {p.cpu_bound_images_per_s:.1f} | {p.cpu_bound_replicas_at_utilization} |"
        )
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "started_utc": started.isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_before": load_before,
                "load_after": load_after,
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cells": [
                asdict(c.load) | {"images_per_s": c.load.images_per_s, "cpu_s_per_image": c.cpu_s_per_image}
                for c in cells
            ],
            "capacity": [asdict(p) for p in plans],
        }
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if all(c.load.errors == 0 for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
