"""Map build stage 2: matches of each image pair, geometrically verified (epipolar geometry of the
known poses, or RANSAC on an essential matrix), each kept in the build's stage cache.

SIFT pairs: int8 RootSIFT candidate search, ratio and mutual tests. Learned features: LightGlue
(the default) or mutual nearest neighbours."""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache

import numpy as np

from core.geometry import Rigid3
from core.progress import Reporter
from core.types import ImageRecord
from mapping.config import BuildConfig
from mapping.extract import worker_pool
from mapping.stage_cache import StageCache, content_key
from vision.features import Features
from vision.matching import (
    VerifiedPair,
    match_descriptors,
    match_sift_int8,
    normalise_descriptors,
    sift_int8,
    verify_unknown_pose,
    verify_with_poses,
)

#: memory for the per-image int8 RootSIFT kept during pair matching.
INT8_CACHE_BYTES = 256 << 20


def pair_matcher(cfg: BuildConfig):
    """LightGlue for a learned build that asks for it (None: descriptor matching)."""
    if not cfg.learned_features or cfg.learned.matcher == "nn":
        return None
    if cfg.learned.matcher != "lightglue":
        raise ValueError(f"unknown pair matcher {cfg.learned.matcher!r}: lightglue or nn")
    from vision.learned import LightGlueMatcher
    c = cfg.learned
    return LightGlueMatcher(lightglue_features(cfg.feature_type), device=c.device, fp16=c.fp16,
                            depth_confidence=c.depth_confidence, width_confidence=c.width_confidence,
                            filter_threshold=c.filter_threshold)


def lightglue_features(feature_type: str) -> str:
    """The LightGlue weights for a feature type: "aliked" (ALIKED n16 / n32) or "disk"."""
    if feature_type in ("aliked-n16", "aliked-n32"):
        return "aliked"
    if feature_type == "disk":
        return "disk"
    raise ValueError(f"LightGlue has no weights for {feature_type!r} (aliked-n16, aliked-n32, disk): "
                     "use the nearest-neighbour matcher")


def match_pairs(records: list[ImageRecord], feats: list[Features], pairs: list[tuple[int, int]],
                posed: bool, cfg: BuildConfig, reporter: Reporter, cache: StageCache | None = None,
                feature_keys: list[str] | None = None) -> dict[tuple[int, int], VerifiedPair]:
    """Verified matches of each pair (from ``cache`` when the same pair was verified before)."""
    mc = cfg.matching
    lightglue = pair_matcher(cfg)
    # the matcher is part of what the matches are: SIFT keys stay as they were before learned features
    matcher_key = [] if lightglue is None else [cfg.feature_type, asdict(cfg.learned)]

    def one(pair: tuple[int, int]):
        key = None
        if cache is not None:
            i, j = pair
            poses = [None if r.cam_from_world is None else r.cam_from_world.matrix3x4().tolist()
                     for r in (records[i], records[j])]
            key = content_key("matches", feature_keys[i], feature_keys[j], posed, poses, asdict(mc), *matcher_key)
            if (hit := cache.get("matches", key)) is not None:
                if len(hit["matches"]) == 0:
                    return pair, None
                return pair, VerifiedPair(hit["matches"], Rigid3(hit["rotation"], hit["translation"]), hit["E"])
        pair, vp = _match_one(pair)
        if key is not None:
            if vp is None:
                cache.put("matches", key, matches=np.zeros((0, 2), np.int64))
            else:
                cache.put("matches", key, matches=vp.matches, rotation=vp.cam2_from_cam1.rotation,
                          translation=vp.cam2_from_cam1.translation, E=vp.E)
        return pair, vp

    # int8 RootSIFT once per image (128 bytes per keypoint, kept for the most recent images within
    # the budget) rather than per pair; exact scores come from the uint8 rows that need them.
    per_image = 128 * max(1, int(np.mean([len(f) for f in feats]))) if feats else 1
    int8_of = lru_cache(maxsize=max(2, INT8_CACHE_BYTES // per_image))(lambda i: sift_int8(feats[i].descriptors))

    def _match_one(pair: tuple[int, int]):
        i, j = pair
        d1, d2 = feats[i].descriptors, feats[j].descriptors
        if lightglue is not None:
            a, b = records[i].camera, records[j].camera
            m, _ = lightglue.match(feats[i], (a.width, a.height), feats[j], (b.width, b.height))
        elif d1.dtype == np.uint8 and d2.dtype == np.uint8:  # SIFT
            m = match_sift_int8(int8_of(i), int8_of(j), d1, d2, mc.ratio, mc.mutual)
        else:  # learned float descriptors, mutual nearest neighbours
            m = match_descriptors(normalise_descriptors(d1), normalise_descriptors(d2), mc.ratio, mc.mutual)
        if len(m) < mc.min_inliers:
            return pair, None
        a, b = records[i], records[j]
        if posed:
            vp = verify_with_poses(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                   a.cam_from_world, b.cam_from_world, mc.max_epipolar_error_px)
        else:
            vp = verify_unknown_pose(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                     mc.max_epipolar_error_px, mc.ransac_confidence)
        return pair, (vp if vp is not None and len(vp.matches) >= mc.min_inliers else None)

    with worker_pool(cfg.workers) as ex:
        results = list(reporter.track(ex.map(one, pairs), "matching", total=len(pairs)))
    return {p: vp for p, vp in results if vp is not None}
