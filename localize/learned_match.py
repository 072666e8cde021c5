"""2D-3D correspondences for learned feature sets (ALIKED, DISK), on the map's device.

Two matchers, both returning ``(query keypoint indices (M,), point rows (M,))`` with each 3D point
used once:

* :func:`nn_points`: the query's descriptors against one observation per 3D point of the retrieved
  images, by mutual nearest neighbour on cosine similarity with a ratio test against the best
  *other point* (one GEMM on the device: the fast option).
* :func:`lightglue_points`: LightGlue between the query and each retrieved map image (its
  observations: keypoints, descriptors, image size), lifted to 2D-3D through the map's tracks; a
  query keypoint matched in several images keeps its most probable match, a point its most
  probable query keypoint.
"""
from __future__ import annotations

import numpy as np
import torch

from vision.features import Features


def nn_points(query_desc: torch.Tensor, map_desc: torch.Tensor, obs_point: np.ndarray, ratio: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """query_desc: (Q, D) unit-norm descriptors; map_desc: (M, D) unit-norm descriptors of M
    observations (one per point, on the same device and dtype), obs_point: (M,) their point rows."""
    if len(query_desc) < 2 or len(map_desc) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with torch.inference_mode():
        sim = query_desc @ map_desc.T                                   # (Q, M) cosine
        top = sim.topk(2, dim=1)
        best_q_of_obs = sim.argmax(dim=0)                               # (M,) mutual check
        s1, s2 = top.values[:, 0].float(), top.values[:, 1].float()
        j = top.indices[:, 0]
        d1 = torch.sqrt(torch.clamp(2 - 2 * s1, min=0))
        d2 = torch.sqrt(torch.clamp(2 - 2 * s2, min=0))
        q = torch.arange(len(query_desc), device=sim.device)
        keep = (d1 <= ratio * d2) & (best_q_of_obs[j] == q)
        qi, oi = q[keep].cpu().numpy(), j[keep].cpu().numpy()
    return qi.astype(np.int64), obs_point[oi].astype(np.int64)


def lightglue_points(matcher, query: Features, query_size: tuple[int, int],
                     images: list[tuple[Features, tuple[int, int], np.ndarray]]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """matcher: a :class:`vision.learned.LightGlueMatcher`; images: per retrieved map image, its
    observations as Features (COLMAP pixels), its size (W, H) and their point rows (n,)."""
    qs, ps, scores = [], [], []
    for feats, size, points in images:
        if len(feats) < 2:
            continue
        m, s = matcher.match(query, query_size, feats, size)
        if len(m):
            qs.append(m[:, 0])
            ps.append(points[m[:, 1]])
            scores.append(s)
    if not qs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return unique_best(np.concatenate(qs), np.concatenate(ps), np.concatenate(scores))


def unique_best(q: np.ndarray, p: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (query, point) matches with scores -> each query keypoint and each point at most
    once, the highest score winning (query side first, then point side)."""
    order = np.lexsort((-score, q))
    q, p, score = q[order], p[order], score[order]
    first = np.r_[True, q[1:] != q[:-1]]
    q, p, score = q[first], p[first], score[first]
    order = np.lexsort((-score, p))
    q, p = q[order], p[order]
    first = np.r_[True, p[1:] != p[:-1]]
    return q[first].astype(np.int64), p[first].astype(np.int64)
