"""`vloc map layers`: derive the HD layers of a bundle and add them under ``BUNDLE/layers/`` atomically.

One entry function, :func:`build_layers`; the layout is described in :mod:`hdmap.layers`.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import open3d as o3d

from bundleio import read_manifest, update_bundle
from core.geo import Georeference
from core.geometry import Sim3, estimate_sim3
from core.progress import QUIET, Reporter
from core.types import VlocError
from hdmap.geodesy import crs_id as crs_name
from hdmap.geodesy import map_to_crs
from hdmap.layers.crs import projected_crs
from hdmap.layers.depth import DepthFrame, align_frames, backproject
from hdmap.layers.floors import FloorConfig, find_floors, level_from_map, up_axis
from hdmap.layers.footprint import footprint_geojson
from hdmap.layers.mesh import PoissonConfig, TsdfConfig, orient_normals_to_cameras, sparse_mesh, tsdf_mesh
from hdmap.layers.occupancy import OccupancyConfig, occupancy_grid, write_ros_map
from hdmap.layers.ortho import OrthoConfig, render_mesh_ortho, render_ortho, write_geotiff
from hdmap.layers.pointcloud import MapPoints, read_map_points, write_las, write_ply

LAYERS_DIR = "layers"


@dataclass(frozen=True)
class LayersConfig:
    """Everything that defines the layers (recorded in the manifest)."""

    tsdf: TsdfConfig = field(default_factory=TsdfConfig)
    poisson: PoissonConfig = field(default_factory=PoissonConfig)
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    floors: FloorConfig = field(default_factory=FloorConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    #: projected CRS for LAS / GeoTIFF of a georeferenced map ("EPSG:N"); None: the origin's UTM zone.
    crs: str | None = None
    #: LAS coordinate quantum, metres.
    las_scale: float = 0.001
    #: free-space rays from every k-th depth pixel (rows and columns).
    depth_ray_step: int = 4


class StageTimer:
    """``with timer("mesh"): ...`` records wall seconds per stage in ``timer.stages``."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages.setdefault(name, {})["seconds"] = time.perf_counter() - t


def _frame_key(name: str) -> str | None:
    m = re.search(r"frame-\d+", Path(name).name)
    if m is None:
        return None
    parent = Path(name).parent.name
    return f"{parent}/{m.group(0)}" if parent else m.group(0)


def fit_depth_to_map(frames: list[DepthFrame], points: MapPoints) -> tuple[Sim3, dict]:
    """Similarity ``map_from_depth`` between depth-camera and map-camera centres of the same frames.

    Frames pair up by ``[folder/]frame-NNNNNN`` in their names (the folder is dropped when the
    depth root is a sequence folder). Returns the similarity and its fit statistics (metres).
    """
    map_keys = {_frame_key(n): k for k, n in enumerate(points.names)}
    pairs = []
    for f in frames:
        key = _frame_key(f.name)
        k = map_keys.get(key)
        if k is None and key is not None and "/" not in key:
            hits = [v for mk, v in map_keys.items() if mk and mk.split("/")[-1] == key]
            k = hits[0] if len(hits) == 1 else None
        if k is not None:
            pairs.append((f.world_from_cam.translation, points.cameras[k].translation))
    if len(pairs) < 3:
        raise VlocError(f"--align-depth: only {len(pairs)} depth frames share a frame name with the map's "
                        f"images (need >= 3 spread out; lower --depth-stride)")
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    try:
        sim = estimate_sim3(a, b)
    except ValueError as e:
        raise VlocError(f"--align-depth: {e}") from None
    err = np.linalg.norm(sim.transform(a) - b, axis=1)
    return sim, {"n_pairs": len(pairs), "scale": sim.scale, "residual_m_median": float(np.median(err)),
                 "residual_m_max": float(err.max())}


def _depth_rays(frames: list[DepthFrame], step: int, depth_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(R, 3) ray origins (camera centres) and (R, 3) ends (back-projected pixels), map frame."""
    origins, ends = [], []
    for f in frames:
        depth, _ = f.load()
        p = backproject(depth, f.camera, f.world_from_cam, step=step, max_depth=depth_max)
        ends.append(p)
        origins.append(np.broadcast_to(f.world_from_cam.translation, p.shape))
    return np.concatenate(origins), np.concatenate(ends)


def upward_mask(normals: np.ndarray, up: np.ndarray, max_tilt_deg: float = 20.0) -> np.ndarray:
    """(N,) True where (N, 3) normals (oriented towards the observer) point within max_tilt of ``up``:
    floors and table tops seen from above, not ceilings."""
    n = np.asarray(normals, np.float64)
    return n @ up / np.maximum(np.linalg.norm(n, axis=1), 1e-12) >= np.cos(np.radians(max_tilt_deg))


def point_normals(points: MapPoints, knn: int = 20) -> np.ndarray:
    """(N, 3) normals of the model points (open3d, k nearest neighbours), facing an observing camera."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.xyz))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn))
    return orient_normals_to_cameras(points.xyz, np.asarray(pcd.normals), points.centres, points.observer)


def build_layers(bundle: Path, cfg: LayersConfig = LayersConfig(), depth: list[DepthFrame] | None = None,
                 reporter: Reporter = QUIET, timer: StageTimer | None = None, align_depth: bool = False) -> dict:
    """Compute every layer of ``bundle`` and add them under ``BUNDLE/layers/`` (replacing old layers).

    depth: depth frames with ``world_from_cam`` in the map frame (or in their own frame with
    ``align_depth``: a similarity fitted on the frames shared with the map moves them in).
    Returns the manifest's ``layers`` entry. On any error the bundle is unchanged.
    """
    timer = timer or StageTimer()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    try:
        georef = Georeference.from_manifest(manifest)
    except ValueError as e:
        raise VlocError(f"{bundle}: {e}") from None
    if cfg.crs and georef is None:
        raise VlocError("--crs needs a georeferenced bundle (run the georeferencing stage first)")
    crs = projected_crs(cfg.crs, georef) if georef is not None else None
    info: dict = {"config": json.loads(json.dumps(asdict(cfg), default=str))}

    with timer("load"):
        pts = read_map_points(bundle)
        if len(pts.xyz) == 0:
            raise VlocError(f"{bundle}: the model has no 3D points")
        depth = list(depth) if depth else None
        if depth and align_depth:
            sim, fit = fit_depth_to_map(depth, pts)
            depth = align_frames(depth, sim)
            info["depth_alignment"] = {"map_from_depth": {"scale": sim.scale, "rotation": sim.rotation.tolist(),
                                                          "translation": sim.translation.tolist()}, **fit}
    with timer("mesh"):
        if depth:
            reporter.log(f"fusing {len(depth)} depth frames (voxel {cfg.tsdf.voxel} m)")
            mesh = tsdf_mesh(depth, cfg.tsdf, reporter)
            mesh_source = f"TSDF of {len(depth)} depth frames (open3d VoxelBlockGrid, voxel {cfg.tsdf.voxel} m)"
        else:
            reporter.log("no depth: Poisson surface of the sparse model")
            mesh = sparse_mesh(pts.xyz, pts.rgb, pts.centres, pts.observer, cfg.poisson)
            mesh_source = f"Poisson surface (octree depth {cfg.poisson.depth}) of {len(pts.xyz)} model points"
    verts = np.asarray(mesh.vertices)
    mesh_rgb = (np.asarray(mesh.vertex_colors) * 255).round().astype(np.uint8) if mesh.has_vertex_colors() else None

    with timer("frames"):
        up, up_source = up_axis(georef, pts.cameras, cfg.floors.snap_deg)
        level = level_from_map(up)
        surf_level = level.transform(np.vstack([verts, pts.xyz]) if depth else pts.xyz)
        cams_level = level.transform(pts.centres)
    with timer("floors"):
        horiz = upward_mask(point_normals(pts), up)
        if depth:  # TSDF mesh normals face the observed (free) side
            horiz = np.r_[upward_mask(np.asarray(mesh.vertex_normals), up), horiz]
        floors = find_floors(surf_level[horiz, 2], cams_level[:, 2], cfg.floors)
    with timer("occupancy"):
        origins = pts.centres[pts.track_cameras]
        ends = pts.xyz[pts.track_points]
        surfaces = surf_level
        if depth:  # every depth return is an observed surface, and a ray through free space
            o, e = _depth_rays(depth, cfg.depth_ray_step, cfg.tsdf.depth_max)
            origins, ends = np.vstack([origins, o]), np.vstack([ends, e])
            surfaces = np.vstack([surf_level, level.transform(e)])
        grids = [(f, occupancy_grid(surfaces, level.transform(origins), level.transform(ends), f, cfg.occupancy))
                 for f in floors]
    with timer("footprint"):
        geojson = footprint_geojson(grids, level, georef)

    with update_bundle(bundle, "layers") as (tmp, man):
        out = tmp / LAYERS_DIR
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        files: dict[str, dict] = {}
        map_frame = "map frame (metres), same as localization poses"
        with timer("write_mesh"):
            if not o3d.io.write_triangle_mesh(str(out / "mesh.ply"), mesh, write_ascii=False):
                raise OSError("open3d could not write mesh.ply")
            files["mesh.ply"] = {"kind": "mesh", "frame": map_frame, "source": mesh_source,
                                 "n_vertices": len(mesh.vertices), "n_triangles": len(mesh.triangles),
                                 "coloured": mesh_rgb is not None}
        with timer("write_ply"):
            write_ply(out / "points.ply", pts.xyz, pts.rgb)
            files["points.ply"] = {"kind": "points", "frame": map_frame, "n_points": len(pts.xyz),
                                   "source": "model points3D with colours"}
        with timer("write_las"):
            las_xyz = map_to_crs(pts.xyz, georef, crs) if crs is not None else pts.xyz
            q = write_las(out / "points.las", las_xyz, pts.rgb, crs, cfg.las_scale)
            files["points.las"] = {"kind": "points", "n_points": len(pts.xyz), **q,
                                   **({"crs": crs_name(crs), "z": "ellipsoidal height (m)"} if crs else
                                      {"frame": map_frame, "crs": None})}
        with timer("ortho"):
            src_xyz = verts if mesh_rgb is not None else pts.xyz
            o_xyz = map_to_crs(src_xyz, georef, crs) if crs is not None else level.transform(src_xyz)
            if mesh_rgb is not None:
                src = "mesh (vertical ray casting)"
                ortho = render_mesh_ortho(o_xyz, np.asarray(mesh.triangles), mesh_rgb, cfg.ortho)
            else:
                src = "model points (highest point per pixel)"
                ortho = render_ortho(o_xyz, pts.rgb, cfg.ortho)
            frame_tags = ({"VLOC_FRAME": f"projected CRS {crs_name(crs)}"} if crs else
                          {"VLOC_FRAME": "vloc map level frame x, y (metres), no CRS",
                           "VLOC_LEVEL_FROM_MAP": level.rotation.tolist()})
            write_geotiff(out / "ortho.tif", ortho, crs, {**frame_tags, "VLOC_SOURCE": src})
            cover = float((ortho.rgba[..., 3] > 0).mean())
            files["ortho.tif"] = {"kind": "orthophoto", "resolution": cfg.ortho.resolution,
                                  "width": ortho.rgba.shape[1], "height": ortho.rgba.shape[0], "source": src,
                                  "covered_fraction": cover,
                                  **({"crs": crs_name(crs)} if crs else {"frame": "level frame", "crs": None})}
        with timer("write_2d"):
            (out / "floors.json").write_text(json.dumps([f.to_json() for f in floors], indent=2) + "\n")
            files["floors.json"] = {"kind": "floors", "frame": "level frame (elevation along up)",
                                    "n_floors": len(floors)}
            for f, g in grids:
                yaml = write_ros_map(g, out / f"occupancy_floor{f.index}.pgm", cfg.occupancy)
                entry = {"kind": "occupancy", "format": "ROS map_server (trinary)", "floor": f.index,
                         "frame": "level frame", "resolution": g.resolution, "origin": list(g.origin),
                         "shape": list(g.cells.shape), "cells": g.counts()}
                files[f"occupancy_floor{f.index}.pgm"] = entry
                files[yaml.name] = {**entry, "kind": "occupancy-yaml"}
            (out / "footprint.geojson").write_text(json.dumps(geojson) + "\n")
            files["footprint.geojson"] = {"kind": "footprint", "n_features": len(geojson["features"]),
                                          "crs": "EPSG:4326 lon/lat (RFC 7946)" if georef else None,
                                          **({} if georef else {"frame": "level frame"})}
        info.update({
            "files": {f"{LAYERS_DIR}/{k}": v for k, v in files.items()},
            "frames": {"map": "the bundle's world frame (localization poses)",
                       "level_from_map": {"rotation": level.rotation.tolist(),
                                          "identity": bool(np.allclose(level.rotation, np.eye(3)))},
                       "up_in_map": up.tolist(), "up_source": up_source,
                       "projected_crs": crs_name(crs) if crs else None},
            "floors": [f.to_json() for f in floors],
            "statistics": {"n_points": len(pts.xyz), "n_mesh_vertices": len(mesh.vertices),
                           "n_depth_frames": len(depth) if depth else 0,
                           "bytes": {k: (out / k).stat().st_size for k in files}},
            "timings_s": {k: v["seconds"] for k, v in timer.stages.items()},
        })
        man["layers"] = info
    return read_manifest(bundle)["layers"]
