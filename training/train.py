"""Train an NR-IQA model with norm-regularization training (NT).

    python training/train.py --config training/configs/default.yaml [key=value ...]

``nt.lam=0`` trains the plain baseline. The best epoch is chosen on the *validation* split; the test
split is scored once, at the end, with the best weights. Outputs in ``output_dir``: ``best.pt`` and
``last.pt`` checkpoints (one dict each, see training/utils.py), ``config.yaml`` (resolved settings) and
``metrics.jsonl`` (one JSON line per epoch and a final ``test`` line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from training.config import DEFAULTS, merge_config, set_dotted
from training.data.dataset import ManifestDataset, dataset_preprocess_config
from training.data.sampler import GroupedBatchSampler
from training.engine import evaluate, train_one_epoch
from training.losses import REGRESSION_LOSSES, IQALoss, RankConfig
from training.models import create_model
from training.nt import NTConfig
from training.preprocessing import PreprocessConfig
from training.utils import (
    load_checkpoint,
    load_yaml_config,
    parse_overrides,
    resolve_device,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger("train")

SELECTION_METRIC = "srocc"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train an NR-IQA model with NT (norm-regularization training).")
    g = p.add_argument_group("configuration")
    g.add_argument("--config", help="YAML file with settings (see training/configs/default.yaml)")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. nt.lam=0")
    g = p.add_argument_group("shortcuts (same as the dotted keys)")
    g.add_argument("--output-dir", help="output_dir")
    g.add_argument("--device", help="device: auto | cpu | cuda")
    g.add_argument("--resume", help="train.resume: checkpoint to continue from")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = DEFAULTS
    if args.config:
        cfg = merge_config(cfg, load_yaml_config(args.config))
    for key, value in parse_overrides(args.overrides).items():
        cfg = set_dotted(cfg, key, value)
    for key, value in (
        ("output_dir", args.output_dir),
        ("device", args.device),
        ("train.resume", args.resume),
    ):
        if value is not None:
            cfg = set_dotted(cfg, key, value)
    NTConfig(**cfg["nt"])  # validate early
    RankConfig(**cfg["rank"])
    if cfg["optim"]["loss"] not in REGRESSION_LOSSES:
        raise ValueError(f"optim.loss must be one of {sorted(REGRESSION_LOSSES)}")
    return cfg


def build_preprocess_cfg(cfg: dict[str, Any]) -> PreprocessConfig:
    """The dataset's recorded preprocessing, with any explicit ``data.*`` override on top."""
    base = dataset_preprocess_config(cfg["data"]["manifest"]) or PreprocessConfig()
    d = base.to_dict()
    for key in ("short_side", "max_long_side", "crop_size", "num_eval_crops"):
        if cfg["data"][key] is not None:
            d[key] = cfg["data"][key]
    return PreprocessConfig.from_dict(d)


def build_loaders(cfg: dict[str, Any], pp: PreprocessConfig, device: torch.device) -> dict[str, DataLoader]:
    data, optim = cfg["data"], cfg["optim"]
    common = {
        "num_workers": data["num_workers"],
        "pin_memory": device.type == "cuda",
        "persistent_workers": data["num_workers"] > 0,
    }
    rank = RankConfig(**cfg["rank"])
    loaders = {}
    for split in ("train", "val", "test"):
        train = split == "train"
        ds = ManifestDataset(
            data["manifest"], split, pp, train=train, seed=cfg["seed"], cache=data["cache_images"]
        )
        limit = cfg["train"]["max_val_images"]
        if split == "val" and limit and len(ds.rows) > limit:
            ds.rows = [ds.rows[round(i * len(ds.rows) / limit)] for i in range(int(limit))]
        if train and rank.enabled:  # ranking groups: levels of one reference in each batch
            sampler = GroupedBatchSampler(ds.rows, optim["batch_size"], rank.group_size, seed=cfg["seed"])
            loaders[split] = DataLoader(ds, batch_sampler=sampler, **common)
        else:
            loaders[split] = DataLoader(
                ds,
                batch_size=optim["batch_size"] if train else cfg["train"]["eval_batch_size"],
                shuffle=train,
                drop_last=train and len(ds) > optim["batch_size"],
                generator=torch.Generator().manual_seed(cfg["seed"]),
                **common,
            )
    return loaders


def build_optimizer(
    model: nn.Module, cfg: dict[str, Any], steps_total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = cfg["optim"]
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": o["lr"]}, {"params": head, "lr": o["lr"] * o["head_lr_mult"]}],
        weight_decay=o["weight_decay"],
    )
    warmup = max(0, int(o["warmup_steps"]))

    def lr_lambda(step: int) -> float:  # linear warm-up, then cosine decay to 1% of the peak
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps_total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    m = cfg["model"]
    return {k: v for k, v in m.items() if k != "name" and v is not None}


# dataset.json keys that describe one build run, not the data: excluded from the data hash.
_BUILD_RUN_KEYS = ("build_seconds",)


def data_hash(manifest: str | Path) -> str:
    """SHA-256 of what the model was trained on: the manifest's bytes and, when present, the
    builder's dataset.json without its run-specific keys (two builds of the same data hash alike)."""
    manifest = Path(manifest)
    h = hashlib.sha256(Path(manifest).read_bytes())
    summary = manifest.parent / "dataset.json"
    if summary.is_file():
        content = json.loads(summary.read_text(encoding="utf-8"))
        for key in _BUILD_RUN_KEYS:
            content.pop(key, None)
        h.update(json.dumps(content, sort_keys=True).encode())
    return h.hexdigest()


class MetricsLog:
    """Append-only JSONL log of per-epoch metrics."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        if not resume and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "config.yaml", "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)

    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    amp = bool(cfg["train"]["amp"]) and device.type == "cuda"
    pp = build_preprocess_cfg(cfg)
    nt_cfg = NTConfig(**cfg["nt"])
    log.info("device=%s amp=%s nt=%s preprocess=%s", device, amp, nt_cfg, pp.to_json())

    loaders = build_loaders(cfg, pp, device)
    kwargs = model_kwargs(cfg)
    model = create_model(cfg["model"]["name"], preprocess_cfg=pp, **kwargs).to(device)
    if cfg["train"]["init_from"] and not cfg["train"]["resume"]:
        model.load_state_dict(load_checkpoint(cfg["train"]["init_from"])["model"])
        log.info("model weights from %s (fine-tuning: new optimizer and schedule)", cfg["train"]["init_from"])
    epochs = int(cfg["optim"]["epochs"])
    steps_per_epoch = len(loaders["train"])
    if cfg["train"]["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(cfg["train"]["max_steps_per_epoch"]))
    optimizer, scheduler = build_optimizer(model, cfg, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    criterion = IQALoss(cfg["optim"]["loss"], RankConfig(**cfg["rank"]))

    start_epoch, best_value, best_epoch = 0, -math.inf, -1
    if cfg["train"]["resume"]:
        ckpt = load_checkpoint(cfg["train"]["resume"])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_value = float(ckpt.get("best_value", -math.inf))
        best_epoch = int(ckpt.get("best_epoch", -1))
        resumed_best = Path(cfg["train"]["resume"]).with_name("best.pt")
        if not (out_dir / "best.pt").exists():
            if resumed_best.is_file():
                shutil.copyfile(resumed_best, out_dir / "best.pt")
            else:  # no earlier best to compare against: the next epoch becomes the best
                best_value, best_epoch = -math.inf, -1
        log.info("resumed from %s at epoch %d", cfg["train"]["resume"], start_epoch)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", resume=bool(cfg["train"]["resume"]))

    base_state = {
        "model_name": cfg["model"]["name"],
        "model_kwargs": kwargs,
        "preprocess_cfg": pp.to_dict(),
        "args": cfg,
        "data_hash": data_hash(cfg["data"]["manifest"]),
    }
    for epoch in range(start_epoch, epochs):
        loaders["train"].dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        if isinstance(loaders["train"].batch_sampler, GroupedBatchSampler):
            loaders["train"].batch_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            criterion,
            optimizer,
            scheduler,
            loaders["train"],
            device,
            nt_cfg,
            scaler=scaler,
            amp=amp,
            freeze_bn=cfg["train"]["freeze_bn"],
            grad_clip=cfg["optim"]["grad_clip"],
            max_steps=steps_per_epoch,
            log_every=cfg["train"]["log_every"],
            desc=f"epoch {epoch}",
        )
        val_metrics, val_scores = evaluate(model, loaders["val"], device, desc="val")
        value = val_metrics[SELECTION_METRIC]
        is_best = value > best_value
        if is_best:
            best_value, best_epoch = value, epoch
        record = {
            "epoch": epoch,
            "split": "val",
            **{f"train_{k}": v for k, v in stats.as_dict().items()},
            **val_metrics,
            "best": is_best,
            "time": time.time(),
        }
        metrics_log.write(record)
        log.info(
            "epoch %d: loss %.3f reg %.1f (%.0fs) | val srocc %.4f plcc %.4f rmse %.2f%s",
            epoch,
            stats.loss,
            stats.reg,
            stats.seconds,
            val_metrics["srocc"],
            val_metrics["plcc"],
            val_metrics["rmse"],
            " *" if is_best else "",
        )
        state = {
            **base_state,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "val_metrics": val_metrics,
            "val_scores": val_scores.tolist(),
            "best_value": best_value,
            "best_epoch": best_epoch,
        }
        save_checkpoint(state, out_dir / "last.pt")
        if is_best:
            save_checkpoint(state, out_dir / "best.pt")

    if best_epoch < 0:
        raise RuntimeError("no epoch was trained (optim.epochs is not above the resumed epoch)")
    best = load_checkpoint(out_dir / "best.pt")
    model.load_state_dict(best["model"])
    test_metrics, _ = evaluate(model, loaders["test"], device, desc="test")
    best["test_metrics"] = test_metrics
    best["gate"] = None
    if cfg["train"]["gate"]:
        from training.gate.run import gate_checkpoint  # the acceptance gate (attack suite)

        best["gate"] = gate_checkpoint(model, best, loaders["test"], out_dir / "report")
    save_checkpoint(best, out_dir / "best.pt")
    metrics_log.write({"epoch": best_epoch, "split": "test", **test_metrics, "time": time.time()})

    print(f"best epoch {best_epoch} (val {SELECTION_METRIC} {best_value:.4f}); clean test metrics:")
    for key in ("srocc", "plcc", "krocc", "rmse"):
        print(f"  {key.upper():6s} {test_metrics[key]:.4f}")
    print(f"checkpoint: {out_dir / 'best.pt'}")
    gate = best.get("gate")
    if isinstance(gate, dict) and not gate.get("passed", False):
        print("acceptance gate: FAILED (see the report)", file=sys.stderr)
        return 1
    return 0


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
