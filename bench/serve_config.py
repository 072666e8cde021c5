"""`vloc bench serve`: its configuration, the per-query record, the robots' schedule and the run's
metrics (pure functions; see :mod:`bench.serve`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.stats import latency_stats
from core.types import VlocError

#: within this translation (m) and rotation (deg) error a pose counts as right.
GOOD_T_M, GOOD_R_DEG = 0.05, 5.0


@dataclass(frozen=True)
class ServeBenchConfig:
    robots: int = 20
    hz: float = 2.0
    seconds: float = 30.0
    stream: bool = False
    #: 0: the 7-Scenes scene at ``root``; M >= 1: M copies of one generated map.
    maps: int = 0
    #: server map-cache budget (MB; None: the server's default).
    cache_mb: float | None = None
    #: server localization threads.
    workers: int = 2
    #: server's max_frame_age_s (None: its default): frames waiting longer are dropped as stale,
    #: which bounds the latency of answered frames when more frames arrive than the CPU can take.
    max_age_s: float | None = None
    #: server's stream_max_pending (None: its default): waiting frames per stream session.
    max_pending: int | None = None
    #: longest wait for a worker, s: the server's max_queue_wait_s for streams (None: its default;
    #: 0: no limit), and REST robots send it as ``meta.max_wait_ms`` (None / 0: they do not).
    max_wait_s: float | None = None
    #: REST robots ask the server to track them (``meta.track``): motion priors without a stream.
    track: bool = False
    #: the map's features (built with them; the server localizes with them): sift | aliked | disk ...
    features: str = "sift"
    #: the server's device for learned features (and the map build's): auto | cpu | cuda.
    device: str = "auto"
    #: learned features: the server's matcher (lightglue | nn) and micro-batching (None: its defaults).
    matcher: str | None = None
    max_batch: int | None = None
    max_batch_wait_ms: float | None = None
    #: client timeout per request / stream reply, seconds.
    timeout_s: float = 30.0
    #: after the send window, how long to wait for the last answers, seconds.
    drain_s: float = 30.0
    # 7-Scenes workload
    block: int = 100
    stride: int = 5
    # generated workload
    gen_seed: int = 0
    gen_map_frames: int = 16
    gen_query_frames: int = 24

    def check(self) -> None:
        if not 1 <= self.robots <= 1000:
            raise VlocError("--robots must be 1..1000")
        if not 0 < self.hz <= 60:
            raise VlocError("--hz must be in (0, 60]")
        if not 0 < self.seconds <= 3600:
            raise VlocError("--seconds must be in (0, 3600]")
        if self.maps < 0 or self.maps > 1000:
            raise VlocError("--maps must be 0..1000")
        if self.cache_mb is not None and self.cache_mb < 0:
            raise VlocError("--cache-mb must be >= 0")


@dataclass
class QueryFrame:
    """One frame a robot can send: encoded bytes, camera, truth (cam_from_world)."""

    name: str
    data: bytes
    camera: object
    truth: object


@dataclass
class Query:
    """One sent frame and its outcome."""

    robot: int
    map_id: str
    tick: int
    frame: str
    sent_s: float                  # relative to the start of the window
    latency_s: float | None = None
    outcome: str = "pending"       # ok | http_<status> | exception:<type> | dropped:<reason> | lost
    accepted: bool | None = None
    t_err_m: float | None = None
    r_err_deg: float | None = None
    server_wait_ms: float | None = None
    server_total_ms: float | None = None
    prior_used: bool | None = None
    done_s: float | None = None
    batch_size: int | None = None  # frames in the server's micro-batch


# --------------------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------------------
def schedule(robots: int, hz: float, seconds: float) -> list[list[float]]:
    """Send times (s from the start) of each robot: R Hz for S seconds, robot i shifted by i/(N R)."""
    period = 1.0 / hz
    n = max(1, int(math.floor(seconds * hz + 1e-9)))
    return [[i * period / robots + k * period for k in range(n)] for i in range(robots)]


def frame_offsets(robots: int, n_frames: int) -> list[int]:
    """Where in the frame list robot i starts: spread evenly over the list."""
    return [(i * n_frames) // robots for i in range(robots)]


def map_ids(m: int) -> list[str]:
    return [f"room-{i:02d}" for i in range(m)]


def query_frame_numbers(frames: Sequence[int], block: int = 100) -> list[int]:
    """Frames the robots replay on a 7-Scenes scene: every frame of the odd blocks, in order."""
    return sorted(n for n in set(int(f) for f in frames) if (n // block) % 2 == 1)


def pose_errors(reply: dict, truth) -> tuple[float, float]:
    """(t m, r deg) of an answer vs the truth cam_from_world; +inf when rejected or poseless."""
    from core.geometry import Rigid3, pose_error
    pose = reply.get("cam_from_world")
    if not reply.get("accepted") or not pose:
        return math.inf, math.inf
    return pose_error(Rigid3.from_quat_wxyz(pose["quaternion_wxyz"], pose["translation"]), truth)


def prometheus_values(text: str) -> dict[str, float]:
    """Flat ``{name{labels}: value}`` of a Prometheus text exposition (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def cache_figures(before: dict[str, float], after: dict[str, float]) -> dict:
    """Map loads, mean load time, evictions between two /metrics snapshots; resident at the end."""
    def d(k):
        return after.get(k, 0.0) - before.get(k, 0.0)
    n = d("vloc_map_load_seconds_count")
    return {"loads": int(n), "load_mean_s": d("vloc_map_load_seconds_sum") / n if n else None,
            "load_errors": int(d('vloc_map_loads_total{outcome="error"}')),
            "evictions": int(d("vloc_map_evictions_total")),
            "resident_end": int(after.get("vloc_maps_resident", 0)),
            "resident_bytes_end": int(after.get("vloc_maps_resident_bytes", 0)),
            "budget_bytes": int(after.get("vloc_maps_budget_bytes", 0))}


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarize(queries: Sequence[Query], cfg: ServeBenchConfig) -> dict:
    """Throughput, latency, errors, drops and accuracy of a run (see the module docstring)."""
    from core.accuracy import accuracy_metrics
    done = [q for q in queries if q.outcome == "ok"]
    outcomes: dict[str, int] = {}
    for q in queries:
        outcomes[q.outcome] = outcomes.get(q.outcome, 0) + 1
    errors = sum(v for k, v in outcomes.items() if k.startswith(("http_", "exception:", "dropped:error", "lost")))
    dropped = {k.split(":", 1)[1]: v for k, v in outcomes.items()
               if k.startswith("dropped:") and k != "dropped:error"}
    first = min((q.sent_s for q in queries), default=0.0)
    last = max((q.done_s for q in done if q.done_s is not None), default=first)
    window = max(last - first, 1e-9)
    t = [q.t_err_m if q.t_err_m is not None else math.inf for q in done]
    r = [q.r_err_deg if q.r_err_deg is not None else math.inf for q in done]
    acc = accuracy_metrics(t, r)
    scheduled = cfg.robots * len(schedule(1, cfg.hz, cfg.seconds)[0])
    bs = [q.batch_size for q in done if q.batch_size is not None]
    return {
        "offered_qps": cfg.robots * cfg.hz,
        "scheduled": scheduled,
        "sent": len(queries),
        "skipped_busy": 0 if cfg.stream else max(0, scheduled - len(queries)),
        "answered": len(done),
        "throughput_qps": len(done) / window if done else 0.0,
        "window_s": window,
        "latency_ms": latency_stats([q.latency_s * 1000 for q in done if q.latency_s is not None]),
        "errors": errors,
        "dropped": dropped,
        "outcomes": dict(sorted(outcomes.items())),
        "accepted_pct": 100.0 * sum(bool(q.accepted) for q in done) / len(done) if done else None,
        "accuracy": {"median_t_cm": acc["median_t_cm"], "median_r_deg": acc["median_r_deg"],
                     "pct_5cm_5deg": acc["pct_5cm_5deg"], "pct_2cm_1deg": acc["pct_2cm_1deg"],
                     "n": acc["n_queries"]},
        "server_ms": {"wait_median": _median(q.server_wait_ms for q in done),
                      "core_total_median": _median(q.server_total_ms for q in done)},
        "prior_used_pct": 100.0 * sum(bool(q.prior_used) for q in done) / len(done) if done else None,
        "batch_size": {"mean": float(np.mean(bs)) if bs else None, "max": max(bs) if bs else None},
    }
