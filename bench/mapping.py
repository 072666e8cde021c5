"""`vloc bench mapping`: map-building cost and SfM accuracy on the shared real data.

* redkitchen (7-Scenes seq-01): frames n % 3 == 0 (100 images of the shared 300) mapped with
  ``pgt_sfm_seq01.txt`` poses: build time (median of repeats) and bytes on disk per mapped image.
* Strecha fountain-P11 and Herz-Jesus-P8: SfM without poses (ground-truth intrinsics given, as in
  the usual calibrated protocol), aligned to the ground-truth centres by a similarity:
  median / max centre error (metres) and registered images.
* generated loop (:mod:`bench.mapping_loop`): unposed SfM around a closed 30-image 1536 x 1024
  loop with exact truth, before / after the loop-robust changes, and ``--sfm global``; the same
  loop at 384 x 256 (same field of view) where the global mapper goes wrong.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.machine import machine_info, machine_line
from bench.mapping_loop import (  # noqa: F401 (sfm_centre_errors re-exported)
    SMALL_LOOP_CAMERA,
    bench_generated_loop,
    loop_rows,
    sfm_centre_errors,
)
from core.types import VlocError
from mapping.build import BuildConfig, build_map


def bench_redkitchen(root: Path, repeats: int, cfg: BuildConfig, stride: int = 3) -> dict:
    from datasets.sevenscenes import frame_number, load_pgt
    records = [r for r in load_pgt(root / "pgt_sfm_seq01.txt") if frame_number(r.name) % stride == 0]
    times, manifest = [], None
    with tempfile.TemporaryDirectory(prefix="vloc-bench-") as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            manifest = build_map(root, records, Path(tmp) / "map", cfg, pose_file=root / "pgt_sfm_seq01.txt",
                                 pose_format="pgt")
            times.append(time.perf_counter() - t)
    s = manifest["statistics"]
    return {"data": f"7scenes redkitchen seq-01, frames n % {stride} == 0", "ground_truth": "pgt_sfm_seq01",
            "n_images": s["n_images"], "n_points3D": s["n_points3D"],
            "build_s_median": statistics.median(times), "build_s_all": times,
            "build_s_per_100_images": statistics.median(times) / s["n_images"] * 100,
            "bytes_per_image": s["bytes_per_image"],
            "reprojection_error_px_median": s["reprojection_error_px"]["median"],
            "stage_timings_s": s["timings"]}


def bench_strecha(scene: Path, repeats: int, cfg: BuildConfig) -> dict:
    from datasets.strecha import load_strecha
    gt = load_strecha(scene)
    unposed = [replace(r, cam_from_world=None) for r in gt]
    times, res = [], None
    with tempfile.TemporaryDirectory(prefix="vloc-bench-") as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            build_map(scene, unposed, Path(tmp) / "map", cfg)
            times.append(time.perf_counter() - t)
            res = sfm_centre_errors(Path(tmp) / "map", gt)
    return {"data": f"Strecha {scene.name}", "ground_truth": "Strecha gt_cameras (intrinsics given to SfM)",
            "sfm_s_median": statistics.median(times), "sfm_s_all": times, **res}


def run_mapping_bench(shared: Path, repeats: int = 3, out_json: Path | None = None, loop_frames: int = 30) -> dict:
    """``loop_frames``: images of the generated loop row (0: no loop row)."""
    if not shared.is_dir():
        raise VlocError(f"shared datasets folder {shared} not found (pass --root)")
    cfg = BuildConfig()
    result = {"benchmark": "mapping", "machine": machine_info(), "repeats": repeats,
              "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rk = shared / "7scenes-redkitchen"
    result["redkitchen"] = bench_redkitchen(rk, repeats, cfg) if rk.is_dir() else {"skipped": f"{rk} absent"}
    for name in ("fountain-P11", "Herz-Jesus-P8"):
        scene = shared / "strecha" / name
        result[name] = bench_strecha(scene, repeats, cfg) if scene.is_dir() else {"skipped": f"{scene} absent"}
    if loop_frames:
        result["generated_loop"] = bench_generated_loop(loop_frames)
        result["generated_loop_384"] = bench_generated_loop(loop_frames, SMALL_LOOP_CAMERA)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result


def markdown_table(result: dict) -> str:
    rows = ["| data | metric | value |", "|---|---|---|"]
    rk = result.get("redkitchen", {})
    if "build_s_median" in rk:
        rows += [f"| redkitchen ({rk['n_images']} imgs, pgt_sfm) | build s (median of {result['repeats']}) | {rk['build_s_median']:.2f} |",
                 f"| | build s per 100 images | {rk['build_s_per_100_images']:.1f} |",
                 f"| | bytes per image | {rk['bytes_per_image'] / 1e3:.0f} kB |",
                 f"| | points / median reprojection | {rk['n_points3D']} / {rk['reprojection_error_px_median']:.2f} px |"]
    for name in ("fountain-P11", "Herz-Jesus-P8"):
        r = result.get(name, {})
        if r.get("median_centre_error_m") is not None:
            rows += [f"| {name} SfM | time s (median of {result['repeats']}) | {r['sfm_s_median']:.2f} |",
                     f"| | registered | {r['n_registered']}/{r['n_images']} |",
                     f"| | centre error median / max | {r['median_centre_error_m'] * 100:.2f} / "
                     f"{r['max_centre_error_m'] * 100:.2f} cm |"]
    for key in ("generated_loop", "generated_loop_384"):
        if key in result:
            rows += loop_rows(result[key])
    m = result["machine"]
    rows.append("\n" + machine_line(m))
    return "\n".join(rows)


