"""`vloc demo`: the main job on the embedded default — a generated room -> a map bundle -> its summary.

Grows with the product: later stages (serving, robots) extend it.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from vloc.progress import Reporter


def run_demo(workdir: Path | None = None, n_frames: int = 24, seed: int = 0) -> dict:
    """Generate a textured room (exact truth), render a camera loop, build its map, check it."""
    import numpy as np
    import pycolmap

    from datasets.synthetic import generate_scene, write_dataset
    from mapping.build import BuildConfig, build_map

    reporter = Reporter()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vloc-demo-"))
    t = time.perf_counter()
    scene = generate_scene(seed=seed)
    records = write_dataset(scene, workdir / "images", n_frames)
    reporter.log(f"generated room (seed {seed}) and rendered {len(records)} RGB-D frames "
                 f"in {time.perf_counter() - t:.1f} s -> {workdir / 'images'}")
    manifest = build_map(workdir / "images", records, workdir / "map", BuildConfig(),
                         pose_file=workdir / "images" / "pgt_sfm_seq01.txt", pose_format="pgt", reporter=reporter)
    rec = pycolmap.Reconstruction(str(workdir / "map" / "model"))
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    d = scene.distance_to_surfaces(xyz)
    s = manifest["statistics"]
    summary = {"bundle": str(workdir / "map"), "images": s["n_images"], "points3D": s["n_points3D"],
               "reprojection_median_px": s["reprojection_error_px"]["median"],
               "point_to_true_surface_median_mm": float(np.median(d) * 1000),
               "points_within_1cm_pct": float(np.mean(d <= 0.01) * 100),
               "build_s": s["build_seconds"], "kB_per_image": s["bytes_per_image"] / 1e3}
    return summary
