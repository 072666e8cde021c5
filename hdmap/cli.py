"""`vloc map build`: from flags (mapping.cli) or from a job file that runs every map stage (hdmap.job).

Registered by the `vloc` shell (vloc/cli.py) with the other `vloc map` commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from core.cli_util import user_errors
from core.progress import Reporter
from core.types import VlocError
from mapping.cli import PoseFormat, SfmMethod, build_from_images


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
    max_keypoints: Optional[int] = typer.Option(None, "--max-keypoints", help="keypoints per image (default: "
                                                "SIFT 4000, learned 2048)"),
    features: str = typer.Option("sift", "--features", help="local features: sift | aliked (= aliked-n16) | "
                                 "aliked-n32 | aliked-t16 | disk; learned pairs are matched by LightGlue"),
    device: str = typer.Option("auto", "--device", help="learned features: auto | cpu | cuda"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="features and matching as Dask tasks: local "
                                            "(a cluster on this machine) | tcp://HOST:PORT (a running `dask "
                                            "scheduler`; images and work dir on a path every worker sees); "
                                            "default: this process"),
    workers: Optional[int] = typer.Option(None, "--workers", help="with --scheduler local: worker processes "
                                          "(default one per core); tcp: workers to wait for"),
    partition: str = typer.Option("auto", "--partition", help="partitioned reconstruction: auto (maps larger than "
                                  "one partition) | off | on; posed maps in spatial tiles, unposed in view-graph "
                                  "clusters (GPS when present), one Dask task each on a cluster"),
    max_partition_images: Optional[str] = typer.Option(None, "--max-partition-images", metavar="N",
                                                       help="images per partition (default: posed 5000, "
                                                       "unposed 1000)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest statistics as JSON"),
) -> None:
    """Build a map bundle from posed images (--poses) or by SfM from unposed images, or run a job file."""
    if config is not None:
        if images is not None or out is not None or poses is not None:
            raise VlocError("--config takes every option from the job file: drop --images/--out/--poses")
        from hdmap.job import load_batch_config, run_batch, with_scheduler
        cfg_job = load_batch_config(config)
        if scheduler is not None or workers is not None:  # where it runs: the flags win over the file
            cfg_job = with_scheduler(cfg_job, scheduler, workers)
        if partition != "auto" or max_partition_images is not None:
            raise VlocError("--partition / --max-partition-images change what a job builds: set build.partition / "
                            "build.max_partition_images in the job file")
        done = run_batch(cfg_job, Reporter(enabled=not quiet))
        print(json.dumps({"bundle": str(cfg_job.out), "stages": done}) if as_json else
              f"map job done: {cfg_job.out} (" + ", ".join(f"{k} {v}" for k, v in done.items()) + ")")
        return
    build_from_images(images, out, poses, poses_format, camera, sfm, max_keypoints, quiet, as_json, features, device,
                      scheduler, workers, partition, max_partition_images)
