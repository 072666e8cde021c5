"""Typed camera intrinsics (COLMAP camera models), shared by every stage.

Pixel convention: COLMAP's. The centre of the top-left pixel is (0.5, 0.5);
OpenCV keypoints (centre of top-left pixel at (0, 0)) are shifted by +0.5
when they enter vloc (see :func:`opencv_to_colmap_pixels`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pycolmap

#: model name -> parameter names, in COLMAP order.
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


class CameraError(ValueError):
    """A camera description that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one camera: a COLMAP model, image size in pixels, parameters.

    params: tuple of floats in the model's COLMAP order (``CAMERA_MODELS``).
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        model = str(self.model).upper()
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if model not in CAMERA_MODELS:
            raise CameraError(f"unknown camera model {self.model!r}; supported: {', '.join(CAMERA_MODELS)}")
        expected = CAMERA_MODELS[model]
        if len(self.params) != len(expected):
            raise CameraError(
                f"{model} takes {len(expected)} parameters ({' '.join(expected)}), got {len(self.params)}")
        if not all(math.isfinite(p) for p in self.params):
            raise CameraError("camera parameters must be finite numbers")
        if int(self.width) <= 0 or int(self.height) <= 0 or int(self.width) != self.width \
                or int(self.height) != self.height:
            raise CameraError(f"camera size must be positive integers, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if any(f <= 0 for f in self.focals):
            raise CameraError("focal length must be positive")

    # parsing ------------------------------------------------------------------------
    @staticmethod
    def parse(text: str) -> "Camera":
        """Parse ``"MODEL W H PARAMS..."`` (COLMAP cameras.txt order), e.g. ``"PINHOLE 640 480 525 525 320 240"``."""
        parts = str(text).replace(",", " ").split()
        if len(parts) < 4:
            raise CameraError(f"camera string {text!r} must be 'MODEL WIDTH HEIGHT PARAMS...'")
        try:
            w, h = int(parts[1]), int(parts[2])
            params = tuple(float(p) for p in parts[3:])
        except ValueError as e:
            raise CameraError(f"camera string {text!r}: {e}") from None
        return Camera(parts[0], w, h, params)

    def __str__(self) -> str:
        return " ".join([self.model, str(self.width), str(self.height)] + [f"{p:.10g}" for p in self.params])

    @staticmethod
    def pinhole(f: float, width: int, height: int, cx: float | None = None, cy: float | None = None) -> "Camera":
        """PINHOLE with equal focals; principal point defaults to the image centre."""
        cx = width / 2 if cx is None else cx
        cy = height / 2 if cy is None else cy
        return Camera("PINHOLE", width, height, (f, f, cx, cy))

    # properties ---------------------------------------------------------------------
    @property
    def param_dict(self) -> dict[str, float]:
        return dict(zip(CAMERA_MODELS[self.model], self.params))

    @property
    def focals(self) -> tuple[float, float]:
        d = self.param_dict
        return (d["f"], d["f"]) if "f" in d else (d["fx"], d["fy"])

    @property
    def principal_point(self) -> tuple[float, float]:
        d = self.param_dict
        return d["cx"], d["cy"]

    def K(self) -> np.ndarray:
        """(3, 3) calibration matrix (ignores distortion), COLMAP pixel convention."""
        fx, fy = self.focals
        cx, cy = self.principal_point
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        return self.model not in ("SIMPLE_PINHOLE", "PINHOLE")

    def scaled(self, sx: float, sy: float | None = None) -> "Camera":
        """The camera of the image resized by (sx, sy) (COLMAP pixel convention keeps this exact)."""
        sy = sx if sy is None else sy
        d = self.param_dict
        new = []
        for name, v in d.items():
            if name in ("f",):
                new.append(v * (sx + sy) / 2)
            elif name in ("fx", "cx"):
                new.append(v * sx)
            elif name in ("fy", "cy"):
                new.append(v * sy)
            else:
                new.append(v)
        return Camera(self.model, round(self.width * sx), round(self.height * sy), tuple(new))

    # pycolmap -----------------------------------------------------------------------
    def to_pycolmap(self, camera_id: int = 1) -> "pycolmap.Camera":
        cam = pycolmap.Camera(model=self.model, width=self.width, height=self.height,
                              params=list(self.params))
        cam.camera_id = camera_id
        return cam

    @staticmethod
    def from_pycolmap(cam: "pycolmap.Camera") -> "Camera":
        name = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        return Camera(name, int(cam.width), int(cam.height), tuple(float(p) for p in cam.params))

    # projection ---------------------------------------------------------------------
    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 3) points in the camera frame -> (N, 2) pixels. Points behind the camera give NaN."""
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        out = np.full((len(p), 2), np.nan)
        ok = p[:, 2] > 1e-9
        if ok.any():
            uv = self.to_pycolmap().img_from_cam(p[ok])
            out[ok] = np.asarray(uv)[:, :2]
        return out

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) normalised image coordinates (x/z, y/z), distortion removed."""
        xy = self.to_pycolmap().cam_from_img(np.asarray(pixels, dtype=np.float64).reshape(-1, 2))
        return np.asarray(xy)[:, :2]


def opencv_to_colmap_pixels(xy: np.ndarray) -> np.ndarray:
    """(N, 2) OpenCV pixel coordinates -> COLMAP convention (+0.5)."""
    return np.asarray(xy, dtype=np.float64) + 0.5
