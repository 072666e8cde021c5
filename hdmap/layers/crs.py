"""Map frame -> geodetic / projected coordinates for the layers, through :mod:`hdmap.geodesy` (pyproj).

The layers need metric horizontal axes, so only *projected* CRSs are accepted (UTM of the
georeference's origin by default).
"""
from __future__ import annotations

import numpy as np
from pyproj import CRS

from core.geo import Georeference
from core.types import VlocError
from hdmap import geodesy as _geodesy


def projected_crs(spec: str | None, georef: Georeference) -> CRS:
    """``EPSG:N`` / WKT / PROJ text, or None for the UTM zone of the origin -> a projected CRS."""
    crs = _geodesy.resolve_crs(spec, georef.latitude, georef.longitude)
    if not crs.is_projected:
        raise VlocError(f"--crs {spec!r} is not a projected CRS (layers need metric easting / northing)")
    return crs


def map_to_lonlat(points_map: np.ndarray, georef: Georeference) -> np.ndarray:
    """(N, 3) map-frame points -> (N, 3) WGS84 longitude, latitude (deg), ellipsoidal height (m)."""
    g = _geodesy.map_to_geodetic(points_map, georef)
    return g[:, [1, 0, 2]]
