"""BRISQUE (Mittal et al., 2012; the LIVE-trained SVR of PyPI ``brisque``) as the classical peer.

PyPI ``brisque`` 0.2 was written for NumPy 1: a few of its features come out as one-element arrays,
which NumPy 2 refuses to turn into floats. ``Brisque`` below flattens them, and computes the
package's own 7×7 Gaussian convolutions by FFT instead of ``convolve2d`` (the same result up to
float rounding, an order of magnitude faster on a 2048-px image); the features, the SVR and its
scaling are the package's own. BRISQUE scores *lower is better* on about [0, 100];
``quality`` returns 100 − BRISQUE so that, like our score, higher is better (a rank-only use: the
ranking check compares Spearman correlations, which the flip leaves unchanged but for the sign).

Needs ``pip install brisque opencv-python-headless`` (the ``bench`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BrisqueUnavailable", "brisque_quality"]


class BrisqueUnavailable(RuntimeError):
    """``brisque`` or OpenCV is not installed."""


_MODEL: Any = None


def _model() -> Any:
    global _MODEL
    if _MODEL is None:
        try:
            from brisque import BRISQUE
        except ImportError as exc:
            raise BrisqueUnavailable(
                f"BRISQUE peer unavailable ({exc}); pip install brisque opencv-python-headless"
            ) from None

        from scipy import signal

        class Brisque(BRISQUE):  # type: ignore[misc]
            # Same convolutions as the package's (scipy.signal.convolve2d, 'same', zero padding), by
            # FFT: identical up to float rounding (tests/test_ranking.py), ~10x faster on large images.
            def local_mean(self, image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
                return signal.fftconvolve(image, kernel, mode="same")

            def local_deviation(self, image: np.ndarray, local_mean: np.ndarray, kernel: np.ndarray) -> Any:
                sigma = signal.fftconvolve(image**2, kernel, mode="same")
                return np.sqrt(np.abs(local_mean**2 - sigma))

            def calculate_mscn_coefficients(
                self, image: np.ndarray, kernel_size: int = 6, sigma: float = 7 / 6
            ) -> np.ndarray:
                kernel = self.gaussian_kernel2d(kernel_size, sigma=sigma)
                local_mean = self.local_mean(image, kernel)
                return (image - local_mean) / (self.local_deviation(image, local_mean, kernel) + 1 / 255)

            def scale_features(self, features: Any) -> np.ndarray:
                flat = np.array([np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in features])
                lo = np.asarray(self.scale_params["min_"], dtype=np.float64).reshape(-1)
                hi = np.asarray(self.scale_params["max_"], dtype=np.float64).reshape(-1)
                return -1 + (2.0 / (hi - lo) * (flat - lo))

        _MODEL = Brisque(url=False)
    return _MODEL


def brisque_quality(rgb: np.ndarray) -> float:
    """100 − BRISQUE of an RGB uint8 HxWx3 image (higher is better)."""
    return 100.0 - float(_model().score(rgb))
