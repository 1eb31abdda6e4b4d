"""bench/capacity.py, short: the real gateway with the shipped model, two concurrencies, one size."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.capacity import main


def test_capacity_bench_measures_a_replica_and_plans_replicas(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    args = ["--sides", "256", "--concurrency", "1", "2", "--seconds", "1.5", "--ort-threads", "1"]
    plan_args = ["--target", "1000", "--utilization", "0.5", "--replica-cpus", "2"]
    assert main([*args, *plan_args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    cells = report["cells"]
    assert [c["concurrency"] for c in cells] == [1, 2]
    assert all(c["errors"] == 0 and c["requests"] > 0 and c["p99_ms"] >= c["p50_ms"] > 0 for c in cells)
    (plan,) = report["capacity"]
    best = max(cells, key=lambda c: c["images_per_s"])
    assert plan["images_per_s"] == best["images_per_s"] and plan["concurrency"] == best["concurrency"]
    assert plan["replicas_at_full"] == math.ceil(1000 / plan["images_per_s"])
    assert plan["replicas_at_utilization"] == math.ceil(1000 / (plan["images_per_s"] * 0.5))
    # the server's CPU time per image (a 256-px image costs tens of ms on this CPU, not seconds)
    assert all(0 < c["cpu_s_per_image"] < 2.0 for c in cells)
    assert plan["cpu_bound_images_per_s"] == 2 / plan["cpu_s_per_image"]
