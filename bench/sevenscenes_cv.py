"""`vloc bench 7scenes --protocol cv`: cross-validated localization over blocks of frames.

The frames present are cut into blocks of ``block`` consecutive frame numbers (7-Scenes sequences
are passes through the room; the shared 300 frames make three blocks). Each fold maps some
blocks (their ``n % stride == 0`` frames) and queries every ``stride``-th frame of the others.
The maps are each block alone (one-pass maps, queried from every other pass) and every block
left out (all the others mapped, that pass queried): 2 x B folds for B blocks, so a whole
1000-frame sequence (10 blocks) is 20 folds, not the 1022 proper subsets; with three blocks the
two families are exactly the six proper subsets. Per fold: the metrics object of the other protocols plus the
number of accepted poses beyond 15 cm / 5 deg (confident wrong answers); then the mean over
folds and the worst fold (lowest share within 2 cm / 1 deg). Settings are chosen on the mean,
never on the ``revisit`` queries.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from bench.splits import Split

#: an accepted pose beyond these is a confident wrong answer.
WRONG_T_M, WRONG_R_DEG = 0.15, 5.0


def cv_folds(frames: Iterable[int], block: int = 100, stride: int = 5) -> list[tuple[list[int], list[int], Split]]:
    """(map blocks, query blocks, Split) of the one-pass maps (each block alone, in block order),
    then of the leave-one-out maps (all blocks but one; in the order of their map blocks), each
    map once (two blocks: the same two folds)."""
    fs = sorted(set(int(n) for n in frames))
    blocks = sorted({n // block for n in fs})
    if len(blocks) < 2:
        return []
    one_pass = [(b,) for b in blocks]
    left_out = [tuple(b for b in blocks if b != left) for left in reversed(blocks)]
    kept = [n for n in fs if n % stride == 0]
    out = []
    for chosen in dict.fromkeys(one_pass + left_out):  # each map once, in order
        others = [b for b in blocks if b not in chosen]
        split = Split(map=[n for n in kept if n // block in chosen], queries=[n for n in kept if n // block in others])
        if len(split.map) >= 2 and split.queries:
            out.append((list(chosen), others, split))
    return out


def accepted_beyond(run, t_m: float = WRONG_T_M, r_deg: float = WRONG_R_DEG) -> int:
    """Accepted queries of ``run`` (a QueryRun: t_err_m, r_err_deg, accepted per query) whose pose is off by
    more than ``t_m`` or ``r_deg``."""
    t, r = np.asarray(run.t_err_m), np.asarray(run.r_err_deg)
    acc = np.asarray(run.accepted, bool)
    return int(np.count_nonzero(acc & ((t > t_m) | (r > r_deg))))


def beyond_3sigma_pct(run) -> float | None:
    """Calibration: % of the accepted poses whose translation error exceeds 3 times the reported
    camera-centre sigma or whose rotation error exceeds 3 times the rotation sigma (None: no
    accepted pose with sigmas)."""
    if not run.sigma_t_m:
        return None
    hits = [t > 3 * st or r > 3 * sr for t, r, st, sr, a in
            zip(run.t_err_m, run.r_err_deg, run.sigma_t_m, run.sigma_r_deg, run.accepted)
            if a and st is not None and sr is not None]
    return 100.0 * float(np.mean(hits)) if hits else None


def accepted_of_true_pct(run, t_m: float = WRONG_T_M, r_deg: float = WRONG_R_DEG) -> float | None:
    """% of the queries whose returned pose (accepted or not) is within ``t_m`` / ``r_deg`` that were
    accepted (None: no such query, or a run without the errors of rejected poses)."""
    if run.pose_t_err_m is None:
        return None
    true = (np.asarray(run.pose_t_err_m) <= t_m) & (np.asarray(run.pose_r_err_deg) <= r_deg)
    return 100.0 * float(np.asarray(run.accepted, bool)[true].mean()) if true.any() else None


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if len(vals) == len(values) and vals else None


def mean_metrics(ms: list[dict]) -> dict:
    """Field-wise mean of metrics objects (numbers; a field missing or None in a fold is None);
    latency fields (p50, p90, stages) averaged the same way."""
    out: dict = {}
    for key in ms[0]:
        vals = [m.get(key) for m in ms]
        if isinstance(vals[0], dict):
            out[key] = mean_metrics(vals)
        elif all(isinstance(v, (int, float)) or v is None for v in vals):
            out[key] = _mean(vals)
        else:
            out[key] = vals[0]
    return out


def worst_fold(folds: list[dict]) -> dict:
    """The metrics of the fold with the lowest share within 2 cm / 1 deg (then the largest median)."""
    def badness(f: dict):
        m = f["metrics"]
        return (m.get("pct_2cm_1deg") or 0.0, -(m.get("median_t_cm") or math.inf))
    return min(folds, key=badness)["metrics"]


def run_cv(by_n: dict, block: int, stride: int, run_fold: Callable[[str, list[int], list[int]], object],
           reporter) -> dict:
    """Every fold over the frames ``by_n`` (frame number -> record): ``run_fold(name, map frame numbers,
    query frame numbers)`` builds the fold's map and returns its QueryRun; the result is
    ``{"folds": [...], "mean": M, "worst": M}``."""
    folds = []
    for map_blocks, query_blocks, split in cv_folds(by_n, block, stride):
        name = "cv_" + "-".join(str(b) for b in map_blocks)
        reporter.log(f"cv fold: map blocks {map_blocks} ({len(split.map)} images), query blocks {query_blocks} "
                     f"({len(split.queries)} queries)")
        run = run_fold(name, split.map, split.queries)
        folds.append({"map_blocks": map_blocks, "query_blocks": query_blocks, "metrics": run.metrics(),
                      "accepted_beyond_15cm_5deg": accepted_beyond(run),
                      "accepted_of_within_15cm_5deg_pct": accepted_of_true_pct(run)})
    if not folds:
        return {"folds": [], "mean": None, "worst": None}
    return {"folds": folds, "mean": mean_metrics([f["metrics"] for f in folds]), "worst": worst_fold(folds)}
