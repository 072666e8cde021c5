"""Map build stage 2: matches of each image pair, geometrically verified (epipolar geometry of the
known poses, or RANSAC on an essential matrix), each kept in the build's stage cache.

SIFT pairs: int8 RootSIFT candidate search, ratio and mutual tests. Learned features: LightGlue
(the default) or mutual nearest neighbours."""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

from core.geometry import Rigid3
from core.progress import Reporter
from core.types import ImageRecord, VlocError
from mapping.config import BuildConfig
from mapping.extract import worker_pool
from mapping.feature_store import FeatureStore
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


def match_key(a: ImageRecord, b: ImageRecord, key_a: str, key_b: str, posed: bool, cfg: BuildConfig) -> str:
    """Stage-cache key of one pair's verified matches: both images' feature keys, their poses, the
    matching settings and (learned builds) the matcher. The same in process and on a cluster."""
    poses = [None if r.cam_from_world is None else r.cam_from_world.matrix3x4().tolist() for r in (a, b)]
    # the matcher is part of what the matches are: SIFT keys stay as they were before learned features
    matcher_key = [] if not cfg.learned_features or cfg.learned.matcher == "nn" else \
        [cfg.feature_type, asdict(cfg.learned)]
    return content_key("matches", key_a, key_b, posed, poses, asdict(cfg.matching), *matcher_key)


def load_matches(cache: StageCache, key: str) -> tuple[bool, VerifiedPair | None]:
    """(found, verified pair or None when the pair failed verification) of a cache entry."""
    if (hit := cache.get("matches", key)) is None:
        return False, None
    if len(hit["matches"]) == 0:
        return True, None
    return True, VerifiedPair(hit["matches"], Rigid3(hit["rotation"], hit["translation"]), hit["E"])


def store_matches(cache: StageCache, key: str, vp: VerifiedPair | None) -> None:
    if vp is None:
        cache.put("matches", key, matches=np.zeros((0, 2), np.int64))
    else:
        cache.put("matches", key, matches=vp.matches, rotation=vp.cam2_from_cam1.rotation,
                  translation=vp.cam2_from_cam1.translation, E=vp.E)


class PairMatcher:
    """Verified matches of image pairs, each taken from or stored into the stage cache: what the
    build's thread pool calls pair by pair and a Dask task calls for its batch of pairs
    (:func:`match_pair_batch`), so both give the same matches under the same keys.

    records / feature_keys: by image index (all of them, or those of a batch's pairs).
    features: image index -> Features (a list, or a loader from the stage cache).
    int8_images: how many images' int8 RootSIFT to keep (SIFT), rather than quantising per pair.
    """

    def __init__(self, records: Mapping[int, ImageRecord] | list[ImageRecord], features: Callable[[int], Features],
                 posed: bool, cfg: BuildConfig, cache: StageCache | None = None,
                 feature_keys: Mapping[int, str] | list[str] | None = None, int8_images: int = 2,
                 lightglue=None) -> None:
        self.records, self.features, self.posed, self.cfg = records, features, posed, cfg
        self.cache, self.feature_keys = cache, feature_keys
        self.lightglue = lightglue if lightglue is not None else pair_matcher(cfg)
        self.int8_of = lru_cache(maxsize=max(2, int8_images))(lambda i: sift_int8(self.features(i).descriptors))

    def key(self, pair: tuple[int, int]) -> str:
        i, j = pair
        return match_key(self.records[i], self.records[j], self.feature_keys[i], self.feature_keys[j], self.posed,
                         self.cfg)

    def __call__(self, pair: tuple[int, int]) -> tuple[tuple[int, int], VerifiedPair | None]:
        """(pair, verified matches or None) from the cache, or computed and stored there."""
        key = None
        if self.cache is not None:
            key = self.key(pair)
            found, vp = load_matches(self.cache, key)
            if found:
                return pair, vp
        vp = self.compute(pair)
        if key is not None:
            store_matches(self.cache, key, vp)
        return pair, vp

    def compute(self, pair: tuple[int, int]) -> VerifiedPair | None:
        mc = self.cfg.matching
        i, j = pair
        fi, fj = self.features(i), self.features(j)
        a, b = self.records[i], self.records[j]
        d1, d2 = fi.descriptors, fj.descriptors
        if self.lightglue is not None:
            m, _ = self.lightglue.match(fi, (a.camera.width, a.camera.height), fj, (b.camera.width, b.camera.height))
        elif d1.dtype == np.uint8 and d2.dtype == np.uint8:  # SIFT
            m = match_sift_int8(self.int8_of(i), self.int8_of(j), d1, d2, mc.ratio, mc.mutual)
        else:  # learned float descriptors, mutual nearest neighbours
            m = match_descriptors(normalise_descriptors(d1), normalise_descriptors(d2), mc.ratio, mc.mutual)
        if len(m) < mc.min_inliers:
            return None
        if self.posed:
            vp = verify_with_poses(fi.keypoints, fj.keypoints, m, a.camera, b.camera,
                                   a.cam_from_world, b.cam_from_world, mc.max_epipolar_error_px)
        else:
            vp = verify_unknown_pose(fi.keypoints, fj.keypoints, m, a.camera, b.camera,
                                     mc.max_epipolar_error_px, mc.ransac_confidence)
        return vp if vp is not None and len(vp.matches) >= mc.min_inliers else None


def match_pair_batch(matcher: PairMatcher, pairs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Verified matches of a batch of pairs into the matcher's cache; returns (i, j, number of
    verified matches, 0 for a rejected pair) per pair: a summary, the matches stay on disk."""
    out = []
    for pair in pairs:
        _, vp = matcher(pair)
        out.append((pair[0], pair[1], 0 if vp is None else len(vp.matches)))
    return out


def int8_cache_images(mean_keypoints: float) -> int:
    """Images whose int8 RootSIFT (128 bytes per keypoint) fit :data:`INT8_CACHE_BYTES`."""
    return max(2, INT8_CACHE_BYTES // (128 * max(1, int(mean_keypoints))))


class MatchStore(Mapping[tuple[int, int], VerifiedPair]):
    """The verified pairs of a build (pair order), each pair's matches read back from the stage cache
    when asked: what the COLMAP database is written from, one pair at a time.

    pairs: the verified pairs; keys: their stage-cache keys (same order)."""

    def __init__(self, cache: StageCache, pairs: list[tuple[int, int]], keys: list[str]) -> None:
        self.cache, self.pairs = cache, list(pairs)
        self.keys = dict(zip(self.pairs, keys))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __contains__(self, pair) -> bool:
        return pair in self.keys

    def __getitem__(self, pair: tuple[int, int]) -> VerifiedPair:
        found, vp = load_matches(self.cache, self.keys[pair])
        if not found or vp is None:
            raise VlocError(f"the matches of pair {pair} are missing from the work directory {self.cache.root} "
                            "(deleted during the build?); rerun to compute them again")
        return vp


def match_pairs(records: list[ImageRecord], feats: FeatureStore, pairs: list[tuple[int, int]],
                posed: bool, cfg: BuildConfig, reporter: Reporter, cache: StageCache | None = None,
                feature_keys: list[str] | None = None) -> Mapping[tuple[int, int], VerifiedPair]:
    """Verified matches of each pair (from ``cache`` when the same pair was verified before), on a
    pool of ``cfg.workers`` threads. With a ``cache`` the matches stay there (a :class:`MatchStore`
    reads them back); without one they are returned in a dict."""
    # int8 RootSIFT once per image (kept for the most recent images within the budget) rather than
    # per pair; exact scores come from the uint8 rows that need them.
    mean_kp = np.mean(feats.counts) if len(feats) else 1
    matcher = PairMatcher(records, feats.__getitem__, posed, cfg, cache, feature_keys, int8_cache_images(mean_kp))
    verified: list[tuple[int, int]] = []
    held: dict[tuple[int, int], VerifiedPair] = {}
    with worker_pool(cfg.workers) as ex:
        for p, vp in reporter.track(ex.map(matcher, pairs), "matching", total=len(pairs), unit="pairs"):
            if vp is not None:
                verified.append(p)
                if cache is None:
                    held[p] = vp
    return held if cache is None else MatchStore(cache, verified, [matcher.key(p) for p in verified])
