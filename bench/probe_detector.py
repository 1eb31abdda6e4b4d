"""The FGSM self-probe as a detector: threshold calibration on clean images, ROC AUC and detection rate
on images attacked by the gate's attacks (docs/PROBE.md).

    python bench/probe_detector.py [--manifest data/full/manifest.csv] [--version 2]
        [--calibration-images 150] [--detection-images 24] [--detection-skip 0] [--false-flag 0.01]
        [--attack-crops 1] [--json out.json]

One run, the shipped model and its ``iqa_probe`` (the served graph in ONNX Runtime, serving.probe):

1. Test-split images of the synthetic dataset (never trained on), in the gate's seeded order
   (training.gate.data.load_split): the first ``--calibration-images`` calibrate, the next
   ``--detection-images`` are the detection set. Statistics: the probe's |delta| and its linearity
   (serving.probe.linearity) on the image's eval crops, exactly as the gateway computes them.
2. Per statistic, threshold = the (1 − ``--false-flag``) quantile of its calibration values; the
   gateway's ``flagged`` is either one crossing. False-flag rates are reported on the calibration set,
   on the clean detection set and on the held-out Debian photos (bench/heldout.py; reporting only,
   never used to choose anything).
3. Attacks from the gate's registry with gate.yaml's parameters: fgsm, pgd_2 (PGD-10 at 2/255), uap
   and korhonen (transfer, from the surrogate; the UAP is fitted on val images). They attack the
   served score (CropScorer over ``--attack-crops`` crops, default all 5) of each whole canonical
   image and deliver 8-bit images; the probe then sees those images' crops as the gateway would.
4. Per attack and statistic: ROC AUC (attacked = positive, the same images clean = negative) and the
   detection rate at its threshold; the detection rate of ``flagged`` (either); the mean score change
   the attack caused. ``--cache-dir`` keeps the attacked images (8-bit), so a rerun skips the attacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # bench/triton.py would shadow the package torch probes for
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from bench.heldout import heldout_photos
from export.probe_export import load_version_model
from serving.probe import Prober, probe_model_path
from training.gate.attacks import FitImages, attack_class, create_attack
from training.gate.data import EvalData, fit_data, load_split
from training.gate.identity import config_sha256, weights_sha256
from training.gate.run import load_surrogate
from training.gate.scoring import CropScorer
from training.preprocessing import PreprocessConfig, eval_crops, load_image_file, resize_canonical

ATTACKS = ("fgsm", "pgd_2", "uap", "korhonen")


STATISTICS = ("abs_delta", "linearity")  # columns 0, 1 of _probe_set; column 2 is the clean score


def probe_image(prober: Prober, image: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float, float]:
    """(|delta|, linearity, clean score) of one canonical uint8 H×W×3 image, as the gateway's probe
    computes them."""
    result = prober.run(eval_crops(image, cfg))
    lin = result.linearity if result.linearity is not None else float("nan")
    return abs(result.delta), lin, result.adv_score - result.delta


def _uint8(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy())


def _probe_set(prober: Prober, images: Sequence[torch.Tensor], cfg: PreprocessConfig) -> np.ndarray:
    return np.asarray([probe_image(prober, _uint8(x), cfg) for x in images])


def _attack_images(
    name: str,
    entry: dict[str, Any],
    scorer: CropScorer,
    surrogate: CropScorer | None,
    data: EvalData,
    args: argparse.Namespace,
) -> list[torch.Tensor]:
    params = dict(entry.get("params") or {})
    transfer = {"surrogate": surrogate} if attack_class(entry["attack"]).needs_surrogate else {}
    attack = create_attack(entry["attack"], **params, **transfer)
    if name == "uap":
        fit = fit_data(data, str(entry.get("fit_split", "val")), args.uap_fit_images, args.seed)
        key = {
            "params": params,
            "crops": scorer.preprocess_cfg.to_dict(),
            "images": fit.paths,
            "surrogate": str(args.surrogate),
        }
        attack.prepare(
            FitImages(
                batches=lambda bs: [x for _, x in fit.load().batches(bs)],
                cache_key=config_sha256(key)[:16],
                cache_dir=args.cache_dir,
            )
        )
    out: list[torch.Tensor | None] = [None] * len(data)
    for positions, x in data.batches(args.batch_size):
        x_adv = attack(scorer, x).cpu()
        for i, p in enumerate(positions):
            out[p] = x_adv[i]
    return [x for x in out if x is not None]


def _cached_attack(
    name: str,
    entry: dict[str, Any],
    scorer: CropScorer,
    surrogate: CropScorer | None,
    data: EvalData,
    args: argparse.Namespace,
) -> list[torch.Tensor]:
    """The attacked images (8-bit, as delivered), from ``--cache-dir`` when this attack, its images,
    crops and the scorer's weights were run before."""
    key = config_sha256(
        {
            "attack": entry,
            "paths": data.paths,
            "crops": args.attack_crops,
            "weights": weights_sha256(scorer.model),
        }
    )[:16]
    path = args.cache_dir / f"attacked-{name}-{key}.pt"
    if path.is_file():
        return [x.float().div(255.0) for x in torch.load(path)]
    delivered = [
        torch.round(x.clamp(0, 1) * 255).to(torch.uint8)
        for x in _attack_images(name, entry, scorer, surrogate, data, args)
    ]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(delivered, path)
    return [x.float().div(255.0) for x in delivered]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default="data/full/manifest.csv")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default="iqa")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--gate-config", default="training/configs/gate.yaml")
    p.add_argument("--surrogate", default="runs/surrogate/best.pt")
    p.add_argument("--calibration-images", type=int, default=150)
    p.add_argument("--detection-images", type=int, default=24)
    p.add_argument(
        "--detection-skip",
        type=int,
        default=0,
        help="images of the order after the calibration set to skip (another detection set)",
    )
    p.add_argument("--false-flag", type=float, default=0.01, help="target false-flag rate on calibration")
    p.add_argument("--attack-crops", type=int, default=None, help="crops the attacks see (default: all)")
    p.add_argument("--uap-fit-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS, help="none: calibration")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/probe_detector"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model = load_version_model(args.model_repository / args.name / str(args.version))
    cfg = model.preprocess_cfg
    prober = Prober(
        probe_model_path(args.model_repository, args.name, args.version),
        score_range=(cfg.score_min, cfg.score_max),
        intra_op_threads=args.threads,
    )
    prober.load()
    n_cal, n_det, start = (
        args.calibration_images,
        args.detection_images,
        args.calibration_images + args.detection_skip,
    )
    data = load_split(args.manifest, "test", cfg, start + n_det, args.seed)
    calibration = EvalData(data.images[:n_cal], data.mos[:n_cal], data.paths[:n_cal], data.source)
    detection = EvalData(data.images[start:], data.mos[start:], data.paths[start:], data.source)

    cal = _probe_set(prober, calibration.images, cfg)
    thresholds = np.quantile(cal[:, :2], 1.0 - args.false_flag, axis=0)
    clean = _probe_set(prober, detection.images, cfg)

    def rates(values: np.ndarray) -> dict[str, float]:
        over = values[:, :2] > thresholds
        return {
            **{s: float(over[:, i].mean()) for i, s in enumerate(STATISTICS)},
            "flagged": float(over.any(axis=1).mean()),
        }

    def medians(values: np.ndarray) -> dict[str, float]:
        return {s: float(np.median(values[:, i])) for i, s in enumerate(STATISTICS)}

    report: dict[str, Any] = {
        "model": f"{args.name}/{args.version}",
        "calibration": {
            "images": n_cal,
            "split": "test",
            "quantile": 1.0 - args.false_flag,
            "thresholds": dict(zip(STATISTICS, thresholds.tolist(), strict=True)),
            "false_flag_rate": rates(cal),
            "median": medians(cal),
            "max": dict(zip(STATISTICS, cal[:, :2].max(axis=0).tolist(), strict=True)),
        },
        "detection_clean": {
            "images": n_det,
            "first": start,
            "false_flag_rate": rates(clean),
            "median": medians(clean),
        },
    }
    try:
        photos = [resize_canonical(load_image_file(str(ph.path)), cfg) for ph in heldout_photos()]
        held = np.asarray([probe_image(prober, im, cfg) for im in photos])
        report["heldout_photos"] = {
            "images": len(held),
            "false_flag_rate": rates(held),
            "median": medians(held),
        }
    except OSError as exc:
        report["heldout_photos"] = {"error": str(exc)}
    print(json.dumps(report), flush=True)

    gate = yaml.safe_load(Path(args.gate_config).read_text())
    scorer = CropScorer(model, num_eval_crops=args.attack_crops).eval()
    raw_surrogate = load_surrogate(args.surrogate, torch.device("cpu"))
    surrogate = CropScorer(raw_surrogate, scorer.preprocess_cfg).eval() if raw_surrogate is not None else None
    report["attacks"] = {}
    for name in args.attacks:
        t0 = time.perf_counter()
        adv_images = _cached_attack(name, gate["attacks"][name], scorer, surrogate, detection, args)
        adv = _probe_set(prober, adv_images, cfg)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
        report["attacks"][name] = {
            "params": gate["attacks"][name].get("params"),
            "auc": {
                s: float(roc_auc_score(labels, np.r_[clean[:, i], adv[:, i]]))
                for i, s in enumerate(STATISTICS)
            },
            "detection_rate": rates(adv),
            "mean_abs_score_change": float(np.abs(adv[:, 2] - clean[:, 2]).mean()),
            "median": medians(adv),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, json.dumps(report["attacks"][name]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
