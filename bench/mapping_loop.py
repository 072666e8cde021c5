"""The generated loop row of `vloc bench mapping`: unposed SfM around a closed camera loop with
exact truth, before / after the loop-robust changes, and `--sfm global` (right or refused).

Data: ``datasets.synthetic.generate_scene(seed=3)`` (the 6 x 5 x 2.6 m textured room of the
partition tests) seen from its closed loop (``scene.trajectory``, an ellipse of 2.7 x 2.25 m,
cameras looking out at the walls), ``n_frames`` images of 1536 x 1024, PINHOLE f = 1382.4 px
(0.9 x width, Strecha-like). Ground truth: the generator's poses; centre errors after one
similarity onto them. "before": the previous pipeline's settings (the verified essential matrix
for every pair, no refinement pass, no loop check: whatever the mapper returns is kept).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap

from core.accuracy import aligned_centre_errors
from core.camera import Camera
from core.types import VlocError
from mapping.build import BuildConfig, build_map
from mapping.loop_check import LoopCheckConfig
from mapping.reconstruct import images_cam_from_world

LOOP_CAMERA = Camera("PINHOLE", 1536, 1024, (1382.4, 1382.4, 768.0, 512.0))
#: the same field of view at 384 x 256 (the unit test's loop)
SMALL_LOOP_CAMERA = Camera("PINHOLE", 384, 256, (345.6, 345.6, 192.0, 128.0))
#: a loop check that accepts every model (the "before" runs)
NO_CHECK = LoopCheckConfig(max_pair_epipolar_px=1e9)


def sfm_centre_errors(bundle: Path, gt_records) -> dict:
    """Align the bundle's camera centres to ground truth by a similarity; errors in metres."""
    est = images_cam_from_world(pycolmap.Reconstruction(str(bundle / "model")))
    gt = {r.name: r.cam_from_world.centre for r in gt_records}
    names = [n for n in est if n in gt]
    if len(names) < 3:
        return {"n_registered": len(names), "median_centre_error_m": None}
    err = aligned_centre_errors({n: est[n].centre for n in names}, gt)
    return {"n_registered": len(names), "n_images": len(gt_records),
            "median_centre_error_m": float(np.median(err)), "max_centre_error_m": float(err.max())}


def before_config(cfg: BuildConfig) -> BuildConfig:
    """``cfg`` with the previous unposed pipeline's reconstruction settings."""
    return replace(cfg, reconstruction=replace(cfg.reconstruction, two_view_geometries=("essential",),
                                               sfm_refine_passes=0, loop_check=NO_CHECK))


def bench_generated_loop(n_frames: int = 30, camera: Camera = LOOP_CAMERA, seed: int = 3) -> dict:
    """Render the loop, then build it unposed: after (defaults), before, and global. One run each
    (a 1536 x 1024 build takes minutes on 2 cores)."""
    from datasets.synthetic import generate_scene, write_dataset

    cfg = BuildConfig()
    runs = {"after": cfg, "before": before_config(cfg),
            "global": replace(cfg, reconstruction=replace(cfg.reconstruction, sfm_method="global")),
            "global_before": before_config(replace(cfg, reconstruction=replace(cfg.reconstruction,
                                                                               sfm_method="global")))}
    out: dict = {"data": f"generated loop: generate_scene(seed={seed}), {n_frames} images "
                         f"{camera.width}x{camera.height} f={camera.focals[0]:g} around a closed loop",
                 "ground_truth": "the generator's poses (centres after one similarity)",
                 "size": f"{camera.width}x{camera.height}"}
    with tempfile.TemporaryDirectory(prefix="vloc-bench-loop-") as tmp:
        t = time.perf_counter()
        gt = write_dataset(generate_scene(seed=seed), Path(tmp) / "images", n_frames, camera=camera)
        out["render_s"] = time.perf_counter() - t
        unposed = [replace(r, cam_from_world=None) for r in gt]
        for name, c in runs.items():
            t = time.perf_counter()
            try:
                m = build_map(Path(tmp) / "images", unposed, Path(tmp) / name, c)
            except VlocError as e:
                out[name] = {"refused": str(e), "sfm_s": time.perf_counter() - t}
                continue
            out[name] = {"sfm_s": time.perf_counter() - t, "sfm_method_used": m["statistics"].get("sfm_method_used"),
                         **sfm_centre_errors(Path(tmp) / name, gt)}
    return out


def loop_rows(r: dict) -> list[str]:
    """Markdown rows of :func:`bench_generated_loop`'s result."""
    rows = []
    for name in ("before", "after", "global_before", "global"):
        x = r.get(name, {})
        label = f"| generated loop {r.get('size', '')} SfM ({name.replace('_', ' ')}) |"
        if "refused" in x:
            rows.append(f"{label} refused | {x['refused'][:160]} |")
        elif x.get("median_centre_error_m") is not None:
            rows.append(f"{label} centre error median / max, registered, s | "
                        f"{x['median_centre_error_m'] * 100:.2f} / {x['max_centre_error_m'] * 100:.2f} cm, "
                        f"{x['n_registered']}/{x['n_images']}, {x['sfm_s']:.0f} s ({x['sfm_method_used']}) |")
    if rows:
        rows.append(f"| | data / before | {r['data']}; before = the previous settings (verified essential "
                    f"matrices only, no refinement pass, no loop check) |")
    return rows
