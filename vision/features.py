"""Local features behind one backend interface (OpenCV SIFT by default).

A backend turns a grayscale image into :class:`Features`. Keypoints are in the
COLMAP pixel convention (top-left pixel centre at (0.5, 0.5)) of the *input*
image, whatever working resolution the backend used internally. The learned
backends (ALIKED, DISK on torch / kornia: :mod:`vision.learned`) implement the
same protocol and choose their own device; callers never see tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from core.camera import opencv_to_colmap_pixels


@dataclass
class Features:
    """Local features of one image.

    keypoints: (N, 2) float32 pixels, COLMAP convention.
    scales: (N,) float32 keypoint size in pixels.  orientations: (N,) float32 radians.
    descriptors: (N, D) uint8 (SIFT, D=128) or float32 (learned, L2-normalised).
    """

    keypoints: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)

    def subset(self, idx: np.ndarray) -> "Features":
        return Features(self.keypoints[idx], self.scales[idx], self.orientations[idx], self.descriptors[idx])


class FeatureBackend(Protocol):
    """What every local-feature backend provides."""

    #: short identifier written into bundle manifests, e.g. "sift-opencv".
    name: str

    def extract(self, gray: np.ndarray) -> Features:
        """gray: (H, W) uint8 image -> Features (keypoints in input-image pixels)."""
        ...

    def config(self) -> dict:
        """The parameters that define the features (recorded in the manifest)."""
        ...


@dataclass(frozen=True)
class SiftConfig:
    """OpenCV SIFT settings."""

    #: keep at most this many keypoints (strongest first); 0 = unlimited.
    max_keypoints: int = 4000
    #: OpenCV contrast threshold (its default is 0.04; lower finds more, weaker keypoints).
    contrast_threshold: float = 0.02
    #: OpenCV edge threshold.
    edge_threshold: float = 10.0
    #: longest image side the detector works at (downscale above it; 0 = native).
    max_image_side: int = 1600


@dataclass
class SiftBackend:
    """OpenCV SIFT; descriptors as uint8 (N, 128). Thread-safe per instance is not guaranteed."""

    cfg: SiftConfig = field(default_factory=SiftConfig)
    name: str = "sift-opencv"

    def __post_init__(self) -> None:
        self._sift = cv2.SIFT_create(nfeatures=self.cfg.max_keypoints,
                                     contrastThreshold=self.cfg.contrast_threshold,
                                     edgeThreshold=self.cfg.edge_threshold)

    def config(self) -> dict:
        return {"backend": self.name, **self.cfg.__dict__}

    def extract(self, gray: np.ndarray) -> Features:
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("SiftBackend.extract expects a (H, W) uint8 image")
        scale = 1.0
        side = max(gray.shape)
        if self.cfg.max_image_side and side > self.cfg.max_image_side:
            scale = self.cfg.max_image_side / side
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        kps, desc = self._sift.detectAndCompute(gray, None)
        if desc is None or not kps:
            return empty_features(128)
        if self.cfg.max_keypoints and len(kps) > self.cfg.max_keypoints:
            order = np.argsort([-k.response for k in kps])[: self.cfg.max_keypoints]
            kps = [kps[i] for i in order]
            desc = desc[order]
        xy = np.array([k.pt for k in kps], dtype=np.float64)
        # Map detector-resolution pixels back to input pixels (COLMAP convention scales exactly).
        xy_colmap = opencv_to_colmap_pixels(xy) / scale
        return Features(
            keypoints=xy_colmap.astype(np.float32),
            scales=(np.array([k.size for k in kps], dtype=np.float32) / scale),
            orientations=np.radians(np.array([k.angle for k in kps], dtype=np.float32)),
            descriptors=np.clip(np.rint(desc), 0, 255).astype(np.uint8),
        )


def empty_features(dim: int, dtype=np.uint8) -> Features:
    return Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                    np.zeros((0, dim), dtype))


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """(N, 128) SIFT -> (N, 128) float32 RootSIFT (L1-normalise, sqrt; unit L2 norm)."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-8)
    return np.sqrt(d)
