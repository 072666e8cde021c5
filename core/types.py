"""Records that cross stage boundaries: an image with its camera and (optional) pose / GPS."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.camera import Camera
from core.geometry import Rigid3


class VlocError(Exception):
    """An error caused by the user's input; its message says what to change (CLI exit code 2)."""


@dataclass(frozen=True)
class GeoPosition:
    """WGS84 geodetic position: degrees, degrees, metres above the ellipsoid (EXIF altitude as given)."""

    latitude: float
    longitude: float
    altitude: float | None = None
    #: horizontal accuracy in metres when the source says (EXIF DOP x nominal, GNSS CSV), else None.
    accuracy_m: float | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    name: path relative to the image root, POSIX separators (the map's image key).
    camera: intrinsics; None when unknown (e.g. an EXIF folder without focal).
    cam_from_world: the pose in the dataset's world frame, or None when unposed.
    gps: geodetic position from EXIF / GNSS, or None.
    timestamp: seconds or frame counter when known.
    """

    name: str
    camera: Camera | None = None
    cam_from_world: Rigid3 | None = None
    gps: GeoPosition | None = None
    timestamp: float | None = None
    extra: dict = field(default_factory=dict, compare=False)
