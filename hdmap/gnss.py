"""Readers for georeferencing inputs: GNSS position files and ground control points (GCPs).

GNSS CSV (one fix per map image; comma-separated, a header row naming the columns in any order,
``#`` comment lines and blank lines ignored, extra columns ignored)::

    name,latitude,longitude,altitude[,sigma_h,sigma_v]
    seq-01/frame-000000.color.png,55.698166,13.195388,37.2,0.8,1.5

* name: the image name as in the map (path relative to the image root); a bare file name is
  accepted when it identifies one map image.
* latitude, longitude: WGS84 degrees; altitude: metres (ellipsoidal, or as the receiver gives it).
* sigma_h, sigma_v: optional 1-sigma horizontal / vertical accuracy in metres (weights of the fit;
  a blank cell means unknown).

The position is taken as the camera centre's (no lever arm between antenna and camera).

GCP file (comma-separated, ``#`` comments, an optional header row); each row is one of::

    x,y,z,latitude,longitude,altitude[,label]         a map-frame point (metres of the map frame)
    image,u,v,latitude,longitude,altitude[,label]     a pixel of a map image

A row is a pixel row when its first field is not a number (image names are never plain numbers).
u, v use the COLMAP pixel convention (the top-left pixel's centre is (0.5, 0.5); add 0.5 to integer
pixel indices from an image viewer). Pixel rows of the same ground point (same label, or same
latitude/longitude/altitude when there is no label) are triangulated through the map's cameras
when seen in two or more images; a point seen in one image is placed where that pixel's ray meets
the plane through the map points observed within ``radius_px`` of it (their median depth when
they do not span a plane).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from core.geometry import Rigid3
from core.types import VlocError

GNSS_REQUIRED = ("name", "latitude", "longitude", "altitude")


@dataclass(frozen=True)
class GnssFix:
    """One GNSS position of a map image (WGS84 degrees, metres; sigmas 1-sigma metres or None)."""

    name: str
    latitude: float
    longitude: float
    altitude: float
    sigma_h: float | None = None
    sigma_v: float | None = None


@dataclass(frozen=True)
class GcpObservation:
    """One GCP row. Map point: ``xyz`` (3,) set, ``image`` None. Pixel: ``image`` and ``uv`` (2,) set."""

    line: int
    label: str | None
    latitude: float
    longitude: float
    altitude: float
    xyz: tuple[float, float, float] | None = None
    image: str | None = None
    uv: tuple[float, float] | None = None


@dataclass(frozen=True)
class ResolvedGcp:
    """A ground control point in the map frame: ``xyz`` (3,) map metres, ``geodetic`` (lat, lon, alt),
    ``how`` (``map point``, ``triangulated from K images``, ``plane through K map points``, ``depth
    from K map points``) and the
    reprojection / neighbourhood error in pixels that supports it."""

    label: str
    xyz: np.ndarray
    geodetic: tuple[float, float, float]
    how: str
    error_px: float


def _float(text: str, what: str, where: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise VlocError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise VlocError(f"{where}: {what} {text!r} is not finite")
    return v


def _lat_lon(lat: float, lon: float, where: str) -> None:
    if abs(lat) > 90 or abs(lon) > 180:
        raise VlocError(f"{where}: latitude {lat} / longitude {lon} out of range "
                        "(WGS84 degrees, latitude first, |lat| <= 90, |lon| <= 180)")


def _rows(path: Path):
    """(line number, fields) of the non-blank, non-comment rows of a CSV file."""
    path = Path(path)
    if not path.is_file():
        raise VlocError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise VlocError(f"{path}: not a UTF-8 text file") from None
    for k, row in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in row]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        yield k, fields


def read_gnss_csv(path: Path) -> list[GnssFix]:
    """Fixes of a GNSS CSV (format in the module docstring); VlocError naming the line on any bad row."""
    rows = iter(_rows(path))
    try:
        line, header = next(rows)
    except StopIteration:
        raise VlocError(f"{path}: empty GNSS file (expected a header {','.join(GNSS_REQUIRED)}"
                        "[,sigma_h,sigma_v])") from None
    cols = {h.lower(): i for i, h in enumerate(header)}
    missing = [c for c in GNSS_REQUIRED if c not in cols]
    if missing:
        raise VlocError(f"{path} line {line}: header {','.join(header)!r} lacks column(s) {', '.join(missing)} "
                        f"(expected {','.join(GNSS_REQUIRED)}[,sigma_h,sigma_v])")
    fixes, seen = [], {}
    for line, f in rows:
        where = f"{path} line {line}"
        if len(f) < len(header):
            raise VlocError(f"{where}: {len(f)} fields, the header has {len(header)}")
        name = f[cols["name"]]
        if not name:
            raise VlocError(f"{where}: empty image name")
        lat, lon, alt = (_float(f[cols[c]], c, where) for c in ("latitude", "longitude", "altitude"))
        _lat_lon(lat, lon, where)
        sig = []
        for c in ("sigma_h", "sigma_v"):
            v = f[cols[c]] if c in cols else ""
            if v == "":
                sig.append(None)
                continue
            s = _float(v, c, where)
            if s <= 0:
                raise VlocError(f"{where}: {c} must be positive metres, got {s}")
            sig.append(s)
        if name in seen:
            raise VlocError(f"{where}: image {name!r} already has a fix on line {seen[name]}")
        seen[name] = line
        fixes.append(GnssFix(name, lat, lon, alt, *sig))
    if not fixes:
        raise VlocError(f"{path}: no GNSS fixes after the header")
    return fixes


def read_gcp_file(path: Path) -> list[GcpObservation]:
    """GCP rows (format in the module docstring); VlocError naming the line on any bad row."""
    out = []
    for k, (line, f) in enumerate(_rows(path)):
        where = f"{path} line {line}"
        if k == 0 and len(f) >= 6 and not _is_number(f[3]):
            continue  # header row
        if len(f) not in (6, 7):
            raise VlocError(f"{where}: {len(f)} fields; expected x,y,z,latitude,longitude,altitude[,label] "
                            "or image,u,v,latitude,longitude,altitude[,label]")
        lat, lon, alt = (_float(f[i], c, where) for i, c in ((3, "latitude"), (4, "longitude"), (5, "altitude")))
        _lat_lon(lat, lon, where)
        label = f[6] if len(f) == 7 and f[6] else None
        if _is_number(f[0]):
            xyz = tuple(_float(f[i], c, where) for i, c in ((0, "x"), (1, "y"), (2, "z")))
            out.append(GcpObservation(line, label, lat, lon, alt, xyz=xyz))
        else:
            if not f[0]:
                raise VlocError(f"{where}: empty image name")
            uv = (_float(f[1], "u", where), _float(f[2], "v", where))
            out.append(GcpObservation(line, label, lat, lon, alt, image=f[0], uv=uv))
    if not out:
        raise VlocError(f"{path}: no ground control points")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def match_names(given: list[str], map_names: list[str]) -> dict[str, str]:
    """given name -> map image name: exact, else a bare file name naming exactly one map image.
    Names that match nothing are left out (the caller reports them)."""
    exact = set(map_names)
    by_base: dict[str, list[str]] = {}
    for m in map_names:
        by_base.setdefault(Path(m).name, []).append(m)
    out = {}
    for g in given:
        if g in exact:
            out[g] = g
        elif "/" not in g and len(by_base.get(g, [])) == 1:
            out[g] = by_base[g][0]
    return out


def resolve_gcps(observations: list[GcpObservation], rec: pycolmap.Reconstruction,
                 radius_px: float = 20.0, max_reproj_px: float = 4.0) -> list[ResolvedGcp]:
    """Map-frame positions of the GCPs: map points as given, pixels triangulated (2+ images) or
    placed at the depth of nearby map points (1 image). VlocError naming the GCP when one fails."""
    names = [im.name for im in rec.images.values() if im.has_pose]
    groups: dict[str, list[GcpObservation]] = {}
    for o in observations:
        key = o.label or f"{o.latitude:.9f},{o.longitude:.9f},{o.altitude:.4f}"
        groups.setdefault(key, []).append(o)
    pixel_images = sorted({o.image for o in observations if o.image is not None})
    found = match_names(pixel_images, names)
    unknown = [n for n in pixel_images if n not in found]
    if unknown:
        raise VlocError(f"GCP image(s) {unknown[:3]} are not registered in the map "
                        f"(map images are named like {names[:2]})")
    out = []
    for key, obs in groups.items():
        geo = {(o.latitude, o.longitude, o.altitude) for o in obs}
        if len(geo) > 1:
            raise VlocError(f"GCP {key!r} (lines {[o.line for o in obs]}) has different lat/lon/alt on its rows")
        geodetic = next(iter(geo))
        pts = [o for o in obs if o.xyz is not None]
        pix = [o for o in obs if o.image is not None]
        if pts and pix:
            raise VlocError(f"GCP {key!r} (lines {[o.line for o in obs]}) mixes a map point and pixels; "
                            "give one or the other")
        if pts:
            if len(pts) > 1:
                raise VlocError(f"GCP {key!r} is given as a map point on several lines {[o.line for o in pts]}")
            out.append(ResolvedGcp(key, np.asarray(pts[0].xyz, np.float64), geodetic, "map point", 0.0))
            continue
        images = [rec.find_image_with_name(found[o.image]) for o in pix]
        if len({im.image_id for im in images}) != len(images):
            raise VlocError(f"GCP {key!r} names the same image twice (lines {[o.line for o in pix]})")
        for o, im in zip(pix, images):
            cam = im.camera
            if not (0 <= o.uv[0] <= cam.width and 0 <= o.uv[1] <= cam.height):
                raise VlocError(f"GCP {key!r} line {o.line}: pixel {o.uv} is outside image {o.image} "
                                f"({cam.width}x{cam.height})")
        if len(pix) >= 2:
            out.append(_triangulate(key, pix, images, geodetic, max_reproj_px))
        else:
            out.append(_from_depth(key, pix[0], images[0], rec, geodetic, radius_px))
    return out


def _triangulate(key: str, pix: list[GcpObservation], images, geodetic, max_reproj_px: float) -> ResolvedGcp:
    poses = [im.cam_from_world() for im in images]
    rays = []
    for o, im in zip(pix, images):
        xy = np.asarray(im.camera.cam_from_img(np.asarray(o.uv, np.float64)), np.float64).reshape(-1)[:2]
        r = np.r_[xy, 1.0]
        rays.append(r / np.linalg.norm(r))
    X = pycolmap.triangulate_multi_view_point([p.matrix() for p in poses], np.array(rays))
    if X is None:
        raise VlocError(f"GCP {key!r}: the rays of its {len(pix)} pixels do not meet (lines {[o.line for o in pix]})")
    X = np.asarray(X, np.float64).reshape(3)
    errs = []
    for o, im, T in zip(pix, images, poses):
        xc = Rigid3.from_pycolmap(T).transform(X[None])[0]
        if xc[2] <= 0:
            raise VlocError(f"GCP {key!r}: triangulated behind image {im.name} (line {o.line}); check the pixels")
        uv = np.asarray(im.camera.img_from_cam(xc), np.float64).reshape(-1)[:2]
        errs.append(float(np.linalg.norm(uv - np.asarray(o.uv))))
    if max(errs) > max_reproj_px:
        raise VlocError(f"GCP {key!r}: its pixels disagree (reprojection errors {[round(e, 1) for e in errs]} px, "
                        f"limit {max_reproj_px:g} px; lines {[o.line for o in pix]}): is it the same point?")
    return ResolvedGcp(key, X, geodetic, f"triangulated from {len(pix)} images", max(errs))


def _from_depth(key: str, o: GcpObservation, im, rec: pycolmap.Reconstruction, geodetic,
                radius_px: float) -> ResolvedGcp:
    obs = [(np.asarray(p.xy, np.float64), p.point3D_id) for p in im.points2D if p.has_point3D()]
    if not obs:
        raise VlocError(f"GCP {key!r} line {o.line}: image {im.name} observes no map point")
    xy = np.array([x for x, _ in obs])
    d = np.linalg.norm(xy - np.asarray(o.uv), axis=1)
    near = np.flatnonzero(d <= radius_px)
    if len(near) == 0:
        raise VlocError(f"GCP {key!r} line {o.line}: no map point is observed within {radius_px:g} px of "
                        f"{o.uv} in {im.name} (nearest {d.min():.0f} px); give the point in a second image "
                        "to triangulate it, or as a map point x,y,z")
    near = near[np.argsort(d[near])][:8]
    world_from_cam = Rigid3.from_pycolmap(im.cam_from_world()).inverse()
    xyz = np.array([rec.points3D[obs[k][1]].xyz for k in near])
    xyn = np.asarray(im.camera.cam_from_img(np.asarray(o.uv, np.float64)), np.float64).reshape(-1)[:2]
    ray = world_from_cam.rotation @ np.r_[xyn, 1.0]          # world direction, unit depth
    centre = world_from_cam.translation
    X, how = None, f"depth from {len(near)} map points"
    if len(near) >= 3:
        # the local surface: least-squares plane through the neighbours (SVD), hit by the pixel's ray
        c = xyz.mean(0)
        _, sv, vt = np.linalg.svd(xyz - c)
        normal = vt[2]
        denom = float(ray @ normal)
        flat = sv[2] < 0.1 * sv[1]   # neighbours are spread over a surface, not a line
        if flat and abs(denom) > 0.1 * np.linalg.norm(ray):
            lam = float((c - centre) @ normal) / denom
            if lam > 0:
                X, how = centre + lam * ray, f"plane through {len(near)} map points"
    if X is None:  # a line of neighbours or a grazing plane: median depth along the optical axis
        depths = (xyz - centre) @ world_from_cam.rotation[:, 2]
        X = centre + float(np.median(depths)) * ray
    return ResolvedGcp(key, X, geodetic, how, float(d[near].max()))
