"""Aerial fusion: refine a map's georeference by registering it to an orthophoto (and a DSM).

Frames and arrays:

* map: the bundle's world frame; ``points_map`` (N, 3), ``colours`` (N, 3) uint8 RGB.
* ENU: east, north, up at the georeference origin (:mod:`core.geo`, ``x_enu = s R x_map + t``).
* raster CRS: the orthophoto's projected CRS (x = easting, y = northing, metres), read with
  :mod:`hdmap.raster`.  pyproj does every CRS conversion (:mod:`hdmap.geodesy`).

Method: the map's points on the ground (lowest surface in each neighbourhood: what a camera
looking down sees of a street-level map) are rendered top-down into the orthophoto's pixel
grid at the current georeference, their grey values splatted over a few pixels.  Patches of
that sparse rendering are matched to the orthophoto by masked normalised cross-correlation
(OpenCV ``matchTemplate``) within a search window around the current georeference (the GPS
prior); the patch correspondences give a 2D similarity by RANSAC
(``cv2.estimateAffinePartial2D``).  The similarity (in raster CRS metres) becomes a refined
georeference: east, north, yaw about ENU up and scale change, roll / pitch (the map's gravity
direction) kept.  This repeats with shrinking search windows.  With a DSM the vertical offset
(and, over a wide enough map, the tilt) comes from the DSM heights at the ground points.
A registration that is not well supported (too few agreeing patches, residual too large,
inliers bunched together, a correction beyond the stated bounds) is refused with the reason.

DSM heights are taken as heights in the georeference's vertical reference (WGS84 ellipsoidal
heights for GPS georeferences); pyproj here has no geoid grids to convert orthometric DSMs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rasterio
import rasterio.warp
import rasterio.windows
from pyproj import CRS
from rasterio.errors import RasterioIOError
from scipy.spatial.transform import Rotation

from core.geo import Georeference
from core.types import VlocError
from hdmap.aerial_render import ground_mask, match_patches, render_topdown
from hdmap.geodesy import crs_to_geodetic, geodetic_to_enu, map_to_crs, utm_crs_for
from hdmap.raster import Raster, apply_affine, read_raster, reproject_raster, sample_raster

# ---- 2D similarity and the georeference -----------------------------------------------------------

@dataclass(frozen=True)
class Similarity2D:
    """``x' = scale * R(angle) @ (x - centre) + centre + translation`` on (N, 2) CRS points (metres).

    angle: radians, counter-clockwise in the (x east, y north) plane.  centre: (2,) pivot
    (kept explicit so that UTM-sized coordinates stay exact in float64).
    """

    scale: float
    angle: float
    translation: np.ndarray
    centre: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]])

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) -> (N, 2)."""
        d = np.asarray(xy, np.float64) - self.centre
        return self.scale * d @ self.rotation.T + self.centre + self.translation

    @staticmethod
    def fit(src: np.ndarray, dst: np.ndarray, fix_scale: float | None = None) -> "Similarity2D":
        """Least-squares similarity src -> dst ((N, 2) each, N >= 2; Umeyama), pivot at src's mean.
        fix_scale: keep this scale and fit rotation and translation only."""
        a, b = np.asarray(src, np.float64), np.asarray(dst, np.float64)
        ca, cb = a.mean(0), b.mean(0)
        za = (a[:, 0] - ca[0]) + 1j * (a[:, 1] - ca[1])
        zb = (b[:, 0] - cb[0]) + 1j * (b[:, 1] - cb[1])
        k = np.vdot(za, zb)                 # sum conj(za) * zb
        var = float(np.sum(np.abs(za) ** 2))
        if var <= 0 or abs(k) == 0:
            raise ValueError("degenerate points for a 2D similarity")
        scale = float(abs(k) / var) if fix_scale is None else float(fix_scale)
        return Similarity2D(scale, float(np.angle(k)), cb - ca, ca)


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _origin(g: Georeference) -> tuple[float, float, float]:
    return g.latitude, g.longitude, g.altitude


def crs_to_enu(points_crs: np.ndarray, crs: CRS | str, georef: Georeference) -> np.ndarray:
    """(N, 3) (x, y, ellipsoidal height) in crs -> (N, 3) ENU at the georeference's origin (pyproj)."""
    return geodetic_to_enu(crs_to_geodetic(points_crs, crs), _origin(georef))


def refine_georeference(georef: Georeference, points_map: np.ndarray, crs: CRS | str, correction: Similarity2D,
                        refine_scale: bool = True) -> Georeference:
    """The georeference that moves the (N, 3) map points' horizontal positions in crs by ``correction``.

    Same origin and the same gravity direction in the map frame: the new rotation is
    ``Rz(dyaw) @ R`` (a turn about ENU up), the new scale the fitted one (``refine_scale``) or
    the old, the horizontal translation fitted, and the vertical translation such that the
    points' mean height is unchanged.  The fit is least squares over the points (the UTM ->
    ENU relation is a similarity to ~1e-6 over a map's extent).
    """
    xyz = np.asarray(points_map, np.float64).reshape(-1, 3)
    cur = map_to_crs(xyz, georef, crs)
    target = cur.copy()
    target[:, :2] = correction.apply(cur[:, :2])
    en = crs_to_enu(target, crs, georef)[:, :2]
    y = xyz @ georef.rotation.T                  # rotated, unscaled map points
    sim = Similarity2D.fit(y[:, :2], en, fix_scale=None if refine_scale else georef.scale)
    R = _rz(sim.angle) @ georef.rotation
    s = sim.scale
    t_en = sim.apply(np.zeros((1, 2)))[0]         # image of the origin: s R2 (0 - c) + c + t
    t_u = georef.translation[2] + (georef.scale - s) * float(np.mean(y[:, 2]))
    return Georeference(georef.latitude, georef.longitude, georef.altitude, float(s), R,
                        np.array([t_en[0], t_en[1], t_u]))


def apply_vertical(georef: Georeference, pivot_enu: np.ndarray, offset_m: float,
                   slope_en: tuple[float, float] = (0.0, 0.0)) -> Georeference:
    """Raise the map by offset_m and tilt it so heights change by ``slope_e * de + slope_n * dn``
    around pivot_enu (3,): ``x' = Q (x - pivot) + pivot + offset * up``, Q the smallest rotation
    with ``Q^T up ~ (slope_e, slope_n, 1)`` (it turns the map's gravity direction)."""
    v = np.array([slope_en[0], slope_en[1], 1.0])
    v /= np.linalg.norm(v)
    axis = np.cross(v, [0.0, 0.0, 1.0])
    n = np.linalg.norm(axis)
    Q = np.eye(3) if n < 1e-15 else Rotation.from_rotvec(axis / n * math.asin(min(n, 1.0))).as_matrix()
    p = np.asarray(pivot_enu, np.float64)
    t = Q @ (georef.translation - p) + p + np.array([0.0, 0.0, offset_m])
    return Georeference(georef.latitude, georef.longitude, georef.altitude, georef.scale, Q @ georef.rotation, t)


# ---- top-down rendering and patch matching -----------------------------------------------------


@dataclass(frozen=True)
class AerialConfig:
    """Aerial registration settings (metres are CRS metres, pixels the orthophoto's)."""

    #: search radius around the current georeference (the GPS prior): the largest plausible
    #: horizontal error of that georeference; a larger correction is refused.
    max_shift_m: float = 10.0
    #: refuse a yaw correction beyond this (degrees), and a relative scale change beyond max_scale_change.
    max_yaw_deg: float = 8.0
    max_scale_change: float = 0.05
    #: refine the scale (False: keep it, e.g. for metric SLAM maps).
    refine_scale: bool = True
    #: square patch side (pixels) and the minimum fraction of it covered by splatted points.
    patch_px: int = 48
    min_fill: float = 0.12
    #: each point covers (2 splat_px + 1)^2 pixels of the rendering.
    splat_px: int = 1
    #: a patch match needs this NCC peak and this margin over any peak more than 3 px away.
    min_score: float = 0.35
    min_margin: float = 0.02
    #: registration passes; after the first the search radius is refine_search_px.
    iterations: int = 3
    refine_search_px: int = 6
    #: RANSAC inlier threshold (pixels) for the patch similarity.
    ransac_threshold_px: float = 1.5
    #: refusal: fewer inlier patches, a smaller inlier fraction, a larger RMS residual (pixels),
    #: or inliers spanning less than min_spread_m (RMS distance from their centroid).
    min_inliers: int = 8
    min_inlier_ratio: float = 0.3
    max_residual_px: float = 1.0
    min_spread_m: float = 2.0
    #: ground selection: points within ground_tolerance_m of the local ground (cells of ground_cell_m).
    ground_cell_m: float = 2.0
    ground_tolerance_m: float = 0.3
    min_ground_points: int = 200
    #: DSM: a ground point agrees when its height residual (DSM minus map) is within dsm_inlier_m of
    #: the median (or of the RANSAC plane when the tilt is refined); at least min_dsm_points must
    #: agree.  The tilt is refined when the points lie dsm_tilt_min_extent_m (RMS distance from
    #: their centroid) apart, and a tilt beyond max_tilt_deg is refused.
    dsm_inlier_m: float = 0.5
    min_dsm_points: int = 50
    dsm_tilt: bool = True
    dsm_tilt_min_extent_m: float = 5.0
    max_tilt_deg: float = 5.0
    #: RANSAC seed (OpenCV's RNG), for reproducible results.
    seed: int = 0


@dataclass(frozen=True)
class AerialFusion:
    """Outcome of an aerial registration.

    applied: False when refused; reason says why (empty when applied).  georef: the refined
    georeference (the input one when refused).  report: JSON-ready numbers (patches, inliers,
    residual in pixels and metres, the correction, DSM statistics).
    """

    applied: bool
    reason: str
    georef: Georeference
    report: dict = field(default_factory=dict)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    c = np.asarray(rgb, np.float32)
    return c[:, 0] * 0.299 + c[:, 1] * 0.587 + c[:, 2] * 0.114


def _spread(xy: np.ndarray) -> float:
    """RMS distance (m) of (N, 2) points from their centroid."""
    if len(xy) < 2:
        return 0.0
    return float(np.sqrt(np.mean(np.sum((xy - xy.mean(0)) ** 2, axis=1))))


def register_to_ortho(points_map: np.ndarray, colours: np.ndarray, georef: Georeference, ortho: Raster,
                      dsm: Raster | None = None, cfg: AerialConfig = AerialConfig()) -> AerialFusion:
    """Refine ``georef`` by registering the map's (N, 3) points with (N, 3) RGB colours to the
    orthophoto (projected CRS, metres), heights from the DSM when given.  Never raises for a
    poor registration: returns ``applied=False`` with the reason and the numbers."""
    xyz = np.asarray(points_map, np.float64).reshape(-1, 3)
    crs = CRS.from_wkt(ortho.crs.to_wkt())
    if not crs.is_projected:
        raise VlocError("the orthophoto's CRS is not projected; reproject it (reproject_raster) to metres first")
    gsd = ortho.gsd
    report: dict = {"n_points": int(len(xyz)), "gsd_m": gsd, "crs": ortho.crs.to_string()}

    def refuse(reason: str) -> AerialFusion:
        return AerialFusion(False, reason, georef, report)

    enu = georef.enu_from_map.transform(xyz)
    ground = ground_mask(enu, cfg.ground_cell_m, cfg.ground_tolerance_m)
    pts = xyz[ground]
    grey = _luminance(np.asarray(colours)[ground])
    report["n_ground_points"] = int(len(pts))
    if len(pts) < cfg.min_ground_points:
        return refuse(f"only {len(pts)} map points lie on the ground (need {cfg.min_ground_points}): "
                      "the map sees too little of the surface the orthophoto shows")
    target = ortho.grey()
    target_mask = ortho.valid
    ext = float(np.max(np.linalg.norm(enu[ground, :2] - enu[ground, :2].mean(0), axis=1)))
    g = georef
    n_iter = max(1, cfg.iterations)
    for it in range(n_iter):
        cur = map_to_crs(pts, g, crs)
        px = np.stack(apply_affine(~ortho.transform, cur[:, :2]), 1)
        inside = (px[:, 0] >= 0) & (px[:, 0] < ortho.shape[1]) & (px[:, 1] >= 0) & (px[:, 1] < ortho.shape[0])
        if it == 0:
            report["fraction_in_ortho"] = float(inside.mean())
            if inside.mean() < 0.5:
                return refuse(f"only {100 * inside.mean():.0f} % of the map's ground points fall inside the "
                              "orthophoto at the current georeference")
        render, rmask = render_topdown(px[inside], grey[inside], ortho.shape, cfg.splat_px)
        search = (int(math.ceil((cfg.max_shift_m + ext * math.sin(math.radians(cfg.max_yaw_deg))) / gsd))
                  if it == 0 else cfg.refine_search_px)
        pm = match_patches(render, rmask, target, target_mask, cfg.patch_px, search, cfg.min_fill,
                           cfg.min_score, cfg.min_margin)
        step = {"pass": it + 1, "search_px": search, "n_patches": pm.n_patches, "n_matches": len(pm.src)}
        report.setdefault("passes", []).append(step)
        if len(pm.src) < cfg.min_inliers:
            return refuse(f"pass {it + 1}: only {len(pm.src)} of {pm.n_patches} map patches match the orthophoto "
                          f"(need {cfg.min_inliers}); is it the right place, and within {cfg.max_shift_m:g} m?")
        src_crs = np.stack(apply_affine(ortho.transform, pm.src), 1)
        dst_crs = np.stack(apply_affine(ortho.transform, pm.dst), 1)
        pivot = src_crs.mean(0)
        cv2.setRNGSeed(cfg.seed)
        M, inl = cv2.estimateAffinePartial2D(src_crs - pivot, dst_crs - pivot, method=cv2.RANSAC,
                                             ransacReprojThreshold=cfg.ransac_threshold_px * gsd,
                                             maxIters=5000, confidence=0.999, refineIters=10)
        inl = np.zeros(len(src_crs), bool) if M is None else inl.ravel().astype(bool)
        n_in = int(inl.sum())
        step.update(n_inliers=n_in, inlier_ratio=n_in / len(inl))
        if n_in < cfg.min_inliers or n_in < cfg.min_inlier_ratio * len(inl):
            return refuse(f"pass {it + 1}: {n_in} of {len(inl)} patch matches agree on one similarity "
                          f"(need {cfg.min_inliers} and {100 * cfg.min_inlier_ratio:.0f} %): the orthophoto does "
                          "not fit the map")
        sim = Similarity2D.fit(src_crs[inl], dst_crs[inl])
        res_m = np.linalg.norm(sim.apply(src_crs[inl]) - dst_crs[inl], axis=1)
        spread = _spread(src_crs[inl])
        rms = float(np.sqrt(np.mean(res_m ** 2)))
        step.update(residual_px=rms / gsd, spread_m=spread,
                    yaw_sigma_deg=math.degrees(rms / (spread * math.sqrt(max(n_in - 2, 1)))),
                    shift_m=float(np.linalg.norm(sim.translation)), yaw_deg=math.degrees(sim.angle),
                    scale=sim.scale)
        if spread < cfg.min_spread_m:
            return refuse(f"pass {it + 1}: the {n_in} agreeing patches lie within {spread:.1f} m (RMS) "
                          f"(need {cfg.min_spread_m:g} m): yaw and scale are not constrained")
        g = refine_georeference(g, pts, crs, sim, cfg.refine_scale)
        if dsm is not None and it == max(n_iter - 2, 0):  # heights once the horizontal is close
            g, dsm_report, why = _dsm_heights(g, pts, dsm, cfg)
            report["dsm"] = dsm_report
            if why:
                return refuse(why)
    last = report["passes"][-1]
    report.update(n_inliers=last["n_inliers"], n_matches=last["n_matches"], residual_px=last["residual_px"],
                  residual_m=last["residual_px"] * gsd, spread_m=last["spread_m"])
    report["correction"] = _correction(georef, g, pts, crs)
    corr = report["correction"]
    if last["residual_px"] > cfg.max_residual_px:
        return refuse(f"registration residual {last['residual_px']:.2f} px exceeds {cfg.max_residual_px:g} px")
    if corr["shift_m"] > cfg.max_shift_m:
        return refuse(f"the correction moves the map {corr['shift_m']:.1f} m, more than --max-shift "
                      f"{cfg.max_shift_m:g} m")
    if abs(corr["yaw_deg"]) > cfg.max_yaw_deg:
        return refuse(f"the correction turns the map {corr['yaw_deg']:.1f} deg, more than {cfg.max_yaw_deg:g} deg")
    if abs(corr["scale"] - 1) > cfg.max_scale_change:
        return refuse(f"the correction scales the map by {corr['scale']:.3f}, beyond 1 +- {cfg.max_scale_change:g}")
    return AerialFusion(True, "", g, report)


def _correction(before: Georeference, after: Georeference, pts: np.ndarray, crs: CRS) -> dict:
    """Horizontal shift (m, at the points' centroid), yaw (deg) and scale of after vs before."""
    a = map_to_crs(pts, before, crs)
    b = map_to_crs(pts, after, crs)
    sim = Similarity2D.fit(a[:, :2], b[:, :2])
    return {"shift_m": float(np.linalg.norm(sim.translation)), "east_m": float(sim.translation[0]),
            "north_m": float(sim.translation[1]), "yaw_deg": math.degrees(sim.angle), "scale": sim.scale,
            "up_m": float(np.mean(b[:, 2] - a[:, 2]))}


def _robust_plane(en: np.ndarray, d: np.ndarray, threshold: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC plane ``d ~ c0 + c1 e + c2 n`` over (N, 2) positions (3-point samples, inlier within
    threshold), refined by least squares on its inliers.  Returns (coef (3,), inliers (N,))."""
    rng = np.random.default_rng(seed)
    A = np.c_[np.ones(len(d)), en]
    best = np.abs(d - np.median(d)) <= threshold
    for _ in range(300):
        idx = rng.choice(len(d), 3, replace=False)
        try:
            c = np.linalg.solve(A[idx], d[idx])
        except np.linalg.LinAlgError:
            continue
        inl = np.abs(A @ c - d) <= threshold
        if inl.sum() > best.sum():
            best = inl
    for _ in range(3):
        coef = np.linalg.lstsq(A[best], d[best], rcond=None)[0]
        best = np.abs(A @ coef - d) <= threshold
    return coef, best


def _dsm_heights(g: Georeference, pts: np.ndarray, dsm: Raster, cfg: AerialConfig
                 ) -> tuple[Georeference, dict, str]:
    """Vertical offset (and tilt) of the georeference from the DSM at the ground points.
    Returns (georef, report, refusal reason or '')."""
    dcrs = CRS.from_wkt(dsm.crs.to_wkt())
    p = map_to_crs(pts, g, dcrs)
    h, ok = sample_raster(dsm, p[:, :2])
    rep: dict = {"n_sampled": int(ok.sum())}
    if ok.sum() < cfg.min_dsm_points:
        return g, rep, (f"only {int(ok.sum())} ground points fall on valid DSM pixels "
                        f"(need {cfg.min_dsm_points})")
    d = h[ok] - p[ok, 2]
    enu = g.enu_from_map.transform(pts[ok])
    pivot = enu.mean(0)
    inl = np.abs(d - np.median(d)) <= cfg.dsm_inlier_m
    offset, slope = float(np.median(d[inl])), (0.0, 0.0)
    if cfg.dsm_tilt and _spread(enu[:, :2]) >= cfg.dsm_tilt_min_extent_m:
        coef, inl = _robust_plane(enu[:, :2] - pivot[:2], d, cfg.dsm_inlier_m, cfg.seed)
        offset, slope = float(coef[0]), (float(coef[1]), float(coef[2]))
    tilt = math.degrees(math.atan(math.hypot(*slope)))
    fit = offset + (enu[:, :2] - pivot[:2]) @ np.array(slope)
    rep.update(n_inliers=int(inl.sum()), offset_m=offset, slope_en=list(slope), tilt_deg=tilt,
               residual_m=float(np.sqrt(np.mean((d[inl] - fit[inl]) ** 2))))
    if inl.sum() < cfg.min_dsm_points:
        return g, rep, f"only {int(inl.sum())} ground points agree with the DSM heights (need {cfg.min_dsm_points})"
    if tilt > cfg.max_tilt_deg:
        return g, rep, f"the DSM implies a tilt of {tilt:.1f} deg, more than {cfg.max_tilt_deg:g} deg"
    return apply_vertical(g, pivot, offset, slope), rep, ""


# ---- bundles -------------------------------------------------------------------------------------

def load_map_points(bundle: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) map-frame points and (N, 3) uint8 RGB colours of a bundle's model."""
    import pycolmap

    model = Path(bundle) / "model"
    if not model.is_dir():
        raise VlocError(f"{bundle} has no model/ directory: not a map bundle")
    rec = pycolmap.Reconstruction(str(model))
    pts = list(rec.points3D.values())
    if not pts:
        raise VlocError(f"{bundle}: the map has no 3D points")
    return (np.array([p.xyz for p in pts], np.float64).reshape(-1, 3),
            np.array([p.color for p in pts], np.uint8).reshape(-1, 3))


def read_for_map(path: str | Path, points_map: np.ndarray, georef: Georeference, margin_m: float) -> Raster:
    """Read the part of a raster around the map's points (+ margin_m), reprojected to the UTM zone
    of the georeference when the raster's CRS is not projected."""
    path = Path(path)
    if not path.is_file():
        raise VlocError(f"raster {path} does not exist")
    try:
        with rasterio.open(path) as ds:
            rcrs = ds.crs
    except RasterioIOError as e:
        raise VlocError(f"cannot read {path} as a raster ({e})") from None
    if rcrs is None:
        raise VlocError(f"{path} has no CRS: georeference it first (e.g. gdal_edit.py -a_srs EPSG:...)")
    crs = CRS.from_wkt(rcrs.to_wkt())
    xy = map_to_crs(points_map, georef, crs)[:, :2]
    if crs.is_projected:
        m = margin_m
    else:  # degrees: a generous box, then warp to metres
        m = margin_m / 111_000.0 / max(math.cos(math.radians(georef.latitude)), 0.1)
    lo, hi = xy.min(0) - m, xy.max(0) + m
    r = read_raster(path, (lo[0], lo[1], hi[0], hi[1]))
    if not crs.is_projected:
        r = reproject_raster(r, utm_crs_for(georef.latitude, georef.longitude))
    return r


def fuse_bundle(bundle: str | Path, ortho_path: str | Path, dsm_path: str | Path | None = None,
                cfg: AerialConfig = AerialConfig()) -> AerialFusion:
    """Register a georeferenced bundle to an orthophoto (+ DSM).  VlocError when the bundle has
    no georeference (aerial fusion refines a GPS georeference, it does not create one)."""
    from bundleio import read_manifest

    manifest = read_manifest(Path(bundle))
    try:
        georef = Georeference.from_manifest(manifest)
    except ValueError as e:
        raise VlocError(f"{bundle}: {e}") from None
    if georef is None:
        raise VlocError(f"{bundle} has no georeference: georeference it from GPS first; aerial fusion "
                        "refines an existing georeference")
    xyz, rgb = load_map_points(bundle)
    margin = cfg.max_shift_m + 20.0
    ortho = read_for_map(ortho_path, xyz, georef, margin)
    dsm = read_for_map(dsm_path, xyz, georef, margin) if dsm_path is not None else None
    return register_to_ortho(xyz, rgb, georef, ortho, dsm, cfg)
