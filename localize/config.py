"""All localization knobs in one frozen config, with documented defaults."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalizerConfig:
    """Per-query settings of :class:`localize.Localizer`."""

    # feature set and device ---------------------------------------------------------------
    #: the bundle's feature set to localize with (sift, aliked, aliked-n32, disk, ...); None: the
    #: bundle's first (root) set. A set the bundle lacks is refused with the sets it has.
    features: str | None = None
    #: where learned networks and a learned map's descriptors run: "auto" (CUDA when there is
    #: one), "cpu" or "cuda" (falls back to the CPU with one log line). SIFT always runs on the CPU.
    device: str = "auto"
    #: half-precision learned networks and resident descriptors on CUDA (ignored on the CPU).
    fp16: bool = True
    #: learned sets: "lightglue" (the query against each retrieved map image, lifted to 2D-3D
    #: through the map's tracks) or "nn" (mutual nearest neighbours 2D-3D: the fast option).
    learned_matcher: str = "lightglue"
    #: learned sets: query keypoints and the longest side the network sees.
    learned_max_keypoints: int = 2048
    learned_max_image_side: int = 640
    #: learned sets: a query frame smaller than the map's images is upscaled to their longest side
    #: (median over the map, at most learned_max_image_side) before the network, since ALIKED and
    #: DISK are not scale-covariant; keypoints stay in the frame's pixels. Not a tuned number: the
    #: map's own scale. (Half-resolution redkitchen queries, ALIKED + LightGlue: 75 % within
    #: 2 cm / 1 deg without it.)
    learned_match_map_scale: bool = True
    #: learned sets: "top_k" or "threshold" keypoints (see mapping.config.LearnedConfig).
    learned_keypoint_selection: str = "top_k"
    #: learned sets with LightGlue: map images matched per query (each is one LightGlue pair).
    lightglue_top_k: int = 5
    #: learned sets: ratio test of the nearest-neighbour matcher (L2 distances of unit descriptors).
    learned_ratio: float = 0.95

    # features ------------------------------------------------------------------------------
    #: query keypoints kept (strongest first).
    max_keypoints: int = 2048
    #: OpenCV SIFT contrast threshold for the query (lower = more, weaker keypoints).
    contrast_threshold: float = 0.02
    #: longest side the query is processed at (larger frames are downscaled; poses stay exact).
    max_image_side: int = 640

    #: stretch the query's intensity range (percentiles below) before detection.
    normalize_contrast: bool = True
    contrast_percentile: float = 0.5
    #: ... only when that percentile range spans fewer grey levels than this (low-contrast frames).
    stretch_below_range: int = 160

    #: frames whose estimated noise sigma (grey levels) exceeds this are smoothed first (0 = never).
    denoise_above_sigma: float = 2.5
    #: Gaussian sigma (pixels) of that smoothing.
    denoise_blur_sigma: float = 1.2

    # retrieval -----------------------------------------------------------------------------
    #: map images retrieved per query; matching cost is bounded by this.
    top_k: int = 10
    #: maps with at least this many images get an inverted file over their global descriptors
    #: (built at load), so retrieval scores a fraction of the map instead of every image.
    retrieval_ivf_min_images: int = 1000
    #: lists of that inverted file scored per query (more = closer to exhaustive).
    retrieval_nprobe: int = 12
    #: with a pose prior, candidates lie within max(prior_radius_m, 3 sigma) of the prior position.
    prior_radius_m: float = 2.0

    #: maps whose int8 RootSIFT table (128 bytes per observation) fits in this many MB keep it in
    #: memory (faster queries);
    #: larger maps compute it per query for the retrieved images only (bounded memory).
    rootsift_cache_mb: float = 256.0

    # coarse to fine (no pose prior): a cheaper first attempt, the full setting as fallback ------
    #: working resolution of the first attempt for queries without a prior (0 = full setting only);
    #: same keypoint budget and k. Measured (`vloc bench 7scenes --repeats 3`, revisit vs pgt_sfm,
    #: one window, SIFT probe 81 ms): 640 px alone: 0.66 cm median, 85 % within 2 cm / 1 deg,
    #: p50 / p90 56-82 / 68-99 ms; 400 px first: 0.76 cm, 85 %, 32-35 / 39-45 ms, every
    #: degradation 100 % within 15 cm / 5 deg (the JPEG-15 frame the 400 px attempt rejects is
    #: recovered by the fallback); 320 px: 1.0 cm, 70 %. Maps built with spread pairs
    #: (2026-11-29, two runs each in one window, probe 47-54 ms): 400 px 0.6 cm, 90 %, p50 28 ms;
    #: 380 px 85 %, 26-30 ms; 360 px 0.7 cm, 80 %, 26-29 ms. On held-out frames of the same room
    #: (4 splits, 500 queries) 380 / 360 px lost 0.1 cm of median and 0-4 points of the 2 cm share.
    coarse_max_image_side: int = 400
    #: the coarse pose is kept only when accepted with at least this many inliers (20 = whenever
    #: it is accepted), else the full setting runs.
    coarse_min_inliers: int = 20
    #: ... and only when its camera-centre sigma (with the map points' uncertainty) is at most
    #: this (0 = whenever accepted); else the full setting runs too and the more certain accepted
    #: pose of the two is returned. Measured on the cv mean with the defaults (guided 10 px):
    #: coarse first and kept whenever accepted 89.2 % within 2 cm / 1 deg, with a 1.4 cm bar (a
    #: fifth of the queries run both) 87.5 %, 640 px only 86.2 %: off.
    coarse_max_position_sigma_m: float = 0.0

    # tracking (a pose prior is given): a cheaper first attempt, the full setting as fallback -----
    #: working resolution while tracking (0 = no tracking mode: priors only narrow retrieval).
    #: Measured (`vloc bench serve --stream`, 20 robots x 2 Hz on 2 cores, redkitchen): 480 px
    #: 17 q/s, 100 % within 5 cm / 5 deg; 400 px 22 q/s, 99 %; 320 px 27 q/s, 94 %.
    tracking_max_image_side: int = 400
    tracking_max_keypoints: int = 1024
    tracking_top_k: int = 5
    #: the cheap attempt's pose is kept only with at least this many inliers, else the full setting
    #: runs. Measured (redkitchen block 1, 100 frames, prior 17 cm off): 20: max error 6.7 cm, 1
    #: fallback, 35 ms mean; 80: 5.2 cm, 29 fallbacks, 55 ms; 120: 3.9 cm, 41, 62 ms. The default
    #: keeps tracking cheap (serving throughput); raise it for accuracy over throughput.
    tracking_min_inliers: int = 20

    # matching ------------------------------------------------------------------------------
    #: Lowe ratio between the best and the best *other 3D point* (L2 on RootSIFT).
    ratio: float = 0.9

    # pose ----------------------------------------------------------------------------------
    #: RANSAC inlier threshold in pixels (at the query's native resolution).
    ransac_max_error_px: float = 8.0
    ransac_max_trials: int = 10000
    #: seed of RANSAC (deterministic results for a given frame and map).
    seed: int = 0

    # pose covariance with the map points' uncertainty (localize.uncertainty) -------------------
    #: weigh each inlier by its pixel noise plus its map point's covariance projected into the
    #: query (``point_quality`` of the bundle), re-refine the pose with those weights and report
    #: their covariance (Cauchy loss at 1 sigma, as pycolmap's unweighted refinement). Chosen on
    #: the cv mean (`vloc bench 7scenes --protocol cv`, redkitchen 300 frames, 6 folds, 2026-12-04):
    #: 83.8 % within 2 cm / 1 deg vs 79.2 % without, accepted poses beyond 15 cm / 5 deg 0 vs 5
    #: (both attempts of every query: 280 vs 258 of 341 poses within 2 cm / 1 deg).
    point_uncertainty: bool = True
    #: the same for learned feature sets (ALIKED, DISK); off: pycolmap's pose and covariance.
    #: Chosen on the cv mean with ALIKED + nearest-neighbour 2D-3D (`vloc bench 7scenes --protocol
    #: cv --features aliked --matcher nn`, redkitchen, 6 folds, 2026-12-04): 83.3 % within 2 cm /
    #: 1 deg vs 75.8 % off; accepted poses beyond 3 sigma 8-11 % vs 83 %.
    learned_point_uncertainty: bool = True
    #: query keypoint noise (pixels at the attempt's working resolution; scaled to native pixels).
    #: On the cv folds 0.7 / 1.0 / 1.5 px gave 278 / 280 / 277 of 341 poses within 2 cm / 1 deg.
    query_keypoint_sigma_px: float = 1.0
    #: the map's own accuracy (camera centre metres, orientation degrees), added to every pose
    #: covariance: no number of correspondences averages it away. Chosen on the cv calibration
    #: (share of accepted poses beyond 3 sigma, both attempts of every cv query, before guided
    #: matching): 0 / 0 -> 46 %, 1 cm / 0.25 deg -> 5 %, 1.5 cm / 0.3 deg -> 2 %. With the
    #: defaults the bench reports 0.0 % (`accepted_beyond_3sigma_pct`): the guided pose is more
    #: accurate than the RANSAC inliers' covariance it keeps.
    map_sigma_m: float = 0.01
    map_sigma_deg: float = 0.25

    #: guided matching after RANSAC (localize.guided): each retrieved map point is matched to the
    #: query keypoints within this radius (pixels at the working resolution) of its projection,
    #: then the pose is re-refined on all of them (0 = off); acceptance and covariance stay those
    #: of the RANSAC inliers. Chosen on the cv mean (6 folds, within 2 cm / 1 deg): off 83.8 %,
    #: 3 px 85.0, 6 px 85.8, 10 px 88.8, 16 px 87.1, 24 px 87.1.
    guided_radius_px: float = 10.0
    #: ratio test among those nearby keypoints and the largest RootSIFT L2 distance accepted.
    guided_ratio: float = 0.9
    guided_max_distance: float = 0.9

    # acceptance (a pose that fails any is returned as a rejection) ------------------------
    # Measured: frames of other places (other rooms, outdoor streets, Strecha facades) against a
    # redkitchen map reach 5-8 inliers at ratios 0.03-0.04, while degraded true frames keep 20+.
    # Chosen on the cv folds with the points' uncertainty (2026-12-04): 24 frames of other places
    # (Lund streets, Strecha facades) x 6 cv maps reach at most 9 inliers at ratio 0.048; one-pass
    # maps give true poses with 14-16 inliers at ratios 0.06-0.07 (20 / 0.08 left 87 % of the
    # poses within 15 cm accepted on one fold), and a 15 cm / 5.3 deg pose with 12 inliers.
    min_inliers: int = 15
    min_inlier_ratio: float = 0.06
    #: largest 1-sigma camera-centre uncertainty (metres) from the refinement covariance.
    #: With ``point_uncertainty`` chosen on the cv mean (6 folds, both attempts, 341 poses with
    #: >= 20 inliers): true poses (<= 15 cm / 5 deg) reach 2.5 cm at the 99th percentile (before the
    #: 1 cm map floor), the wrong ones (one-pass map, 15-80 cm off) 4.6 cm and more; 3 cm keeps 329
    #: of 332 true poses and no wrong one. (Without point uncertainty the wrong ones had 1.3-8 cm:
    #: the former 0.10 let 5 of them through.)
    max_position_sigma_m: float = 0.03
    #: learned feature sets. The sigma bounds are chosen on the ALIKED cv folds (with the points'
    #: uncertainty, 2026-12-04; each query's raw pose with acceptance relaxed). Nearest-neighbour
    #: 2D-3D (``learned_max_position_sigma_m``): true poses (<= 15 cm / 5 deg, 173) reach 2.5 cm at
    #: the 99th percentile, 2.9 cm at most; the confident wrong ones (one-pass maps, 15-86 cm off
    #: with 44-199 inliers, 7 of which the former 0.10 m accepted) have 2.6-4.9 cm. 2.5 cm accepts
    #: none of them and keeps >= 92 % of the true poses on every fold (2.3 cm: 89.7 % on one).
    #: The inlier bounds split nothing there (the wrong poses have many inliers).
    learned_min_inliers: int = 20
    learned_min_inlier_ratio: float = 0.08
    learned_max_position_sigma_m: float = 0.025
    #: ... with LightGlue at query time (``learned_matcher="lightglue"``): true poses (178) reach
    #: 2.1 cm at the 99th percentile, 2.6 cm at most; the wrong ones 2.34 cm (21 cm / 4.4 deg off, 84
    #: inliers) and 2.96 cm. 2.2 cm accepts neither and keeps >= 97 % of the true poses on every fold.
    lightglue_max_position_sigma_m: float = 0.022
    #: DISK sets (feature set names starting "disk") are held to at most this, whatever the
    #: matcher. Chosen on the DISK cv folds with LightGlue (`vloc bench 7scenes --protocol cv
    #: --features disk`, 2026-12-04; each query's raw pose with acceptance relaxed): true poses
    #: (173) reach 2.0 cm at the 99th percentile, 2.13 cm at most; the wrong ones (one-pass maps,
    #: 17-58 cm / 3-11 deg off with 73-491 inliers at ratios 0.42-0.85) have 2.19-3.88 cm, and the
    #: 2.2 cm LightGlue bound accepted the 16.6 cm / 3.4 deg one. 2.0 cm accepts none and keeps
    #: >= 97 % of the true poses on every fold. DISK with nearest-neighbour 2D-3D was not measured:
    #: it gets the same (tighter) bound.
    disk_max_position_sigma_m: float = 0.020
    #: largest 1-sigma rotation uncertainty (degrees).
    #: Measured (2026-11-29, redkitchen, 487 accepted queries of held-out splits and the
    #: degradations): true poses (<= 5 cm / 5 deg) reach 1.9 cm / 0.54 deg at most. A map of one
    #: pass queried from the others (frames it barely sees) yields poses 0.2-4 m off with
    #: 1.0-1.3 deg: rejected here. Not caught: 26 of 200 such frames, 15-80 cm off at
    #: 1.3-8 cm / 0.3-1 deg (their inliers lie on points seen from narrow baselines).
    max_rotation_sigma_deg: float = 1.0

    def acceptance_bounds(self, learned: bool, features: str | None = None) -> tuple[int, float, float]:
        """(min inliers, min inlier ratio, max 1-sigma position metres) for a SIFT or learned set
        (``features``: the set's name, e.g. "aliked", "disk")."""
        if not learned:
            return self.min_inliers, self.min_inlier_ratio, self.max_position_sigma_m
        pos_max = self.lightglue_max_position_sigma_m if self.learned_matcher == "lightglue" \
            else self.learned_max_position_sigma_m
        if features is not None and features.startswith("disk"):
            pos_max = min(pos_max, self.disk_max_position_sigma_m)
        return self.learned_min_inliers, self.learned_min_inlier_ratio, pos_max
