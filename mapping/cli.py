"""`vloc map ...` commands: a thin CLI over mapping.build and the bundle format."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mapping.build import BuildConfig, build_map
from mapping.bundle import read_manifest, verify_files
from vloc.camera import Camera
from vloc.cli_util import user_errors
from vloc.progress import Reporter
from vloc.types import ImageRecord, VlocError

app = typer.Typer(help="Build and inspect map bundles.", no_args_is_help=True)


class PoseFormat(str, Enum):
    sevenscenes = "7scenes"
    pgt = "pgt"
    colmap = "colmap"
    kapture = "kapture"


class SfmMethod(str, Enum):
    auto = "auto"
    incremental = "incremental"
    global_ = "global"


def load_records(images: Path, poses: Optional[Path], poses_format: Optional[PoseFormat],
                 camera: Optional[Camera]) -> list[ImageRecord]:
    """Records for the map: those the pose file names, or every image under the root (unposed)."""
    from dataclasses import replace

    if poses is not None:
        from datasets.posefile import load_poses
        if poses_format is None:
            raise VlocError("--poses needs --poses-format (7scenes, pgt, colmap or kapture)")
        if not poses.exists():
            raise VlocError(f"pose file {poses} does not exist")
        records = load_poses(poses, poses_format.value, camera=camera)
        if not records:
            raise VlocError(f"pose file {poses} names no images")
        return records
    from datasets.image_folder import load_image_folder
    records = load_image_folder(images)
    if camera is not None:
        records = [replace(r, camera=camera) for r in records]
    if not records:
        raise VlocError(f"no images found under {images}")
    return records


@app.command("build")
@user_errors
def build(
    images: Optional[Path] = typer.Option(None, "--images", help="image root; names in the pose file are relative to it"),
    out: Optional[Path] = typer.Option(None, "--out", help="bundle directory to write (replaced atomically)"),
    config: Optional[Path] = typer.Option(None, "--config", help="a job file (YAML/JSON/TOML) that runs every "
                                          "stage (build, georef, fuse-aerial, layers); reruns skip finished stages"),
    poses: Optional[Path] = typer.Option(None, "--poses", help="pose file (omit for SfM from unposed images)"),
    poses_format: Optional[PoseFormat] = typer.Option(None, "--poses-format"),
    camera: Optional[str] = typer.Option(None, "--camera", help='"MODEL W H PARAMS..." for all images'),
    sfm: SfmMethod = typer.Option(SfmMethod.auto, "--sfm", help="SfM method without poses (auto: incremental, "
                                 "and global too when incremental registers < 80 % of the images)"),
    max_keypoints: int = typer.Option(4000, "--max-keypoints"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest statistics as JSON"),
) -> None:
    """Build a map bundle from posed images (--poses) or by SfM from unposed images, or run a job file."""
    if config is not None:
        if images is not None or out is not None or poses is not None:
            raise VlocError("--config takes every option from the job file: drop --images/--out/--poses")
        from mapping.batch import load_batch_config, run_batch
        cfg_job = load_batch_config(config)
        done = run_batch(cfg_job, Reporter(enabled=not quiet))
        print(json.dumps({"bundle": str(cfg_job.out), "stages": done}) if as_json else
              f"map job done: {cfg_job.out} (" + ", ".join(f"{k} {v}" for k, v in done.items()) + ")")
        return
    if images is None or out is None:
        raise VlocError("give --images and --out (or --config FILE)")
    cam = Camera.parse(camera) if camera else None
    if not images.is_dir():
        raise VlocError(f"--images {images} is not a directory")
    records = load_records(images, poses, poses_format, cam)
    from dataclasses import replace
    cfg = BuildConfig()
    cfg = replace(cfg, features=replace(cfg.features, max_keypoints=max_keypoints),
                  reconstruction=replace(cfg.reconstruction, sfm_method=sfm.value))
    reporter = Reporter(enabled=not quiet)
    manifest = build_map(images, records, out, cfg, pose_file=poses,
                         pose_format=poses_format.value if poses_format else None, reporter=reporter)
    s = manifest["statistics"]
    if as_json:
        print(json.dumps({"bundle": str(out), **s}))
    else:
        reporter.enabled = True
        reporter.log(f"[green]map written[/green] {out}: {s['n_images']}/{s['n_images_input']} images registered, "
                     f"{s['n_points3D']} points, reprojection error median {s['reprojection_error_px']['median']:.2f} px "
                     f"mean {s['reprojection_error_px']['mean']:.2f} px, {s['build_seconds']:.1f} s, "
                     f"{s['bytes_per_image'] / 1e3:.0f} kB/image")


@app.command("info")
@user_errors
def info(bundle: Path = typer.Argument(..., help="bundle directory"),
         as_json: bool = typer.Option(False, "--json"),
         verify: bool = typer.Option(False, "--verify", help="check every file's checksum")) -> None:
    """Show a bundle's manifest: format, frames, cameras, features, statistics."""
    m = read_manifest(bundle)
    bad = verify_files(bundle, m) if verify else []
    if as_json:
        out = {k: v for k, v in m.items() if k != "sources"}
        out["n_source_images"] = len(m.get("sources", {}).get("images", {}))
        if verify:
            out["corrupt_files"] = bad
        print(json.dumps(out, indent=2))
    else:
        s = m["statistics"]
        t = Table(title=f"vloc map bundle {bundle}", show_header=False)
        t.add_row("format", f"{m['format']} v{m['format_version']} (vloc {m.get('vloc_version')})")
        t.add_row("created", m.get("created_utc", "?"))
        t.add_row("world frame", json.dumps(m.get("world_frame")))
        t.add_row("units / pose", f"{m['conventions']['units']}; {m['conventions']['pose']}")
        t.add_row("cameras", "; ".join(f"{c['model']} {c['width']}x{c['height']}" for c in m["cameras"]))
        t.add_row("features", m["features"]["type"])
        t.add_row("images", f"{s['n_images']} registered of {s['n_images_input']}")
        t.add_row("points3D", f"{s['n_points3D']} (mean track {s['mean_track_length']:.2f})")
        t.add_row("reprojection", f"median {s['reprojection_error_px']['median']:.3f} px, "
                                  f"mean {s['reprojection_error_px']['mean']:.3f} px")
        t.add_row("size", f"{s['bytes_on_disk'] / 1e6:.2f} MB on disk (localization map "
                          f"{s['bytes_per_image'] / 1e3:.0f} kB/image)")
        if m.get("revision"):
            t.add_row("revision", f"{m['revision']} (" + ", ".join(h["stage"] for h in m.get("history", [])) + ")")
        if m.get("stages"):
            t.add_row("job stages", ", ".join(f"{k} {v['key'][:12]}" for k, v in m["stages"].items()))
        if m.get("layers"):
            files = m["layers"].get("files", {})
            t.add_row("layers", f"{len(files)} files: " + ", ".join(Path(f).name for f in files))
        if "georeference" in m:
            from mapping.georef_cli import georeference_rows
            for k, v in georeference_rows(m["georeference"]):
                t.add_row(k, v)
        if verify:
            t.add_row("checksums", "all files intact" if not bad else f"CORRUPT: {bad}")
        Console().print(t)
    if bad:
        raise typer.Exit(1)


import mapping.georef_cli  # noqa: E402,F401  (registers `vloc map georef`)
import mapping.layers_cli  # noqa: E402,F401  (registers `vloc map layers`)
import mapping.aerial_cli  # noqa: E402,F401  (registers `vloc map fuse-aerial`)
