"""Geodetic conversions for georeferencing, all through pyproj: WGS84 (EPSG:4979) <-> local ENU at an
origin, WGS84 <-> any projected CRS (UTM picked by zone by default), map points -> geodetic / CRS
through a :class:`core.geo.Georeference`. Arrays are ``(N, 3)`` rows (lat deg, lon deg, height m) or
(x, y, z) metres."""
from __future__ import annotations

import math

import numpy as np
from pyproj import CRS, Transformer
from pyproj.enums import TransformDirection
from pyproj.exceptions import CRSError

from core.geo import Georeference
from core.types import VlocError

#: WGS84 geographic 3D (lat, lon, ellipsoidal height) and geocentric (ECEF) CRS.
WGS84_3D = "EPSG:4979"
WGS84_ECEF = "EPSG:4978"


# ---- conversions (pyproj) -------------------------------------------------------------------

def _enu_transformer(origin: tuple[float, float, float]) -> Transformer:
    """geodetic (lon deg, lat deg, h m) -> ENU (m) at ``origin`` = (lat, lon, alt)."""
    lat0, lon0, h0 = (float(v) for v in origin)
    return Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step +proj=cart +ellps=WGS84 "
        f"+step +proj=topocentric +ellps=WGS84 +lat_0={lat0!r} +lon_0={lon0!r} +h_0={h0!r}")


def as_n3(a, what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim == 1 and a.shape == (3,):
        a = a[None]
    if a.ndim != 2 or a.shape[1] != 3:
        raise VlocError(f"{what} must be an (N, 3) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise VlocError(f"{what} has non-finite values")
    return a


def check_geodetic(geodetic: np.ndarray, what: str = "geodetic positions") -> np.ndarray:
    """(N, 3) lat, lon, alt validated (finite, |lat| <= 90, |lon| <= 180) -> float64 copy."""
    g = as_n3(geodetic, what)
    bad = np.flatnonzero((np.abs(g[:, 0]) > 90) | (np.abs(g[:, 1]) > 180))
    if len(bad):
        raise VlocError(f"{what}: row {bad[0]} has latitude {g[bad[0], 0]} / longitude {g[bad[0], 1]} "
                        "out of range (latitude first, degrees)")
    return g


def geodetic_to_enu(geodetic: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """(N, 3) lat, lon (deg), ellipsoidal height (m) -> (N, 3) east, north, up (m) at ``origin``."""
    g = check_geodetic(geodetic)
    e, n, u = _enu_transformer(origin).transform(g[:, 1], g[:, 0], g[:, 2])
    return np.column_stack([e, n, u])


def enu_to_geodetic(enu: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """(N, 3) east, north, up (m) at ``origin`` -> (N, 3) lat, lon (deg), ellipsoidal height (m)."""
    p = as_n3(enu, "ENU points")
    lon, lat, h = _enu_transformer(origin).transform(p[:, 0], p[:, 1], p[:, 2],
                                                     direction=TransformDirection.INVERSE)
    return np.column_stack([lat, lon, h])


def geodetic_centroid(geodetic: np.ndarray) -> tuple[float, float, float]:
    """Centre of (N, 3) geodetic positions: lat/lon of the ECEF mean (safe across the antimeridian),
    altitude = mean altitude (the ECEF mean lies below the surface for wide spreads)."""
    g = check_geodetic(geodetic)
    to_ecef = Transformer.from_crs(WGS84_3D, WGS84_ECEF, always_xy=True)
    x, y, z = to_ecef.transform(g[:, 1], g[:, 0], g[:, 2])
    lon, lat, _ = to_ecef.transform(np.mean(x), np.mean(y), np.mean(z), direction=TransformDirection.INVERSE)
    return float(lat), float(lon), float(np.mean(g[:, 2]))


def utm_zone(lat: float, lon: float) -> int:
    """UTM zone number (1-60) of a position, with the Norway (32V) and Svalbard (31X-37X) exceptions."""
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        raise VlocError(f"latitude {lat} / longitude {lon} out of range")
    lon = ((lon + 180.0) % 360.0) - 180.0
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    if 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        zone = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return zone


def utm_crs_for(lat: float, lon: float) -> CRS:
    """The WGS84 UTM CRS of a position (EPSG:326zz north of the equator, EPSG:327zz south)."""
    zone = utm_zone(lat, lon)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def resolve_crs(spec: str | None, lat: float, lon: float) -> CRS:
    """A CRS from the user's text (``EPSG:N``, WKT, PROJ string), or UTM at (lat, lon) when spec is
    None / ``auto`` / ``utm``. VlocError when pyproj does not know it."""
    if spec is None or spec.strip().lower() in ("", "auto", "utm"):
        return utm_crs_for(lat, lon)
    try:
        crs = CRS.from_user_input(spec.strip())
    except CRSError as e:
        raise VlocError(f"unknown CRS {spec!r} ({e}); give e.g. EPSG:32633, or omit --crs for the UTM zone") \
            from None
    if crs.is_geocentric:
        raise VlocError(f"CRS {spec!r} is geocentric; give a projected or geographic CRS")
    return crs


def crs_id(crs: CRS) -> str:
    """``EPSG:N`` when the CRS has an EPSG code, else its PROJ string."""
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_proj4()


def geodetic_to_crs(geodetic: np.ndarray, crs: CRS | str) -> np.ndarray:
    """(N, 3) WGS84 lat, lon, ellipsoidal height -> (N, 3) coordinates in ``crs`` in its axis order
    normalised to (x/easting/lon, y/northing/lat, z). For a 2D target CRS z is the ellipsoidal height."""
    g = check_geodetic(geodetic)
    t = Transformer.from_crs(WGS84_3D, CRS.from_user_input(crs), always_xy=True)
    x, y, z = t.transform(g[:, 1], g[:, 0], g[:, 2])
    return np.column_stack([x, y, z])


def crs_to_geodetic(points: np.ndarray, crs: CRS | str) -> np.ndarray:
    """Inverse of :func:`geodetic_to_crs`: (N, 3) (x, y, z) in ``crs`` -> (N, 3) lat, lon, height."""
    p = as_n3(points, "CRS points")
    t = Transformer.from_crs(CRS.from_user_input(crs), WGS84_3D, always_xy=True)
    lon, lat, h = t.transform(p[:, 0], p[:, 1], p[:, 2])
    return np.column_stack([lat, lon, h])


def map_to_geodetic(points_map: np.ndarray, georef: Georeference) -> np.ndarray:
    """(N, 3) map-frame points -> (N, 3) WGS84 lat, lon (deg), height (m) through ``enu_from_map``."""
    enu = georef.enu_from_map.transform(as_n3(points_map, "map points"))
    return enu_to_geodetic(enu, (georef.latitude, georef.longitude, georef.altitude))


def map_to_crs(points_map: np.ndarray, georef: Georeference, crs: CRS | str) -> np.ndarray:
    """(N, 3) map-frame points -> (N, 3) (x, y, z) in ``crs`` (e.g. UTM easting, northing, height)."""
    return geodetic_to_crs(map_to_geodetic(points_map, georef), crs)


def enu_to_crs(enu: np.ndarray, origin: tuple[float, float, float], crs: CRS | str) -> np.ndarray:
    """(N, 3) ENU at ``origin`` -> (N, 3) (x, y, z) in ``crs``."""
    return geodetic_to_crs(enu_to_geodetic(enu, origin), crs)


def parse_origin(text: str) -> tuple[float, float, float]:
    """``"LAT,LON[,ALT]"`` (degrees, metres; ALT defaults to 0) -> (lat, lon, alt)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (2, 3) or not all(math.isfinite(v) for v in vals):
        raise VlocError(f"origin {text!r}: expected LAT,LON,ALT in degrees and metres, e.g. 55.6985,13.1950,40")
    lat, lon, alt = (*vals, 0.0) if len(vals) == 2 else vals
    if abs(lat) > 90 or abs(lon) > 180:
        raise VlocError(f"origin {text!r}: latitude must be within +-90 and longitude within +-180 (latitude first)")
    return lat, lon, alt
