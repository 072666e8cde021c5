"""Geodetic position and heading of a localized camera, for maps whose bundle is georeferenced.

Expected manifest entry (written by the georeferencing stage; absent = not georeferenced)::

    "georeference": {
      "origin": {"latitude": deg, "longitude": deg, "altitude": m},   # WGS84, ellipsoidal height
      "enu_from_map": {"scale": s, "quaternion_wxyz": [w, x, y, z],   # or "rotation": 3x3 rows
                       "translation": [e, n, u]},                     # x_enu = s R x_map + t
      ...                                                             # further keys (source,
    }                                                                 # residuals, crs) are kept

ENU is the local east-north-up frame at ``origin``; pyproj does every conversion
(``cart`` + ``topocentric`` pipeline, inverted). heading: the camera's optical axis (+z)
projected on the horizontal plane, degrees clockwise from north, in [0, 360).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from core.geometry import Rigid3, Sim3, matrix_to_quat_wxyz, quat_wxyz_to_matrix


@dataclass(frozen=True)
class Georeference:
    """Similarity ``enu_from_map`` (scale, (3, 3) rotation, (3,) translation) and the ENU origin."""

    latitude: float
    longitude: float
    altitude: float
    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def from_manifest(manifest: dict) -> "Georeference | None":
        """None when the manifest has no ``georeference``; ValueError when it is malformed."""
        g = manifest.get("georeference")
        if g is None:
            return None
        try:
            o, s = g["origin"], g["enu_from_map"]
            R = (quat_wxyz_to_matrix(s["quaternion_wxyz"]) if "quaternion_wxyz" in s
                 else np.asarray(s["rotation"], np.float64).reshape(3, 3))
            ref = Georeference(float(o["latitude"]), float(o["longitude"]), float(o.get("altitude", 0.0)),
                               float(s.get("scale", 1.0)), R, np.asarray(s["translation"], np.float64).reshape(3))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed georeference in the manifest: {e!r}") from None
        ok = (abs(ref.latitude) <= 90 and abs(ref.longitude) <= 180 and ref.scale > 0
              and np.all(np.isfinite(ref.rotation)) and np.all(np.isfinite(ref.translation))
              and abs(np.linalg.det(ref.rotation) - 1) < 1e-3)
        if not ok:
            raise ValueError("malformed georeference in the manifest: origin, scale or rotation out of range")
        return ref

    @property
    def enu_from_map(self) -> Sim3:
        return Sim3(self.scale, self.rotation, self.translation)

    @staticmethod
    def from_sim3(latitude: float, longitude: float, altitude: float, enu_from_map: Sim3) -> "Georeference":
        return Georeference(float(latitude), float(longitude), float(altitude), float(enu_from_map.scale),
                            np.asarray(enu_from_map.rotation, np.float64),
                            np.asarray(enu_from_map.translation, np.float64))

    def to_manifest(self, **extra) -> dict:
        """The manifest's ``georeference`` entry; ``extra`` (source, residuals, crs...) is stored beside."""
        return {"origin": {"latitude": self.latitude, "longitude": self.longitude, "altitude": self.altitude},
                "enu_from_map": {"scale": self.scale,
                                 "quaternion_wxyz": [float(v) for v in matrix_to_quat_wxyz(self.rotation)],
                                 "translation": [float(v) for v in self.translation]},
                **extra}

    @property
    def _transformer(self) -> "Transformer":  # noqa: F821  (pyproj, imported on first use)
        """geodetic (lon, lat deg, h) -> ENU at the origin; one per thread (pyproj objects are not shared)."""
        local = self.__dict__.get("_local")
        if local is None:
            local = threading.local()
            object.__setattr__(self, "_local", local)
        if not hasattr(local, "t"):
            from pyproj import Transformer  # on first use: serving a map without georeference needs no pyproj
            local.t = Transformer.from_pipeline(
                "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step +proj=cart +ellps=WGS84 "
                f"+step +proj=topocentric +ellps=WGS84 +lat_0={self.latitude!r} +lon_0={self.longitude!r} "
                f"+h_0={self.altitude!r}")
        return local.t

    def locate(self, world_from_cam: Rigid3) -> dict[str, float]:
        """latitude, longitude (deg), altitude (m, ellipsoid), heading (deg from north) of a camera."""
        e, n, u = self.scale * self.rotation @ world_from_cam.translation + self.translation
        from pyproj.enums import TransformDirection
        lon, lat, alt = self._transformer.transform(e, n, u, direction=TransformDirection.INVERSE)
        axis = self.rotation @ world_from_cam.rotation[:, 2]
        heading = math.degrees(math.atan2(axis[0], axis[1])) % 360.0
        return {"latitude": float(lat), "longitude": float(lon), "altitude": float(alt), "heading": float(heading)}
