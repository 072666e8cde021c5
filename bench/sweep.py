"""`vloc bench sweep`: choose the working resolution, feature budget and k by measurement.

Runs the `revisit` protocol of the 7-Scenes benchmark (map from ``pgt_sfm``, errors against
``pgt_sfm``) once per localizer setting on one map, and reports accuracy next to latency
(medians of repeats), so that the defaults in :class:`LocalizerConfig` are a measured choice.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench.machine import machine_info, machine_line
from bench.sevenscenes import Bench7ScenesConfig, load_ground_truth, read_rgb, run_queries
from localize.config import LocalizerConfig
from localize.localizer import Localizer
from mapping.build import BuildConfig, build_map

#: the grid: (working resolution = longest side, query keypoints, top-k)
DEFAULT_GRID: tuple[tuple[int, int, int], ...] = (
    (640, 2048, 10), (640, 1024, 10), (640, 2048, 5), (640, 4096, 10),
    (480, 2048, 10), (480, 1024, 5), (400, 2048, 10), (320, 1024, 10), (320, 2048, 10),
)


def run_sweep(root: Path, grid=DEFAULT_GRID, repeats: int = 3, out_json: Path | None = None) -> dict:
    from datasets.sevenscenes import frame_number
    cfg = Bench7ScenesConfig()
    gt = load_ground_truth(root, "sfm")
    by_n = {frame_number(r.name): r for r in gt}
    split = cfg.split("revisit", by_n)
    map_recs = [by_n[n] for n in split.map]
    q_recs = [by_n[n] for n in split.queries]
    images = [read_rgb(root / r.name) for r in q_recs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vloc-sweep-") as tmp:
        build_map(root, map_recs, Path(tmp) / "map", BuildConfig())
        for side, kps, k in grid:
            # each setting alone (no coarse first attempt in front of it)
            lcfg = replace(LocalizerConfig(), max_image_side=side, max_keypoints=kps, top_k=k, coarse_max_image_side=0)
            run = run_queries(Localizer(Path(tmp) / "map", lcfg), images, q_recs, repeats=repeats)
            rows.append({"max_image_side": side, "max_keypoints": kps, "top_k": k,
                         **run.metrics()})
    result = {"benchmark": "localizer sweep (revisit, pgt_sfm)", "machine": machine_info(), "repeats": repeats,
              "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "defaults": asdict(LocalizerConfig()), "rows": rows}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2, default=float))
    return result


def markdown_table(result: dict) -> str:
    def f(x, d=2):
        return "-" if x is None else f"{x:.{d}f}"
    lines = ["| side | keypoints | k | rejected | median t cm / r deg | 2cm/1deg % | 5cm/5deg % | p50 / p90 ms | features / matching / pose ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        st = r["latency_ms"]["stages"]
        lines.append(f"| {r['max_image_side']} | {r['max_keypoints']} | {r['top_k']} | {r['rejected']} | "
                     f"{f(r['median_t_cm'])} / {f(r['median_r_deg'], 3)} | {f(r['pct_2cm_1deg'], 0)} | "
                     f"{f(r['pct_5cm_5deg'], 0)} | {f(r['latency_ms']['p50'], 0)} / {f(r['latency_ms']['p90'], 0)} | "
                     f"{f(st.get('features'), 0)} / {f(st.get('matching'), 0)} / {f(st.get('pose'), 0)} |")
    m = result["machine"]
    lines.append(f"\n{machine_line(m)}; latency: median of {result['repeats']} repeats")
    return "\n".join(lines)
