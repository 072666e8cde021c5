"""Per-frame localization: features -> retrieval -> 2D-3D matching -> PnP (LO-RANSAC) + refinement."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
import pycolmap
import torch

from core.camera import Camera
from core.geometry import Rigid3
from core.types import VlocError
from localize.config import LocalizerConfig
from localize.guided import guided_matches
from localize.learned_match import lightglue_points, nn_points
from localize.map import LocalizationMap
from localize.preprocess import noise_sigma, stretch_contrast
from localize.result import LocalizationResult, PosePrior
from localize.uncertainty import frame_floor_covariance, refine_with_point_uncertainty
from vision.features import Features, SiftBackend, SiftConfig, root_sift
from vision.matching import quantize_int8, search_int8_candidates
from vision.retrieval import InvertedFile

#: pycolmap's pose covariance perturbs the rotation through its quaternion, ``q' = [cos|d|,
#: sin|d| d/|d|] q``, a rotation by ``2 d``: its rotation block is in half-angle units.
_PYCOLMAP_TO_ROTVEC = np.diag([2.0, 2.0, 2.0, 1.0, 1.0, 1.0])


def rotvec_covariance(pycolmap_covariance: np.ndarray) -> np.ndarray:
    """(6, 6) covariance from pycolmap's pose refinement -> vloc's convention: rotation vector
    (rad) of the left perturbation ``R' = exp([d]x) R`` of ``cam_from_world``, then translation
    (m). Checked against the Gauss-Newton covariance of a generated problem in the tests."""
    return _PYCOLMAP_TO_ROTVEC @ np.asarray(pycolmap_covariance, dtype=np.float64) @ _PYCOLMAP_TO_ROTVEC


def centre_covariance(cam_from_world: Rigid3, covariance: np.ndarray) -> np.ndarray:
    """(3, 3) covariance of the camera centre ``c = -R^T t`` from the (6, 6) pose covariance
    (rotation tangent with left perturbation ``R' = exp(d) R``, then translation)."""
    R, t = cam_from_world.rotation, cam_from_world.translation
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    J = np.hstack([-R.T @ tx, -R.T])
    return J @ covariance @ J.T


def match_to_points(query_desc: torch.Tensor, map_int8: torch.Tensor, map_exact: Callable[[np.ndarray], torch.Tensor],
                    obs_point: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Match (Q, D) float32 query RootSIFT descriptors (non-negative, unit norm) to M map
    observations, one per distinct 3D point obs_point (M,).

    map_int8: (M, D) int8 RootSIFT of the observations (candidate search);
    map_exact(rows) -> (len(rows), D) float32 RootSIFT of some of them (exact scores).
    Ratio test between the best and second-best point; each point keeps its best query keypoint.
    Returns (query indices, point rows).
    """
    if len(query_desc) < 2 or len(map_int8) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Candidate search on int8 scores (an int8 GEMM), exact float32 scores for the picks.
    c = search_int8_candidates(quantize_int8(query_desc), map_int8, column_max_too=False)
    j1, j2 = c.best.numpy(), c.second.numpy()  # best and second best (RootSIFT >= 0)
    picked, inverse = np.unique(np.concatenate([j1, j2]), return_inverse=True)
    exact = map_exact(picked).numpy()[inverse]                      # (2Q, D) float32
    query = query_desc.numpy()
    s1 = np.einsum("ij,ij->i", query, exact[: len(j1)])
    s2 = np.einsum("ij,ij->i", query, exact[len(j1):])
    d1 = np.sqrt(np.maximum(2 - 2 * s1, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * s2, 0))
    keep = np.nonzero(d1 <= ratio * d2)[0]
    q, p, s = keep, obs_point[j1[keep]], s1[keep]
    order = np.lexsort((-s, p))
    q, p = q[order], p[order]
    first = np.r_[True, p[1:] != p[:-1]] if len(p) else np.zeros(0, bool)
    return q[first], p[first]


def first_observation_per_point(obs: np.ndarray, obs_point: np.ndarray) -> np.ndarray:
    """Keep, for each 3D point, its first observation in ``obs`` (ordered by retrieval rank)."""
    _, first = np.unique(obs_point[obs], return_index=True)
    return obs[np.sort(first)]


@dataclass
class PoseEstimate:
    """PnP + refinement output. covariance: (6, 6) rotation (rad) then translation (m) of cam_from_world."""

    cam_from_world: Rigid3
    covariance: np.ndarray | None
    inlier_mask: np.ndarray
    median_reproj_error_px: float | None
    position_sigma_m: float | None
    rotation_sigma_deg: float | None

    @property
    def num_inliers(self) -> int:
        return int(self.inlier_mask.sum())


def estimate_pose(points2d: np.ndarray, points3d: np.ndarray, camera: Camera, cfg: LocalizerConfig,
                  point_covariances: np.ndarray | None = None, pixel_sigma: float | None = None
                  ) -> PoseEstimate | None:
    """LO-RANSAC PnP and non-linear refinement (pycolmap) from (N, 2) pixels and (N, 3) world points.

    With ``cfg.point_uncertainty`` the inliers are then weighted by ``pixel_sigma`` (native pixels;
    default ``cfg.query_keypoint_sigma_px``) plus their points' (N, 3, 3) world covariances
    projected into the query (None: pixel noise alone), the pose is re-refined with those weights
    (:func:`localize.uncertainty.refine_with_point_uncertainty`) and its covariance is theirs plus
    the map's own accuracy (``cfg.map_sigma_m``, ``cfg.map_sigma_deg``)."""
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = cfg.ransac_max_error_px
    est.ransac.max_num_trials = cfg.ransac_max_trials
    est.ransac.random_seed = cfg.seed
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ans = pycolmap.estimate_and_refine_absolute_pose(points2d, points3d, camera.to_pycolmap(), est, ref,
                                                     return_covariance=True)
    if ans is None:
        return None
    pose = Rigid3.from_pycolmap(ans["cam_from_world"])
    inl = np.asarray(ans["inlier_mask"], bool)
    cov = ans.get("covariance")
    cov = rotvec_covariance(cov) if cov is not None else None
    if cfg.point_uncertainty and inl.sum() >= 6:
        w = refine_with_point_uncertainty(
            points2d[inl], points3d[inl], camera, pose,
            None if point_covariances is None else point_covariances[inl],
            cfg.query_keypoint_sigma_px if pixel_sigma is None else pixel_sigma)
        if w is not None:
            pose = w.cam_from_world
            cov = w.covariance + frame_floor_covariance(pose, cfg.map_sigma_m, cfg.map_sigma_deg)
    return summarize_pose(pose, cov, inl, points2d, points3d, camera)


def summarize_pose(cam_from_world: Rigid3, cov: np.ndarray | None, inl: np.ndarray, points2d: np.ndarray,
                   points3d: np.ndarray, camera: Camera) -> PoseEstimate:
    """PoseEstimate of a pose with its (6, 6) covariance (or None) and (N,) inlier mask over the
    correspondences: median inlier reprojection error, 1-sigma centre and rotation uncertainty."""
    reproj = np.linalg.norm(camera.project(cam_from_world.transform(points3d[inl])) - points2d[inl], axis=1)
    pos_sigma = rot_sigma = None
    if cov is not None and np.all(np.isfinite(cov)):
        pos_sigma = float(np.sqrt(max(np.linalg.eigvalsh(centre_covariance(cam_from_world, cov)).max(), 0)))
        rot_sigma = float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(cov[:3, :3]).max(), 0))))
    return PoseEstimate(cam_from_world, cov, inl, float(np.nanmedian(reproj)) if len(reproj) else None,
                        pos_sigma, rot_sigma)


class Attempt(NamedTuple):
    """One setting a query can run at: working resolution (longest side, 0 = native), query
    keypoint budget, and the number of map images retrieved."""

    name: str
    max_image_side: int
    max_keypoints: int
    top_k: int


@dataclass(frozen=True)
class Attempts:
    """The full setting, and the cheaper first attempts that fall back to it (None = off):
    ``tracking`` for queries with a pose prior, ``coarse`` for queries without one."""

    full: Attempt
    tracking: Attempt | None
    coarse: Attempt | None

    @staticmethod
    def from_config(c: LocalizerConfig) -> "Attempts":
        return Attempts(
            Attempt("full", c.max_image_side, c.max_keypoints, c.top_k),
            Attempt("tracking", c.tracking_max_image_side, c.tracking_max_keypoints, c.tracking_top_k)
            if c.tracking_max_image_side > 0 else None,
            Attempt("coarse", c.coarse_max_image_side, c.max_keypoints, c.top_k) if c.coarse_max_image_side > 0
            else None)

    def reduces(self, first: Attempt, image_side: int) -> bool:
        """Whether ``first`` does less work than the full setting on an image of this longest side."""
        def side(a: Attempt) -> int:
            return min(image_side, a.max_image_side) if a.max_image_side > 0 else image_side
        return (side(first), first.max_keypoints, first.top_k) != (side(self.full), self.full.max_keypoints,
                                                                     self.full.top_k)


class Localizer:
    """Loads a bundle once; ``localize(image, camera)`` per frame. Safe to call from several threads."""

    def __init__(self, bundle: Path | LocalizationMap, cfg: LocalizerConfig = LocalizerConfig(),
                 mmap_dir: Path | None = None) -> None:
        """``mmap_dir``: memory-map the map's descriptors from sidecars there (see LocalizationMap.load)."""
        self.map = bundle if isinstance(bundle, LocalizationMap) else LocalizationMap.load(Path(bundle), mmap_dir,
                                                                                            cfg.features,
                                                                                            cfg.point_uncertainty,
                                                                                            cfg.learned_point_uncertainty)
        self.cfg = cfg
        self._pose_cfg = replace(cfg, point_uncertainty=cfg.point_uncertainty and cfg.learned_point_uncertainty) \
            if self.map.learned else cfg
        self._bounds = cfg.acceptance_bounds(self.map.learned, self.map.feature_set.name
                                             if self.map.feature_set is not None else None)
        #: bytes of this map resident on the device (learned sets on CUDA), for the cache budget
        self.device_bytes = 0
        self.device = torch.device("cpu")
        if self.map.learned:
            self._setup_learned()
        else:
            self.map.cache_rootsift(int(cfg.rootsift_cache_mb * 1e6))
        valid = self.map.retrieval_rows >= 0
        self.ivf = (InvertedFile.build(self.map.retrieval_matrix) if 0 < cfg.retrieval_ivf_min_images <= valid.sum()
                    else None)
        self._local = threading.local()
        self.attempts = Attempts.from_config(cfg) if not self.map.learned else \
            Attempts(Attempt("full", cfg.learned_max_image_side, cfg.learned_max_keypoints,
                             cfg.lightglue_top_k if cfg.learned_matcher == "lightglue" else cfg.top_k), None, None)

    def _setup_learned(self) -> None:
        """Network, matcher and resident descriptors of a learned feature set (see LocalizerConfig)."""
        from vision.backends import learned_kwargs, make_backend
        from vision.learned import LightGlueMatcher, resolve_device
        c, fs = self.cfg, self.map.feature_set
        if c.learned_matcher not in ("lightglue", "nn"):
            raise VlocError(f"unknown learned matcher {c.learned_matcher!r}: lightglue or nn")
        self.device = resolve_device(c.device)
        self.dtype = torch.float16 if c.fp16 and self.device.type == "cuda" else torch.float32
        self.learned_backend = make_backend(fs.type, **learned_kwargs(
            fs.type, c.learned_max_keypoints, c.learned_max_image_side, c.device, c.fp16,
            c.learned_keypoint_selection, min_image_side=self._map_image_side()))
        self.matcher = None
        if c.learned_matcher == "lightglue":
            lg = "disk" if fs.type == "disk" else "aliked" if fs.type in ("aliked-n16", "aliked-n32") else None
            if lg is None:
                raise VlocError(f"LightGlue has no weights for {fs.type}: use learned_matcher='nn'")
            self.matcher = LightGlueMatcher(lg, device=c.device, fp16=c.fp16)
        self.device_bytes = self.map.to_device(self.device, self.dtype)

    def _map_image_side(self) -> int:
        """The side small query frames are brought to (``learned_match_map_scale``): the median
        longest side of the map's images, at most ``learned_max_image_side``; 0 = off."""
        sizes = self.map.image_sizes
        if not self.cfg.learned_match_map_scale or sizes is None or len(sizes) == 0:
            return 0
        side = int(np.median(np.max(np.asarray(sizes), axis=1)))
        return min(side, self.cfg.learned_max_image_side) if self.cfg.learned_max_image_side else side

    def _backend(self, attempt: Attempt) -> SiftBackend:
        backends = self._local.__dict__.setdefault("backends", {})
        key = (attempt.max_image_side, attempt.max_keypoints)
        if key not in backends:
            backends[key] = SiftBackend(SiftConfig(max_keypoints=attempt.max_keypoints,
                                                   contrast_threshold=self.cfg.contrast_threshold,
                                                   max_image_side=attempt.max_image_side))
        return backends[key]

    # stages -----------------------------------------------------------------------------------
    def extract(self, image: np.ndarray, attempt: Attempt | None = None) -> Features:
        """Query features at ``attempt``'s working resolution and budget (default: the full setting)."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray = np.ascontiguousarray(gray, dtype=np.uint8)
        if self.map.learned:  # learned networks take the frame as it is
            return self.learned_backend.extract(gray)
        if self.cfg.denoise_above_sigma > 0 and noise_sigma(gray) > self.cfg.denoise_above_sigma:
            gray = cv2.GaussianBlur(gray, (0, 0), self.cfg.denoise_blur_sigma)
        if self.cfg.normalize_contrast:
            gray = stretch_contrast(gray, self.cfg.contrast_percentile, self.cfg.stretch_below_range)
        return self._backend(attempt or self.attempts.full).extract(gray)

    def retrieve(self, features: Features, prior: PosePrior | None, k: int | None = None) -> np.ndarray:
        """Rows (into map.image_names) of the top-k map images for this query."""
        m, k = self.map, k or self.cfg.top_k
        g = m.retrieval.describe(features.descriptors)
        if prior is None and self.ivf is not None:  # sublinear: only the images of the closest lists
            cand = self.ivf.candidates(g, self.cfg.retrieval_nprobe)
            cand = cand[m.retrieval_rows[cand] >= 0]
            k = min(k, len(cand))
            if k == 0:
                return np.zeros(0, np.int64)
            s = m.retrieval_matrix[cand] @ g
            top = np.argpartition(-s, k - 1)[:k]
            return m.retrieval_rows[cand[top[np.argsort(-s[top])]]]
        scores = m.retrieval_matrix @ g
        rows = m.retrieval_rows
        valid = rows >= 0
        if prior is not None:
            radius = max(self.cfg.prior_radius_m, 3 * float(prior.sigma_m))
            near = np.linalg.norm(m.image_centres[np.clip(rows, 0, None)] - prior.position, axis=1) <= radius
            if (valid & near).sum() >= 1:
                valid &= near
        scores = np.where(valid, scores, -np.inf)
        k = min(k, int(valid.sum()))
        if k == 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        return rows[top[np.argsort(-scores[top])]]

    def match(self, feats: Features, rows: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """2D-3D matches of the query against the map images ``rows``: (query keypoint indices,
        point rows), each point once. SIFT: int8 RootSIFT candidates + ratio test; learned sets:
        LightGlue per retrieved image or mutual nearest neighbours (``learned_matcher``)."""
        cfg, m = self.cfg, self.map
        if m.learned and self.matcher is not None:
            return lightglue_points(self.matcher, feats, image_size, [m.image_features(int(r)) for r in rows])
        obs = first_observation_per_point(m.observations(rows), m.obs_point)
        if m.learned:
            q = torch.from_numpy(feats.descriptors).to(self.device, self.dtype)
            return nn_points(q, m.learned_descriptors(obs, self.device, self.dtype), m.obs_point[obs],
                             cfg.learned_ratio)
        q_desc = torch.from_numpy(root_sift(feats.descriptors))
        return match_to_points(q_desc, m.rootsift_int8(obs), lambda rows: m.rootsift(obs[rows]),
                               m.obs_point[obs], cfg.ratio)

    def localize(self, image: np.ndarray, camera: Camera, prior: PosePrior | None = None) -> LocalizationResult:
        """image: (H, W) or (H, W, 3) uint8 RGB matching ``camera`` in size. Returns the pose in the map frame.

        With a prior (tracking), a cheaper setting runs first (``tracking_*`` in the config); when
        its pose is not accepted, the full setting runs with the same prior. Without a prior the
        coarse attempt runs first; it is kept when accepted with ``coarse_min_inliers`` and a
        camera-centre sigma within ``coarse_max_position_sigma_m``, else the full setting runs and
        the more certain of the two accepted poses is returned.
        """
        if image.shape[1] != camera.width or image.shape[0] != camera.height:
            raise VlocError(f"image is {image.shape[1]}x{image.shape[0]} but the camera says "
                            f"{camera.width}x{camera.height}")
        a, c = self.attempts, self.cfg
        if prior is not None:
            first, min_inliers = a.tracking, c.tracking_min_inliers
        else:
            first, min_inliers = a.coarse, c.coarse_min_inliers
        if first is None or not a.reduces(first, max(image.shape[:2])):
            return self._localize(image, camera, prior, a.full)
        fast = self._localize(image, camera, prior, first)
        kept = fast.accepted and fast.num_inliers >= min_inliers
        bar = c.coarse_max_position_sigma_m if prior is None else 0.0
        if kept and (bar <= 0 or (fast.position_sigma_m or np.inf) <= bar):
            return fast
        full = self._localize(image, camera, prior, a.full)
        # a coarse pose above the sigma bar is still kept when the full setting is less certain
        best = fast if kept and (not full.accepted or fast.position_sigma_m <= (full.position_sigma_m or np.inf)) \
            else full
        best.timings_ms = {f"{first.name}_attempt": fast.timings_ms["total"], **full.timings_ms,
                           "total": full.timings_ms["total"] + fast.timings_ms["total"]}
        return best

    def localize_batch(self, frames: list[tuple[np.ndarray, Camera, PosePrior | None]],
                       pool: ThreadPoolExecutor | None = None) -> list[LocalizationResult]:
        """:meth:`localize` of each ``(image, camera, prior)``, with the learned network run once over
        the frames as device batches (frames of equal size together); retrieval, matching and the
        pose then run per frame, on ``pool``'s threads when given (PnP on CPU cores). A SIFT map
        localizes frame by frame. The results equal those of :meth:`localize` one by one."""
        for image, camera, _ in frames:
            if image.shape[1] != camera.width or image.shape[0] != camera.height:
                raise VlocError(f"image is {image.shape[1]}x{image.shape[0]} but the camera says "
                                f"{camera.width}x{camera.height}")
        if not self.map.learned or len(frames) <= 1:
            run = (lambda f: self.localize(*f))
            return list(pool.map(run, frames)) if pool is not None else [run(f) for f in frames]
        t0 = time.perf_counter()
        grays = [np.ascontiguousarray(im if im.ndim == 2 else cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
                 for im, _, _ in frames]
        feats = self.learned_backend.extract_batch(grays)
        per_frame_ms = (time.perf_counter() - t0) * 1000 / len(frames)

        def rest(k: int) -> LocalizationResult:
            image, camera, prior = frames[k]
            return self._localize(image, camera, prior, self.attempts.full, feats[k], per_frame_ms)
        ks = range(len(frames))
        return list(pool.map(rest, ks)) if pool is not None else [rest(k) for k in ks]

    def _localize(self, image: np.ndarray, camera: Camera, prior: PosePrior | None,
                  attempt: Attempt, feats: Features | None = None, features_ms: float = 0.0) -> LocalizationResult:
        """One attempt; ``feats`` (with the time they took, ``features_ms``) when extracted in a batch."""
        cfg, m = self.cfg, self.map
        timings: dict[str, float] = {}
        t0 = t = time.perf_counter() - features_ms / 1000

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[name] = (now - t) * 1000
            t = now

        if feats is None:
            feats = self.extract(image, attempt)
        lap("features")
        result = LocalizationResult(accepted=False, reason="", num_keypoints=len(feats), timings_ms=timings,
                                    attempt=attempt.name)
        if len(feats) < cfg.min_inliers:
            result.reason = f"too few keypoints ({len(feats)}): blank, dark or blurred frame"
            timings["total"] = (time.perf_counter() - t0) * 1000
            return result
        rows = self.retrieve(feats, prior, attempt.top_k)
        result.retrieved = [m.image_names[r] for r in rows]
        lap("retrieval")

        qi, pi = self.match(feats, rows, (image.shape[1], image.shape[0]))
        result.num_matches = len(qi)
        lap("matching")
        if len(qi) < max(cfg.min_inliers, 6):
            result.reason = f"too few 2D-3D matches ({len(qi)})"
            timings["total"] = (time.perf_counter() - t0) * 1000
            return result

        xy = feats.keypoints[qi].astype(np.float64)
        xyz = m.points_xyz[pi]
        ans = estimate_pose(xy, xyz, camera, self._pose_cfg, self._point_covariances(pi),
                            self._pixel_sigma(attempt, camera))
        lap("pose")
        if ans is None:
            result.reason = "PnP RANSAC found no pose"
            timings["total"] = (time.perf_counter() - t0) * 1000
            return result
        if cfg.guided_radius_px > 0 and not m.learned:
            guided = self._guided(feats, rows, camera, attempt, ans, xy, pi)
            if guided is not None:  # its pose; acceptance and covariance stay those of the RANSAC inliers
                ans = replace(ans, cam_from_world=guided)
            lap("guided")
        result.cam_from_world = ans.cam_from_world
        result.covariance = ans.covariance
        result.num_inliers = ans.num_inliers
        result.inlier_ratio = ans.num_inliers / len(xy)
        result.median_reproj_error_px = ans.median_reproj_error_px
        result.position_sigma_m = ans.position_sigma_m
        result.rotation_sigma_deg = ans.rotation_sigma_deg
        result.inlier_keypoints, result.inlier_points3D = xy[ans.inlier_mask], xyz[ans.inlier_mask]
        result.accepted, result.reason = self._accept(result)
        timings["total"] = (time.perf_counter() - t0) * 1000
        return result

    def _guided(self, feats: Features, rows: np.ndarray, camera: Camera, attempt: Attempt, ans: PoseEstimate,
                xy: np.ndarray, pi: np.ndarray) -> Rigid3 | None:
        """Guided matching around the RANSAC pose (:func:`localize.guided.guided_matches`, retrieved
        images' points), weighted refinement on those plus the RANSAC inliers, again without those
        beyond 3 sigma: that pose, or None. The caller keeps the RANSAC inliers' covariance (more
        matches shrink it whether the pose is right or not: wrong one-pass poses gathered support)."""
        m, c = self.map, self.cfg
        obs = first_observation_per_point(m.observations(rows), m.obs_point)
        sigma = self._pixel_sigma(attempt, camera)
        gq, gp = guided_matches(ans.cam_from_world, camera, feats.keypoints.astype(np.float64),
                                root_sift(feats.descriptors), m.points_xyz[m.obs_point[obs]],
                                lambda r: m.rootsift(obs[r]).numpy(),
                                c.guided_radius_px * sigma / c.query_keypoint_sigma_px, c.guided_ratio,
                                c.guided_max_distance)
        inl = ans.inlier_mask
        g_xy, g_pi = np.r_[xy[inl], feats.keypoints[gq].astype(np.float64)], np.r_[pi[inl], m.obs_point[obs][gp]]
        first = np.sort(np.unique(g_pi, return_index=True)[1])  # a point matched both ways: the RANSAC one
        g_xy, g_xyz, cov = g_xy[first], m.points_xyz[g_pi[first]], self._point_covariances(g_pi[first])
        w = refine_with_point_uncertainty(g_xy, g_xyz, camera, ans.cam_from_world, cov, sigma)
        keep = w.whitened_residuals <= 3.0 if w is not None else np.zeros(0, bool)
        if keep.sum() < 6:
            return None
        w = refine_with_point_uncertainty(g_xy[keep], g_xyz[keep], camera, w.cam_from_world,
                                          None if cov is None else cov[keep], sigma)
        return None if w is None else w.cam_from_world

    def _point_covariances(self, point_rows: np.ndarray) -> np.ndarray | None:
        """(N, 3, 3) world covariances of the map points ``point_rows`` (None without them)."""
        q = self.map.point_quality
        return None if q is None else q["covariance"][point_rows].astype(np.float64)

    def _pixel_sigma(self, attempt: Attempt, camera: Camera) -> float:
        """Query keypoint noise in native pixels: ``query_keypoint_sigma_px`` at the working resolution."""
        side = max(camera.width, camera.height)
        work = min(side, attempt.max_image_side) if attempt.max_image_side > 0 else side
        return self.cfg.query_keypoint_sigma_px * side / work

    def _accept(self, r: LocalizationResult) -> tuple[bool, str]:
        c = self.cfg
        n_min, ratio_min, pos_max = self._bounds
        if r.num_inliers < n_min:
            return False, f"too few inliers ({r.num_inliers} < {n_min})"
        if r.inlier_ratio < ratio_min:
            return False, f"inlier ratio {r.inlier_ratio:.2f} < {ratio_min}"
        if r.position_sigma_m is None or r.rotation_sigma_deg is None:
            return False, "pose covariance unavailable"
        if r.position_sigma_m > pos_max:
            return False, f"position uncertainty {r.position_sigma_m:.3f} m > {pos_max} m"
        if r.rotation_sigma_deg > c.max_rotation_sigma_deg:
            return False, f"rotation uncertainty {r.rotation_sigma_deg:.2f} deg > {c.max_rotation_sigma_deg} deg"
        return True, "ok"
