"""2D occupancy grid of one floor, written in the ROS map_server format (PGM + YAML).

Frame: the level frame (x, y) of :mod:`hdmap.layers.floors` — the map frame itself when the
map's up axis is +z — so a vloc pose's (x, y) indexes the grid directly. Cells:

* occupied: surface points between ``floor + min_height`` and ``floor + max_height`` (the
  robot body band), and unknown pockets enclosed only by occupied cells (solid furniture);
* free: the floor surface was seen there, or a camera / depth ray crossed the cell below
  ``floor + min_height`` (a ray higher up says nothing about the column below it);
* unknown: neither.

ROS conventions (map_server ``mode: trinary``, ``negate: 0``): pixel 0 = occupied, 254 = free,
205 = unknown; ``origin`` is the pose (x, y, yaw) of the *lower-left corner* of the image, image
row 0 is the top (largest y), so cell centre of (row, col) is
``(ox + (col + 0.5) * res, oy + (H - 1 - row + 0.5) * res)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hdmap.layers.floors import Floor

OCCUPIED, FREE, UNKNOWN = 100, 0, -1
PGM_OCCUPIED, PGM_FREE, PGM_UNKNOWN = 0, 254, 205


@dataclass(frozen=True)
class OccupancyConfig:
    """Occupancy grid parameters (metres, level frame)."""

    #: cell size.
    resolution: float = 0.05
    #: obstacles start this far above the floor (below: floor, thresholds, cables).
    min_height: float = 0.1
    #: ...and end this far above it (the robot's height).
    max_height: float = 1.5
    #: points within this of the floor elevation count as observed floor (free).
    floor_tolerance: float = 0.05
    #: a cell is occupied with at least this many obstacle points.
    min_hits: int = 1
    #: empty border around the observed area, in cells.
    margin_cells: int = 5
    #: ROS thresholds written to the YAML.
    occupied_thresh: float = 0.65
    free_thresh: float = 0.196


@dataclass(frozen=True)
class OccupancyGrid:
    """cells: (H, W) int8 (100 occupied, 0 free, -1 unknown), row 0 = largest y (image order).

    origin: (x, y) of the lower-left corner of the grid, level frame; resolution: metres per cell.
    """

    cells: np.ndarray
    resolution: float
    origin: tuple[float, float]

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) level-frame points -> (rows (N,), cols (N,)) int; may fall outside the grid."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        col = np.floor((xy[:, 0] - self.origin[0]) / self.resolution).astype(np.int64)
        row = self.cells.shape[0] - 1 - np.floor((xy[:, 1] - self.origin[1]) / self.resolution).astype(np.int64)
        return row, col

    def counts(self) -> dict[str, int]:
        return {"occupied": int((self.cells == OCCUPIED).sum()), "free": int((self.cells == FREE).sum()),
                "unknown": int((self.cells == UNKNOWN).sum())}


def _mark_rays(free: np.ndarray, grid_of, origins: np.ndarray, ends: np.ndarray, lo: float, hi: float,
               resolution: float, chunk: int = 20000) -> None:
    """Set ``free`` True in cells crossed by the rays' parts with lo <= z <= hi (endpoint cell excluded)."""
    for s in range(0, len(origins), chunk):
        o, e = origins[s:s + chunk], ends[s:s + chunk]
        d = e - o
        with np.errstate(divide="ignore", invalid="ignore"):
            t_lo = np.where(np.abs(d[:, 2]) > 1e-12, (lo - o[:, 2]) / d[:, 2], -np.inf)
            t_hi = np.where(np.abs(d[:, 2]) > 1e-12, (hi - o[:, 2]) / d[:, 2], np.inf)
        inside = (o[:, 2] >= lo) & (o[:, 2] <= hi)
        t0 = np.where(np.abs(d[:, 2]) > 1e-12, np.maximum(0, np.minimum(t_lo, t_hi)), np.where(inside, 0, 1))
        t1 = np.where(np.abs(d[:, 2]) > 1e-12, np.minimum(1, np.maximum(t_lo, t_hi)), np.where(inside, 1, 0))
        length = np.linalg.norm(d[:, :2], axis=1)
        t1 = np.minimum(t1, 1 - resolution / np.maximum(length, 1e-9))  # stop before the surface's cell
        ok = t1 > t0
        o, d, t0, t1, length = o[ok], d[ok], t0[ok], t1[ok], length[ok]
        n = np.maximum(1, np.ceil((t1 - t0) * length / (resolution / 2)).astype(np.int64) + 1)
        ray = np.repeat(np.arange(len(o)), n)
        k = np.arange(len(ray)) - np.repeat(np.cumsum(n) - n, n)
        t = t0[ray] + (t1 - t0)[ray] * k / np.maximum(n[ray] - 1, 1)
        r, c = grid_of(o[ray, :2] + t[:, None] * d[ray, :2])
        free[r, c] = True


def _fill_enclosed(cells: np.ndarray) -> None:
    """Unknown 4-connected pockets not touching the border and bordered only by occupied -> occupied."""
    unknown = (cells == UNKNOWN).astype(np.uint8)
    n, labels = cv2.connectedComponents(unknown, connectivity=4)
    if n <= 1:
        return
    H, W = cells.shape
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    free = (cells == FREE).astype(np.uint8)
    near_free = cv2.dilate(free, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)) > 0
    touches_free = np.unique(labels[near_free & (unknown > 0)])
    enclosed = np.setdiff1d(np.arange(1, n), np.union1d(border, touches_free))
    cells[np.isin(labels, enclosed)] = OCCUPIED


def occupancy_grid(points: np.ndarray, ray_origins: np.ndarray, ray_ends: np.ndarray, floor: Floor,
                   cfg: OccupancyConfig = OccupancyConfig()) -> OccupancyGrid:
    """Grid of one floor from (N, 3) surface points and (R, 3) ray origins / ends (level frame).

    Surface points: the mesh's vertices or the map's points; rays: camera centre -> observed
    point (depth pixels or model observations).
    """
    lo, hi = floor.elevation, floor.elevation + cfg.max_height
    top = min(floor.top, hi) if np.isfinite(floor.top) else hi
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    storey = pts[(pts[:, 2] >= lo - cfg.floor_tolerance) & (pts[:, 2] < max(top, lo + cfg.min_height))]
    o, e = np.asarray(ray_origins, np.float64).reshape(-1, 3), np.asarray(ray_ends, np.float64).reshape(-1, 3)
    in_storey = (o[:, 2] >= lo) & (o[:, 2] < (floor.top if np.isfinite(floor.top) else np.inf))
    o, e = o[in_storey], e[in_storey]
    extent = np.vstack([storey[:, :2], o[:, :2]]) if len(storey) + len(o) else np.zeros((1, 2))
    res = float(cfg.resolution)
    mn = np.floor(extent.min(0) / res) * res - cfg.margin_cells * res
    mx = np.ceil(extent.max(0) / res) * res + cfg.margin_cells * res
    W, H = int(round((mx[0] - mn[0]) / res)), int(round((mx[1] - mn[1]) / res))
    grid = OccupancyGrid(np.full((H, W), UNKNOWN, np.int8), res, (float(mn[0]), float(mn[1])))

    def grid_of(xy):
        r, c = grid.cell_of(xy)
        return np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)

    free = np.zeros((H, W), bool)
    _mark_rays(free, grid_of, o, e, lo - cfg.floor_tolerance, lo + cfg.min_height, res)
    on_floor = np.vstack([storey[np.abs(storey[:, 2] - lo) <= cfg.floor_tolerance],
                          e[np.abs(e[:, 2] - lo) <= cfg.floor_tolerance]])
    free[grid_of(on_floor[:, :2])] = True
    obst = storey[(storey[:, 2] >= lo + cfg.min_height) & (storey[:, 2] <= top)]
    hits = np.zeros((H, W), np.int32)
    np.add.at(hits, grid_of(obst[:, :2]), 1)
    cells = grid.cells
    cells[free] = FREE
    cells[hits >= cfg.min_hits] = OCCUPIED
    _fill_enclosed(cells)
    return grid


def write_ros_map(grid: OccupancyGrid, pgm_path: Path, cfg: OccupancyConfig = OccupancyConfig()) -> Path:
    """Write ``NAME.pgm`` and ``NAME.yaml`` (map_server format); returns the YAML path."""
    pgm_path = Path(pgm_path)
    img = np.full(grid.cells.shape, PGM_UNKNOWN, np.uint8)
    img[grid.cells == FREE] = PGM_FREE
    img[grid.cells == OCCUPIED] = PGM_OCCUPIED
    if not cv2.imwrite(str(pgm_path), img):
        raise OSError(f"could not write {pgm_path}")
    yaml_path = pgm_path.with_suffix(".yaml")
    yaml_path.write_text(
        f"image: {pgm_path.name}\n"
        f"mode: trinary\n"
        f"resolution: {grid.resolution!r}\n"
        f"origin: [{grid.origin[0]!r}, {grid.origin[1]!r}, 0.0]\n"
        f"negate: 0\n"
        f"occupied_thresh: {cfg.occupied_thresh!r}\n"
        f"free_thresh: {cfg.free_thresh!r}\n")
    return yaml_path
