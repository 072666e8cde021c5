"""Georeference error on the generated world (``vloc bench hdmap`` reports it beside the layers).

Data: :func:`datasets.world.generate_world` (seeded): a street walk of posed ground images
whose map frame differs from ENU by a known similarity, GPS perturbed by a few metres, and an
orthophoto + DSM rendered from above at 10 cm with a known geotransform (UTM). Ground truth:
the world's own georeference. Errors are measured at every map point, in the true ENU frame.
Stages: build (posed map) -> georef from the GPS CSV -> aerial fusion; time of each.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.geo import Georeference


def georef_errors(got: Georeference, truth: Georeference, points_map: np.ndarray) -> dict:
    """Horizontal / vertical error (m) of ``got`` at (N, 3) map points, in the true ENU frame, and
    the yaw error (deg) of the map's x axis."""
    from hdmap.geodesy import geodetic_to_enu, map_to_geodetic
    from hdmap.georef import map_x_azimuth_deg

    est = geodetic_to_enu(map_to_geodetic(points_map, got), (truth.latitude, truth.longitude, truth.altitude))
    want = truth.enu_from_map.transform(points_map)
    dh = np.linalg.norm(est[:, :2] - want[:, :2], axis=1)
    yaw = (map_x_azimuth_deg(got.rotation) - map_x_azimuth_deg(truth.rotation) + 180) % 360 - 180
    return {"horizontal_median_m": float(np.median(dh)), "horizontal_max_m": float(dh.max()),
            "vertical_median_m": float(np.median(np.abs(est[:, 2] - want[:, 2]))), "yaw_deg": abs(float(yaw))}


def run_world_georef_bench(n_frames: int = 24, seed: int = 0, gsd_m: float = 0.1) -> dict:
    """Build, georeference from GPS and fuse with the orthophoto; returns errors and stage times."""
    from bundleio import read_manifest
    from datasets.world import generate_world, render_orthophoto, write_ground_dataset, write_orthophoto
    from hdmap.aerial import AerialConfig, load_map_points
    from hdmap.aerial_cli import fuse_and_store
    from hdmap.georef_bundle import georeference_bundle
    from mapping.build import BuildConfig, build_map
    from mapping.pairs import PosePairConfig
    from vision.features import SiftConfig

    world = generate_world(seed=seed)
    times = {}
    with tempfile.TemporaryDirectory(prefix="vloc-world-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        records = write_ground_dataset(world, root / "images", n_frames=n_frames)
        ortho = render_orthophoto(world, gsd=gsd_m)
        write_orthophoto(ortho, root / "ortho.tif", root / "dsm.tif")
        times["render_s"] = time.perf_counter() - t
        # street scale: pairs up to 15 m apart, overlap tested at street depths
        cfg = replace(BuildConfig(), features=SiftConfig(contrast_threshold=0.01),
                      pairs=PosePairConfig(max_distance_m=15.0, sample_depths=(3.0, 6.0, 12.0), min_overlap=0.2))
        bundle = root / "bundle"
        t = time.perf_counter()
        build_map(root / "images", records, bundle, cfg)
        times["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        georeference_bundle(bundle, "gnss", root / "images" / "gps.csv")
        times["georef_s"] = time.perf_counter() - t
        xyz, _ = load_map_points(bundle)
        gps = georef_errors(Georeference.from_manifest(read_manifest(bundle)), world.georef, xyz)
        t = time.perf_counter()
        result, _ = fuse_and_store(bundle, root / "ortho.tif", root / "dsm.tif", AerialConfig())
        times["fuse_aerial_s"] = time.perf_counter() - t
        fused = georef_errors(Georeference.from_manifest(read_manifest(bundle)), world.georef, xyz)
    return {"data": f"generated world seed {seed}: {n_frames} street images 640x480, GPS bias 1.5 m + noise "
                    f"1.5 m (3 m vertical), orthophoto + DSM at {gsd_m} m/px in UTM",
            "ground_truth": "the generator's georeference (errors at every map point)",
            "n_points": int(len(xyz)), "gps_only": gps, "gps_plus_aerial": fused,
            "aerial": {k: result.report[k] for k in ("n_inliers", "n_matches", "residual_px", "residual_m")},
            "timings": times}
