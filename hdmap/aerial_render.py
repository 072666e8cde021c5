"""The image side of aerial fusion: which map points are ground, the map rendered top-down at the
orthophoto's grid, and patch-by-patch NCC matching of that render against the orthophoto."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def ground_mask(enu: np.ndarray, cell_m: float = 2.0, tolerance_m: float = 0.3, percentile: float = 10.0) -> np.ndarray:
    """(N, 3) ENU points -> (N,) bool: points within tolerance_m of the local ground, the
    percentile-th lowest height among the points of the surrounding 3 x 3 cells of cell_m."""
    p = np.asarray(enu, np.float64)
    cells = np.floor(p[:, :2] / cell_m).astype(np.int64)
    keys, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    index = {tuple(k): i for i, k in enumerate(keys)}
    members = [[] for _ in keys]
    for i, c in enumerate(inverse):
        members[c].append(i)
    members = [np.array(m) for m in members]
    level = np.empty(len(keys))
    for i, k in enumerate(keys):
        near = [members[index[(k[0] + dx, k[1] + dy)]] for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                if (k[0] + dx, k[1] + dy) in index]
        level[i] = np.percentile(p[np.concatenate(near), 2], percentile)
    return np.abs(p[:, 2] - level[inverse]) <= tolerance_m


def render_topdown(px: np.ndarray, values: np.ndarray, shape: tuple[int, int], splat_px: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Splat (N,) values at (N, 2) pixel positions (col, row; GDAL corner convention) into an
    (H, W) float32 image: each point covers (2 splat_px + 1)^2 pixels, overlaps average.
    Returns (image, mask (H, W) bool of covered pixels)."""
    H, W = shape
    c = np.floor(px[:, 0]).astype(np.int64)
    r = np.floor(px[:, 1]).astype(np.int64)
    acc = np.zeros(H * W, np.float64)
    cnt = np.zeros(H * W, np.float64)
    v = np.asarray(values, np.float64)
    for dr in range(-splat_px, splat_px + 1):
        for dc in range(-splat_px, splat_px + 1):
            rr, cc = r + dr, c + dc
            ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            idx = rr[ok] * W + cc[ok]
            np.add.at(acc, idx, v[ok])
            np.add.at(cnt, idx, 1.0)
    mask = cnt > 0
    img = np.where(mask, acc / np.maximum(cnt, 1), 0.0).astype(np.float32)
    return img.reshape(H, W), mask.reshape(H, W)


@dataclass(frozen=True)
class PatchMatches:
    """Patch correspondences: src (M, 2) patch centres in the rendering, dst (M, 2) their matched
    positions in the orthophoto (pixels, col / row), score (M,) NCC peak, margin (M,) peak minus
    the best score more than 3 px away."""

    src: np.ndarray
    dst: np.ndarray
    score: np.ndarray
    margin: np.ndarray
    n_patches: int


def match_patches(render: np.ndarray, rmask: np.ndarray, ortho: np.ndarray, omask: np.ndarray, patch_px: int,
                  search_px: int, min_fill: float, min_score: float, min_margin: float) -> PatchMatches:
    """Masked NCC (TM_CCOEFF_NORMED) of every half-overlapping patch of the rendering that is at
    least min_fill covered, within +-search_px of its own position in the orthophoto."""
    H, W = render.shape
    src, dst, score, margin = [], [], [], []
    n = 0
    step = max(1, patch_px // 2)
    for r0 in range(0, H - patch_px + 1, step):
        for c0 in range(0, W - patch_px + 1, step):
            m = rmask[r0:r0 + patch_px, c0:c0 + patch_px]
            if m.mean() < min_fill:
                continue
            n += 1
            ra, rb = max(0, r0 - search_px), min(H, r0 + patch_px + search_px)
            ca, cb = max(0, c0 - search_px), min(W, c0 + patch_px + search_px)
            if omask[ra:rb, ca:cb].mean() < 0.5:
                continue
            tpl = render[r0:r0 + patch_px, c0:c0 + patch_px]
            res = cv2.matchTemplate(ortho[ra:rb, ca:cb], tpl, cv2.TM_CCOEFF_NORMED, mask=m.astype(np.uint8))
            res = np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)
            i, j = np.unravel_index(int(np.argmax(res)), res.shape)
            best = float(res[i, j])
            if best < min_score or i in (0, res.shape[0] - 1) or j in (0, res.shape[1] - 1):
                continue  # weak, or on the window's edge (the true peak may lie outside)
            far = res.copy()
            far[max(0, i - 3):i + 4, max(0, j - 3):j + 4] = -1.0
            second = float(far.max()) if far.size > 49 else -1.0
            if best - second < min_margin:
                continue
            dx = _parabola(res[i, j - 1], best, res[i, j + 1])
            dy = _parabola(res[i - 1, j], best, res[i + 1, j])
            centre = np.array([c0 + patch_px / 2, r0 + patch_px / 2])
            src.append(centre)
            dst.append(np.array([ca + j + dx + patch_px / 2, ra + i + dy + patch_px / 2]))
            score.append(best)
            margin.append(best - second)
    z = np.zeros((0, 2))
    return PatchMatches(np.array(src) if src else z, np.array(dst) if dst else z, np.array(score), np.array(margin), n)


def _parabola(a: float, b: float, c: float) -> float:
    d = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / d, -0.5, 0.5)) if d < 0 else 0.0


# ---- fusion --------------------------------------------------------------------------------------
