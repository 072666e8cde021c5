"""Query image preprocessing before SIFT: contrast stretch of dim frames, noise estimate (pure)."""
from __future__ import annotations

import cv2
import numpy as np


def stretch_contrast(gray: np.ndarray, percentile: float = 1.0, below_range: int = 160) -> np.ndarray:
    """(H, W) uint8 -> the same with its [p, 100-p] percentile range stretched to [0, 255], when
    that range spans fewer than ``below_range`` grey levels (else unchanged). SIFT descriptors are
    invariant to this affine change, but its contrast threshold is absolute: dark or washed-out
    frames get their keypoints back."""
    hist = np.cumsum(cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel())  # ~4x np.bincount
    n = hist[-1]
    lo = int(np.searchsorted(hist, n * percentile / 100))
    hi = int(np.searchsorted(hist, n * (100 - percentile) / 100))
    if hi - lo < 8 or hi - lo >= below_range:
        return gray
    lut = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return cv2.LUT(gray, lut)


_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast estimate of white-noise sigma (grey levels) of a (H, W) uint8 image."""
    h, w = gray.shape
    # integer kernel on uint8: exact in int16 (|response| <= 16 * 255), ~5x the float32 version
    r = cv2.filter2D(gray, cv2.CV_16S, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) / (6 * (w - 2) * (h - 2)) * cv2.norm(r, cv2.NORM_L1))
