"""Partitioned reconstruction, part 1: splitting a map into overlapping parts (pure functions).

Posed maps are cut into spatial tiles of the camera centres (an x / y grid, or a balanced k-d
split) grown by an overlap margin; each tile is triangulated on its own with the known poses.
Unposed maps split their view graph (verified pairs weighted by their match counts) into
clusters by recursive normalised cuts, or by a k-d split of GPS positions when there are some;
each cluster then borrows the images of each adjacent cluster that are most strongly connected
to it, so that neighbouring clusters share images to be aligned on. COLMAP's hierarchical
mapper (``SceneClustering``) is the model: normalised cuts plus an image overlap.

Parts are (K,) int64 arrays of image indices into the record list, sorted; pairs are (i, j)
tuples with i < j. Merging the parts' models: :mod:`mapping.partition_merge` (posed tiles, track
merging) and :mod:`mapping.partition_sfm` (unposed clusters).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix, diags
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh


@dataclass(frozen=True)
class PartitionConfig:
    """How a map is split into parts and how the parts are merged back."""

    #: posed maps: side of a square x / y tile of camera centres (metres) ...
    tile_m: float = 8.0
    #: ... and the margin (metres) each tile grows by on every side: images within it belong to
    #: both tiles, so pairs across a tile border are triangulated in at least one of them.
    overlap_m: float = 1.5
    #: unposed maps: at most this many images in a cluster's core (before it borrows from its
    #: neighbours).
    max_cluster_images: int = 60
    #: images a cluster borrows from each adjacent cluster (adjacent clusters then share about
    #: twice this many: each borrows from the other).
    overlap_images: int = 4
    #: two clusters are adjacent when the verified pairs between their cores hold at least this
    #: many matches in all.
    min_link_matches: int = 100
    #: alignment of an unposed cluster onto the merged frame (LO-RANSAC similarity on the centres
    #: of shared images and the 3D points of tracks through them): inlier threshold as a fraction of
    #: the median camera-to-point distance in the shared images (the scene depth; the models'
    #: scales are arbitrary).
    align_max_error: float = 0.02
    #: a cluster is refused (VlocError) with fewer shared registered images than this ...
    min_shared_images: int = 3
    #: ... or when, after alignment, the median camera-centre residual of its shared images exceeds
    #: this fraction of the scene depth ...
    max_centre_residual: float = 0.03
    #: ... or their median rotation residual exceeds this (degrees) ...
    #: (measured on the generated loops, clusters of 12-13 and 34-57 images: centre residuals
    #: 0.1-0.9 % of the depth, rotations 0.05-0.56 deg, 91-99 % inliers; the bars catch wrong
    #: models, not the few-mm disagreement the global adjustment removes)
    max_rotation_residual_deg: float = 2.0
    #: ... or fewer than this fraction of the correspondences are RANSAC inliers.
    min_inlier_ratio: float = 0.5
    #: merging: an observation of a unified track whose reprojection error (pixels) under the
    #: chosen pose exceeds this is dropped before bundle adjustment (unposed merges start from
    #: aligned, not yet adjusted, models; posed merges use ``ReconstructionConfig.max_reproj_error_px``).
    merge_max_reproj_error_px: float = 8.0
    #: unposed merges: rounds of re-triangulation (every verified pair, poses held) + global bundle
    #: adjustment after the first adjustment (measured, unposed 200-image loop in 6 clusters: median
    #: centre error 10.8 mm after the first adjustment, 5.8 / 1.40 / 1.40 / 1.41 mm after rounds 1-4;
    #: one SfM of the whole loop 1.35 mm; ~45 s a round).
    merge_rounds: int = 3
    #: parts reconstructed at once in this process (threads: pycolmap releases the GIL).
    workers: int = 2


# ---- posed maps: spatial tiles ----------------------------------------------------------------

def partition_posed(centres: np.ndarray, tile_m: float, overlap_m: float) -> list[np.ndarray]:
    """Spatial tiles of posed images: an x / y grid of ``tile_m`` squares over the camera
    centres, each grown by ``overlap_m`` on every side.

    centres: (N, 3) camera centres in the world frame (``cam_from_world.centre``), metres.
    Returns the non-empty tiles as sorted (K,) index arrays; every image is in at least one (its
    own square's), images within ``overlap_m`` of a border in several. A tile whose images are
    all in another tile is dropped. Pairs whose images share a tile are triangulated there
    (:func:`assign_pairs` places the others).
    """
    xy = np.asarray(centres, np.float64).reshape(-1, 3)[:, :2]
    if len(xy) == 0:
        return []
    if tile_m <= 0 or overlap_m < 0:
        raise ValueError(f"tile_m must be > 0 and overlap_m >= 0, got {tile_m}, {overlap_m}")
    lo = xy.min(0)
    n = np.maximum(1, np.ceil((xy.max(0) - lo) / tile_m).astype(int))
    tiles = []
    for ix in range(n[0]):
        for iy in range(n[1]):
            a = lo + np.array([ix, iy]) * tile_m - overlap_m
            b = lo + np.array([ix + 1, iy + 1]) * tile_m + overlap_m
            tiles.append(np.flatnonzero(np.all((xy >= a) & (xy <= b), axis=1)))
    return _drop_contained(tiles)


def partition_balanced(centres: np.ndarray, max_images: int, overlap_m: float) -> list[np.ndarray]:
    """Balanced spatial parts: a k-d split of the (N, 3) world camera centres (median cuts
    across the longer x / y side) until each leaf holds at most ``max_images``, each leaf's box
    then grown by ``overlap_m`` metres. Every image is in at least one part."""
    xy = np.asarray(centres, np.float64).reshape(-1, 3)[:, :2]
    parts = []
    for leaf in kd_split(xy, max_images):
        a, b = xy[leaf].min(0) - overlap_m, xy[leaf].max(0) + overlap_m
        parts.append(np.union1d(leaf, np.flatnonzero(np.all((xy >= a) & (xy <= b), axis=1))))
    return _drop_contained(parts)


def kd_split(points: np.ndarray, max_size: int) -> list[np.ndarray]:
    """Disjoint leaves (sorted index arrays) of a k-d split of (N, D) points: each node is cut at
    the median of its widest coordinate until it holds at most ``max_size`` points."""
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    pts = np.asarray(points, np.float64)
    out, todo = [], [np.arange(len(pts))]
    while todo:
        idx = todo.pop()
        if len(idx) <= max_size:
            out.append(np.sort(idx))
            continue
        axis = int(np.argmax(np.ptp(pts[idx], axis=0)))
        order = idx[np.argsort(pts[idx, axis], kind="stable")]
        todo += [order[: len(order) // 2], order[len(order) // 2:]]
    return sorted(out, key=lambda a: int(a[0]))


def assign_pairs(parts: list[np.ndarray], pairs: list[tuple[int, int]]
                 ) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
    """Place every pair in a part: a pair whose two images share a part goes to every part that
    holds both; a pair that shares none (a long pair across tiles) pulls its second image into a
    part of its first, the one holding most of the first image's partners, so no verified pair is
    lost. Returns the (possibly grown) parts and each part's pairs."""
    parts = [np.asarray(p, np.int64) for p in parts]
    members = [set(p.tolist()) for p in parts]
    parts_of: dict[int, list[int]] = {}
    for k, m in enumerate(members):
        for i in m:
            parts_of.setdefault(i, []).append(k)
    partners: dict[int, set[int]] = {}
    for i, j in pairs:
        partners.setdefault(i, set()).add(j)
        partners.setdefault(j, set()).add(i)
    for i, j in pairs:
        if set(parts_of.get(i, ())) & set(parts_of.get(j, ())):
            continue
        if i not in parts_of and j not in parts_of:
            raise ValueError(f"pair ({i}, {j}) names images that are in no part")
        a, b = (i, j) if i in parts_of else (j, i)
        k = max(parts_of[a], key=lambda k: len(members[k] & partners[a]))
        members[k].add(b)
        parts_of.setdefault(b, []).append(k)
    parts = [np.array(sorted(m), np.int64) for m in members]
    per_part = [[(i, j) for i, j in pairs if i in m and j in m] for m in members]
    return parts, per_part


def _drop_contained(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Non-empty parts that are not a subset of another kept part (duplicates kept once)."""
    parts = sorted((np.sort(np.asarray(p, np.int64)) for p in parts if len(p)), key=len, reverse=True)
    kept: list[np.ndarray] = []
    for p in parts:
        if not any(np.isin(p, q).all() for q in kept):
            kept.append(p)
    return sorted(kept, key=lambda a: int(a[0]))


# ---- unposed maps: view-graph clusters --------------------------------------------------------

def view_graph(n_images: int, matches: dict[tuple[int, int], int]) -> csr_matrix:
    """(n_images, n_images) symmetric sparse graph whose weights are the verified match counts."""
    if not matches:
        return csr_matrix((n_images, n_images))
    ij = np.array(list(matches.keys()), np.int64).reshape(-1, 2)
    w = np.array(list(matches.values()), np.float64)
    g = coo_matrix((np.r_[w, w], (np.r_[ij[:, 0], ij[:, 1]], np.r_[ij[:, 1], ij[:, 0]])),
                   shape=(n_images, n_images))
    return g.tocsr()


def partition_view_graph(n_images: int, matches: dict[tuple[int, int], int], max_size: int, overlap: int,
                         positions: np.ndarray | None = None, min_link_matches: int = 100) -> list[np.ndarray]:
    """Overlapping clusters of an unposed map's view graph.

    matches: verified pairs (i, j) -> number of verified matches. Cores: disjoint clusters of at
    most ``max_size`` images, by recursive normalised-cut bisection of the graph (spectral: the
    Fiedler vector of the normalised Laplacian, cut where the normalised cut is least within
    the middle 40 % of its order), or, with ``positions`` ((N, 3) metres, e.g. GPS in a local
    ENU frame; NaN rows for images without), by a k-d split of the positions. Each cluster is its
    core plus, for every other core joined to it by at least ``min_link_matches`` matches, the
    ``overlap`` images of that core most strongly connected to it (grown greedily, so the borrowed
    images form a band along the border). Returns sorted (K,) index arrays, one per cluster.
    """
    if max_size < 2 * overlap + 2:
        raise ValueError(f"max_size {max_size} too small for an overlap of {overlap} images per side")
    graph = view_graph(n_images, matches)
    if positions is not None:
        pos = np.asarray(positions, np.float64).reshape(n_images, -1)
        known = np.flatnonzero(np.all(np.isfinite(pos), axis=1))
        cores = [known[leaf] for leaf in kd_split(pos[known], max_size)]
        unknown = np.setdiff1d(np.arange(n_images), known)
        cores = _attach(graph, cores, unknown) if len(unknown) else cores
    else:
        cores = normalized_cut_clusters(graph, max_size)
    return grow_clusters(graph, cores, overlap, min_link_matches)


def normalized_cut_clusters(graph: csr_matrix, max_size: int) -> list[np.ndarray]:
    """Disjoint clusters (sorted index arrays) of at most ``max_size`` nodes covering a weighted
    (N, N) graph: connected components, each bisected recursively by normalised cuts."""
    n_comp, label = connected_components(graph, directed=False)
    todo = [np.flatnonzero(label == c) for c in range(n_comp)]
    out = []
    while todo:
        idx = todo.pop()
        if len(idx) <= max_size:
            out.append(np.sort(idx))
            continue
        a, b = _bisect(graph[idx][:, idx], max_size)
        todo += [idx[a], idx[b]]
    return sorted(out, key=lambda a: int(a[0]))


def _bisect(sub: csr_matrix, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two index sets splitting a connected-or-not (n, n) weighted graph by the least normalised
    cut along its Fiedler vector, each side between 30 % and 70 % of the nodes."""
    n = sub.shape[0]
    deg = np.asarray(sub.sum(axis=1)).ravel()
    n_comp, label = connected_components(sub, directed=False)
    if n_comp > 1:  # whole components to one side, largest first, until half
        order = np.concatenate([np.flatnonzero(label == c) for c in np.argsort(-np.bincount(label))])
    else:
        d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
        norm_adj = diags(d) @ sub @ diags(d)
        if n <= 400:
            _, vec = np.linalg.eigh(norm_adj.toarray())
            fiedler = vec[:, -2]
        else:
            _, vec = eigsh(norm_adj, k=2, which="LA", v0=np.sqrt(deg + 1.0))
            fiedler = vec[:, 0]
        order = np.argsort(fiedler * d, kind="stable")
    # cut(prefix of k nodes) for every k: each node added removes its links to the prefix and adds
    # its links to the rest
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)
    edges = sub.tocoo()
    later = pos[edges.row] > pos[edges.col]
    inner = np.bincount(pos[edges.row[later]], weights=edges.data[later], minlength=n)  # links to nodes before
    cut = np.cumsum(deg[order] - 2 * inner)[:-1]              # cut after 1 .. n-1 nodes
    vol = np.cumsum(deg[order])[:-1]
    total = deg.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ncut = cut / np.maximum(vol, 1e-12) + cut / np.maximum(total - vol, 1e-12)
    k = np.arange(1, n)
    ok = (k >= 0.3 * n) & (k <= 0.7 * n)
    best = int(k[ok][np.argmin(ncut[ok])]) if ok.any() else n // 2
    return order[:best], order[best:]


def _attach(graph: csr_matrix, cores: list[np.ndarray], extra: np.ndarray) -> list[np.ndarray]:
    """Give each image of ``extra`` (no position) to the core it has the most matches with (the
    first core when it has none)."""
    sets = [list(c) for c in cores]
    owner = np.full(graph.shape[0], -1)
    for k, c in enumerate(cores):
        owner[c] = k
    for i in extra:
        row = graph.getrow(int(i))
        w = np.bincount(owner[row.indices][owner[row.indices] >= 0],
                        weights=row.data[owner[row.indices] >= 0], minlength=len(cores))
        sets[int(np.argmax(w)) if w.any() else 0].append(int(i))
    return [np.array(sorted(s), np.int64) for s in sets]


def grow_clusters(graph: csr_matrix, cores: list[np.ndarray], overlap: int, min_link_matches: int
                  ) -> list[np.ndarray]:
    """Each core plus ``overlap`` images of every adjacent core (joined by >= ``min_link_matches``
    matches), picked one at a time as the image with most matches to the growing cluster."""
    if overlap <= 0 or len(cores) < 2:
        return [np.sort(c) for c in cores]
    owner = np.full(graph.shape[0], -1)
    for k, c in enumerate(cores):
        owner[c] = k
    out = []
    for k, core in enumerate(cores):
        links = np.asarray(graph[core].sum(axis=0)).ravel()          # matches of each image to the core
        per_core = np.bincount(owner[owner >= 0], weights=links[owner >= 0], minlength=len(cores))
        cluster = set(core.tolist())
        for other in np.flatnonzero(per_core >= min_link_matches):
            if other == k:
                continue
            cand = cores[other]
            score = links[cand].astype(np.float64)
            for _ in range(min(overlap, len(cand))):
                b = int(np.argmax(score))
                if score[b] <= 0:
                    break
                cluster.add(int(cand[b]))
                score += np.asarray(graph[int(cand[b])][:, cand].todense()).ravel()
                score[b] = -np.inf
        out.append(np.array(sorted(cluster), np.int64))
    return out


def cluster_overlaps(parts: list[np.ndarray]) -> np.ndarray:
    """(P, P) number of images each two parts share (diagonal: part sizes)."""
    m = np.zeros((len(parts), max((int(p.max()) + 1 for p in parts if len(p)), default=0)), bool)
    for k, p in enumerate(parts):
        m[k, p] = True
    m = m.astype(np.int64)
    return m @ m.T
