"""Image-pair selection: by pose proximity and view overlap (posed), exhaustive or by retrieval (unposed).

Pairs are lists of (i, j) index tuples with i < j into the image list.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from core.camera import Camera
from core.geometry import Rigid3


@dataclass(frozen=True)
class PosePairConfig:
    """Pair selection for posed images."""

    #: candidate neighbours by camera-centre distance (before the overlap test).
    max_candidates: int = 40
    #: ignore candidates farther than this (metres).
    max_distance_m: float = 8.0
    #: keep at most this many partners per image. Measured (`revisit` redkitchen, 100-image build
    #: on 2 cores, overlap ranking only): 10 -> 637 pairs, 15.2 s, 0.58 cm median; 8 -> 532
    #: pairs, 13.7 s, 0.62 cm; 5 -> 342 pairs, 10.9 s, 0.72 cm.
    pairs_per_image: int = 8
    #: of those, this many are spread over viewpoints instead of taken by overlap: farthest-point
    #: sampling of camera centres among the candidates that overlap at least
    #: ``spread_min_overlap``, from the other sub-maps of the best-overlap graph first. Ranking by
    #: overlap alone picks the neighbouring frames of the same pass, so a map of several passes
    #: through a place becomes one sub-map per pass (redkitchen `revisit`, 8 by overlap: 0 of
    #: 8,869 points seen from both passes; 4 + 4 spread: 1,221 of 8,378). Measured there (400 px
    #: first, the 100 frames of the query pass): 0.99 -> 0.71 cm median, 80 -> 85 % within 2 cm /
    #: 1 deg; same build time (0 = overlap only).
    spread_pairs_per_image: int = 4
    spread_min_overlap: float = 0.5
    #: minimum fraction of image i's frustum samples visible in image j.
    min_overlap: float = 0.25
    #: depths (metres) at which the frustum of i is sampled.
    sample_depths: tuple[float, ...] = (0.8, 1.5, 3.0)
    #: a pair also needs this much baseline (metres): near-duplicate views add matches to match
    #: but little parallax to triangulate (0 = any).
    min_baseline_m: float = 0.0


def frustum_overlap(cam_i: Camera, cam_from_world_i: Rigid3, cams_j: list[Camera],
                    cam_from_world_j: list[Rigid3], depths: tuple[float, ...], grid: int = 5) -> np.ndarray:
    """Fraction (J,) of grid x grid x len(depths) samples of image i's frustum that image j sees."""
    u = (np.arange(grid) + 0.5) / grid
    px = np.stack(np.meshgrid(u * cam_i.width, u * cam_i.height), -1).reshape(-1, 2)
    rays = np.c_[cam_i.unproject(px), np.ones(len(px))]
    pts_cam = np.concatenate([rays * d for d in depths])
    pts_world = cam_from_world_i.inverse().transform(pts_cam)
    out = np.zeros(len(cams_j))
    groups: dict[Camera, list[int]] = {}
    for k, cam_j in enumerate(cams_j):
        groups.setdefault(cam_j, []).append(k)
    for cam_j, ks in groups.items():  # one projection call per distinct camera
        R = np.stack([cam_from_world_j[k].rotation for k in ks])          # (J, 3, 3)
        t = np.stack([cam_from_world_j[k].translation for k in ks])       # (J, 3)
        pc = np.einsum("jab,sb->jsa", R, pts_world) + t[:, None, :]      # (J, S, 3) in camera j
        front = pc[..., 2] > 0.05
        owner = np.nonzero(front)[0]
        uv = cam_j.project(pc[front])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam_j.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam_j.height)
        out[ks] = np.bincount(owner[inside], minlength=len(ks)) / len(pts_world)
    return out


def pairs_from_poses(cameras: list[Camera], cams_from_world: list[Rigid3],
                     cfg: PosePairConfig = PosePairConfig()) -> list[tuple[int, int]]:
    """Pairs of posed images that are close and whose view frusta overlap: per image the best
    overlaps, plus partners spread over viewpoints (:func:`spread_out`), which link passes."""
    n = len(cams_from_world)
    if n < 2:
        return []
    centres = np.array([T.centre for T in cams_from_world])
    tree = cKDTree(centres)
    k = min(cfg.max_candidates + 1, n)
    dist, idx = tree.query(centres, k=k)
    dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    ranked_of: dict[int, list[tuple[float, int]]] = {}
    for i in range(n):
        cand = [j for d, j in zip(dist[i], idx[i])
                if j != i and cfg.min_baseline_m <= d <= cfg.max_distance_m and j < n]
        if not cand:
            continue
        ov = frustum_overlap(cameras[i], cams_from_world[i], [cameras[j] for j in cand],
                             [cams_from_world[j] for j in cand], cfg.sample_depths)
        ranked_of[i] = sorted(((o, j) for o, j in zip(ov, cand) if o >= cfg.min_overlap), reverse=True)
    n_spread = min(cfg.spread_pairs_per_image, cfg.pairs_per_image)
    n_best = cfg.pairs_per_image - n_spread
    best_of = {i: [j for _, j in ranked[:n_best]] for i, ranked in ranked_of.items()}
    pairs = {(min(i, j), max(i, j)) for i, js in best_of.items() for j in js}
    if n_spread:
        # sub-maps the best overlaps alone leave apart (e.g. one per pass through a place)
        component = pair_components(n, sorted(pairs))
        for i, ranked in ranked_of.items():
            rest = [j for o, j in ranked[n_best:] if o >= cfg.spread_min_overlap]
            other = [j for j in rest if component[j] != component[i]]
            same = [j for j in rest if component[j] == component[i]]
            linked = spread_out(centres, i, best_of[i], other, n_spread)
            for j in linked + spread_out(centres, i, best_of[i] + linked, same, n_spread - len(linked)):
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def pair_components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(n,) connected-component label of each image in the graph of ``pairs``."""
    if not pairs:
        return np.arange(n)
    ij = np.asarray(pairs)
    graph = coo_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def spread_out(centres: np.ndarray, i: int, picked: list[int], candidates: list[int], k: int) -> list[int]:
    """Up to k of ``candidates`` by farthest-point sampling of their (N, 3) world camera
    ``centres``, each as far as possible from camera i and the cameras already picked."""
    if k <= 0 or not candidates:
        return []
    cand = np.asarray(candidates)
    pts = centres[cand]                                                                    # (C, 3)
    d = np.linalg.norm(pts[:, None] - centres[[i, *picked]][None], axis=2).min(axis=1)   # (C,)
    out: list[int] = []
    for _ in range(min(k, len(cand))):
        b = int(np.argmax(d))
        out.append(int(cand[b]))
        d = np.minimum(d, np.linalg.norm(pts - pts[b], axis=1))
        d[b] = -1.0
    return out


def pairs_exhaustive(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def pairs_from_similarity(similarity: np.ndarray, k: int, sequential_window: int = 0) -> list[tuple[int, int]]:
    """Top-k most similar partners per image from an (N, N) global-descriptor similarity,
    plus neighbours within ``sequential_window`` in the input order (video-like captures)."""
    n = len(similarity)
    sim = similarity.copy()
    np.fill_diagonal(sim, -np.inf)
    out: set[tuple[int, int]] = set()
    kk = min(k, n - 1)
    if kk > 0:
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        for i in range(n):
            for j in top[i]:
                out.add((min(i, int(j)), max(i, int(j))))
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + sequential_window)):
            out.add((i, j))
    return sorted(out)
