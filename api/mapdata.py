"""What the console draws of a map version: its coloured points (decimated), cameras, level frame
and HD layers, read from the registered bundle and kept in a small LRU (bundles are immutable once
registered, so an entry never goes stale).

Points come from ``model/points3D.bin`` (COLMAP's binary model: the colours live there, not in
``features.h5``), parsed with numpy instead of one Python object per point (~10x faster than
pycolmap's per-point accessors on a 200,000-point model). The binary body of
``GET /v1/maps/{map_id}/points`` (:func:`encode_points`), little-endian::

    bytes 0-3    b"VLP1"
    bytes 4-7    uint32 n: points in this body
    bytes 8-11   uint32 total: points in the map
    bytes 12-15  uint32 0 (reserved)
    16 ...       n x 3 float32 x, y, z (map frame, metres), then n x 3 uint8 r, g, b,
                 then zero bytes up to a multiple of 4
"""
from __future__ import annotations

import json
import math
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from core.geo import Georeference
from core.geometry import Rigid3
from core.types import VlocError
from hdmap.layers.floors import level_from_map, up_axis

POINTS_MAGIC = b"VLP1"
_POINTS_HEADER = struct.Struct("<4sIII")
_U64 = struct.Struct("<Q")
#: bytes of a points3D.bin record before its track: id (u64), xyz (3 f64), rgb (3 u8), error (f64), track length (u64)
_RECORD = 8 + 24 + 3 + 8 + 8


@dataclass(frozen=True)
class MapPoints:
    """xyz: (N, 3) float32 map frame, metres; rgb: (N, 3) uint8; observations: (N,) uint32 track lengths."""

    xyz: np.ndarray
    rgb: np.ndarray
    observations: np.ndarray

    def __len__(self) -> int:
        return len(self.xyz)


@dataclass(frozen=True)
class MapCameras:
    """Intrinsics by camera id (``{model, width, height, params}``) and the registered images:
    ``(name, camera_id, world_from_cam)`` sorted by name."""

    cameras: dict[int, dict]
    images: list[tuple[str, int, Rigid3]]

    @property
    def centres(self) -> np.ndarray:
        """(M, 3) camera centres, map frame."""
        return np.array([T.translation for _, _, T in self.images], np.float64).reshape(-1, 3)


def read_points(bundle: Path) -> MapPoints:
    """The 3D points of ``BUNDLE/model`` (binary COLMAP model; another format goes through pycolmap)."""
    path = Path(bundle) / "model" / "points3D.bin"
    if not path.is_file():
        return _read_points_pycolmap(Path(bundle) / "model")
    buf = path.read_bytes()
    if len(buf) < 8:
        raise VlocError(f"{path} is truncated")
    (n,) = _U64.unpack_from(buf, 0)
    starts = np.empty(n, np.int64)
    off, unpack = 8, _U64.unpack_from
    try:
        for i in range(n):
            starts[i] = off
            off += _RECORD + 8 * unpack(buf, off + 43)[0]
    except struct.error:
        raise VlocError(f"{path} is truncated") from None
    if off > len(buf):
        raise VlocError(f"{path} is truncated")
    raw = np.frombuffer(buf, np.uint8)
    xyz = raw[starts[:, None] + np.arange(8, 32)].copy().view("<f8").reshape(n, 3).astype(np.float32)
    rgb = raw[starts[:, None] + np.arange(32, 35)].copy()
    obs = raw[starts[:, None] + np.arange(43, 51)].copy().view("<u8").reshape(n).astype(np.uint32)
    return MapPoints(xyz, rgb, obs)


def _read_points_pycolmap(model: Path) -> MapPoints:
    import pycolmap
    rec = pycolmap.Reconstruction(str(model))
    pts = [rec.points3D[p] for p in sorted(rec.points3D.keys())]
    return MapPoints(np.array([p.xyz for p in pts], np.float32).reshape(-1, 3),
                     np.array([p.color for p in pts], np.uint8).reshape(-1, 3),
                     np.array([p.track.length() for p in pts], np.uint32))


def decimate(n: int, max_points: int) -> np.ndarray | None:
    """Indices of at most ``max_points`` of ``n`` points (None: all): a uniform random subset, the
    same on every call, in the stored order (so the points of a smaller request are not a
    different-looking sample each time)."""
    if n <= max_points:
        return None
    return np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))


def encode_points(xyz: np.ndarray, rgb: np.ndarray, total: int) -> bytes:
    """The binary body (module docstring) of (n, 3) float32 points and (n, 3) uint8 colours."""
    n = len(xyz)
    colours = np.ascontiguousarray(rgb, np.uint8).tobytes()
    pad = b"\0" * (-len(colours) % 4)
    return (_POINTS_HEADER.pack(POINTS_MAGIC, n, total, 0) + np.ascontiguousarray(xyz, "<f4").tobytes()
            + colours + pad)


def decode_points(body: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """(xyz (n, 3) float32, rgb (n, 3) uint8, total) from :func:`encode_points`' bytes."""
    magic, n, total, _ = _POINTS_HEADER.unpack_from(body)
    if magic != POINTS_MAGIC:
        raise ValueError("not a vloc points body")
    o = _POINTS_HEADER.size
    xyz = np.frombuffer(body, "<f4", 3 * n, o).reshape(n, 3)
    rgb = np.frombuffer(body, np.uint8, 3 * n, o + 12 * n).reshape(n, 3)
    return xyz, rgb, total


def read_cameras(bundle: Path) -> MapCameras:
    """Intrinsics and registered images (poses) of ``BUNDLE/model`` (pycolmap)."""
    import pycolmap
    rec = pycolmap.Reconstruction(str(Path(bundle) / "model"))
    cams = {int(cid): {"camera_id": int(cid), "model": c.model.name, "width": int(c.width),
                       "height": int(c.height), "params": [float(v) for v in c.params]}
            for cid, c in rec.cameras.items()}
    images = []
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        images.append((im.name, int(im.camera_id), Rigid3.from_pycolmap(im.cam_from_world()).inverse()))
    images.sort(key=lambda x: x[0])
    return MapCameras(cams, images)


def level_frame(manifest: dict, cameras: MapCameras) -> tuple[np.ndarray, str]:
    """(level_from_map (3, 3), how it was found): the layers' recorded frame when the bundle has
    layers (their grids are in it), else the one :mod:`hdmap.layers` would pick (georeference up,
    or the cameras' mean up snapped to +z)."""
    frames = (manifest.get("layers") or {}).get("frames") or {}
    rot = (frames.get("level_from_map") or {}).get("rotation")
    if rot is not None:
        return np.asarray(rot, np.float64).reshape(3, 3), frames.get("up_source") or "layers"
    try:
        georef = Georeference.from_manifest(manifest)
    except ValueError:
        georef = None
    if not cameras.images:
        return np.eye(3), "map frame (no cameras)"
    up, source = up_axis(georef, [T for _, _, T in cameras.images])
    return level_from_map(up).rotation, source


def extent(points: MapPoints) -> dict | None:
    """Box of the points per axis (0.1 and 99.9 percentiles: a few stray points do not set the size)."""
    if len(points) == 0:
        return None
    lo, hi = np.percentile(points.xyz, [0.1, 99.9], axis=0)
    return {"min": lo.tolist(), "max": hi.tolist(), "size": (hi - lo).tolist()}


def layer_files(manifest: dict) -> dict[str, dict]:
    """The manifest's layer files by base name (``mesh.ply`` -> its entry + ``bytes``)."""
    layers = manifest.get("layers") or {}
    sizes = manifest.get("files") or {}
    out = {}
    for rel, entry in (layers.get("files") or {}).items():
        name = str(rel).split("/")[-1]
        size = sizes[rel].get("bytes") if isinstance(sizes.get(rel), dict) else None
        out[name] = {**entry, "path": str(rel), "bytes": size}
    return out


def layers_info(manifest: dict, level: np.ndarray, up_source: str) -> dict:
    """The ``LayersOut`` fields of a bundle (without map id / version)."""
    layers = manifest.get("layers") or {}
    files = layer_files(manifest)
    occupancy = []
    for name, e in sorted(files.items()):
        if e.get("kind") != "occupancy":
            continue
        shape = e.get("shape") or [0, 0]
        occupancy.append({"floor": int(e.get("floor", 0)), "resolution": float(e["resolution"]),
                          "origin": [float(v) for v in e["origin"]], "height": int(shape[0]), "width": int(shape[1]),
                          "png": name.rsplit(".", 1)[0] + ".png", "cells": e.get("cells") or {}})
    mesh = files.get("mesh.ply")
    return {"has_layers": bool(files), "level_from_map": level.tolist(), "up_source": up_source,
            "floors": [f for f in layers.get("floors") or []],
            "occupancy": occupancy,
            "mesh": None if mesh is None else {"file": "mesh.ply", "bytes": mesh.get("bytes"),
                                               "n_vertices": mesh.get("n_vertices"),
                                               "n_triangles": mesh.get("n_triangles"), "source": mesh.get("source")},
            "files": [{"name": n, "kind": e.get("kind"), "bytes": e.get("bytes")} for n, e in sorted(files.items())]}


def occupancy_png(pgm: Path) -> bytes:
    """A map_server PGM as a greyscale PNG (same values: 0 occupied, 254 free, 205 unknown)."""
    img = cv2.imread(str(pgm), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise VlocError(f"cannot read {pgm.name}")
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise VlocError(f"cannot encode {pgm.name} as PNG")
    return png.tobytes()


def georeference_summary(manifest: dict) -> dict | None:
    """What the maps view shows of a georeference: origin, scale, CRS, source and residuals."""
    g = manifest.get("georeference")
    if not isinstance(g, dict):
        return None
    keep = ("origin", "source", "crs", "residuals", "rms_m", "n_used", "n_inliers", "method")
    out = {k: g[k] for k in keep if k in g}
    s = g.get("enu_from_map") or {}
    if "scale" in s:
        out["scale"] = s["scale"]
    return json.loads(json.dumps(out, default=str))


def centre_ellipse(cov_xy: np.ndarray) -> dict | None:
    """1-sigma ellipse of a (2, 2) covariance: major / minor semi-axes (m), major axis angle from +x (deg)."""
    if cov_xy is None or not np.all(np.isfinite(cov_xy)):
        return None
    w, v = np.linalg.eigh(0.5 * (cov_xy + cov_xy.T))
    w = np.clip(w, 0.0, None)
    return {"major": float(math.sqrt(w[1])), "minor": float(math.sqrt(w[0])),
            "angle_deg": float(math.degrees(math.atan2(v[1, 1], v[0, 1])))}


class MapDataCache:
    """LRU of what :mod:`api.mapdata` reads, keyed by (map_id, version, what); ``capacity`` entries."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: two callers may both read a bundle once, never block each other
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def evict(self, map_id: str, version: str | None = None) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == map_id and (version is None or k[1] == version)]:
                del self._items[k]
