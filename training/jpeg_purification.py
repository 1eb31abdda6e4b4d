"""JPEG purification (the benchmark's "JPEG" defense, Gushchin et al. Table 2): re-encode an image at
quality q with Pillow and decode it again, before it is scored.

Torch-free, shared by the gateway (``mode=jpeg``) and the gate's defense rows, so both purify with
the same encoder and settings. The round trip is not differentiable; the gate attacks through it with
BPDA (the identity as its gradient, ``training/gate/defenses.py``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["jpeg_round_trip"]


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """RGB uint8 H×W×3 → the same image after a JPEG encode at ``quality`` (1..95, 4:2:0 chroma
    subsampling, Pillow's default tables) and a decode."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"JPEG purification needs an RGB uint8 H x W x 3 image, got {image.shape}")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
