"""Localization accuracy from per-query pose errors: medians and shares within thresholds.

Shared by every benchmark and by bag replay, so one definition of "within 2 cm / 1 deg" holds
everywhere. Pure functions over numpy arrays.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from core.geometry import Rigid3, estimate_sim3, pose_error

#: (JSON key, max translation error in metres, max rotation error in degrees).
THRESHOLDS: tuple[tuple[str, float, float], ...] = (
    ("pct_2cm_1deg", 0.02, 1.0),
    ("pct_5cm_5deg", 0.05, 5.0),
    ("pct_10cm_1deg", 0.10, 1.0),
    ("pct_15cm_5deg", 0.15, 5.0),
    ("pct_25cm_2deg", 0.25, 2.0),
    ("pct_1m_5deg", 1.00, 5.0),
)


def query_errors(estimates: Sequence[Rigid3 | None], accepted: Sequence[bool],
                 ground_truth: Sequence[Rigid3]) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (translation error m, rotation error deg); +inf for rejected queries or missing poses."""
    t = np.full(len(ground_truth), np.inf)
    r = np.full(len(ground_truth), np.inf)
    for i, (est, ok, gt) in enumerate(zip(estimates, accepted, ground_truth)):
        if ok and est is not None:
            t[i], r[i] = pose_error(est, gt)
    return t, r


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def accuracy_metrics(t_err_m: Sequence[float], r_err_deg: Sequence[float],
                     rejected: int | None = None) -> dict:
    """Accuracy from per-query errors (inf = rejected / miss).

    Returns n_queries, rejected (the given count, else the number of infinite errors), medians over
    ALL queries (cm, deg; None when infinite, i.e. more than half missed, or no queries) and the
    percentage of queries within each of :data:`THRESHOLDS` (None with no queries).
    """
    t = np.asarray(t_err_m, np.float64).reshape(-1)
    r = np.asarray(r_err_deg, np.float64).reshape(-1)
    if t.shape != r.shape:
        raise ValueError("translation and rotation error lists differ in length")
    n = len(t)
    miss = ~(np.isfinite(t) & np.isfinite(r))
    out = {"n_queries": n, "rejected": int(miss.sum()) if rejected is None else int(rejected)}
    if n == 0:
        out.update(median_t_cm=None, median_r_deg=None, **{k: None for k, _, _ in THRESHOLDS})
        return out
    t = np.where(miss, np.inf, t)
    r = np.where(miss, np.inf, r)
    out["median_t_cm"] = _finite_or_none(float(np.median(t)) * 100.0)
    out["median_r_deg"] = _finite_or_none(float(np.median(r)))
    for key, tm, rd in THRESHOLDS:
        out[key] = 100.0 * float(np.count_nonzero((t <= tm) & (r <= rd))) / n
    return out


def aligned_centre_errors(estimated: Mapping[str, Sequence[float]], truth: Mapping[str, Sequence[float]]
                          ) -> np.ndarray:
    """(n,) distances (m) from estimated camera centres (image name -> (3,) world frame, any scale)
    to the true ones after one similarity (:func:`core.geometry.estimate_sim3`) maps the estimates
    onto the truth; the n names in both, sorted."""
    names = sorted(set(estimated) & set(truth))
    a = np.array([estimated[n] for n in names], np.float64).reshape(-1, 3)
    b = np.array([truth[n] for n in names], np.float64).reshape(-1, 3)
    return np.linalg.norm(estimate_sim3(a, b).transform(a) - b, axis=1)
