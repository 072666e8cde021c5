"""`vloc bench serve`: the pure parts (latency stats, schedule, frame selection, summaries, metrics
parsing) and a tiny end-to-end run (2 robots, 2 Hz, 3 s) on a generated map against `vloc serve`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from api.testing import shared_test_map
from bench.serve import markdown_table, run_serve_bench
from bench.serve_config import (
    Query,
    ServeBenchConfig,
    cache_figures,
    frame_offsets,
    map_ids,
    pose_errors,
    prometheus_values,
    query_frame_numbers,
    schedule,
    summarize,
)
from core.geometry import Rigid3
from core.stats import latency_stats
from core.types import VlocError

pytestmark = pytest.mark.timeout(300)


def test_latency_stats():
    s = latency_stats(list(range(1, 101)))
    assert s["n"] == 100 and s["p50"] == pytest.approx(50.5) and s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01) and s["max"] == 100 and s["mean"] == pytest.approx(50.5)
    assert latency_stats([7.0])["p99"] == 7.0
    assert latency_stats([]) == {"n": 0, "p50": None, "p90": None, "p95": None, "p99": None, "mean": None,
                                 "max": None}
    assert latency_stats([None, 3.0])["n"] == 1


def test_schedule_and_offsets():
    times = schedule(4, 2.0, 3.0)
    assert len(times) == 4 and all(len(t) == 6 for t in times)
    assert times[0][:3] == [0.0, 0.5, 1.0]
    assert np.allclose([t[0] for t in times], [0, 0.125, 0.25, 0.375])  # staggered within one period
    assert all(np.allclose(np.diff(t), 0.5) for t in times)
    assert max(t[-1] for t in times) < 3.0
    assert len(schedule(1, 0.4, 1.0)[0]) == 1  # at least one frame
    assert frame_offsets(4, 100) == [0, 25, 50, 75] and frame_offsets(3, 2) == [0, 0, 1]
    assert map_ids(3) == ["room-00", "room-01", "room-02"]


def test_query_frames_are_the_odd_blocks():
    q = query_frame_numbers(range(300))
    assert q == list(range(100, 200))
    assert query_frame_numbers([5, 12, 13, 25, 30], block=10) == [12, 13, 30]


def test_pose_errors_and_summary():
    truth = Rigid3.identity()
    good = {"accepted": True, "cam_from_world": {"translation": [0.03, 0, 0], "quaternion_wxyz": [1, 0, 0, 0]}}
    assert pose_errors(good, truth) == pytest.approx((0.03, 0.0))
    assert pose_errors({**good, "accepted": False}, truth) == (math.inf, math.inf)
    cfg = ServeBenchConfig(robots=2, hz=2, seconds=2)
    qs = [Query(0, "m", 0, "a", 0.0, 0.2, "ok", True, 0.01, 0.5, 1.0, 150.0, False, 0.2),
          Query(0, "m", 1, "b", 0.5, 0.4, "ok", True, 0.03, 1.0, 2.0, 160.0, True, 0.9),
          Query(1, "m", 0, "c", 0.25, 0.6, "ok", False, math.inf, math.inf, 3.0, 170.0, True, 0.85),
          Query(1, "m", 1, "d", 0.75, None, "http_422"),
          Query(1, "m", 2, "e", 1.25, None, "exception:ReadTimeout"),
          Query(0, "m", 2, "f", 1.0, 0.9, "dropped:stale"),
          Query(0, "m", 3, "g", 1.5, 0.1, "dropped:error")]
    s = summarize(qs, cfg)
    assert s["sent"] == 7 and s["answered"] == 3 and s["scheduled"] == 8 and s["skipped_busy"] == 1
    assert s["errors"] == 3 and s["dropped"] == {"stale": 1}
    assert s["throughput_qps"] == pytest.approx(3 / 0.9)
    assert s["latency_ms"]["p50"] == pytest.approx(400) and s["latency_ms"]["n"] == 3
    assert s["accepted_pct"] == pytest.approx(200 / 3)
    assert s["accuracy"]["median_t_cm"] == pytest.approx(3.0)  # rejected = miss (+inf)
    assert s["accuracy"]["pct_5cm_5deg"] == pytest.approx(200 / 3)
    assert s["server_ms"] == {"wait_median": 2.0, "core_total_median": 160.0}
    assert summarize([], cfg)["latency_ms"]["n"] == 0


def test_prometheus_parsing_and_cache_figures():
    text = ("# TYPE vloc_map_load_seconds histogram\n"
            'vloc_map_load_seconds_bucket{le="0.5"} 3.0\nvloc_map_load_seconds_count 5.0\n'
            "vloc_map_load_seconds_sum 1.5\n# TYPE vloc_maps_resident gauge\nvloc_maps_resident 2.0\n"
            '# TYPE vloc_map_loads_total counter\nvloc_map_loads_total{outcome="ok"} 5.0\n'
            "# TYPE vloc_map_evictions_total counter\nvloc_map_evictions_total 4.0\n")
    after = prometheus_values(text)
    assert after["vloc_maps_resident"] == 2 and after['vloc_map_load_seconds_bucket{le="0.5"}'] == 3
    before = {"vloc_map_load_seconds_count": 2.0, "vloc_map_load_seconds_sum": 0.3, "vloc_map_evictions_total": 1}
    c = cache_figures(before, after)
    assert c["loads"] == 3 and c["load_mean_s"] == pytest.approx(0.4) and c["evictions"] == 3
    assert c["resident_end"] == 2 and cache_figures(after, after)["load_mean_s"] is None


def test_config_bounds():
    with pytest.raises(VlocError):
        ServeBenchConfig(robots=0).check()
    with pytest.raises(VlocError):
        ServeBenchConfig(hz=0).check()
    with pytest.raises(VlocError):
        run_serve_bench(ServeBenchConfig(robots=1, seconds=1), root=None)


@pytest.mark.parametrize("stream", [False, True], ids=["rest", "stream"])
def test_end_to_end_on_generated_maps(tmp_path, stream):
    """2 robots x 2 Hz x 3 s on 2 copies of a generated map with a cache budget below two maps:
    every answer right, the cold-load path exercised, JSON + table written."""
    tmap = shared_test_map()
    cfg = ServeBenchConfig(robots=2, hz=2, seconds=3, stream=stream, maps=2, cache_mb=1, gen_query_frames=4,
                           drain_s=20)
    out = tmp_path / "serve.json"
    res = run_serve_bench(cfg, workdir=tmp_path / "cache", out_json=out, bundle=tmap.bundle, scene=tmap.scene)
    assert json.loads(out.read_text())["mode"] == ("stream" if stream else "rest")
    assert res["n_maps"] == 2 and res["sent"] >= 4 and res["errors"] == 0, res["outcomes"]
    assert res["answered"] >= 2 and res["latency_ms"]["p50"] > 0 and res["throughput_qps"] > 0
    assert res["accuracy"]["median_t_cm"] < 2.0
    assert res["cache"]["budget_bytes"] == 1_000_000 and res["cache"]["resident_end"] == 1
    assert res["cache"]["loads"] >= 1 and res["cache"]["evictions"] >= 1  # maps alternate: cold loads
    assert len(res["loadavg_before"]) == 3 and res["machine"]["cpu_count"]
    table = markdown_table(res)
    assert "| throughput (answered) |" in table and "map loads during the run" in table
    limits = res["server_settings"]
    assert limits["max_frame_age_s"] > 0 and limits["max_queue_wait_s"] >= 0 and limits["rest_max_wait_ms"] is None
    assert ("frames dropped past age" in table) == stream
