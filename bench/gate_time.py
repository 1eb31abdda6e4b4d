"""Wall time of the default acceptance gate (training/configs/gate.yaml), per section.

    python bench/gate_time.py [--checkpoint runs/default/best.pt] [--surrogate runs/surrogate/best.pt]
        [--manifest data/full/manifest.csv] [--images 200] [--threads 2] [--device cpu] [key=value ...]

The budget is 10 minutes for 200 test images with effnet_lite0 (224 px crops) on 2 CPU cores. Without
``--checkpoint`` / ``--surrogate`` fresh effnet_lite0 models (ImageNet backbone, untrained head) stand
in: the cost of every attack does not depend on the weights. Without a manifest (or if it is
missing) synthetic 288×448 canonical images are used, without the UAP row (it is fitted on the
manifest's val split). The UAP time includes fitting it on the surrogate (cached after the first
run in a real gate, so a one-time cost). The report goes to a
temporary folder unless ``--report`` is given. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.data.dataset import ManifestDataset
from training.gate.config import load_gate_config
from training.gate.data import EvalData, load_eval_data
from training.gate.report import load_report
from training.gate.run import run_gate
from training.models import create_model
from training.utils import load_checkpoint, model_from_checkpoint, resolve_device

BUDGET_S = 600.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time the default acceptance gate per section.")
    p.add_argument("--checkpoint", help="model to gate (default: a fresh effnet_lite0)")
    p.add_argument("--surrogate", help="surrogate checkpoint (default: a fresh effnet_lite0, seed 1)")
    p.add_argument("--manifest", default="data/full/manifest.csv", help="test images (synthetic if missing)")
    p.add_argument("--images", type=int, default=200, help="num_images of the gate")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--gate-config", help="gate YAML (default training/configs/gate.yaml)")
    p.add_argument("--report", help="report folder (default: a temporary one)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="gate-config overrides")
    return p


def _model(path: str | None, seed: int, device: torch.device) -> torch.nn.Module:
    if path:
        return model_from_checkpoint(load_checkpoint(path)).to(device)
    torch.manual_seed(seed)
    return create_model("effnet_lite0", backbone_weights="imagenet").to(device).eval()


def _synthetic(n: int, seed: int = 0) -> EvalData:
    gen = torch.Generator().manual_seed(seed)
    images = [torch.round(torch.rand(3, 288, 448, generator=gen) * 255) / 255 for _ in range(n)]
    mos = np.random.default_rng(seed).uniform(5, 95, size=n)
    return EvalData(images, mos, [f"synthetic-{i}" for i in range(n)])


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_gate_config(args.gate_config, [f"num_images={args.images}", *args.overrides])
    model = _model(args.checkpoint, 0, device)
    surrogate = _model(args.surrogate, 1, device)
    if Path(args.manifest).is_file():
        ds = ManifestDataset(args.manifest, cfg.get("split", "test"), model.preprocess_cfg, train=False)
        data = load_eval_data(ds, cfg["num_images"], int(cfg.get("seed", 0)), manifest=args.manifest)
    else:  # no manifest to fit the UAP on (it fits on another split): the UAP row is left out
        data = _synthetic(cfg["num_images"])
        cfg["attacks"].pop("uap", None)
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(args.report or tmp)
        start = time.perf_counter()
        run_gate(model, data, cfg, report_dir, surrogate=surrogate)
        wall = time.perf_counter() - start
        report = load_report(report_dir)
    print(f"gate on {len(data)} images, {args.threads} thread(s), device {device}, "
          f"attack crops {report['meta']['attack_crops']}:")
    for section, seconds in report["seconds"].items():
        if section != "total":
            n = (report["attacks"].get(section) or {}).get("n_images", "")
            print(f"  {section:12s} {seconds:8.1f} s  {n}")
    print(f"  {'total':12s} {wall:8.1f} s  (budget {BUDGET_S:.0f} s: {'OK' if wall <= BUDGET_S else 'OVER'})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main(get_args_parser().parse_args()))
