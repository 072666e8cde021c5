"""`vloc bench mapping-scale`: its pure parts (per-1,000 figures, growth, speed-up, extrapolation,
targets, the table) on synthetic runs."""
from __future__ import annotations

import pytest

from bench.mapping_scale import (
    GB,
    STAGES,
    extrapolate,
    growth,
    markdown_table,
    per_thousand,
    run_key,
    speedups,
    targets,
)


def run(n: int, workers: int, build_s: float, features_s: float, matching_s: float, worker_gb: float,
        client_gb: float) -> dict:
    stage_s = dict.fromkeys(STAGES, 1.0)
    stage_s.update(features=features_s, matching=matching_s)
    peaks = [{"worker": f"tcp://127.0.0.1:{4000 + k}", "name": str(k), "tasks": 3,
              "peak_rss_bytes": worker_gb * GB * (1 - 0.1 * k)} for k in range(workers)]
    return {"n_images": n, "workers": workers, "build_s": build_s, "stage_s": stage_s, "workers_peak": peaks,
            "worker_peak_rss_bytes": worker_gb * GB, "client_peak_rss_bytes": client_gb * GB,
            "bundle_bytes": n * 170e3, "n_registered": n,
            "accuracy": {"pct_accepted": 100.0, "median_t_cm_accepted": 0.1, "wrong_accepted": 0},
            "latency_ms": {"p50": 80.0, "p90": 95.0}, "speed_probe_ms": 80.0}


RUNS = [run(1000, 1, 100, 40, 30, 0.6, 1.0), run(1000, 2, 70, 22, 18, 0.55, 1.0),
        run(5000, 1, 500, 200, 160, 0.8, 3.0), run(5000, 2, 330, 110, 90, 0.7, 3.0)]


def test_per_thousand_and_growth():
    k = per_thousand(RUNS[2])
    assert k["build_s"] == pytest.approx(100) and k["features_s"] == pytest.approx(40)
    assert k["worker_peak_rss_gb"] == pytest.approx(0.16) and k["client_peak_rss_gb"] == pytest.approx(0.6)
    assert k["bundle_mb"] == pytest.approx(170e6 / 2**20)
    g = growth(RUNS)
    assert [(r["workers"], r["from"], r["to"]) for r in g] == [(1, 1000, 5000), (2, 1000, 5000)]
    assert g[0]["build_s_per_1000"] == pytest.approx(100) and g[1]["build_s_per_1000"] == pytest.approx(65)
    assert g[0]["worker_peak_rss_gb_per_1000"] == pytest.approx(0.05)
    assert g[0]["client_peak_rss_gb_per_1000"] == pytest.approx(0.5)


def test_speedup_extrapolation_and_targets():
    s = speedups(RUNS)
    assert s[1000] == pytest.approx(70 / 40) and s[5000] == pytest.approx(360 / 200)
    x = extrapolate(RUNS, 20000, 2)
    assert x["build_s"] == pytest.approx(330 + 3.75 * 260) and x["from_sizes"] == [1000, 5000]
    assert x["worker_peak_rss_bytes"] == pytest.approx((0.7 + 3.75 * 0.15) * GB)
    assert extrapolate(RUNS[:2], 20000, 1) is None
    t = targets(RUNS)
    assert t[0].startswith("20,000 images: not run")
    assert "1000 images" in t[1] and "1.75x (met" in t[1] and "1.80x (met" in t[2]
    assert "500 s (missed" in t[3] and "330 s (met" in t[4]
    big = run(20000, 2, 1500, 500, 400, 3.2, 6.0)
    assert "3.20 GB (missed)" in targets(RUNS + [big])[0]


def test_markdown_table_states_machine_data_and_truth():
    result = {"runs": {run_key(e["n_images"], e["workers"]): e for e in RUNS},
              "extrapolated": [extrapolate(RUNS, 20000, 2)],
              "machine": {"processor": "x86_64", "cpu_count": 2, "platform": "Linux", "cuda": False,
                          "speed_probe": {"sift_640x480_ms": 81.0}},
              "data": "generated building", "ground_truth": "exact generated poses"}
    md = markdown_table(result)
    lines = md.splitlines()
    assert lines[0].startswith("| images | workers | build s |") and len([x for x in lines if x.startswith("| ")]) == 5
    assert "| 5,000 | 2 | 330 |" in md and "0.70 + 0.63" in md and "| 170 |" in md
    assert "growth 1,000 -> 5,000 images, 2 worker(s): +65 s" in md
    assert "extrapolated to 20,000 images, 2 worker(s)" in md and "targets: " in md
    assert "speed probe: SIFT 640x480 81 ms" in md and "data: generated building" in md
    assert "ground truth: exact generated poses" in md and "5000x2: 80 ms" in md
