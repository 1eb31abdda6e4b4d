"""Pristine (undistorted) photographs for the synthetic dataset, all available offline.

Three sources, each yielding ``PristineSource`` records (one scene each) that load lazily:

* ``package_sources()``: sample photos shipped inside installed Python packages
  (scikit-image's ``skimage.data`` and scikit-learn's ``load_sample_images``). Items that
  scikit-image would have to download (via pooch) are skipped with a warning.
* ``wallpaper_sources(cache_dir)``: photographic wallpapers from Debian packages, fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` into ``cache_dir`` (never installed).
  Only an explicit allow-list of photographs is used (no renders, vector art or logos); of several
  resolutions of one picture the largest is kept. Licences are read from the packages' own
  ``copyright`` / ``metadata.json`` files.
* ``directory_sources(path)``: a user's own photos (jpg, png, webp, bmp).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.preprocessing import ImageDecodeError, load_image_file

__all__ = [
    "WALLPAPER_PACKAGES",
    "PristineError",
    "PristineSource",
    "directory_sources",
    "package_sources",
    "unpack_debian_package",
    "user_cache_dir",
    "wallpaper_sources",
]

logger = logging.getLogger(__name__)

USER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_WALLPAPER_SUFFIXES = (".jpg", ".jpeg", ".png")
_MIN_FILE_BYTES = 50_000
_MIN_SHORT_SIDE = 384
_APT_TIMEOUT_S = 900


class PristineError(RuntimeError):
    """No usable pristine image could be found (bad directory, empty directory, ...)."""


@dataclass(frozen=True)
class PristineSource:
    """One pristine photo = one scene. ``kind`` says how ``ref`` is loaded:
    'skimage' (a ``skimage.data`` function name), 'sklearn' (a ``load_sample_image`` file name) or
    'file' (a path)."""

    scene: str
    kind: str
    ref: str
    origin: str
    license: str

    def load(self) -> np.ndarray:
        """RGB uint8 HxWx3."""
        if self.kind == "file":
            return load_image_file(self.ref)
        if self.kind == "skimage":
            import skimage.data

            arr = getattr(skimage.data, self.ref)()
        elif self.kind == "sklearn":
            from sklearn.datasets import load_sample_image

            arr = load_sample_image(self.ref)
        else:
            raise ValueError(f"unknown pristine source kind {self.kind!r}")
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            arr = np.asarray(Image.fromarray(arr).convert("RGB"), dtype=np.uint8)
        return arr

    def to_dict(self) -> dict[str, str]:
        return {
            "scene": self.scene,
            "kind": self.kind,
            "ref": self.ref,
            "origin": self.origin,
            "license": self.license,
        }


# ------------------------------------------------------------------------------- package photos

# Natural RGB photographs among the sample data (greyscale, microscopy and synthetic items left out).
_SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA)",
}
_SKLEARN_PHOTOS: dict[str, str] = {
    "china.jpg": "CC-BY-2.0 (danielbuechele, Flickr)",
    "flower.jpg": "CC-BY-2.0 (vultilion, Flickr)",
}


def package_sources() -> list[PristineSource]:
    """Sample photos of scikit-image and scikit-learn that load without a network."""
    candidates = [
        PristineSource(f"skimage-{_slug(name)}", "skimage", name, "scikit-image skimage.data", lic)
        for name, lic in _SKIMAGE_PHOTOS.items()
    ] + [
        PristineSource(
            f"sklearn-{_slug(Path(name).stem)}", "sklearn", name, "scikit-learn load_sample_images", lic
        )
        for name, lic in _SKLEARN_PHOTOS.items()
    ]
    sources = []
    for src in candidates:
        try:
            src.load()
        except Exception as exc:  # a missing optional file or a pooch download that cannot run offline
            logger.warning("skipping %s %s: %s", src.kind, src.ref, exc)
            continue
        sources.append(src)
    return sources


# ----------------------------------------------------------------------------- user's own photos


def directory_sources(path: str | Path) -> list[PristineSource]:
    root = Path(path)
    if not root.is_dir():
        raise PristineError(f"--pristine-dir {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in USER_IMAGE_SUFFIXES)
    if not files:
        raise PristineError(f"no {'/'.join(s[1:] for s in USER_IMAGE_SUFFIXES)} images in {root}")
    names = _unique_slugs(f"user-{_slug(p.stem)}" for p in files)
    return [
        PristineSource(n, "file", str(p), f"user directory {root}", "user-provided")
        for n, p in zip(names, files, strict=True)
    ]


# ------------------------------------------------------------------------ Debian wallpaper photos

# Photographs only, by picture name (a plasma wallpaper folder, else the file stem without a
# _WxH suffix). Everything else in these packages (renders, vector art, logos) is left out.
WALLPAPER_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "plasma-workspace-wallpapers": (
        "plasma",
        (
            "Autumn",
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        ),
    ),
    "mate-backgrounds": (
        "mate",
        (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        ),
    ),
    "lomiri-wallpapers-16.04": (
        "lomiri",
        (
            "Bridge_by_Sander_Klootwijk",
            "Dragonfly_by_Bolly",
            "Picture_0B_by_freespace",
            "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi",
            "analogpattern_by_Peter_Nerlich",
            "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich",
            "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt",
            "sunset_by_Aitzol_Berasategi",
        ),
    ),
    "lomiri-wallpapers-20.04": ("lomiri", ("Kleiber_by_Lukas_Baubkus",)),
}


def wallpaper_sources(cache_dir: str | Path) -> list[PristineSource]:
    """Photographic wallpapers from the Debian packages in ``WALLPAPER_PACKAGES``.

    Returns [] (with a warning) where apt-get / dpkg-deb are missing or every package fails."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        logger.warning("apt-get/dpkg-deb not found: using only the Python-package photos")
        return []
    cache = Path(cache_dir)
    sources: list[PristineSource] = []
    updated = False
    for package, (prefix, allowed) in WALLPAPER_PACKAGES.items():
        try:
            root, updated = _fetch_and_unpack(package, cache, updated)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("skipping Debian package %s: %s", package, exc)
            continue
        found = _photos_in_package(root, package, prefix, allowed)
        logger.info("%s: %d photographs", package, len(found))
        sources.extend(found)
    names = _unique_slugs(s.scene for s in sources)
    return [
        PristineSource(n, s.kind, s.ref, s.origin, s.license) for n, s in zip(names, sources, strict=True)
    ]


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/robust_iqa/<name>`` (``~/.cache`` without it): where fetched packages live."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robust_iqa" / name


def unpack_debian_package(package: str, cache_dir: str | Path) -> Path:
    """Download a Debian package's .deb (``apt-get download``, no install) and unpack it under
    ``cache_dir``, once; the folder the package's files lie in. Raises OSError when it cannot."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise OSError("apt-get and dpkg-deb are needed to fetch Debian package " + package)
    try:
        return _fetch_and_unpack(package, Path(cache_dir), updated=False)[0]
    except subprocess.SubprocessError as exc:
        raise OSError(f"fetching {package} failed: {exc}") from None


def _fetch_and_unpack(package: str, cache: Path, updated: bool) -> tuple[Path, bool]:
    """Download ``package``'s .deb into ``cache/debs`` (once) and unpack it into ``cache/<package>``."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    root = cache / package
    if (root / ".unpacked").is_file():
        return root, updated
    deb = _find_deb(debs, package)
    if deb is None:
        result = _run(["apt-get", "download", package], cwd=debs)
        if result.returncode != 0 and not updated:
            logger.info("apt-get download %s failed; running apt-get update once", package)
            _run(["apt-get", "update"], cwd=debs)
            updated = True
            result = _run(["apt-get", "download", package], cwd=debs)
        deb = _find_deb(debs, package)
        if result.returncode != 0 or deb is None:
            last = (result.stderr or result.stdout).strip().splitlines()
            raise OSError(f"apt-get download failed: {last[-1] if last else result.returncode}")
    if root.exists():
        shutil.rmtree(root)
    result = _run(["dpkg-deb", "-x", str(deb), str(root)], cwd=debs)
    if result.returncode != 0:
        raise OSError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
    (root / ".unpacked").write_text(deb.name + "\n")
    return root, updated


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, check=False)


def _find_deb(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _picture_name(path: Path) -> str:
    """Plasma keeps one picture per folder (``<Name>/contents/images/WxH.ext``); elsewhere several
    resolutions of one picture differ by a ``_WxH`` suffix."""
    parts = path.parts
    if "contents" in parts:
        return parts[parts.index("contents") - 1]
    return re.sub(r"_\d+x\d+$", "", path.stem)


def _photos_in_package(root: Path, package: str, prefix: str, allowed: Iterable[str]) -> list[PristineSource]:
    allowed_set = set(allowed)
    licenses = _dep5_licenses(root)
    best: dict[str, tuple[int, Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in _WALLPAPER_SUFFIXES or not path.is_file():
            continue
        if "screenshot" in path.name or "images_dark" in path.parts:
            continue
        name = _picture_name(path)
        if name not in allowed_set or path.stat().st_size < _MIN_FILE_BYTES:
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, ImageDecodeError) as exc:
            logger.warning("skipping unreadable %s: %s", path, exc)
            continue
        if min(w, h) < _MIN_SHORT_SIDE:
            continue
        if name not in best or w * h > best[name][0]:
            best[name] = (w * h, path.resolve())
    sources = []
    for name, (_, path) in sorted(best.items()):
        license_ = (
            _plasma_license(path) or licenses.get(path.name) or licenses.get("*", "see package copyright")
        )
        slug = _slug(name.split("_by_")[0])
        sources.append(
            PristineSource(f"{prefix}-{slug}", "file", str(path), f"Debian package {package}", license_)
        )
    return sources


def _dep5_licenses(root: Path) -> dict[str, str]:
    """File basename -> licence, from the package's machine-readable debian/copyright."""
    out: dict[str, str] = {}
    for copyright_file in root.glob("usr/share/doc/*/copyright"):
        for para in copyright_file.read_text(errors="replace").split("\n\n"):
            files: list[str] = []
            license_ = None
            field = None
            for line in para.splitlines():
                if line.startswith("Files:"):
                    field = "files"
                    files.extend(line[len("Files:") :].split())
                elif line.startswith("License:"):
                    license_ = line[len("License:") :].strip()
                    field = None
                elif line[:1].isspace() and field == "files":
                    files.extend(line.split())
                else:
                    field = None
            if license_:
                for f in files:
                    out.setdefault(Path(f).name, license_)
    return out


def _plasma_license(path: Path) -> str | None:
    parts = path.parts
    if "contents" not in parts:
        return None
    meta = Path(*parts[: parts.index("contents")]) / "metadata.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    license_ = data.get("KPlugin", {}).get("License")
    return str(license_) if license_ else None


# ------------------------------------------------------------------------------------------ names


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "image"


def _unique_slugs(names: Iterable[str]) -> list[str]:
    used: set[str] = set()
    out = []
    for n in names:
        candidate, i = n, 1
        while candidate in used:
            i += 1
            candidate = f"{n}-{i}"
        used.add(candidate)
        out.append(candidate)
    return out
