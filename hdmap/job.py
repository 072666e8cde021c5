"""One configuration file runs every map stage; a rerun skips the stages that are done.

``vloc map build --config FILE`` (YAML, JSON or TOML; relative paths are relative to the
file)::

    out: bundles/kitchen            # the bundle
    work_dir: .work/kitchen         # optional; default: a hidden sibling of ``out``
    build:     {images: frames/, poses: frames/pgt_sfm_seq01.txt, poses_format: pgt,
                camera: "PINHOLE 640 480 525 525 320 240", max_keypoints: 4000}
    georef:    {gnss: gps.csv}      # or {from_exif: true} or {gcp: gcp.csv}; origin, crs, max_error
    fuse_aerial: {ortho: ortho.tif, dsm: dsm.tif}
    layers:    {depth_root: frames/, depth_camera: "PINHOLE 640 480 585 585 320 240"}

Stages run in that order (sections left out are skipped). Each stage has a key: the SHA-256
of its configuration, of the files it reads, and of the previous stage's key. A stage is
skipped when the bundle's manifest records that key for it and every file of the bundle
matches its checksum; otherwise it runs and every later stage runs after it. Each stage
writes the bundle atomically and records its key in the same write; inside the build
stage, finished images and pairs are kept in ``work_dir``, so a killed build resumes
without redoing them and gives the same bundle.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Callable, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import bundleio as bundle_io
from core.progress import QUIET, Reporter
from core.types import VlocError
from mapping.stage_cache import content_key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSection(_Section):
    """``vloc map build`` options."""

    images: Path
    poses: Optional[Path] = None
    poses_format: Optional[Literal["7scenes", "pgt", "colmap", "kapture"]] = None
    camera: Optional[str] = None
    sfm: Literal["auto", "incremental", "global"] = "auto"
    #: keypoints per image (None: the feature type's default, SIFT 4000, learned 2048).
    max_keypoints: Optional[int] = None
    #: sift | aliked (= aliked-n16) | aliked-n32 | aliked-t16 | disk.
    features: str = "sift"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: where features and matching run: None / "none" (this process), "local" (a Dask cluster here)
    #: or "tcp://HOST:PORT" (a running ``dask scheduler``). Not part of the stage key: same result.
    scheduler: Optional[str] = None
    #: Dask workers (local: processes to start; tcp: to wait for).
    workers: Optional[int] = Field(None, ge=1)
    #: partitioned reconstruction: auto (maps larger than one partition) | off | on.
    partition: Literal["auto", "off", "on"] = "auto"
    #: images per partition (None: the map kind's default, see mapping.config).
    max_partition_images: Optional[int] = Field(None, ge=10)


#: BuildSection fields that say where the build runs, not what it builds (left out of its key).
WHERE_IT_RUNS = {"scheduler", "workers"}
#: BuildSection fields added later: in the key only when set (the keys of earlier jobs stay).
KEYED_WHEN_SET = {"partition": "auto", "max_partition_images": None}


class GeorefSection(_Section):
    """``vloc map georef`` options: exactly one of from_exif, gnss, gcp."""

    from_exif: bool = False
    gnss: Optional[Path] = None
    gcp: Optional[Path] = None
    origin: Optional[tuple[float, float, float]] = None
    crs: Optional[str] = None
    max_error: Optional[float] = None
    gravity: Literal["auto", "images", "none"] = "auto"
    fix_scale: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if sum([self.from_exif, self.gnss is not None, self.gcp is not None]) != 1:
            raise ValueError("georef needs exactly one of from_exif: true, gnss: FILE, gcp: FILE")
        return self


class AerialSection(_Section):
    """``vloc map fuse-aerial`` options."""

    ortho: Path
    dsm: Optional[Path] = None
    max_shift: float = 10.0
    keep_scale: bool = False


class LayersSection(_Section):
    """``vloc map layers`` options."""

    depth_root: Optional[Path] = None
    depth_camera: Optional[str] = None
    depth_stride: int = 1
    depth_colour: bool = False
    align_depth: bool = False
    voxel: float = 0.02
    grid_resolution: float = 0.05
    ortho_resolution: float = 0.02
    crs: Optional[str] = None


class BatchConfig(_Section):
    """A whole map job."""

    out: Path
    work_dir: Optional[Path] = None
    build: BuildSection
    georef: Optional[GeorefSection] = None
    fuse_aerial: Optional[AerialSection] = None
    layers: Optional[LayersSection] = None

    @property
    def work(self) -> Path:
        return self.work_dir or self.out.parent / f".{self.out.name}.work"


def _resolve(data, base: Path):
    """Make every relative path-like string of known path fields absolute against ``base``."""
    path_keys = {"out", "work_dir", "images", "poses", "gnss", "gcp", "ortho", "dsm", "depth_root"}
    if isinstance(data, dict):
        return {k: (str((base / v).resolve()) if k in path_keys and isinstance(v, str) else _resolve(v, base))
                for k, v in data.items()}
    return data


def load_batch_config(path: Path) -> BatchConfig:
    """Parse a YAML / JSON / TOML job file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise VlocError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # tomllib / json errors are ValueErrors
        raise VlocError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise VlocError(f"{path}: expected a mapping of stage sections at the top level")
    try:
        return BatchConfig.model_validate(_resolve(data, path.parent.resolve()))
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise VlocError(f"{path}: {msgs}") from None


def _file_sha(p: Optional[Path]) -> Optional[str]:
    if p is None:
        return None
    if not Path(p).is_file():
        raise VlocError(f"{p} does not exist")
    return bundle_io.sha256_file(Path(p))


def _tree_fingerprint(root: Optional[Path]) -> Optional[list]:
    """Names, sizes and mtimes of the files under a folder (cheap stand-in for hashing GBs of depth)."""
    if root is None:
        return None
    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"{root} is not a directory")
    return [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()]


def stage_done(bundle: Path, stage: str, key: str) -> bool:
    """True when the bundle records ``key`` for ``stage`` and all its files match their checksums."""
    try:
        m = bundle_io.read_manifest(bundle)
    except VlocError:
        return False
    return m.get("stages", {}).get(stage, {}).get("key") == key and not bundle_io.verify_files(bundle, m)


# ---- the stages ---------------------------------------------------------------------------------
def _build_key(cfg: BatchConfig) -> str:
    from mapping.build import source_checksums

    b = cfg.build
    records = _records(b)
    section = {k: v for k, v in b.model_dump(mode="json", exclude=WHERE_IT_RUNS).items()
               if k not in KEYED_WHEN_SET or v != KEYED_WHEN_SET[k]}
    return content_key("build", section,
                       source_checksums(b.images, _resolved(b.images, records), b.poses)["images"],
                       _file_sha(b.poses))


def _records(b: BuildSection):
    from core.camera import Camera
    from mapping.cli import PoseFormat, load_records

    cam = Camera.parse(b.camera) if b.camera else None
    return load_records(b.images, b.poses, PoseFormat(b.poses_format) if b.poses_format else None, cam)


def _resolved(root: Path, records):
    from mapping.build import resolve_images
    return resolve_images(root, records)


def with_scheduler(cfg: BatchConfig, scheduler: Optional[str], workers: Optional[int]) -> BatchConfig:
    """The job with the build's scheduler / workers replaced (the CLI's flags over the file's)."""
    update = {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    return cfg.model_copy(update={"build": cfg.build.model_copy(update=update)})


def _run_build(cfg: BatchConfig, reporter: Reporter) -> None:
    from mapping.build import build_map
    from mapping.cli import build_config
    from mapping.cluster import cluster_config

    b = cfg.build
    cluster = cluster_config(b.scheduler, b.workers)
    bc = build_config(b.features, b.max_keypoints, b.device, b.sfm, b.partition, b.max_partition_images)
    build_map(b.images, _records(b), cfg.out, bc, pose_file=b.poses, pose_format=b.poses_format,
              reporter=reporter, work_dir=cfg.work / "build", cluster=cluster)


def _run_georef(cfg: BatchConfig, reporter: Reporter) -> None:
    from hdmap.georef_bundle import georeference_bundle
    from hdmap.gravity import Gravity

    g = cfg.georef
    source = "exif" if g.from_exif else "gnss" if g.gnss is not None else "gcp"
    origin = None if g.origin is None else ",".join(repr(float(v)) for v in g.origin)
    entry, _, notes = georeference_bundle(cfg.out, source, g.gnss or g.gcp, None, origin, g.crs, g.max_error,
                                          Gravity(g.gravity), g.fix_scale)
    r = entry["residuals"]
    reporter.log(f"  georeference: {r['n_inliers']}/{r['n']} inliers, horizontal median "
                 f"{r['horizontal_m']['median']:.2f} m" + "".join(f"; {n}" for n in notes))


def _run_fuse_aerial(cfg: BatchConfig, reporter: Reporter) -> None:
    from hdmap.aerial import AerialConfig
    from hdmap.aerial_cli import fuse_and_store

    a = cfg.fuse_aerial
    result, _ = fuse_and_store(cfg.out, a.ortho, a.dsm, AerialConfig(max_shift_m=a.max_shift,
                                                                      refine_scale=not a.keep_scale))
    r = result.report
    reporter.log(f"  aerial: {r['n_inliers']}/{r['n_matches']} patches agree, residual {r['residual_m']:.3f} m")


def _run_layers(cfg: BatchConfig, reporter: Reporter) -> None:
    from hdmap.layers_cli import layers_job

    ly = cfg.layers
    layers_job(cfg.out, ly.depth_root, ly.depth_camera, ly.depth_stride, ly.depth_colour, ly.align_depth, ly.voxel,
               ly.grid_resolution, ly.ortho_resolution, ly.crs, reporter)


#: (name, key parts beyond the section and the previous key, runner)
Stage = tuple[str, Callable[[BatchConfig], list], Callable[[BatchConfig, Reporter], None]]


def stages(cfg: BatchConfig) -> list[Stage]:
    """The stages this config asks for, in order (the names of the manifest's ``stages``)."""
    out: list[Stage] = [("build", lambda c: [], _run_build)]
    if cfg.georef is not None:
        out.append(("georef", lambda c: [_file_sha(c.georef.gnss), _file_sha(c.georef.gcp)], _run_georef))
    if cfg.fuse_aerial is not None:
        out.append(("fuse-aerial", lambda c: [_file_sha(c.fuse_aerial.ortho), _file_sha(c.fuse_aerial.dsm)],
                    _run_fuse_aerial))
    if cfg.layers is not None:
        out.append(("layers", lambda c: [_tree_fingerprint(c.layers.depth_root)], _run_layers))
    return out


def run_batch(cfg: BatchConfig, reporter: Reporter = QUIET) -> dict:
    """Run (or skip) each stage; returns ``{stage: "ran" | "skipped"}`` in order."""
    done: dict[str, str] = {}
    key = _build_key(cfg)
    todo = stages(cfg)
    for n, (name, extra_parts, runner) in enumerate(todo, 1):
        if name != "build":
            section = getattr(cfg, name.replace("-", "_"))
            key = content_key(name, key, section.model_dump(mode="json"), extra_parts(cfg))
        if stage_done(cfg.out, name, key):
            reporter.log(f"[{n}/{len(todo)}] {name}: up to date (key {key[:12]}), skipped")
            done[name] = "skipped"
            continue
        reporter.log(f"[{n}/{len(todo)}] {name}: running")
        with bundle_io.recording_stage(name, key):
            runner(cfg, reporter)
        if not stage_done(cfg.out, name, key):
            raise VlocError(f"stage {name} finished but did not record itself in {cfg.out}")
        done[name] = "ran"
    return done
