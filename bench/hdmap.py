"""`vloc bench hdmap`: time and memory per layer stage and the layer file sizes, on the shared redkitchen.

Data: 7-Scenes redkitchen seq-01 (300 frames). The map: frames n % ``map_every`` == 0 posed with
``pgt_sfm_seq01.txt`` (RGB-consistent pseudo ground truth), built by :func:`mapping.build.build_map`.
The mesh: every ``depth_stride``-th depth frame, depth intrinsics ``PINHOLE 640 480 585 585 320 240``,
poses from ``frame-*.pose.txt`` (the depth camera's KinectFusion / dSLAM track), moved into the map
frame by a similarity fitted on the frames both tracks share (the two ground truths differ by ~8 %
in scale and ~10 cm on these frames; the fit's scale and residuals are reported).
Memory: peak resident set size above the stage's start (psutil, sampled every 10 ms).
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import psutil

from bench.machine import machine_info
from core.camera import Camera
from core.progress import QUIET, Reporter
from core.types import VlocError
from hdmap.layers.build import LayersConfig, StageTimer, build_layers
from hdmap.layers.depth import load_depth_folder
from mapping.build import BuildConfig, build_map

DEPTH_CAMERA = "PINHOLE 640 480 585 585 320 240"


class StageMeter(StageTimer):
    """A :class:`StageTimer` that also records the peak RSS growth per stage (MB)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.proc = psutil.Process()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.proc.memory_info().rss
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], self.proc.memory_info().rss)
                stop.wait(self.interval_s)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            with super().__call__(name):
                yield
        finally:
            stop.set()
            th.join()
            peak[0] = max(peak[0], self.proc.memory_info().rss)
            self.stages[name].update({"peak_rss_growth_mb": (peak[0] - start) / 1e6, "peak_rss_mb": peak[0] / 1e6})


def run_layers_bench(root: Path, out_json: Path | None = None, map_every: int = 10, depth_stride: int = 5,
                     voxel: float = 0.02, reporter: Reporter = QUIET, world: bool = True) -> dict:
    """Build the redkitchen map and its layers (and, with ``world``, measure the georeference error
    on the generated world: :mod:`bench.world`); returns (and writes) the JSON result."""
    from datasets.sevenscenes import frame_number, load_pgt
    root = Path(root)
    pgt = root / "pgt_sfm_seq01.txt"
    if not pgt.is_file():
        raise VlocError(f"{root} has no pgt_sfm_seq01.txt (pass --root: the 7scenes-redkitchen folder)")
    records = [r for r in load_pgt(pgt) if frame_number(r.name) % map_every == 0]
    frames = load_depth_folder(root, Camera.parse(DEPTH_CAMERA), depth_stride)
    cfg = LayersConfig()
    cfg = replace(cfg, tsdf=replace(cfg.tsdf, voxel=voxel))
    meter = StageMeter()
    with tempfile.TemporaryDirectory(prefix="vloc-bench-hdmap-") as tmp:
        bundle = Path(tmp) / "map"
        t = time.perf_counter()
        with meter("map_build"):
            build_map(root, records, bundle, BuildConfig(), pose_file=pgt, pose_format="pgt", reporter=reporter)
        t_map = time.perf_counter() - t
        t = time.perf_counter()
        info = build_layers(bundle, cfg, frames, reporter, timer=meter, align_depth=True)
        t_layers = time.perf_counter() - t
    sizes = info["statistics"]["bytes"]
    result = {
        "benchmark": "hdmap-layers", "machine": machine_info(),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": f"7scenes redkitchen seq-01: map = frames n % {map_every} == 0 ({len(records)} images), "
                f"mesh = every {depth_stride}th depth frame ({len(frames)})",
        "ground_truth": "map poses: pgt_sfm_seq01; depth poses: frame-*.pose.txt (dSLAM), aligned to the map "
                        "by a similarity on shared frames",
        "depth_camera": DEPTH_CAMERA, "voxel_m": voxel,
        "depth_alignment": info.get("depth_alignment"),
        "map_build_s": t_map, "layers_total_s": t_layers,
        "stages": meter.stages,
        "bytes": sizes,
        "mesh": info["files"]["layers/mesh.ply"],
        "floors": info["floors"],
        "occupancy": {k: v["cells"] for k, v in info["files"].items() if v.get("kind") == "occupancy"},
        "ortho": info["files"]["layers/ortho.tif"],
        "up_source": info["frames"]["up_source"],
    }
    if world:
        from bench.world import run_world_georef_bench
        reporter.log("georeference on the generated world (build, GPS georef, aerial fusion)")
        result["georef_generated_world"] = run_world_georef_bench()
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result


def markdown_table(result: dict) -> str:
    rows = ["| stage | time s | peak RSS growth MB |", "|---|---|---|"]
    for name, s in result["stages"].items():
        rows.append(f"| {name} | {s['seconds']:.2f} | {s.get('peak_rss_growth_mb', float('nan')):.0f} |")
    rows.append(f"| **layers total** | {result['layers_total_s']:.2f} | |")
    rows += ["", "| file | bytes |", "|---|---|"]
    rows += [f"| {k} | {v / 1e6:.2f} MB |" for k, v in result["bytes"].items()]
    a = result.get("depth_alignment") or {}
    m = result["mesh"]
    rows.append(f"\ndata: {result['data']}; ground truth: {result['ground_truth']}")
    rows.append(f"mesh: {m['n_vertices']} vertices, {m['n_triangles']} triangles (voxel {result['voxel_m']} m); "
                f"depth->map similarity scale {a.get('scale', float('nan')):.4f}, residual median "
                f"{a.get('residual_m_median', float('nan')) * 100:.1f} cm over {a.get('n_pairs')} frames")
    w = result.get("georef_generated_world")
    if w:
        rows += ["", "| georeference (generated world) | horizontal median / max m | vertical median m | yaw deg |",
                 "|---|---|---|---|"]
        for name in ("gps_only", "gps_plus_aerial"):
            e = w[name]
            rows.append(f"| {name.replace('_', ' ')} | {e['horizontal_median_m']:.3f} / {e['horizontal_max_m']:.3f} "
                        f"| {e['vertical_median_m']:.3f} | {e['yaw_deg']:.3f} |")
        rows.append(f"world: {w['data']}; {w['n_points']} map points; stage times "
                    + ", ".join(f"{k} {v:.1f}" for k, v in w["timings"].items()))
    mi = result["machine"]
    rows.append(f"machine: {mi['processor']}, {mi['cpu_count']} cores, {mi['platform']}")
    return "\n".join(rows)
