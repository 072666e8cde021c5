"""Guided 2D-3D matching around a first pose: the map points of the retrieved images projected into
the query, each matched to the query keypoints near its projection only (a local search that keeps
correspondences the global ratio test dropped), then the pose re-refined on all of them."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

from core.camera import Camera
from core.geometry import Rigid3


def guided_matches(cam_from_world: Rigid3, camera: Camera, keypoints: np.ndarray, query_desc: np.ndarray,
                   points_world: np.ndarray, map_desc: np.ndarray | Callable[[np.ndarray], np.ndarray],
                   radius_px: float, ratio: float = 0.9, max_distance: float = 0.9, neighbours: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Match map points (M, 3) world with (M, D) unit descriptors to query keypoints (K, 2) native
    COLMAP pixels with (K, D) unit descriptors, searching only the ``neighbours`` keypoints within
    ``radius_px`` of each point's projection by ``cam_from_world``. A point keeps its closest
    descriptor when its L2 distance is below ``max_distance`` and ``ratio`` times the next candidate's;
    each keypoint keeps its best point. ``map_desc``: the (M, D) array, or rows -> their
    descriptors (only the points with a keypoint nearby are asked). Returns (query indices, point
    indices)."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(keypoints) == 0 or len(points_world) == 0:
        return empty
    uv = camera.project(cam_from_world.transform(points_world))
    ok = np.isfinite(uv).all(axis=1) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= camera.width) \
        & (uv[:, 1] <= camera.height)
    pts = np.nonzero(ok)[0]
    if len(pts) == 0:
        return empty
    k = min(neighbours, len(keypoints))
    dist, idx = cKDTree(keypoints).query(uv[pts], k=k, distance_upper_bound=radius_px)
    dist, idx = dist.reshape(len(pts), k), idx.reshape(len(pts), k)
    near = np.isfinite(dist[:, 0])
    pts, dist, idx = pts[near], dist[near], idx[near]
    if len(pts) == 0:
        return empty
    valid = np.isfinite(dist)
    safe = np.where(valid, idx, 0)
    mdesc = np.asarray(map_desc(pts) if callable(map_desc) else map_desc[pts], np.float32)
    sim = np.einsum("mkd,md->mk", query_desc[safe], mdesc)
    d = np.where(valid, np.sqrt(np.maximum(2 - 2 * sim, 0)), np.inf)
    order = np.argsort(d, axis=1)
    d1 = np.take_along_axis(d, order[:, :1], 1)[:, 0]
    d2 = np.take_along_axis(d, order[:, 1:2], 1)[:, 0] if k > 1 else np.full(len(pts), np.inf)
    best = np.take_along_axis(safe, order[:, :1], 1)[:, 0]
    keep = np.isfinite(d1) & (d1 <= max_distance) & (d1 <= ratio * d2)
    q, p, s = best[keep], pts[keep], d1[keep]
    first = np.lexsort((s, q))                              # each keypoint: its closest point
    q, p = q[first], p[first]
    uniq = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    return q[uniq].astype(np.int64), p[uniq].astype(np.int64)
