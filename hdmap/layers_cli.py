"""`vloc map layers`: mesh, point clouds, orthophoto, floors, occupancy grids and footprint of a bundle."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from core.cli_util import user_errors
from core.progress import Reporter
from core.types import VlocError


def layers_job(bundle: Path, depth_root: Optional[Path] = None, depth_camera: Optional[str] = None,
               depth_stride: int = 1, depth_colour: bool = False, align_depth: bool = False, voxel: float = 0.02,
               resolution: float = 0.05, ortho_resolution: float = 0.02, crs: Optional[str] = None,
               reporter: Reporter = Reporter(enabled=False)) -> dict:
    """Check the options, load the depth frames (if any) and build the layers; returns the
    manifest's ``layers`` entry (the command and ``vloc map build --config`` both run this)."""
    from bundleio import read_manifest
    from core.camera import Camera
    from hdmap.layers.build import LayersConfig, build_layers
    from hdmap.layers.depth import load_depth_folder

    read_manifest(bundle)  # a clear error before any depth loading
    frames = None
    if depth_root is not None:
        if depth_camera is None:
            raise VlocError("--depth-root needs --depth-camera 'PINHOLE W H fx fy cx cy'")
        frames = load_depth_folder(depth_root, Camera.parse(depth_camera), depth_stride, depth_colour)
    elif depth_camera is not None or align_depth:
        raise VlocError("--depth-camera / --align-depth need --depth-root")
    cfg = LayersConfig(crs=crs)
    cfg = replace(cfg, tsdf=replace(cfg.tsdf, voxel=voxel), ortho=replace(cfg.ortho, resolution=ortho_resolution),
                  occupancy=replace(cfg.occupancy, resolution=resolution))
    return build_layers(bundle, cfg, frames, reporter, align_depth=align_depth)


@user_errors
def layers(
    bundle: Path = typer.Argument(..., help="bundle directory (layers are added under BUNDLE/layers/)"),
    depth_root: Optional[Path] = typer.Option(None, "--depth-root",
                                              help="7-Scenes-style folder of frame-*.depth.png (uint16 mm) + "
                                                   "frame-*.pose.txt (world_from_cam); omit: mesh from the "
                                                   "sparse model"),
    depth_camera: Optional[str] = typer.Option(None, "--depth-camera",
                                               help='depth intrinsics "PINHOLE W H fx fy cx cy" '
                                                    '(7-Scenes: "PINHOLE 640 480 585 585 320 240")'),
    depth_stride: int = typer.Option(1, "--depth-stride", min=1, help="use every N-th depth frame"),
    depth_colour: bool = typer.Option(False, "--depth-colour",
                                      help="frame-*.color.png/jpg are registered to the depth pixels "
                                           "(not true for 7-Scenes)"),
    align_depth: bool = typer.Option(False, "--align-depth",
                                     help="depth poses are in another frame: fit a similarity from the depth "
                                          "camera centres to the map's images with the same frame names"),
    voxel: float = typer.Option(0.02, "--voxel", min=0.002, help="TSDF voxel size, metres"),
    resolution: float = typer.Option(0.05, "--grid-resolution", min=0.005, help="occupancy cell, metres"),
    ortho_resolution: float = typer.Option(0.02, "--ortho-resolution", min=0.002, help="orthophoto pixel, metres"),
    crs: Optional[str] = typer.Option(None, "--crs", help="projected CRS of a georeferenced map's LAS / "
                                                          "GeoTIFF (default: the origin's UTM zone)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest's layers entry as JSON"),
) -> None:
    """Add HD layers to a bundle: mesh, PLY/LAS points, GeoTIFF orthophoto, ROS occupancy grids, GeoJSON."""
    reporter = Reporter(enabled=not quiet)
    info = layers_job(bundle, depth_root, depth_camera, depth_stride, depth_colour, align_depth, voxel, resolution,
                      ortho_resolution, crs, reporter)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        s = info["statistics"]
        reporter.enabled = True
        reporter.log(f"[green]layers written[/green] {bundle}/layers: mesh {s['n_mesh_vertices']} vertices, "
                     f"{s['n_points']} points, {len(info['floors'])} floor(s), "
                     f"{sum(s['bytes'].values()) / 1e6:.2f} MB in {len(s['bytes'])} files")
