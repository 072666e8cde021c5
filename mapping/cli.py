"""`vloc map build` (from flags) and `vloc map info`: a thin CLI over mapping.build and the bundle format.

The commands are registered by the `vloc` shell (vloc/cli.py); the job-file form of `map build`
lives one floor up (hdmap.cli), since a job runs the HD-map stages too."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from bundleio import read_manifest, verify_files
from core.camera import Camera
from core.cli_util import user_errors
from core.progress import Reporter
from core.types import ImageRecord, VlocError

if TYPE_CHECKING:  # pycolmap, torch and the build load when a command runs, not with the CLI
    from mapping.config import BuildConfig


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


def build_config(features: str = "sift", max_keypoints: Optional[int] = None, device: str = "auto",
                 sfm: str = "auto", partition: str = "auto", max_partition_images: Optional[int] = None
                 ) -> BuildConfig:
    """A BuildConfig from the CLI's choices (None keypoints: the feature type's default; None
    partition size: the map kind's default)."""
    from dataclasses import replace

    from bundleio import canonical_name
    ftype = canonical_name(features)
    if device not in ("auto", "cpu", "cuda"):
        raise VlocError(f"--device must be auto, cpu or cuda, got {device!r}")
    from mapping.config import BuildConfig
    cfg = BuildConfig(feature_type=ftype)
    if max_keypoints is not None:
        if max_keypoints < 1:
            raise VlocError("--max-keypoints must be at least 1")
        cfg = replace(cfg, features=replace(cfg.features, max_keypoints=max_keypoints),
                      learned=replace(cfg.learned, max_keypoints=max_keypoints))
    return replace(cfg, learned=replace(cfg.learned, device=device),
                   reconstruction=replace(cfg.reconstruction, sfm_method=sfm), partition=partition,
                   max_partition_images=max_partition_images)


def partition_images(text: Optional[str]) -> Optional[int]:
    """``--max-partition-images`` (taken as text so that a bad value is one error line)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise VlocError(f"--max-partition-images takes a whole number of images, got {text!r}") from None


def build_from_images(images: Optional[Path], out: Optional[Path], poses: Optional[Path],
                      poses_format: Optional[PoseFormat], camera: Optional[str], sfm: SfmMethod,
                      max_keypoints: Optional[int], quiet: bool, as_json: bool, features: str = "sift",
                      device: str = "auto", scheduler: Optional[str] = None, workers: Optional[int] = None,
                      partition: str = "auto", max_partition_images: Optional[str] = None) -> None:
    """`vloc map build` from flags (posed images, or SfM from unposed ones): build, then report.
    ``scheduler``: None (this process), "local" or "tcp://HOST:PORT" (a Dask cluster; the work
    directory is then the bundle's hidden sibling ``.NAME.work/build``, kept to resume).
    ``partition``: auto | off | on, ``max_partition_images``: images per partition
    (:mod:`mapping.partition_build`)."""
    if images is None or out is None:
        raise VlocError("give --images and --out (or --config FILE)")
    from mapping.cluster import cluster_config
    cluster = cluster_config(scheduler, workers)
    cfg = build_config(features, max_keypoints, device, sfm.value, partition, partition_images(max_partition_images))
    cam = Camera.parse(camera) if camera else None
    if not images.is_dir():
        raise VlocError(f"--images {images} is not a directory")
    records = load_records(images, poses, poses_format, cam)
    from mapping.build import build_map
    reporter = Reporter(enabled=not quiet)
    manifest = build_map(images, records, out, cfg, pose_file=poses,
                         pose_format=poses_format.value if poses_format else None, reporter=reporter,
                         cluster=cluster)
    s = manifest["statistics"]
    if as_json:
        print(json.dumps({"bundle": str(out), **s}))
    else:
        reporter.enabled = True
        reporter.log(f"[green]map written[/green] {out}: {s['n_images']}/{s['n_images_input']} images registered, "
                     f"{s['n_points3D']} points, reprojection error median {s['reprojection_error_px']['median']:.2f} px "
                     f"mean {s['reprojection_error_px']['mean']:.2f} px, {s['build_seconds']:.1f} s, "
                     f"{s['bytes_per_image'] / 1e3:.0f} kB/image")


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
            for k, v in georeference_rows(m["georeference"]):
                t.add_row(k, v)
        if verify:
            t.add_row("checksums", "all files intact" if not bad else f"CORRUPT: {bad}")
        Console().print(t)
    if bad:
        raise typer.Exit(1)


def georeference_rows(g: dict) -> list[tuple[str, str]]:
    """(label, text) rows of a manifest ``georeference`` entry for `vloc map info` (raw JSON if unexpected)."""
    try:
        return _georeference_rows(g)
    except (AttributeError, KeyError, TypeError, ValueError):
        return [("georeference", json.dumps(g)[:300])]


def _georeference_rows(g: dict) -> list[tuple[str, str]]:
    o, sim, r = g.get("origin", {}), g.get("enu_from_map", {}), g.get("residuals", {})
    rows = [("georef origin", f"{o.get('latitude', float('nan')):.7f}, {o.get('longitude', float('nan')):.7f}, "
                              f"{o.get('altitude', float('nan')):.2f} m (WGS84)")]
    yaw = f"; yaw {r['yaw_deg']:.2f} deg (map x azimuth)" if "yaw_deg" in r else ""
    rows.append(("georef enu_from_map", f"scale {sim.get('scale', float('nan')):.6g}{yaw}"))
    if "horizontal_m" in r:
        h, v = r["horizontal_m"], r["vertical_m"]
        rows.append(("georef residuals", f"{r.get('n_inliers')}/{r.get('n')} inliers; horizontal median "
                                         f"{h['median']:.2f} m max {h['max']:.2f} m; vertical median "
                                         f"{v['median']:.2f} m max {v['max']:.2f} m"))
    if "crs" in g:
        rows.append(("georef CRS", f"{g['crs']} ({g.get('crs_name', '')})"))
    src = g.get("source")
    if src is not None:
        rows.append(("georef source", src.get("kind", "?") + (f" {src['file']}" if "file" in src else "")
                     if isinstance(src, dict) else str(src)))
    return rows


@user_errors
def add_features_cmd(bundle: Path = typer.Argument(..., help="bundle directory (changed atomically: a new revision)"),
                     features: str = typer.Option(..., "--features", help="aliked (= aliked-n16) | aliked-n32 | "
                                                  "aliked-t16 | disk | sift"),
                     images: Optional[Path] = typer.Option(None, "--images", help="the map's source images "
                                                           "(default: the folder recorded at build time)"),
                     max_keypoints: Optional[int] = typer.Option(None, "--max-keypoints"),
                     device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
                     quiet: bool = typer.Option(False, "--quiet", "-q"),
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """Add a second feature set to a posed map: extracted from its source images and triangulated
    with the map's own poses (no new SfM), written as a new revision."""
    from mapping.add_features import add_features
    cfg = build_config(features, max_keypoints, device)
    m = add_features(bundle, features, cfg, images, Reporter(enabled=not quiet))
    name = cfg.feature_type
    entry = m["feature_sets"][name]
    if as_json:
        print(json.dumps({"bundle": str(bundle), "feature_set": name, "revision": m.get("revision"), **entry}))
    else:
        st = entry.get("statistics", {})
        Console(stderr=False).print(f"[green]added[/green] {name} to {bundle} (revision {m.get('revision')}): "
                                    f"{st.get('n_points3D')} points from {st.get('n_images')} images; sets: "
                                    + ", ".join(m["feature_sets"]))
