"""RGB-D inputs for the dense layers: 7-Scenes-style depth folders, loaded one frame at a time.

A depth folder holds ``frame-NNNNNN.depth.png`` (uint16 millimetres, 0 = invalid) with
``frame-NNNNNN.pose.txt`` beside it (4x4 **world_from_cam** of the *depth* camera, metres),
directly or in ``seq-XX/`` sub-folders. The depth intrinsics are given as a :class:`Camera`
(7-Scenes: ``PINHOLE 640 480 585 585 320 240``; its depth is not registered to RGB, so the
colour images are used only when ``registered_colour`` says they share the depth camera).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.camera import Camera
from core.geometry import Rigid3, Sim3
from core.types import VlocError


@dataclass(frozen=True)
class DepthFrame:
    """One depth image on disk with its pose; pixels are read by :meth:`load` only.

    depth_path: uint16 PNG, millimetres (``depth_scale`` units per metre), 0 = invalid.
    camera: depth intrinsics (PINHOLE / SIMPLE_PINHOLE; the image size must match).
    world_from_cam: depth camera pose in the map frame (after any alignment).
    colour_path: RGB image registered to the depth pixels, or None.
    depth_scale: stored units per metre *in the map frame* (1000 for mm; an aligned
        similarity of scale s makes it 1000 / s).
    """

    name: str
    depth_path: Path
    camera: Camera
    world_from_cam: Rigid3
    colour_path: Path | None = None
    depth_scale: float = 1000.0

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(depth (H, W) float32 metres in the map frame, 0 = invalid; colour (H, W, 3) uint8 RGB or None)."""
        raw = cv2.imread(str(self.depth_path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2:
            raise VlocError(f"{self.depth_path}: not a single-channel depth image")
        if raw.shape != (self.camera.height, self.camera.width):
            raise VlocError(f"{self.depth_path}: depth is {raw.shape[1]}x{raw.shape[0]} but the depth camera "
                            f"is {self.camera.width}x{self.camera.height}; fix --depth-camera")
        depth = raw.astype(np.float32) / np.float32(self.depth_scale)
        colour = None
        if self.colour_path is not None:
            bgr = cv2.imread(str(self.colour_path), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape[:2] != raw.shape:
                raise VlocError(f"{self.colour_path}: colour missing or not the depth image's size")
            colour = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return depth, colour


def _check_camera(camera: Camera) -> None:
    if camera.has_distortion:
        raise VlocError(f"depth camera {camera} has distortion; give an undistorted PINHOLE camera")


def load_depth_folder(root: Path, camera: Camera, stride: int = 1,
                      registered_colour: bool = False) -> list[DepthFrame]:
    """Every ``stride``-th depth frame (sorted by path) under ``root`` with its pose.txt.

    Frames whose pose is missing or non-finite (lost tracking) are skipped.
    """
    root = Path(root)
    _check_camera(camera)
    if stride < 1:
        raise VlocError(f"--depth-stride must be >= 1, got {stride}")
    if not root.is_dir():
        raise VlocError(f"depth root {root} is not a directory")
    paths = sorted(root.rglob("frame-*.depth.png"))
    if not paths:
        raise VlocError(f"no frame-*.depth.png files under {root} (expected a 7-Scenes-style folder)")
    frames = []
    for p in paths[::stride]:
        stem = p.name[: -len(".depth.png")]
        pose = p.with_name(stem + ".pose.txt")
        if not pose.is_file():
            continue
        try:
            T = np.loadtxt(pose, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise VlocError(f"{pose}: cannot read a 4x4 pose matrix: {e}") from None
        if T.shape != (4, 4):
            raise VlocError(f"{pose}: expected a 4x4 world_from_cam matrix, got shape {T.shape}")
        if not np.all(np.isfinite(T)):
            continue
        colour = None
        if registered_colour:
            colour = next((p.with_name(stem + e) for e in (".color.png", ".color.jpg")
                           if p.with_name(stem + e).is_file()), None)
        frames.append(DepthFrame(p.relative_to(root).as_posix(), p, camera, Rigid3.from_matrix4(T), colour))
    if not frames:
        raise VlocError(f"no depth frame under {root} has a readable frame-*.pose.txt beside it")
    return frames


def align_frames(frames: list[DepthFrame], map_from_depth: Sim3) -> list[DepthFrame]:
    """Re-express frames in the map frame through a similarity ``map_from_depth`` (scale goes to depth)."""
    from dataclasses import replace
    out = []
    for f in frames:
        R = map_from_depth.rotation @ f.world_from_cam.rotation
        c = map_from_depth.transform(f.world_from_cam.translation[None])[0]
        out.append(replace(f, world_from_cam=Rigid3(R, c), depth_scale=f.depth_scale / map_from_depth.scale))
    return out


def backproject(depth: np.ndarray, camera: Camera, world_from_cam: Rigid3, step: int = 1,
                max_depth: float = np.inf) -> np.ndarray:
    """(M, 3) world points of the valid pixels (every ``step``-th row / column) of a (H, W) depth image.

    Pixel (u, v) (0-based array index) has COLMAP coordinates (u + 0.5, v + 0.5).
    """
    d = depth[::step, ::step]
    vv, uu = np.nonzero((d > 0) & (d < max_depth))
    z = d[vv, uu].astype(np.float64)
    fx, fy = camera.focals
    cx, cy = camera.principal_point
    x = ((uu * step + 0.5) - cx) / fx * z
    y = ((vv * step + 0.5) - cy) / fy * z
    return world_from_cam.transform(np.stack([x, y, z], 1))
