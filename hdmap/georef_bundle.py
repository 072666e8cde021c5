"""Fit a bundle's georeference from EXIF GPS, a GNSS CSV or GCPs, and store it (the work behind `vloc map georef`).

The map side of every correspondence comes from the bundle's COLMAP model (``model/``): camera
centres (``world_from_cam`` translation) for EXIF / GNSS positions, triangulated pixels or given
map points for GCPs. The result is written with :func:`bundleio.update_bundle` as the
manifest's ``georeference`` entry (format in :mod:`core.geo`), with residuals and the source.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from bundleio import read_manifest, sha256_file, update_bundle
from core.geometry import Rigid3
from core.types import VlocError
from hdmap import geodesy
from hdmap import georef as gr
from hdmap.gnss import match_names, read_gcp_file, read_gnss_csv, resolve_gcps
from hdmap.gravity import Gravity

#: default horizontal inlier thresholds (metres) per source: phone / consumer GNSS vs surveyed GCPs.
DEFAULT_MAX_ERROR_M = {"exif": 10.0, "gnss": 10.0, "gcp": 1.0}
#: --gravity auto uses the cameras' up direction when their up axes agree within this (median, deg).
UPRIGHT_SPREAD_DEG = 20.0
VERTICAL_REFERENCE = "altitudes as given by the source (EXIF altitude is usually above mean sea level)"


@dataclass(frozen=True)
class Correspondences:
    """labels (N,), map_xyz (N, 3) map frame, geodetic (N, 3) lat/lon/alt, optional sigmas (N,) m."""

    labels: list[str]
    map_xyz: np.ndarray
    geodetic: np.ndarray
    sigma_h: np.ndarray | None
    sigma_v: np.ndarray | None
    source: dict
    notes: list[str]


def _fill(values: list[float | None]) -> np.ndarray | None:
    """Per-point sigmas; missing ones take the median of the given ones; None when none is given."""
    given = [v for v in values if v is not None]
    if not given:
        return None
    med = float(np.median(given))
    return np.array([med if v is None else v for v in values], np.float64)


def registered_cameras(rec: pycolmap.Reconstruction) -> dict[str, Rigid3]:
    """Registered image name -> ``world_from_cam`` (centre = translation)."""
    return {im.name: Rigid3.from_pycolmap(im.cam_from_world()).inverse()
            for im in rec.images.values() if im.has_pose}


def exif_correspondences(cams: dict[str, Rigid3], images_root: Path) -> Correspondences:
    from datasets.image_folder import read_image_record
    labels, xyz, geo, sig, notes = [], [], [], [], []
    no_gps, no_alt = [], []
    for name in sorted(cams):
        path = Path(images_root) / name
        if not path.is_file():
            raise VlocError(f"map image {name} is not under {images_root}; pass --images with the folder "
                            "the map was built from")
        gps = read_image_record(path, name).gps
        if gps is None:
            no_gps.append(name)
        elif gps.altitude is None:
            no_alt.append(name)
        else:
            labels.append(name)
            xyz.append(cams[name].translation)
            geo.append((gps.latitude, gps.longitude, gps.altitude))
            sig.append(gps.accuracy_m)
    if no_gps or no_alt:
        notes.append(f"{len(no_gps)} image(s) without EXIF GPS and {len(no_alt)} without GPS altitude skipped"
                     + (f", e.g. {(no_gps + no_alt)[0]}" if no_gps or no_alt else ""))
    if not labels:
        raise VlocError(f"none of the {len(cams)} map images under {images_root} has EXIF GPS with altitude; "
                        "use --gnss FILE or --gcp FILE")
    return Correspondences(labels, np.array(xyz), np.array(geo), _fill(sig), None,
                           {"kind": "exif", "images_root": str(Path(images_root).absolute())}, notes)


def gnss_correspondences(cams: dict[str, Rigid3], path: Path) -> Correspondences:
    fixes = read_gnss_csv(path)
    found = match_names([f.name for f in fixes], list(cams))
    unmatched = [f.name for f in fixes if f.name not in found]
    used = [f for f in fixes if f.name in found]
    if not used:
        raise VlocError(f"{path}: none of its {len(fixes)} names is a registered map image "
                        f"(e.g. {fixes[0].name!r}; map images are named like {sorted(cams)[:2]})")
    notes = [f"{len(unmatched)} fix(es) name no registered map image, e.g. {unmatched[0]!r}"] if unmatched else []
    return Correspondences([found[f.name] for f in used], np.array([cams[found[f.name]].translation for f in used]),
                           np.array([(f.latitude, f.longitude, f.altitude) for f in used]),
                           _fill([f.sigma_h for f in used]), _fill([f.sigma_v for f in used]),
                           {"kind": "gnss", "file": str(Path(path).absolute()), "sha256": sha256_file(path)}, notes)


def gcp_correspondences(rec: pycolmap.Reconstruction, path: Path) -> Correspondences:
    gcps = resolve_gcps(read_gcp_file(path), rec)
    notes = [f"GCP {g.label}: {g.how} ({g.error_px:.1f} px)" for g in gcps if g.how != "map point"]
    return Correspondences([g.label for g in gcps], np.array([g.xyz for g in gcps]),
                           np.array([g.geodetic for g in gcps]), None, None,
                           {"kind": "gcp", "file": str(Path(path).absolute()), "sha256": sha256_file(path)}, notes)


def georeference_bundle(bundle: Path, source: str, file: Path | None = None, images: Path | None = None,
                        origin: str | None = None, crs: str | None = None, max_error_m: float | None = None,
                        gravity: Gravity = Gravity.auto, fix_scale: bool = False, write: bool = True,
                        config: gr.GeorefConfig = gr.GeorefConfig()) -> tuple[dict, gr.GeorefEstimate, list[str]]:
    """Fit the georeference of ``bundle`` from ``source`` (exif | gnss | gcp) and store it unless
    ``write`` is False. Returns (manifest entry, estimate, notes)."""
    origin_t = geodesy.parse_origin(origin) if origin is not None else None
    if crs is not None:
        geodesy.resolve_crs(crs, 0.0, 0.0)  # refuse an unknown CRS before any work
    manifest = read_manifest(bundle)
    rec = pycolmap.Reconstruction(str(Path(bundle) / "model"))
    cams = registered_cameras(rec)
    if not cams:
        raise VlocError(f"{bundle}: the map has no registered images")
    if source == "exif":
        root = images or manifest.get("sources", {}).get("images_root")
        if root is None:
            raise VlocError("the bundle does not record its image folder: pass --images DIR")
        if not Path(root).is_dir():
            raise VlocError(f"image folder {root} (recorded in the bundle) does not exist: pass --images DIR")
        corr = exif_correspondences(cams, Path(root))
    elif source == "gnss":
        corr = gnss_correspondences(cams, file)
    elif source == "gcp":
        corr = gcp_correspondences(rec, file)
    else:
        raise VlocError(f"unknown georeference source {source!r}")
    notes = list(corr.notes)

    map_up, spread = None, None
    if gravity != Gravity.none:
        up, spread = gr.up_from_cameras(np.array([T.rotation for T in cams.values()]))
        if spread <= UPRIGHT_SPREAD_DEG:
            map_up = up
        elif gravity == Gravity.images:
            raise VlocError(f"the cameras are not upright (their up axes spread {spread:.0f} deg, limit "
                            f"{UPRIGHT_SPREAD_DEG:g}): the map's up cannot come from them; use --gravity none")
        else:
            notes.append(f"cameras not upright (up axes spread {spread:.0f} deg): no gravity prior")
    if fix_scale and not manifest.get("world_frame", {}).get("metric", False):
        raise VlocError("--fix-scale needs a metric map (posed build); this map's scale is arbitrary (SfM)")

    max_error = DEFAULT_MAX_ERROR_M[source] if max_error_m is None else float(max_error_m)
    est = gr.estimate_georeference(corr.map_xyz, corr.geodetic, origin=origin_t, max_error_m=max_error,
                                   sigma_h=corr.sigma_h, sigma_v=corr.sigma_v, map_up=map_up,
                                   fix_scale=fix_scale, config=config)
    g = est.georef
    crs_obj = geodesy.resolve_crs(crs, g.latitude, g.longitude)
    origin_xyz = geodesy.geodetic_to_crs(np.array([[g.latitude, g.longitude, g.altitude]]), crs_obj)[0]
    entry = g.to_manifest(
        source=corr.source, crs=geodesy.crs_id(crs_obj), crs_name=crs_obj.name,
        origin_in_crs=[float(v) for v in origin_xyz],
        vertical_reference=VERTICAL_REFERENCE,
        n_inliers=int(est.inliers.sum()), residuals=est.summary(),
        options={"max_error_m": max_error, "vertical_factor": config.vertical_factor,
                 "gravity": gravity.value, "gravity_used": map_up is not None,
                 "cameras_up_spread_deg": spread, "up_sigma_deg": config.up_sigma_deg, "fix_scale": fix_scale},
        points=[{"name": n, "inlier": bool(i), "east_m": float(r[0]), "north_m": float(r[1]), "up_m": float(r[2])}
                for n, i, r in zip(corr.labels, est.inliers, est.residuals_enu)])
    if write:
        with update_bundle(bundle, "georef") as (_, m):
            if "georeference" in m:
                notes.append("replaced the previous georeference")
            m["georeference"] = entry
    return entry, est, notes


