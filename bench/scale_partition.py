"""Benchmark: an unposed generated loop reconstructed whole and in view-graph partitions.

``python -m bench.scale_partition [--frames 200] [--max-partition-images 50]``

Data: ``generate_scene(seed=3)`` (a 6 x 5 x 2.6 m textured room) seen from its closed camera loop
(an ellipse of 2.7 x 2.25 m, cameras looking out at the walls 1-3 m away), ``frames`` colour frames
of 320 x 240 rendered once into ``<workdir>/loop-<frames>`` (no depth: an unposed image folder).
Ground truth: the rendered ``cam_from_world`` of each frame (exact).

Protocol: two builds through :func:`mapping.build.build_map`, each in a fresh interpreter, sharing
one work directory: first ``partition: off`` (one incremental SfM; it extracts and matches every
image and pair), then ``partition: on`` with ``max_partition_images`` images per cluster core (the
same features and matches read back from the work directory: only the reconstruction differs).
Measured per build: wall time of the build and of its reconstruction (the partitioned one split
into the clusters' SfM and the merge), images registered, 3D points, and the camera-centre errors
against the truth after one similarity (median, p90, max). Targets (issue 15): >= 4 partitions,
median error <= 1 cm and <= 1.2x the unpartitioned median.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.building import in_child
from core.accuracy import aligned_centre_errors

CAMERA_STR = "PINHOLE 320 240 262.5 262.5 160.0 120.0"
TARGET_MEDIAN_M, TARGET_RATIO = 0.01, 1.2


def render_loop(root: Path, frames: int) -> dict[str, list[float]]:
    """The loop's colour frames under ``root`` (rendered once); name -> true camera centre."""
    from core.camera import Camera
    from datasets.synthetic import generate_scene, write_dataset

    truth_file = root / "truth.json"
    if truth_file.is_file():
        return json.loads(truth_file.read_text())
    shutil.rmtree(root, ignore_errors=True)
    records = write_dataset(generate_scene(seed=3), root, frames, camera=Camera.parse(CAMERA_STR))
    for p in root.rglob("*.depth.png"):
        p.unlink()
    truth = {r.name: r.cam_from_world.centre.tolist() for r in records}
    truth_file.write_text(json.dumps(truth))
    return truth


def _build(root: str, out: str, work: str, partition: str, max_images: int) -> dict:
    """One build in this (fresh) interpreter; its statistics and the registered centres."""
    import pycolmap

    from core.camera import Camera
    from core.geometry import Rigid3
    from datasets.image_folder import load_image_folder
    from mapping.build import build_map
    from mapping.config import BuildConfig

    cam = Camera.parse(CAMERA_STR)
    records = [replace(r, camera=cam) for r in load_image_folder(root)]
    cfg = BuildConfig(partition=partition, max_partition_images=max_images)
    cfg = replace(cfg, features=replace(cfg.features, max_keypoints=2000))
    t = time.perf_counter()
    stats = build_map(Path(root), records, Path(out), cfg, work_dir=Path(work))["statistics"]
    wall = time.perf_counter() - t
    rec = pycolmap.Reconstruction(str(Path(out) / "model"))
    centres = {im.name: Rigid3.from_pycolmap(im.cam_from_world()).centre.tolist() for im in rec.images.values()}
    return {"build_s": wall, "statistics": stats, "centres": centres}


def summarise(built: dict, truth: dict) -> dict:
    s = built["statistics"]
    err = aligned_centre_errors(built["centres"], truth)
    out = {"build_s": built["build_s"], "reconstruction_s": s["timings"]["reconstruction_s"],
           "features_s": s["timings"]["features_s"], "matching_s": s["timings"]["matching_s"],
           "n_registered": s["n_images"], "n_images": s["n_images_input"], "n_points3D": s["n_points3D"],
           "n_verified_pairs": s["n_verified_pairs"],
           "centre_error_m": {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
                              "max": float(err.max())}}
    p = s.get("partitions")
    if p:
        out["partitions"] = {k: p[k] for k in ("n_parts", "part_sizes", "part_registered", "part_seconds",
                                                "alignments", "merge_timings", "n_points_retriangulated", "rounds_s") if k in p}
        out["partitions_s"], out["merge_s"] = s["timings"].get("partitions_s"), s["timings"].get("merge_s")
    return out


def run(frames: int, max_images: int, workdir: Path, out_json: Path) -> dict:
    from bench.building import code_state
    from bench.machine import machine_info, speed_probe

    root = workdir / f"loop-{frames}"
    truth = render_loop(root, frames)
    work = workdir / f"loop-{frames}-work"
    shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "partition-loop", "machine": machine_info(), "code": code_state(),
              "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "speed_probe_ms": speed_probe()["sift_640x480_ms"],
              "data": f"generate_scene(seed=3) closed camera loop, {frames} unposed colour frames {CAMERA_STR}",
              "ground_truth": "rendered cam_from_world (exact); centre errors after one similarity onto the truth",
              "protocol": ("build_map in a fresh interpreter each, one shared work directory: partition off first "
                           "(extracts and matches), then partition on (same features and matches from the work "
                           "directory); SIFT 2000 keypoints; in process, cfg.workers threads"),
              "config": {"frames": frames, "max_partition_images": max_images}}
    for name, mode in (("whole", "off"), ("partitioned", "on")):
        out = workdir / f"loop-{frames}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name} build", flush=True)
        result[name] = summarise(in_child(_build, str(root), str(out), str(work), mode, max_images), truth)
        print(json.dumps(result[name])[:400], flush=True)
    w, p = result["whole"], result["partitioned"]
    result["targets"] = {
        "n_parts_ge_4": p.get("partitions", {}).get("n_parts", 0) >= 4,
        "median_le_1cm": p["centre_error_m"]["median"] <= TARGET_MEDIAN_M,
        "median_within_1.2x_whole": p["centre_error_m"]["median"] <= TARGET_RATIO * w["centre_error_m"]["median"],
        "ratio_to_whole": p["centre_error_m"]["median"] / max(w["centre_error_m"]["median"], 1e-12)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    out_json.with_suffix(".md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    from bench.machine import machine_line
    rows = [f"# Partitioned reconstruction: unposed {r['config']['frames']}-image loop",
            "", f"{machine_line(r['machine'])} (shared with other jobs; speed probe before the builds "
            f"{r['speed_probe_ms']:.0f} ms). Data: {r['data']}. "
            f"Ground truth: {r['ground_truth']}. Protocol: {r['protocol']}.", "",
            "| build | partitions (sizes) | registered | points | centre error median / p90 / max (mm) | "
            "reconstruction s (clusters + merge) | build s |", "|---|---|---|---|---|---|---|"]
    for name in ("whole", "partitioned"):
        e = r[name]
        p = e.get("partitions")
        parts = f"{p['n_parts']} ({', '.join(map(str, p['part_sizes']))})" if p else "1"
        split = f" ({e['partitions_s']:.1f} + {e['merge_s']:.1f})" if p else ""
        c = e["centre_error_m"]
        rows.append(f"| {name} | {parts} | {e['n_registered']}/{e['n_images']} | {e['n_points3D']:,} | "
                    f"{c['median'] * 1e3:.2f} / {c['p90'] * 1e3:.2f} / {c['max'] * 1e3:.2f} | "
                    f"{e['reconstruction_s']:.1f}{split} | {e['build_s']:.1f} |")
    t = r["targets"]
    rows += ["", f"Targets: >= 4 partitions {t['n_parts_ge_4']}; median <= 1 cm {t['median_le_1cm']}; median within "
             f"1.2x of the whole build {t['median_within_1.2x_whole']} (ratio {t['ratio_to_whole']:.2f})."]
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--max-partition-images", type=int, default=50)
    ap.add_argument("--workdir", type=Path, default=Path("bench-results/scale-cache"))
    ap.add_argument("--json", type=Path, default=Path("bench-results/partition_loop.json"))
    a = ap.parse_args()
    r = run(a.frames, a.max_partition_images, a.workdir, a.json)
    print(markdown(r))


if __name__ == "__main__":
    main()
