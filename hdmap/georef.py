"""Georeferencing: estimate the similarity ``enu_from_map`` from map points and their geodetic positions.

Frames and arrays:

* map: the bundle's world frame (metres for posed maps, arbitrary scale for SfM maps).
* geodetic: WGS84 (EPSG:4979) ``(N, 3)`` rows of latitude (deg), longitude (deg), ellipsoidal
  height (m). Altitudes are used as given: EXIF altitude is usually above mean sea level, so an
  EXIF-georeferenced map reports altitudes in that same reference (pyproj ships no geoid grid here).
* ENU: east, north, up (metres), tangent to the WGS84 ellipsoid at ``origin`` = (lat, lon, alt).
  ``x_enu = scale * R @ x_map + t`` is ``enu_from_map`` (a :class:`core.geometry.Sim3`).

pyproj does every conversion (:mod:`hdmap.geodesy`: geodetic <-> ENU with the ``cart`` + ``topocentric`` pipeline that
:mod:`core.geo` uses; geodetic -> any CRS the user names, UTM by default).

Estimation: RANSAC over minimal samples (three points, or two when the map's up direction is known,
e.g. from upright cameras), local optimisation on the inliers, and a weighted least-squares refit
(scipy) with horizontal and vertical noise separate and an optional prior that the map's up maps to
ENU up. The refit's covariance decides observability: scale or rotation that the data cannot fix
(positions inside their noise, collinear positions without a gravity prior) are refused with the
numbers, never returned.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from core.geo import Georeference
from core.geometry import Sim3, estimate_sim3
from core.types import VlocError
from hdmap.geodesy import as_n3, check_geodetic, geodetic_centroid, geodetic_to_enu

# ---- gravity -------------------------------------------------------------------------------

def up_from_cameras(world_from_cam_rotations: np.ndarray) -> tuple[np.ndarray, float]:
    """Map-frame up direction from upright cameras: the mean of each camera's image-up axis (-y).

    world_from_cam_rotations: (N, 3, 3). Returns (unit (3,) up in the map frame, median angle in
    degrees between the cameras' up axes and it). The spread says whether the cameras were held
    upright (phone photos, robot cameras: a few degrees of roll, some pitch); COLMAP's model
    aligner uses the same cue.
    """
    R = np.asarray(world_from_cam_rotations, np.float64).reshape(-1, 3, 3)
    if len(R) == 0:
        raise VlocError("no cameras to estimate the map's up direction from")
    ups = -R[:, :, 1]
    m = ups.mean(axis=0)
    if np.linalg.norm(m) < 1e-6:
        raise VlocError("the cameras' up axes cancel out: cannot tell the map's up direction from them")
    m /= np.linalg.norm(m)
    spread = float(np.degrees(np.median(np.arccos(np.clip(ups @ m, -1.0, 1.0)))))
    return m, spread


# ---- estimation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GeorefConfig:
    """Robust estimation and observability settings (thresholds in metres of ENU)."""

    #: a point is an inlier when (horizontal / max_error)^2 + (vertical / (vertical_factor * max_error))^2 <= 1;
    #: also the default ratio sigma_v / sigma_h (phone GPS altitude is about twice as noisy as position).
    vertical_factor: float = 2.0
    #: 1-sigma of the prior that the map's up (``map_up``) is ENU up, degrees.
    up_sigma_deg: float = 5.0
    #: RANSAC: at most this many minimal samples (all of them when there are fewer).
    ransac_iterations: int = 2000
    #: RANSAC stops early once a sample free of outliers is this likely.
    ransac_confidence: float = 0.9999
    #: refuse when the scale's relative 1-sigma uncertainty exceeds this (scale unobservable).
    max_scale_rel_sigma: float = 0.1
    #: refuse when any rotation angle's 1-sigma uncertainty exceeds this, degrees.
    max_rotation_sigma_deg: float = 10.0
    #: refuse when fewer than this fraction of the positions are inliers (a mirrored map or positions of
    #: other images fit only a few by chance; GPS with a few gross errors stays well above it).
    min_inlier_ratio: float = 0.5
    #: seed of the RANSAC sampler (results are deterministic).
    seed: int = 0


@dataclass(frozen=True)
class GeorefEstimate:
    """A fitted georeference with its evidence.

    georef: origin + ``enu_from_map``.  residuals_enu: (N, 3) fitted minus given ENU position (m).
    residuals_m: (N,) their norms.  inliers: (N,) bool.  scale_rel_sigma: 1-sigma of the scale
    relative to it (0 when fixed).  rotation_sigma_deg: (3,) 1-sigma of small rotations about
    east, north, up.  map_up: (3,) the prior up direction used, or None.
    """

    georef: Georeference
    residuals_enu: np.ndarray
    residuals_m: np.ndarray
    inliers: np.ndarray
    scale_rel_sigma: float
    rotation_sigma_deg: np.ndarray
    map_up: np.ndarray | None = None

    @property
    def horizontal_m(self) -> np.ndarray:
        """(N,) horizontal residuals, metres."""
        return np.linalg.norm(self.residuals_enu[:, :2], axis=1)

    @property
    def vertical_m(self) -> np.ndarray:
        """(N,) signed vertical residuals (fitted minus given), metres."""
        return self.residuals_enu[:, 2]

    def summary(self) -> dict:
        """JSON-ready: counts, inlier residual statistics (total, horizontal, vertical), scale, angles."""
        inl = self.inliers

        def stats(x: np.ndarray) -> dict:
            x = np.abs(x[inl])
            return {"median": float(np.median(x)), "rmse": float(np.sqrt(np.mean(x ** 2))), "max": float(x.max())}

        R = self.georef.rotation
        out = {"n": int(len(inl)), "n_inliers": int(inl.sum()),
               "total_m": stats(self.residuals_m), "horizontal_m": stats(self.horizontal_m),
               "vertical_m": stats(self.vertical_m),
               "scale": float(self.georef.scale), "scale_rel_sigma": float(self.scale_rel_sigma),
               "yaw_deg": map_x_azimuth_deg(R),
               "rotation_sigma_deg": {"east": float(self.rotation_sigma_deg[0]),
                                      "north": float(self.rotation_sigma_deg[1]),
                                      "up": float(self.rotation_sigma_deg[2])}}
        if self.map_up is not None:
            up_enu = R @ self.map_up
            out["map_up_tilt_deg"] = float(np.degrees(np.arccos(np.clip(up_enu[2], -1, 1))))
        return out


def map_x_azimuth_deg(enu_from_map_rotation: np.ndarray) -> float:
    """Azimuth of the map's +x axis in ENU, degrees clockwise from north in [0, 360) (the map's yaw)."""
    x = np.asarray(enu_from_map_rotation, np.float64)[:, 0]
    return float(math.degrees(math.atan2(x[0], x[1])) % 360.0)


def _level_rotation(map_up: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking the map's up vector to +z (ENU up)."""
    rot, _ = Rotation.align_vectors([[0.0, 0.0, 1.0]], [map_up])
    return rot.as_matrix()


def _hypothesis(a: np.ndarray, b: np.ndarray, level: np.ndarray | None, fix_scale: bool) -> Sim3 | None:
    """Similarity ``b_from_a`` from a minimal sample: two points with a known up (``level`` rotates the
    map's up to +z; yaw and scale from the horizontal baseline), else three points (pycolmap)."""
    if level is not None:
        al = a @ level.T
        da = complex(*(al[1, :2] - al[0, :2]))
        db = complex(*(b[1, :2] - b[0, :2]))
        if abs(da) < 1e-12 or abs(db) < 1e-9:
            return None
        z = db / da
        s = 1.0 if fix_scale else abs(z)
        yaw = math.atan2(z.imag, z.real)
        R = Rotation.from_euler("z", yaw).as_matrix() @ level
    else:
        try:
            sim = estimate_sim3(a, b)
        except ValueError:
            return None
        if not (np.isfinite(sim.scale) and sim.scale > 0 and np.all(np.isfinite(sim.rotation))):
            return None
        s, R = (1.0 if fix_scale else sim.scale), sim.rotation
    t = b.mean(0) - s * a.mean(0) @ R.T
    return Sim3(float(s), R, t)


def _errors(sim: Sim3, a: np.ndarray, b: np.ndarray, t_h: float, t_v: float) -> np.ndarray:
    """(N,) normalised error: (horizontal / t_h)^2 + (vertical / t_v)^2; inlier when <= 1."""
    d = sim.transform(a) - b
    return (d[:, 0] ** 2 + d[:, 1] ** 2) / t_h ** 2 + d[:, 2] ** 2 / t_v ** 2


def _samples(n: int, k: int, iterations: int, rng: np.random.Generator):
    """All k-subsets of range(n) when there are at most ``iterations``, else random ones (lazily)."""
    if math.comb(n, k) <= iterations:
        yield from (np.array(c) for c in itertools.combinations(range(n), k))
        return
    for _ in range(iterations):
        yield rng.choice(n, size=k, replace=False)


def _ransac(a, b, level, fix_scale, t_h, t_v, cfg: GeorefConfig) -> tuple[Sim3, np.ndarray]:
    """Best hypothesis by MSAC cost (truncated normalised errors) with early stop, and its inliers."""
    n, k = len(a), (2 if level is not None else 3)
    rng = np.random.default_rng(cfg.seed)
    best, best_cost, best_inl = None, np.inf, None
    needed, tried = cfg.ransac_iterations, 0
    for idx in _samples(n, k, cfg.ransac_iterations, rng):
        tried += 1
        if tried > needed:
            break
        sim = _hypothesis(a[idx], b[idx], level, fix_scale)
        if sim is None:
            continue
        e = _errors(sim, a, b, t_h, t_v)
        cost = np.minimum(e, 1.0).sum()
        if cost < best_cost:
            best, best_cost, best_inl = sim, cost, e <= 1.0
            w = best_inl.mean()
            if 0 < w < 1:
                needed = min(needed, int(math.ceil(math.log(1 - cfg.ransac_confidence) / math.log(1 - w ** k))))
            elif w == 1:
                needed = min(needed, tried)
    if best is None:
        raise VlocError("georeferencing failed: every minimal sample was degenerate "
                        "(coincident or collinear positions)")
    return best, best_inl


@dataclass
class _Fit:
    """A refit: the similarity, the covariance of its parameters ``[log scale (unless fixed),
    rotation vector (3, ENU axes, rad), translation (3, m)]``, and whether the problem had full rank."""

    sim: Sim3
    cov: np.ndarray
    rank_ok: bool


def _refine(a: np.ndarray, b: np.ndarray, init: Sim3, sigma_h: np.ndarray, sigma_v: np.ndarray,
            map_up: np.ndarray | None, up_sigma_rad: float, fix_scale: bool) -> _Fit:
    """Weighted least squares of ``b ~ s R a + t`` (scipy), rotations as ``exp(w) R0`` (w in ENU axes).

    Residuals: east, north / sigma_h, up / sigma_v per point, plus the horizontal components of
    ``R @ map_up`` / sin(up_sigma) when map_up is given. The positions' sigmas are rescaled by their
    a-posteriori variance factor (chi^2 / degrees of freedom) until it is 1, so the returned covariance
    reflects the actual scatter and the prior keeps its own sigma.
    """
    ca, cb = a.mean(0), b.mean(0)
    a0, b0 = a - ca, b - cb
    R0 = init.rotation
    # translation parameter: the fitted position of the map centroid, relative to the ENU centroid
    t0 = init.transform(ca[None])[0] - cb
    x0 = np.r_[[] if fix_scale else [math.log(init.scale)], np.zeros(3), t0]
    w = np.column_stack([1 / sigma_h, 1 / sigma_h, 1 / sigma_v])

    def unpack(x):
        s = 1.0 if fix_scale else math.exp(x[0])
        o = 0 if fix_scale else 1
        R = Rotation.from_rotvec(x[o:o + 3]).as_matrix() @ R0
        return s, R, x[o + 3:o + 6]

    def residuals(x):
        s, R, t = unpack(x)
        r = ((s * a0 @ R.T + t - b0) * w).ravel()
        if map_up is not None:
            r = np.r_[r, (R @ map_up)[:2] / math.sin(up_sigma_rad)]
        return r

    m_data = 3 * len(a)
    method = "lm" if len(residuals(x0)) >= len(x0) else "trf"
    dof = len(residuals(x0)) - len(x0)
    # variance-component estimation: rescale the positions' sigmas by their a-posteriori factor until
    # it is 1, so that sigmas that are only relative weights (EXIF accuracy, the 1 m default) neither
    # drown nor overrule the gravity prior, whose sigma is kept
    base = w.copy()
    k2, res = 1.0, None
    for _ in range(12):
        w[:] = base / math.sqrt(k2)
        res = least_squares(residuals, x0 if res is None else res.x, method=method, x_scale="jac")
        if dof <= 0:
            break
        r = res.fun[:m_data] * math.sqrt(k2)          # normalised by the given sigmas
        new = max(float(r @ r) / dof, 1e-12)
        converged = abs(math.log(new / k2)) < 1e-3
        k2 = new
        if converged:
            break
    w[:] = base / math.sqrt(k2)
    res = least_squares(residuals, res.x, method=method, x_scale="jac")
    s, R, t = unpack(res.x)
    J = res.jac
    sv = np.linalg.svd(J, compute_uv=False)
    rank_ok = dof > 0 and sv[-1] > 1e-9 * sv[0]
    cov = np.linalg.pinv(J.T @ J) if rank_ok else np.full((len(x0), len(x0)), np.inf)
    U, _, Vt = np.linalg.svd(R)  # re-orthonormalise against round-off
    R = U @ Vt
    sim = Sim3(float(s), R, cb + t - s * ca @ R.T)
    return _Fit(sim, cov, bool(rank_ok))


def _per_point(values, n: int, default: float, what: str) -> np.ndarray:
    if values is None:
        return np.full(n, float(default))
    v = np.broadcast_to(np.asarray(values, np.float64), (n,)).copy()
    if not np.all(np.isfinite(v) & (v > 0)):
        raise VlocError(f"{what} must be positive and finite")
    return v


def estimate_georeference(map_xyz: np.ndarray, geodetic: np.ndarray,
                          origin: tuple[float, float, float] | None = None,
                          max_error_m: float = 10.0, min_inliers: int = 3,
                          sigma_h: np.ndarray | float | None = None, sigma_v: np.ndarray | float | None = None,
                          map_up: np.ndarray | None = None, fix_scale: bool = False,
                          config: GeorefConfig = GeorefConfig()) -> GeorefEstimate:
    """Robust similarity ``enu_from_map`` from (N, 3) map points and their (N, 3) geodetic positions.

    origin: ENU origin (lat, lon, alt); default the centroid of ``geodetic``.
    max_error_m: horizontal inlier threshold (vertical: ``config.vertical_factor`` times it).
    min_inliers: refuse with fewer inliers (never fewer than 3).
    sigma_h, sigma_v: per-point (N,) or common 1-sigma noise, metres; relative weights of the refit
        (default 1 and ``vertical_factor`` * sigma_h).
    map_up: (3,) the map's up direction when known (e.g. :func:`up_from_cameras`): a prior of
        ``config.up_sigma_deg`` that it maps to ENU up; makes collinear tracks (a street walk) usable.
    fix_scale: keep scale = 1 (a metric, posed map).

    Raises VlocError, with the numbers, when there are too few inliers or the scale or the rotation
    is not observable from these positions.
    """
    a = as_n3(map_xyz, "map points")
    g = check_geodetic(geodetic)
    if len(a) != len(g):
        raise VlocError(f"{len(a)} map points but {len(g)} geodetic positions")
    if max_error_m <= 0 or not math.isfinite(max_error_m):
        raise VlocError(f"max error must be a positive number of metres, got {max_error_m}")
    min_inliers = max(3, int(min_inliers))
    n = len(a)
    if n < min_inliers:
        raise VlocError(f"georeferencing needs at least {min_inliers} positions, got {n}")
    origin = geodetic_centroid(g) if origin is None else tuple(float(v) for v in origin)
    check_geodetic(np.array([origin]), "origin")
    b = geodetic_to_enu(g, origin)
    unique = len(np.unique(np.round(b, 3), axis=0))
    if unique < 3:
        raise VlocError(f"georeferencing needs positions at 3 distinct places, got {unique} distinct among {n}")
    cfg = config
    s_h = _per_point(sigma_h, n, 1.0, "sigma_h")
    s_v = _per_point(sigma_v, n, 0.0, "sigma_v") if sigma_v is not None else cfg.vertical_factor * s_h
    t_h, t_v = float(max_error_m), float(max_error_m) * cfg.vertical_factor
    up = None
    if map_up is not None:
        up = np.asarray(map_up, np.float64).reshape(3)
        if not np.isfinite(up).all() or np.linalg.norm(up) < 1e-9:
            raise VlocError("map_up must be a finite non-zero 3-vector")
        up = up / np.linalg.norm(up)
    level = _level_rotation(up) if up is not None else None

    sim, inl = _ransac(a, b, level, fix_scale, t_h, t_v, cfg)
    fit = None
    for _ in range(10):  # local optimisation: refit on the inliers until the set is stable
        if inl.sum() < 3:
            break
        fit = _refine(a[inl], b[inl], sim, s_h[inl], s_v[inl], up, math.radians(cfg.up_sigma_deg), fix_scale)
        new = _errors(fit.sim, a, b, t_h, t_v) <= 1.0
        sim = fit.sim
        if np.array_equal(new, inl):
            break
        inl = new
    _check_observable(a, b, inl, fit, min_inliers, fix_scale, up is not None, cfg, t_h)
    res = sim.transform(a) - b
    o = 0 if fix_scale else 1
    scale_rel = 0.0 if fix_scale else float(math.sqrt(fit.cov[0, 0]))
    rot_sigma = np.degrees(np.sqrt(np.diag(fit.cov)[o:o + 3]))
    return GeorefEstimate(Georeference.from_sim3(*origin, sim), res, np.linalg.norm(res, axis=1), inl,
                          scale_rel, rot_sigma, up)


def _check_observable(a, b, inl, fit: _Fit | None, min_inliers: int, fix_scale: bool, gravity: bool,
                      cfg: GeorefConfig, t_h: float) -> None:
    """Refuse too few inliers, degenerate geometry, and unobservable scale / rotation (with numbers)."""
    n_in = int(inl.sum())
    unique = len(np.unique(np.round(b[inl], 3), axis=0))
    if fit is None or n_in < min_inliers or unique < 3 or n_in < cfg.min_inlier_ratio * len(inl):
        raise VlocError(f"georeferencing found {n_in} inliers among {len(inl)} positions ({unique} distinct) "
                        f"within {t_h:g} m; it needs at least {min_inliers} at 3 distinct places and "
                        f"{100 * cfg.min_inlier_ratio:.0f} % of the positions (raise --max-error, or check that "
                        "the positions belong to these images)")
    bi = b[inl] - b[inl].mean(0)
    spread = np.linalg.svd(bi, compute_uv=False) / math.sqrt(n_in)   # RMS extent along principal axes
    noise = float(np.sqrt(np.mean(np.sum((fit.sim.transform(a[inl]) - b[inl]) ** 2, axis=1))))
    o = 0 if fix_scale else 1
    if not fit.rank_ok:
        raise VlocError(f"georeferencing is degenerate: the {n_in} inlier positions span "
                        f"{spread[0]:.2f} x {spread[1]:.2f} x {spread[2]:.2f} m (RMS along their principal axes); "
                        + ("they are collinear, so the rotation about that line is unobservable; use the "
                           "cameras' up direction (--gravity images) or positions off the line"
                           if not gravity else "add positions farther apart"))
    scale_rel = 0.0 if fix_scale else math.sqrt(fit.cov[0, 0])
    rot_sigma = np.degrees(np.sqrt(np.diag(fit.cov)[o:o + 3]))
    if scale_rel > cfg.max_scale_rel_sigma:
        raise VlocError(f"the scale is unobservable: the {n_in} inlier positions span {spread[0]:.2f} m "
                        f"(RMS) while the fit residuals are {noise:.2f} m RMS, so the scale is uncertain by "
                        f"{100 * scale_rel:.0f} % (limit {100 * cfg.max_scale_rel_sigma:.0f} %); "
                        "use positions farther apart than their noise")
    if rot_sigma.max() > cfg.max_rotation_sigma_deg:
        axis = ["east", "north", "up"][int(np.argmax(rot_sigma))]
        why = ("the positions are nearly collinear" if spread[1] < 3 * max(noise, 1e-9) else
               "the positions are nearly coplanar with too much noise")
        raise VlocError(f"the rotation is unobservable: {why} (RMS extent {spread[0]:.2f} x {spread[1]:.2f} x "
                        f"{spread[2]:.2f} m, residuals {noise:.2f} m RMS), so the rotation about {axis} is "
                        f"uncertain by {rot_sigma.max():.1f} deg (limit {cfg.max_rotation_sigma_deg:g} deg)"
                        + ("" if gravity else "; use the cameras' up direction (--gravity images)"))
