"""Reference patches: many native-resolution views of one source photo, at several zooms.

Dataset v2 does not shrink a 6000-px wallpaper to one 288-px picture. It cuts ``per_source`` square
patches of ``patch`` pixels out of it, each at its own zoom ``s`` (drawn log-uniformly between the
zoom at which the patch spans the photo's shorter side and 1, the photo's own pixels), so the model
sees the scene at the scales an ad image is served at. Each patch is a reference ("scene" in the
manifest); all patches of one source share its split, so no photo reaches two splits.

``render`` > 1 renders the patch at ``render`` times its size (a region of ``patch·render`` pixels):
the builder distorts it there and downscales the result by ``render``, as the gateway does with an
image above its size cap, so that compression and resolution damage arrive as a served image
carries them (blocks and smearing shrunk, not at their encoded scale).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

__all__ = ["ReferenceSpec", "cut_reference", "downscale", "plan_references"]


@dataclass(frozen=True)
class ReferenceSpec:
    """Where one reference patch comes from: a ``region``-pixel square at (y, x) of the source,
    resized to ``patch · render`` pixels."""

    name: str
    y: int
    x: int
    region: int
    patch: int
    render: int

    @property
    def zoom(self) -> float:
        return self.patch * self.render / self.region

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self) | {"zoom": round(self.zoom, 4)}


def plan_references(
    scene: str,
    height: int,
    width: int,
    patch: int,
    per_source: int,
    rng: np.random.Generator,
    render_prob: float = 0.25,
    render_factor: int = 2,
) -> list[ReferenceSpec]:
    """``per_source`` patches of a height×width source (none when its shorter side is below ``patch``)."""
    short = min(height, width)
    if short < patch:
        return []
    specs = []
    for k in range(per_source):
        render = render_factor if (rng.random() < render_prob and short >= patch * render_factor) else 1
        out = patch * render
        # zoom = out / region, from out / short (patch spans the shorter side) up to 1 (native pixels)
        lo = math.log(out / short)
        zoom = math.exp(rng.uniform(lo, 0.0)) if lo < 0 else 1.0
        region = min(short, max(out, round(out / zoom)))
        y = int(rng.integers(0, height - region + 1))
        x = int(rng.integers(0, width - region + 1))
        specs.append(ReferenceSpec(f"{scene}~r{k}", y, x, region, patch, render))
    return specs


def cut_reference(source: np.ndarray, spec: ReferenceSpec) -> np.ndarray:
    """The spec's region of ``source`` at ``patch · render`` pixels (antialiased bicubic)."""
    crop = source[spec.y : spec.y + spec.region, spec.x : spec.x + spec.region]
    out = spec.patch * spec.render
    if spec.region == out:
        return np.ascontiguousarray(crop)
    im = Image.fromarray(np.ascontiguousarray(crop)).resize((out, out), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by an integer factor (antialiased bicubic): the gateway's resize above its size cap."""
    if factor == 1:
        return img
    h, w = img.shape[:2]
    im = Image.fromarray(img).resize((w // factor, h // factor), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)
