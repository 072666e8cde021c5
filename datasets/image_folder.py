"""A plain folder of photos: cameras from EXIF focal, GPS from EXIF. No poses.

Camera: SIMPLE_RADIAL ``(f, W/2, H/2, 0)`` where W, H are the size of the
image **as displayed** (EXIF orientation 5-8 swaps the stored width and
height; read pixels with EXIF transposition, e.g. ``cv2.imread`` or
``PIL.ImageOps.exif_transpose``).  ``extra``: ``focal_source`` (``exif_35mm``,
``exif_focal_plane`` or ``default``), ``exif_orientation`` (1-8),
``rotated`` (stored pixels are rotated by 90 degrees w.r.t. the displayed image).
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.camera import Camera
from core.types import GeoPosition, ImageRecord, VlocError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: nominal horizontal error of one unit of GPS dilution of precision, metres.
UERE_M = 5.0
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# EXIF tag ids (main / Exif IFD)
_ORIENTATION, _FOCAL, _FOCAL35 = 0x0112, 0x920A, 0xA405
_FP_XRES, _FP_UNIT, _EXIF_W, _EXIF_H = 0xA20E, 0xA210, 0xA002, 0xA003
# GPS IFD
_LAT_REF, _LAT, _LON_REF, _LON, _ALT_REF, _ALT, _DOP, _HPOS_ERR = 1, 2, 3, 4, 5, 6, 11, 31
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit -> mm


def _num(v) -> float | None:
    """EXIF rational (IFDRational, legacy (num, den) int pair, or number) -> finite float, else None."""
    try:
        if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
            x = v[0] / v[1]
        else:
            x = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) else None


def _dms(v) -> float | None:
    """(deg, min, sec) rationals -> decimal degrees."""
    if not isinstance(v, (tuple, list)) or len(v) != 3:
        return _num(v)
    d, m, s = (_num(x) for x in v)
    return None if None in (d, m, s) else d + m / 60.0 + s / 3600.0


def _ref(v) -> str:
    return (v.decode(errors="ignore") if isinstance(v, bytes) else str(v or "")).strip("\x00 ").upper()


def _gps(exif) -> GeoPosition | None:
    g = exif.get_ifd(_GPS_IFD)
    lat, lon = _dms(g.get(_LAT)), _dms(g.get(_LON))
    if lat is None or lon is None or (lat == 0 and lon == 0):
        return None
    lat = -lat if _ref(g.get(_LAT_REF)) == "S" else lat
    lon = -lon if _ref(g.get(_LON_REF)) == "W" else lon
    if abs(lat) > 90 or abs(lon) > 180:
        return None
    alt = _num(g.get(_ALT)) if _ALT in g else None
    alt_ref = g.get(_ALT_REF)
    if alt is not None and (alt_ref == 1 or alt_ref == b"\x01"):
        alt = -alt
    acc = _num(g.get(_HPOS_ERR)) if _HPOS_ERR in g else None
    if acc is None and _DOP in g and (dop := _num(g.get(_DOP))) is not None and dop > 0:
        acc = dop * UERE_M
    return GeoPosition(lat, lon, alt, acc)


def _focal_px(exif, width: int, height: int, default_factor: float) -> tuple[float, str]:
    """(focal in pixels of the displayed image, source)."""
    sub = exif.get_ifd(_EXIF_IFD)
    f35 = _num(sub.get(_FOCAL35))
    if f35 is not None and f35 > 0:
        return f35 / 36.0 * max(width, height), "exif_35mm"
    f_mm, res, unit = _num(sub.get(_FOCAL)), _num(sub.get(_FP_XRES)), sub.get(_FP_UNIT, 2)
    if f_mm and f_mm > 0 and res and res > 0 and unit in _UNIT_MM:
        f_sensor_px = f_mm * res / _UNIT_MM[unit]  # pixels at the sensor's (EXIF) resolution
        exif_w, exif_h = _num(sub.get(_EXIF_W)), _num(sub.get(_EXIF_H))
        scale = max(width, height) / max(exif_w, exif_h) if exif_w and exif_h else 1.0
        return f_sensor_px * scale, "exif_focal_plane"
    return default_factor * max(width, height), "default"


def read_image_record(path: Path, name: str, default_focal_factor: float = 1.2) -> ImageRecord:
    """The record of one image file (camera from EXIF focal, GPS)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            exif = im.getexif()
    except (UnidentifiedImageError, OSError) as e:
        raise VlocError(f"cannot read image {path}: {e}") from None
    orientation = exif.get(_ORIENTATION, 1)
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    rotated = orientation >= 5
    if rotated:
        width, height = height, width
    f, source = _focal_px(exif, width, height, default_focal_factor)
    camera = Camera("SIMPLE_RADIAL", width, height, (f, width / 2, height / 2, 0.0))
    return ImageRecord(name=name, camera=camera, gps=_gps(exif),
                       extra={"focal_source": source, "exif_orientation": orientation, "rotated": rotated})


def load_image_folder(root: str | Path, default_focal_factor: float = 1.2) -> list[ImageRecord]:
    """Records of every .jpg/.jpeg/.png under ``root`` (recursive, sorted by name; no poses)."""
    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"image folder {root} does not exist")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise VlocError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return [read_image_record(p, p.relative_to(root).as_posix(), default_focal_factor) for p in files]
