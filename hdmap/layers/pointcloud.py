"""The map's coloured points: read from the bundle's model, written as PLY (open3d) and LAS (laspy)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
import open3d as o3d
import pycolmap
from pyproj import CRS

from core.geometry import Rigid3
from core.types import VlocError


@dataclass(frozen=True)
class MapPoints:
    """A bundle model's 3D points and cameras, map frame.

    xyz: (N, 3) float64; rgb: (N, 3) uint8; observer: (N,) index into ``cameras`` of one
    image seeing each point; cameras: (M,) ``world_from_cam`` of the registered images.
    track_cameras: (T,) camera index, track_points: (T,) point index: every observation.
    names: (M,) image names of ``cameras``.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    observer: np.ndarray
    cameras: list[Rigid3]
    track_cameras: np.ndarray
    track_points: np.ndarray
    names: tuple[str, ...] = ()

    @property
    def centres(self) -> np.ndarray:
        """(M, 3) camera centres, map frame."""
        return np.array([c.translation for c in self.cameras]).reshape(-1, 3)


def read_map_points(bundle: Path) -> MapPoints:
    """Points, colours, cameras and tracks of ``BUNDLE/model``."""
    model = Path(bundle) / "model"
    if not model.is_dir():
        raise VlocError(f"{bundle} has no model/ folder")
    rec = pycolmap.Reconstruction(str(model))
    image_ids = sorted(rec.reg_image_ids())
    index = {iid: k for k, iid in enumerate(image_ids)}
    cameras = [Rigid3.from_pycolmap(rec.image(i).cam_from_world()).inverse() for i in image_ids]
    pids = sorted(rec.points3D.keys())
    xyz = np.array([rec.points3D[p].xyz for p in pids], np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[p].color for p in pids], np.uint8).reshape(-1, 3)
    tc, tp, observer = [], [], np.zeros(len(pids), np.int64)
    for k, p in enumerate(pids):
        ids = [index[e.image_id] for e in rec.points3D[p].track.elements]
        observer[k] = ids[0]
        tc.extend(ids)
        tp.extend([k] * len(ids))
    return MapPoints(xyz, rgb, observer, cameras, np.array(tc, np.int64), np.array(tp, np.int64),
                     tuple(rec.image(i).name for i in image_ids))


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY of (N, 3) float64 points with (N, 3) uint8 colours (open3d)."""
    t = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.asarray(xyz, np.float64)))
    t.point.colors = o3d.core.Tensor(np.asarray(rgb, np.uint8))
    if not o3d.t.io.write_point_cloud(str(path), t, write_ascii=False):
        raise OSError(f"open3d could not write {path}")


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (N, 3) float64, rgb (N, 3) uint8) from a PLY written by :func:`write_ply`."""
    t = o3d.t.io.read_point_cloud(str(path))
    return t.point.positions.numpy().astype(np.float64), t.point.colors.numpy().astype(np.uint8)


def write_las(path: Path, xyz: np.ndarray, rgb: np.ndarray, crs: CRS | None, scale: float = 0.001) -> dict:
    """LAS 1.4, point format 7: int32 coordinates ``(xyz - offset) / scale``, RGB scaled to 16 bits.

    crs: written as a WKT CRS VLR (and the header's WKT bit) when given. Returns
    ``{"scale", "offset"}`` as written.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    header = laspy.LasHeader(point_format=7, version="1.4")
    offset = np.floor(xyz.min(0)) if len(xyz) else np.zeros(3)
    header.offsets = offset
    header.scales = np.full(3, scale)
    if crs is not None:
        header.add_crs(crs)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    c16 = np.asarray(rgb, np.uint16) * 257  # 0..255 -> 0..65535
    las.red, las.green, las.blue = c16[:, 0], c16[:, 1], c16[:, 2]
    las.write(str(path))
    return {"scale": [scale] * 3, "offset": [float(v) for v in offset]}
