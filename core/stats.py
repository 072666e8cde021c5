"""Summary statistics shared by the benchmarks."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def latency_stats(values: Sequence[float | None]) -> dict:
    """n, p50, p90, p95, p99, mean, max of a list of numbers, None entries ignored (same unit in
    and out; every statistic None when empty)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if len(v) == 0:
        return {"n": 0, "p50": None, "p90": None, "p95": None, "p99": None, "mean": None, "max": None}
    p = np.percentile(v, [50, 90, 95, 99])
    return {"n": int(len(v)), "p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]),
            "mean": float(v.mean()), "max": float(v.max())}
