"""The map's up axis, its level frame, and floors found from height clusters.

Up axis: the georeference's ENU up expressed in the map frame when there is one; otherwise
the mean of the cameras' up directions (-y of each ``world_from_cam``, robots and people hold
cameras upright), snapped to the map's +z when within ``snap_deg`` of it.

Floors: from upward-facing horizontal surfaces (floors, table tops; ceilings face down). Camera heights (level frame) are split into storeys wherever consecutive sorted
heights jump by more than ``min_storey_gap``; each storey's floor is the lowest strong peak of
the point-height histogram between ``max_camera_height`` below its lowest camera and
``min_camera_height`` below it. Without such a peak (floor never seen) the floor is assumed
``assumed_camera_height`` below the lowest camera and marked ``observed: false``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.geo import Georeference
from core.geometry import Rigid3


@dataclass(frozen=True)
class FloorConfig:
    """Storey detection (metres, level frame)."""

    #: a jump in sorted camera heights larger than this starts a new storey.
    min_storey_gap: float = 1.5
    #: the floor lies at least this far below a storey's lowest camera...
    min_camera_height: float = 0.2
    #: ...and at most this far.
    max_camera_height: float = 2.2
    #: camera height above the floor assumed when the floor surface was not observed.
    assumed_camera_height: float = 1.2
    #: histogram bin size.
    bin: float = 0.02
    #: a floor peak needs this fraction of the storey band's highest histogram peak...
    peak_fraction: float = 0.3
    #: ...and at least this many points.
    min_points: int = 30
    #: estimated up within this angle of the map's +z is taken as exactly +z.
    snap_deg: float = 10.0


@dataclass(frozen=True)
class Floor:
    """One storey: floor elevation, its height band [elevation, top) and its cameras (level frame)."""

    index: int
    elevation: float
    top: float
    n_cameras: int
    observed: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["top"] = None if not np.isfinite(self.top) else float(self.top)
        return d


def up_axis(georef: Georeference | None, cameras: list[Rigid3], snap_deg: float = 10.0) -> tuple[np.ndarray, str]:
    """(3,) unit up direction in the map frame and how it was found."""
    if georef is not None:
        return georef.rotation.T @ np.array([0.0, 0.0, 1.0]), "georeference (ENU up)"
    if not cameras:
        return np.array([0.0, 0.0, 1.0]), "assumed +z (no cameras)"
    up = -np.mean([c.rotation[:, 1] for c in cameras], axis=0)
    n = np.linalg.norm(up)
    if n < 0.3:
        return np.array([0.0, 0.0, 1.0]), "assumed +z (camera orientations disagree)"
    up /= n
    if np.degrees(np.arccos(np.clip(up[2], -1, 1))) <= snap_deg:
        return np.array([0.0, 0.0, 1.0]), f"+z (cameras' mean up within {snap_deg:g} deg)"
    return up, "mean camera up (-y) direction"


def level_from_map(up: np.ndarray) -> Rigid3:
    """Smallest rotation taking the (3,) map-frame ``up`` to +z (identity when up is +z)."""
    u = np.asarray(up, np.float64) / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(u, z), float(u @ z)
    if np.linalg.norm(v) < 1e-12:
        return Rigid3.identity() if c > 0 else Rigid3(np.diag([1.0, -1.0, -1.0]), np.zeros(3))
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    R = np.eye(3) + vx + vx @ vx / (1 + c)
    return Rigid3(R, np.zeros(3))


def storeys_from_cameras(camera_z: np.ndarray, min_gap: float) -> list[np.ndarray]:
    """Split (M,) camera heights into groups (indices) at sorted gaps larger than ``min_gap``."""
    order = np.argsort(camera_z)
    z = camera_z[order]
    cuts = np.flatnonzero(np.diff(z) > min_gap) + 1
    return [order[s] for s in np.split(np.arange(len(z)), cuts)]


def _floor_peak(point_z: np.ndarray, lo: float, hi: float, cfg: FloorConfig) -> float | None:
    """Centre of the lowest strong histogram peak of point heights in [lo, hi], or None."""
    z = point_z[(point_z >= lo) & (point_z <= hi)]
    if len(z) < cfg.min_points:
        return None
    edges = np.arange(lo, hi + cfg.bin, cfg.bin)
    hist, _ = np.histogram(z, edges)
    smooth = np.convolve(hist, [1, 2, 1], mode="same") / 4
    strong = np.flatnonzero((smooth >= cfg.peak_fraction * smooth.max()) & (hist >= 1))
    if len(strong) == 0 or smooth.max() * 4 < cfg.min_points:
        return None
    k = strong[0]
    while k + 1 < len(smooth) and smooth[k + 1] > smooth[k]:  # climb to the local maximum
        k += 1
    sel = (z >= edges[max(k - 1, 0)]) & (z < edges[min(k + 2, len(edges) - 1)])
    return float(np.median(z[sel])) if sel.any() else float((edges[k] + edges[k + 1]) / 2)


def find_floors(point_z: np.ndarray, camera_z: np.ndarray, cfg: FloorConfig = FloorConfig()) -> list[Floor]:
    """Floors (lowest first) from (N,) heights of *upward-facing* surface points (floors, table tops;
    not ceilings) and (M,) camera heights, both level frame."""
    point_z = np.asarray(point_z, np.float64).ravel()
    camera_z = np.asarray(camera_z, np.float64).ravel()
    if len(camera_z) == 0:
        raise ValueError("find_floors needs camera heights")
    found = []
    for grp in storeys_from_cameras(camera_z, cfg.min_storey_gap):
        low = float(camera_z[grp].min())
        peak = _floor_peak(point_z, low - cfg.max_camera_height, low - cfg.min_camera_height, cfg)
        found.append((peak if peak is not None else low - cfg.assumed_camera_height, peak is not None, len(grp)))
    floors = []
    for k, (elev, observed, n) in enumerate(found):
        top = found[k + 1][0] if k + 1 < len(found) else np.inf
        floors.append(Floor(k, float(elev), float(top), int(n), bool(observed)))
    return floors
