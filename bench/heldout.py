"""The held-out photos: from the Debian packages ``darknet`` and ``opencv-doc`` only.

These photos are reserved for independent evaluation. Nothing in training/ reads them: no training,
validation, threshold or model selection may use them (tests/test_ranking.py checks that the dataset
builder's sources never name these packages). They are fetched with ``apt-get download`` and
unpacked, never installed, into ``~/.cache/robust_iqa/heldout`` (``--cache-dir``).

Only photographs are listed (no logos, renders, paintings, charts or calibration boards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.data.pristine import unpack_debian_package, user_cache_dir

__all__ = ["HELDOUT_PACKAGES", "HeldoutPhoto", "default_cache_dir", "heldout_photos"]

_DARKNET = "usr/share/darknet/data"
_OPENCV = "usr/share/doc/opencv-doc/examples/data"

# package -> (folder inside the package, photo files)
HELDOUT_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "darknet": (_DARKNET, ("dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg")),
    "opencv-doc": (
        _OPENCV,
        (
            "aloeL.jpg",
            "baboon.jpg",
            "building.jpg",
            "fruits.jpg",
            "leuvenA.jpg",
            "squirrel_cls.jpg",
            "messi5.jpg",
            "ela_original.jpg",
            "graf1.png",
            "basketball1.png",
        ),
    ),
}


@dataclass(frozen=True)
class HeldoutPhoto:
    name: str
    package: str
    path: Path


def default_cache_dir() -> Path:
    return user_cache_dir("heldout")


def heldout_photos(
    cache_dir: str | Path | None = None, packages: tuple[str, ...] = tuple(HELDOUT_PACKAGES)
) -> list[HeldoutPhoto]:
    """The listed photos of ``packages``, fetched on first use. Raises OSError when one is missing."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    photos = []
    for package in packages:
        folder, files = HELDOUT_PACKAGES[package]
        root = unpack_debian_package(package, cache) / folder
        for name in files:
            path = root / name
            if not path.is_file():
                raise OSError(f"held-out photo {name} is not in Debian package {package} ({path})")
            photos.append(HeldoutPhoto(f"{package}/{Path(name).stem}", package, path))
    return photos
