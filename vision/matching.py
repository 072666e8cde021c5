"""Descriptor matching and two-view geometric verification (pure functions).

Matches are (M, 2) int64 arrays of keypoint indices (image 1, image 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from core.camera import Camera
from core.geometry import Rigid3
from vision.features import root_sift


@dataclass(frozen=True)
class MatchConfig:
    """Matching and verification settings."""

    #: Lowe ratio (on L2 distances of RootSIFT); 1.0 disables.
    ratio: float = 0.85
    #: keep only mutual nearest neighbours.
    mutual: bool = True
    #: epipolar (Sampson) threshold in pixels for verification.
    max_epipolar_error_px: float = 4.0
    #: pairs with fewer verified matches are dropped.
    min_inliers: int = 15
    #: RANSAC confidence for unknown poses.
    ransac_confidence: float = 0.9999


def normalise_descriptors(desc: np.ndarray) -> np.ndarray:
    """(N, D) uint8 SIFT -> RootSIFT; float descriptors -> L2-normalised float32."""
    if desc.dtype == np.uint8:
        return root_sift(desc)
    d = desc.astype(np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-8)


#: int8 quantisation of RootSIFT for candidate search: x320, rounded, saturating at 127. RootSIFT
#: entries stay below ~0.34 in practice (SIFT clips its histogram at 0.2; measured max 0.338 over
#: 43k keypoints of indoor and outdoor images), so only degenerate descriptors saturate. The int32
#: dot products rank candidates like the float scores up to ~0.001; every kept candidate is
#: rescored exactly afterwards.
INT8_SCALE = 320.0
#: the mutual check on int8 scores keeps a row whose score is within this of its column's best
#: (0.004: about the spacing of bf16 scores, whose ties the bf16 path lets through the same way);
#: the exact scores then keep one row per column.
INT8_MUTUAL_SLACK = round(0.004 * INT8_SCALE ** 2)


def quantize_int8(d: torch.Tensor) -> torch.Tensor:
    """(N, D) non-negative float descriptors (RootSIFT) -> (N, D) int8 (x INT8_SCALE, rounded half
    to even, saturated). In numpy: ~4x faster than the same torch ops on a query-sized table."""
    a = d.numpy() * np.float32(INT8_SCALE)
    np.rint(a, out=a)
    np.minimum(a, 127, out=a)
    return torch.from_numpy(a.astype(np.int8))


def sift_int8(sift: np.ndarray) -> torch.Tensor:
    """(N, 128) uint8 SIFT -> (N, 128) int8 RootSIFT (:func:`quantize_int8`) for candidate search."""
    return quantize_int8(torch.from_numpy(root_sift(sift)))


def _ranking_view(sim: torch.Tensor, non_negative: bool) -> torch.Tensor:
    """``sim`` itself, or for non-negative bf16 scores (dot products of RootSIFT descriptors) its
    int16 bit patterns: they order exactly like the values, and CPUs reduce them much faster."""
    return sim.view(torch.int16) if non_negative and sim.dtype == torch.bfloat16 else sim


def _numpy_reducible(view: torch.Tensor) -> bool:
    """Integer scores (or their int16 view) in contiguous CPU memory: numpy's vectorised
    reductions can work on them in place."""
    return view.device.type == "cpu" and view.dtype in (torch.int16, torch.int32) and view.is_contiguous()


def column_max(sim: torch.Tensor, non_negative: bool = False) -> torch.Tensor:
    """(N1, N2) similarities -> (N2,) column maxima (same dtype).

    A bf16 column reduction is slow on CPUs (~6x a row reduction); through the int16 view of
    non-negative scores it takes ~1/6 of the time, same result.
    """
    view = _ranking_view(sim, non_negative)
    if _numpy_reducible(view):
        return torch.from_numpy(view.numpy().max(axis=0)).view(sim.dtype)  # numpy: ~3x torch on int32
    return view.amax(dim=0).view(sim.dtype)


def row_top2(sim: torch.Tensor, non_negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N1, N2 >= 2) similarities -> column indices (N1,) of each row's best and second best.

    Non-negative bf16 or integer scores on the CPU go through numpy's vectorised argmax: the best
    column, then (with that column masked for a moment) the second; ~10x faster than
    ``topk(2)``. Among equal scores the pick may differ from ``topk``'s. ``sim`` is left as it was.
    """
    view = _ranking_view(sim, non_negative)
    if not _numpy_reducible(view):
        best, second = view.topk(2, dim=1).indices.unbind(1)
        return best, second
    a = view.numpy()
    rows = np.arange(len(a))
    best = a.argmax(axis=1)
    kept = a[rows, best]
    a[rows, best] = -1          # below every non-negative score
    try:
        second = a.argmax(axis=1)
    finally:
        a[rows, best] = kept
    return torch.from_numpy(best), torch.from_numpy(second)


@dataclass
class Candidates:
    """Each row's two best columns by candidate score, and per column the best score of any row.

    best, second: (N1,) int64 columns; best_score: (N1,) the candidate score of ``best``;
    column_max: (N2,) or None when not asked for. Scores: int32 (int8 GEMM) or bf16.
    """

    best: torch.Tensor
    second: torch.Tensor
    best_score: torch.Tensor
    column_max: torch.Tensor | None


#: bytes of candidate scores computed at a time: a block of rows stays in cache and in memory
#: the allocator reuses (one 2,048 x 5,000 int32 matrix is 40 MB; glibc maps allocations that
#: large fresh each time, and the page faults cost more than the GEMM: 15 vs 3 ms).
CANDIDATE_BLOCK_BYTES = 4 << 20


def search_candidates(a: torch.Tensor, b: torch.Tensor, non_negative: bool, column_max_too: bool = True,
                      block_bytes: int = CANDIDATE_BLOCK_BYTES) -> Candidates:
    """(N1, D), (N2 >= 2, D) unit-norm float descriptors -> :class:`Candidates`, computed over
    blocks of rows: the (N1, N2) score matrix never exists at once.

    Non-negative descriptors (RootSIFT) on the CPU are scored by an int8 GEMM with int32 output
    (~2x the bf16 GEMM on AVX512-VNNI: 4.9 vs 9.7 ms for 2,700 x 2,700 on one core); else bf16.
    Both are for ranking only; callers compute exact scores for the picked candidates.
    """
    if non_negative and a.device.type == "cpu":
        return search_int8_candidates(quantize_int8(a), quantize_int8(b), column_max_too, block_bytes)
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    return _search(lambda rows: a16[rows] @ b16.T, len(a), len(b), non_negative, column_max_too, block_bytes)


def search_int8_candidates(qa: torch.Tensor, qb: torch.Tensor, column_max_too: bool = True,
                           block_bytes: int = CANDIDATE_BLOCK_BYTES) -> Candidates:
    """:func:`search_candidates` for descriptors already quantised by :func:`quantize_int8`
    (N1, D), (N2 >= 2, D) int8 (CPU)."""
    return _search(lambda rows: int8_scores(qa[rows], qb), len(qa), len(qb), True, column_max_too, block_bytes)


def int8_scores(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """(N1, D), (N2, D) int8 -> (N1, N2) int32 dot products: torch's int8 GEMM, or where a torch
    build lacks it, a float32 GEMM (exact here: |sums| <= 128 * 127^2 < 2^24)."""
    if hasattr(torch, "_int_mm"):
        return torch._int_mm(qa, qb.T)
    return (qa.float() @ qb.float().T).to(torch.int32)


def _search(scores: Callable[[slice], torch.Tensor], n1: int, n2: int, non_negative: bool, column_max_too: bool,
            block_bytes: int) -> Candidates:
    if n1 == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return Candidates(empty, empty, torch.zeros(0), None)
    step = max(16, block_bytes // (4 * n2))
    bests, seconds, best_scores, col = [], [], [], None
    for r in range(0, n1, step):
        sim = scores(slice(r, r + step))
        best, second = row_top2(sim, non_negative)
        bests.append(best)
        seconds.append(second)
        best_scores.append(sim[torch.arange(len(sim), device=sim.device), best])
        if column_max_too:
            cm = column_max(sim, non_negative)
            col = cm if col is None else torch.maximum(col, cm)
    return Candidates(torch.cat(bests), torch.cat(seconds), torch.cat(best_scores), col)


def match_descriptors(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.85, mutual: bool = True,
                      non_negative: bool | None = None) -> np.ndarray:
    """Nearest-neighbour matching of unit-norm float32 descriptors (N1, D), (N2, D) -> (M, 2) int64.

    Runs on torch (multi-threaded reductions; the device follows the inputs when tensors are given).
    ``non_negative``: every descriptor entry is >= 0 (RootSIFT); None = check.
    """
    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), np.int64)
    a = torch.as_tensor(d1, dtype=torch.float32)
    b = torch.as_tensor(d2, dtype=torch.float32)
    if non_negative is None:
        non_negative = bool(a.min() >= 0) and bool(b.min() >= 0)
    # Candidates from a low-precision GEMM; exact float32 scores after.
    c = search_candidates(a, b, non_negative, column_max_too=mutual)
    return select_matches(c, lambda rows: a[rows], lambda rows: b[rows], ratio, mutual)


def match_sift_int8(q1: torch.Tensor, q2: torch.Tensor, sift1: np.ndarray, sift2: np.ndarray, ratio: float = 0.85,
                    mutual: bool = True) -> np.ndarray:
    """:func:`match_descriptors` of two images' RootSIFT, from inputs prepared once per image:
    q1, q2 (N, 128) int8 (:func:`quantize_int8` of the RootSIFT) for the candidate search and the
    (N, 128) uint8 SIFT, whose RootSIFT is computed for the picked rows only (exact scores).
    Same matches as ``match_descriptors(root_sift(sift1), root_sift(sift2), ..., non_negative=True)``.
    """
    if len(q1) < 2 or len(q2) < 2:
        return np.zeros((0, 2), np.int64)
    c = search_int8_candidates(q1, q2, column_max_too=mutual)
    return select_matches(c, lambda rows: torch.from_numpy(root_sift(sift1[rows.numpy()])),
                          lambda rows: torch.from_numpy(root_sift(sift2[rows.numpy()])), ratio, mutual)


def select_matches(c: Candidates, exact1: Callable[[torch.Tensor], torch.Tensor],
                   exact2: Callable[[torch.Tensor], torch.Tensor], ratio: float, mutual: bool) -> np.ndarray:
    """Mutual check on candidate scores, then the ratio test and one row per column on exact scores.

    exact1(rows) / exact2(cols) -> (len, D) float32 unit-norm descriptors of those rows of each side.
    """
    best, second = c.best, c.second
    rows = torch.arange(len(best), device=best.device)
    if mutual:
        # row i's best column j is mutual when no other row scores higher on j: compare with the
        # column maxima (amax over dim 0 is ~10x cheaper than max-with-indices there); rows tied
        # within the scores' precision on one column are resolved below by their exact score
        slack = INT8_MUTUAL_SLACK if c.best_score.dtype == torch.int32 else 0
        rows = torch.nonzero(c.best_score + slack >= c.column_max[best]).squeeze(1)
    # exact float32 scores (ratio test) only for the rows still in play
    jb, js = best[rows], second[rows]
    a_rows = exact1(rows)
    s_best = (a_rows * exact2(jb)).sum(dim=1)
    s_second = (a_rows * exact2(js)).sum(dim=1)
    dist_best = torch.sqrt(torch.clamp(2 - 2 * s_best, min=0))
    dist_second = torch.sqrt(torch.clamp(2 - 2 * s_second, min=0))
    keep = torch.nonzero(dist_best <= ratio * dist_second).squeeze(1)
    i1 = rows[keep].cpu().numpy()
    j1 = jb[keep].cpu().numpy()
    if mutual and len(i1):
        order = np.lexsort((-s_best[keep].cpu().numpy(), j1))   # per column, the best exact score first
        i1, j1 = i1[order], j1[order]
        first = np.r_[True, j1[1:] != j1[:-1]]
        i1, j1 = i1[first], j1[first]
        srt = np.argsort(i1)
        i1, j1 = i1[srt], j1[srt]
    return np.stack([i1, j1], axis=1).astype(np.int64)


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def essential_from_pose(cam2_from_cam1: Rigid3) -> np.ndarray:
    """(3, 3) E with x2^T E x1 = 0 for normalised coordinates."""
    return skew(cam2_from_cam1.translation) @ cam2_from_cam1.rotation


def sampson_error(E: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance (N,) of normalised correspondences (N, 2) under E (normalised units)."""
    h1 = np.c_[x1, np.ones(len(x1))]
    h2 = np.c_[x2, np.ones(len(x2))]
    Ex1 = h1 @ E.T
    Etx2 = h2 @ E
    num = np.sum(h2 * Ex1, axis=1) ** 2
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-18))


@dataclass
class VerifiedPair:
    """Verified matches of one image pair and their relative pose ``cam2_from_cam1`` (unit-free if estimated)."""

    matches: np.ndarray
    cam2_from_cam1: Rigid3
    E: np.ndarray


def verify_with_poses(kp1: np.ndarray, kp2: np.ndarray, matches: np.ndarray, cam1: Camera, cam2: Camera,
                      cam1_from_world: Rigid3, cam2_from_world: Rigid3, max_error_px: float) -> VerifiedPair:
    """Keep the matches consistent with the known epipolar geometry of two posed images."""
    cam2_from_cam1 = cam2_from_world * cam1_from_world.inverse()
    E = essential_from_pose(cam2_from_cam1)
    if len(matches) == 0:
        return VerifiedPair(matches, cam2_from_cam1, E)
    x1 = cam1.unproject(kp1[matches[:, 0]])
    x2 = cam2.unproject(kp2[matches[:, 1]])
    f = 0.5 * (np.mean(cam1.focals) + np.mean(cam2.focals))
    err = sampson_error(E, x1, x2) * f
    return VerifiedPair(matches[err <= max_error_px], cam2_from_cam1, E)


def verify_unknown_pose(kp1: np.ndarray, kp2: np.ndarray, matches: np.ndarray, cam1: Camera, cam2: Camera,
                        max_error_px: float, confidence: float = 0.9999) -> VerifiedPair | None:
    """Estimate E with OpenCV USAC-MAGSAC on undistorted normalised points; None when it fails."""
    if len(matches) < 8:
        return None
    x1 = cam1.unproject(kp1[matches[:, 0]])
    x2 = cam2.unproject(kp2[matches[:, 1]])
    f = 0.5 * (np.mean(cam1.focals) + np.mean(cam2.focals))
    E, mask = cv2.findEssentialMat(x1, x2, np.eye(3), method=cv2.USAC_MAGSAC, prob=confidence,
                                   threshold=max_error_px / f)
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    _, R, t, pose_mask = cv2.recoverPose(E, x1[inl], x2[inl], np.eye(3))
    keep = np.nonzero(inl)[0]
    cam2_from_cam1 = Rigid3(R, t.ravel())
    return VerifiedPair(matches[keep], cam2_from_cam1, essential_from_pose(cam2_from_cam1))
