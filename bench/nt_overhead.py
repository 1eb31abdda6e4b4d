"""NT overhead benchmark: NT step time ÷ plain step time, and NT peak memory ÷ plain peak memory.

    python bench/nt_overhead.py [--model effnet_lite0] [--batch-size 16] [--crop 224] [--steps 5]

One run, the same batch for every variant. Each variant runs in its own subprocess, so its peak memory
is measured cleanly: on CUDA with ``torch.cuda.max_memory_allocated``, on CPU as the rise of the
process's peak RSS over its RSS just before the first step (activations + gradients + optimizer state).
A training step is forward + loss + backward + AdamW step with BatchNorm frozen, as in train.py.
Variants: plain (λ = 0), NT finite difference (Eq. 7, main forward reused), NT with the regulariser on
half the batch (``reg_fraction=0.5``), the exact double-backprop form (Eq. 5), and ``shipped``: the
``nt`` section of training/configs/default.yaml as it is.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time


def _shipped_nt() -> dict:
    """The ``nt`` section of the shipped recipe (training/configs/default.yaml)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "training" / "configs" / "default.yaml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["nt"])


VARIANTS: dict[str, dict] = {
    "plain": {"lam": 0.0},
    "nt_fd": {"lam": 1e-3, "mode": "fd"},
    "nt_fd_half": {"lam": 1e-3, "mode": "fd", "reg_fraction": 0.5},
    "nt_exact": {"lam": 1e-3, "mode": "exact"},
    "shipped": _shipped_nt(),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _run_variant(name: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch
    from torch import nn

    from training.models import create_model
    from training.nt import NTConfig, nt_loss
    from training.utils import freeze_batchnorm, resolve_device

    torch.manual_seed(0)
    device = resolve_device(args.device)
    model = create_model(args.model, backbone_weights="imagenet").to(device).train()
    freeze_batchnorm(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.crop, args.crop, generator=g).to(device)
    y = (torch.rand(args.batch_size, generator=g) * 100).to(device)
    cfg = NTConfig(**VARIANTS[name])
    crit = nn.L1Loss()

    def step() -> None:
        out = nt_loss(model, x, y, crit, cfg)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    queue.put({"variant": name, "step_s": statistics.median(times), "peak_mib": peak, "device": str(device)})


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="effnet_lite0")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    ctx = mp.get_context("spawn")
    results = {}
    for name in ["plain", *[v for v in args.variants if v != "plain"]]:
        q = ctx.Queue()
        proc = ctx.Process(target=_run_variant, args=(name, args, q))
        proc.start()
        results[name] = q.get()
        proc.join()
    plain = results["plain"]
    print(
        f"model={args.model} batch={args.batch_size} crop={args.crop} device={plain['device']} "
        f"steps={args.steps} (median)"
    )
    print(f"{'variant':12s} {'step s':>8s} {'peak MiB':>9s} {'time ratio':>10s} {'mem ratio':>9s}")
    for name, r in results.items():
        r["time_ratio"] = r["step_s"] / plain["step_s"]
        r["mem_ratio"] = r["peak_mib"] / plain["peak_mib"]
        row = f"{name:12s} {r['step_s']:8.3f} {r['peak_mib']:9.0f}"
        print(f"{row} {r['time_ratio']:10.2f} {r['mem_ratio']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
