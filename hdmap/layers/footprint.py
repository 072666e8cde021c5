"""Map footprint per floor as GeoJSON: the occupancy grid's known area (free or occupied) as polygons.

Outlines come from OpenCV contours of the known cells (holes kept), simplified to within one
cell. Coordinates: WGS84 longitude, latitude (RFC 7946, exterior rings counter-clockwise)
when the map is georeferenced; otherwise the map frame's x, y in metres, stated in each
feature's ``properties`` and in a top-level ``crs`` note (not an RFC 7946 member).
"""
from __future__ import annotations

import cv2
import numpy as np

from core.geo import Georeference
from core.geometry import Rigid3
from hdmap.layers.crs import map_to_lonlat
from hdmap.layers.floors import Floor
from hdmap.layers.occupancy import UNKNOWN, OccupancyGrid


def known_area_rings(grid: OccupancyGrid, simplify_cells: float = 1.0) -> list[list[np.ndarray]]:
    """Polygons of the known cells: a list of [exterior (K, 2), holes...] in the level frame (x, y)."""
    known = (grid.cells != UNKNOWN).astype(np.uint8)
    contours, hierarchy = cv2.findContours(known, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    H = grid.cells.shape[0]
    res, (ox, oy) = grid.resolution, grid.origin

    def to_xy(c: np.ndarray) -> np.ndarray:
        c = cv2.approxPolyDP(c, simplify_cells, True).reshape(-1, 2).astype(np.float64)
        return np.stack([ox + (c[:, 0] + 0.5) * res, oy + (H - 1 - c[:, 1] + 0.5) * res], 1)

    polys = []
    for k, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent >= 0 or len(contours[k]) < 3:
            continue
        rings = [to_xy(contours[k])]
        while child >= 0:
            if len(contours[child]) >= 3:
                rings.append(to_xy(contours[child]))
            child = hierarchy[0][child][0]
        if len(rings[0]) >= 3:
            polys.append([r for r in rings if len(r) >= 3])
    return polys


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _close(ring: np.ndarray, ccw: bool) -> list[list[float]]:
    if (_signed_area(ring) > 0) != ccw:
        ring = ring[::-1]
    return [[float(a), float(b)] for a, b in np.vstack([ring, ring[:1]])]


def footprint_geojson(grids: list[tuple[Floor, OccupancyGrid]], level_from_map: Rigid3,
                      georef: Georeference | None) -> dict:
    """FeatureCollection with one (Multi)Polygon per floor (grids in the level frame)."""
    identity = np.allclose(level_from_map.rotation, np.eye(3))
    frame_note = ("map frame x, y (metres; up = +z); not georeferenced" if identity else
                  "level frame x, y (metres): level_from_map rotation in the manifest; not georeferenced")
    map_from_level = level_from_map.inverse()
    features = []
    for floor, grid in grids:
        polys = []
        for rings in known_area_rings(grid):
            out = []
            for i, ring in enumerate(rings):
                if georef is not None:
                    p = map_from_level.transform(np.c_[ring, np.full(len(ring), floor.elevation)])
                    xy = map_to_lonlat(p, georef)[:, :2]
                else:
                    xy = ring
                out.append(_close(xy, ccw=(i == 0)))
            polys.append(out)
        if not polys:
            continue
        area = float(sum(abs(_signed_area(r[0])) - sum(abs(_signed_area(h)) for h in r[1:])
                         for r in known_area_rings(grid)))
        geom = {"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1 else \
            {"type": "MultiPolygon", "coordinates": polys}
        props = {"floor": floor.index, "elevation_m": floor.elevation, "area_m2": area,
                 "source": "occupancy grid known cells (free or occupied)"}
        if georef is None:
            props["frame"] = frame_note
        features.append({"type": "Feature", "geometry": geom, "properties": props})
    fc = {"type": "FeatureCollection", "features": features}
    if georef is None:
        fc["crs"] = {"type": "name", "properties": {"name": f"vloc {frame_note}"}}
    return fc
