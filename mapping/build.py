"""`vloc map build`: images (+ poses) -> map bundle. One entry function, configs as data."""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np
import pycolmap

import bundleio as bundle_io
from core import __version__
from core.camera import Camera
from core.geometry import Rigid3
from core.memory import process_peak_rss_bytes
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError
from mapping.config import BuildConfig
from mapping.extract import extract_all, feature_key
from mapping.feature_store import FeatureStore, ObservedDescriptors
from mapping.match import lightglue_features, match_pairs
from mapping.pairs import pairs_from_poses
from mapping.pairs_unposed import unposed_pairs
from mapping.partition_build import (
    PartitionPlan,
    PartJob,
    merge_parts,
    part_jobs,
    plan_partitions,
    run_parts,
    whole_tile,
)
from mapping.point_quality import of_feature_set
from mapping.point_table import PointTable, compact_from_table
from mapping.reconstruct import (
    filter_points,
    observation_errors,
    points_xyz,
    structure_from_motion,
)
from mapping.retrieval_index import build_retrieval_index
from mapping.stage_cache import StageCache
from vision.matching import VerifiedPair
from vision.retrieval import RetrievalIndex

if TYPE_CHECKING:  # distributed loads only for a build on a cluster
    from mapping.cluster import ClusterConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")


def resolve_images(root: Path, records: list[ImageRecord], reporter: Reporter = QUIET) -> list[ImageRecord]:
    """Map each record's name to a file under root; accept a file with the same stem and another
    image extension (the shared pgt files name .png, the images are .jpg) and say so once."""
    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"image root {root} is not a directory")
    out, renamed, missing = [], [], []
    for r in records:
        p = root / r.name
        if p.is_file():
            out.append(r)
            continue
        stem = r.name[: -len(Path(r.name).suffix)] if Path(r.name).suffix else r.name
        alt = next((stem + e for e in IMAGE_EXTS if (root / (stem + e)).is_file()), None)
        if alt is None:
            missing.append(r.name)
            continue
        renamed.append((r.name, alt))
        out.append(replace(r, name=alt))
    if missing:
        raise VlocError(f"{len(missing)} image(s) named by the poses are missing under {root}, "
                        f"e.g. {missing[:3]}")
    if renamed:
        reporter.log(f"note: matched {len(renamed)} image name(s) by stem, e.g. {renamed[0][0]} -> {renamed[0][1]}")
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise VlocError("the image list names the same image twice")
    return out


def list_images(root: Path) -> list[str]:
    """All image files under root (recursive, sorted), POSIX paths relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"image root {root} is not a directory")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix in IMAGE_EXTS and not p.name.startswith("."))


def compact_model(rec: pycolmap.Reconstruction, records: list[ImageRecord], feats: FeatureStore):
    """The bundle's compact model of a whole pycolmap model (an unposed build's SfM result):
    :func:`mapping.point_table.compact_from_table` of its points, each registered image at the
    model's ``cam_from_world`` and intrinsics (which SfM estimated or refined).

    Returns (compact Reconstruction, names, keypoints, point3D_ids, rows) in image order; rows[k]:
    (feature index in ``feats``, (n,) keypoint rows) of registered image k, whose descriptors are
    read from ``feats`` only when the bundle is written (:class:`ObservedDescriptors`).
    """
    index_of = {r.name: k for k, r in enumerate(records)}
    at_model = list(records)
    for im in rec.images.values():
        if im.has_pose:
            k = index_of[im.name]
            at_model[k] = replace(records[k], camera=Camera.from_pycolmap(im.camera),
                                  cam_from_world=Rigid3.from_pycolmap(im.cam_from_world()))
    return compact_from_table(PointTable.of_model(rec, index_of), at_model, feats.keypoints)


def source_checksums(root: Path, records: list[ImageRecord], pose_file: Path | None) -> dict:
    out = {"images_root": str(Path(root).absolute()),
           "images": {r.name: bundle_io.sha256_file(Path(root) / r.name) for r in records}}
    if pose_file is not None:
        out["pose_file"] = {"path": str(Path(pose_file).absolute()), "sha256": bundle_io.sha256_file(pose_file)}
    return out


@dataclass
class FeatureSetModel:
    """One feature set reconstructed: the compact model and its observation table, in image order.

    keypoints / descriptors / point3d_ids: per registered image, the 2D points that observe a 3D
    point (keypoints (n, 2) float32 COLMAP pixels). ``descriptors`` of a build with a work directory
    are read from it image by image when asked (:class:`ObservedDescriptors`), so writing the bundle
    never holds them all. sizes: (N, 2) width, height of each image.
    """

    model: pycolmap.Reconstruction
    names: list[str]
    keypoints: list[np.ndarray]
    descriptors: Sequence[np.ndarray]
    point3d_ids: list[np.ndarray]
    sizes: np.ndarray
    index: RetrievalIndex
    stats: dict
    timings: dict = field(default_factory=dict)


class BuildStages(Protocol):
    """Where the per-image and per-pair stages run: in this process (:data:`IN_PROCESS`, threads)
    or as Dask tasks (:class:`mapping.dask_stages.DaskStages`); both give the same results under
    the same stage-cache keys. Features and matches come back as stores: held in memory (no cache)
    or read back from the cache when a later stage asks."""

    def features(self, images_root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                 cache: StageCache | None, image_sha: dict[str, str] | None) -> FeatureStore: ...

    def matches(self, records: list[ImageRecord], feats: FeatureStore, pairs: list[tuple[int, int]], posed: bool,
                cfg: BuildConfig, reporter: Reporter, cache: StageCache | None,
                feature_keys: list[str] | None) -> Mapping[tuple[int, int], VerifiedPair]: ...

    def retrieval(self, names: list[str], feats: FeatureStore, cfg: BuildConfig, reporter: Reporter
                  ) -> RetrievalIndex: ...

    def parts(self, jobs: list[PartJob], cfg: BuildConfig, reporter: Reporter, keypoints: Sequence,
              verified: Mapping[tuple[int, int], VerifiedPair]) -> list[dict]: ...


class InProcessStages:
    """Features and matches on this process's thread pools (``cfg.workers`` threads); the retrieval
    index on the calling thread."""

    def features(self, images_root, records, cfg, reporter, cache, image_sha):
        return extract_all(images_root, records, cfg, reporter, cache, image_sha)

    def matches(self, records, feats, pairs, posed, cfg, reporter, cache, feature_keys):
        return match_pairs(records, feats, pairs, posed, cfg, reporter, cache, feature_keys)

    def retrieval(self, names, feats, cfg, reporter):
        return build_retrieval_index(names, feats.descriptors, feats.counts, cfg.retrieval)

    def parts(self, jobs, cfg, reporter, keypoints, verified):
        return run_parts(jobs, cfg.workers, reporter, keypoints, verified)


IN_PROCESS = InProcessStages()


def reconstruct_set(images_root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter = QUIET,
                    cache: StageCache | None = None, image_sha: dict[str, str] | None = None,
                    stages: BuildStages = IN_PROCESS) -> FeatureSetModel:
    """Features -> pairs -> verified matches -> model (triangulated with the records' poses, or SfM
    when they have none) -> compact model + retrieval index of the registered images.
    ``stages``: where features and matches are computed (this process, or a Dask cluster)."""
    posed = all(r.cam_from_world is not None for r in records)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    feats = stages.features(images_root, records, cfg, reporter, cache, image_sha)
    fkeys = [feature_key(r, image_sha[r.name], cfg) for r in records] if cache is not None else None
    timings["features_s"] = time.perf_counter() - t

    def build_index() -> RetrievalIndex:
        t = time.perf_counter()
        index = stages.retrieval([r.name for r in records], feats, cfg, reporter)
        timings["retrieval_s"] = time.perf_counter() - t
        return index

    # Posed maps need the index only for the bundle: it is built beside the triangulation, which
    # leaves most of the second core idle. Unposed maps choose their pairs with it.
    index = None if posed else build_index()
    t = time.perf_counter()
    if posed:
        pairs = pairs_from_poses([r.camera for r in records], [r.cam_from_world for r in records], cfg.pairs)
    else:  # exhaustive up to cfg.exhaustive_max_images, else retrieval + sequential + loop candidates
        pairs = unposed_pairs(len(records), index.similarity_matrix, cfg.exhaustive_max_images,
                              cfg.retrieval_pairs_k, cfg.sequential_window)
    if not pairs:
        raise VlocError("no overlapping image pairs found (are the poses in metres and do the views overlap?)")
    verified = stages.matches(records, feats, pairs, posed, cfg, reporter, cache, fkeys)
    timings["matching_s"] = time.perf_counter() - t
    if not verified:
        raise VlocError("no image pair has enough verified matches")

    t = time.perf_counter()
    # the COLMAP database and the posed model take each image's keypoints, read one image at a time
    keypoints = feats.keypoint_view() if feats.streams else list(feats)
    plan = plan_partitions(records, verified, cfg, posed)
    part_stats = None
    with tempfile.TemporaryDirectory(prefix="vloc-build-") as work, ThreadPoolExecutor(1) as side:
        sfm_used = None
        pending_index = side.submit(build_index) if posed else None
        if plan is not None or posed:  # a posed map is one tile when not partitioned: a task like the tiles
            rec, part_stats = reconstruct_parts(plan or whole_tile(records, verified), records, keypoints, verified,
                                                cfg, Path(work), reporter, cache, fkeys, stages, images_root)
            timings["partitions_s"], timings["merge_s"] = part_stats.pop("parts_s"), part_stats["merge_s"]
            filtered_in_parts = int(part_stats.get("n_points_filtered", 0))
            if plan is None:
                part_stats = None
        else:
            rec, sfm_used = structure_from_motion(records, keypoints, verified, Path(work), cfg.reconstruction)
        if pending_index is not None:
            index = pending_index.result()
    if isinstance(rec, PointTable):  # posed tiles: filtered and coloured where they were triangulated
        removed = filtered_in_parts
    else:
        removed = filter_points(rec, cfg.reconstruction)
        if rec.num_points3D() == 0:
            raise VlocError("every triangulated point failed the track-length / reprojection filter")
        rec.extract_colors_for_all_images(str(images_root))
    timings["reconstruction_s"] = time.perf_counter() - t

    t = time.perf_counter()
    compact, names, kps, pids, rows = (compact_from_table(rec, records, feats.keypoints) if isinstance(rec, PointTable)
                                       else compact_model(rec, records, feats))
    del rec  # the compact model holds the map from here on
    descs = ObservedDescriptors(feats, rows)
    if not feats.streams:  # held in memory anyway: keep only the observing rows, as before
        descs = list(descs)
    errs = observation_errors(compact, names, kps, pids)
    registered = set(names)
    stats = {
        "n_images_input": len(records),
        "n_images": len(names),
        "n_images_unregistered": len(records) - len(names),
        "n_points3D": compact.num_points3D(),
        "n_observations": int(sum(len(k) for k in kps)),
        "mean_track_length": float(compact.compute_mean_track_length()),
        "reprojection_error_px": {"mean": float(errs.mean()), "median": float(np.median(errs)),
                                  "p90": float(np.percentile(errs, 90))},
        "n_pairs": len(pairs), "n_verified_pairs": len(verified), "n_points_filtered": removed,
        "mean_keypoints_per_image": float(np.mean(feats.counts)),
        **({"sfm_method_used": sfm_used} if sfm_used else {}),
        **({"partitions": part_stats} if part_stats else {}),
    }
    keep = [k for k, n in enumerate(index.names) if n in registered]
    order = {n: k for k, n in enumerate(index.names)}
    index = RetrievalIndex(index.centroids, index.descriptors[[order[n] for n in names]], names) \
        if len(keep) != len(index.names) or names != index.names else index
    cam_of = {r.name: r.camera for r in records}
    sizes = np.array([[cam_of[n].width, cam_of[n].height] for n in names], np.int32).reshape(-1, 2)
    timings["compaction_s"] = time.perf_counter() - t
    return FeatureSetModel(compact, names, kps, descs, pids, sizes, index, stats, timings)


def reconstruct_parts(plan: PartitionPlan, records: list[ImageRecord], keypoints: Sequence,
                      verified: Mapping[tuple[int, int], VerifiedPair], cfg: BuildConfig, work: Path,
                      reporter: Reporter, cache: StageCache | None, fkeys: list[str] | None, stages: BuildStages,
                      images_root: Path | None = None) -> tuple[pycolmap.Reconstruction | PointTable, dict]:
    """Partitioned reconstruction (:mod:`mapping.partition_build`): each part through ``stages``
    (threads here, or one Dask task per part), its output in the work directory when there is one
    (a rerun resumes), then merged here. Returns the merged model (unposed clusters) or point table
    (posed tiles, coloured from ``images_root``) and ``statistics.partitions``."""
    t = time.perf_counter()
    parallel = not isinstance(stages, InProcessStages) or min(cfg.workers, len(plan.parts)) > 1
    jobs = part_jobs(plan, records, cfg, work / "parts", verified, cache, fkeys, parallel, images_root)
    if len(jobs) > 1:
        reporter.log(f"partitioned reconstruction: {len(jobs)} {plan.kind} of at most {plan.max_images} images "
                     f"(+ overlap) from {len(records)} images")
    summaries = stages.parts(jobs, cfg, reporter, keypoints, verified)
    parts_s = time.perf_counter() - t
    rec, stats = merge_parts(plan, jobs, summaries, records, keypoints, verified, work, cfg)
    return rec, {**stats, "parts_s": parts_s}


def write_set(folder: Path, s: FeatureSetModel, with_keypoints: bool) -> None:
    """``model/``, ``features.h5`` and ``retrieval.npz`` of one feature set into ``folder``
    (a directory inside a bundle being written atomically). ``with_keypoints``: also store each
    observation's keypoint and the image sizes (learned sets, for LightGlue at query time)."""
    (folder / "model").mkdir(parents=True)
    s.model.write_binary(str(folder / "model"))
    point_ids, point_xyz = points_xyz(s.model)
    centres = np.array([Rigid3.from_pycolmap(s.model.find_image_with_name(n).cam_from_world()).centre
                        for n in s.names]).reshape(-1, 3)
    bundle_io.write_features_h5(folder / "features.h5", s.names, s.descriptors, s.point3d_ids, point_ids, point_xyz,
                                centres, keypoints=s.keypoints if with_keypoints else None,
                                image_sizes=s.sizes if with_keypoints else None,
                                point_quality=of_feature_set(s.model, s.names, s.keypoints, s.point3d_ids,
                                                             point_ids, point_xyz))
    s.index.save(folder / "retrieval.npz")


def feature_set_entry(cfg: BuildConfig, path: str, s: FeatureSetModel) -> dict:
    """The manifest's ``feature_sets[name]`` entry for a set built with ``cfg`` at ``path``."""
    if not cfg.learned_features:
        entry = {"type": "sift-opencv", "descriptor": "sift-uint8", "dim": 128, "matcher": "nn",
                 "config": asdict(cfg.features)}
    else:
        dim = int(s.descriptors[0].shape[1]) if s.descriptors else 0
        entry = {"type": cfg.feature_type, "descriptor": "float32", "dim": dim,
                 "matcher": f"lightglue-{lightglue_features(cfg.feature_type)}" if cfg.learned.matcher == "lightglue"
                 else "nn", "config": cfg.feature_config()}
    return {"path": path, **entry, "statistics": {k: s.stats[k] for k in ("n_images", "n_points3D", "n_observations")}}


def default_work_dir(out: Path) -> Path:
    """The build's work directory when none is given and one is needed (a cluster build): a hidden
    sibling of the bundle, the same one a job file uses by default (``.NAME.work/build``)."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.work" / "build"


def build_map(images_root: Path, records: list[ImageRecord], out: Path, cfg: BuildConfig = BuildConfig(),
              pose_file: Path | None = None, pose_format: str | None = None,
              reporter: Reporter = QUIET, work_dir: Path | None = None,
              cluster: ClusterConfig | None = None) -> dict:
    """Build a bundle at ``out`` from records (all posed, or all unposed). Returns the manifest.

    ``work_dir``: a :class:`~mapping.stage_cache.StageCache` directory; an interrupted build
    rerun with the same work_dir skips the images and pairs it had finished.
    ``cluster``: compute features and matches as Dask tasks (:mod:`mapping.cluster`,
    :mod:`mapping.dask_stages`) rather than on this process's threads; the work directory
    (default :func:`default_work_dir`) must then be on a path every worker shares, like the
    images. Same bundle data either way, and the work directory resumes across both.
    """
    t0 = time.perf_counter()
    records = resolve_images(images_root, records, reporter)
    if len(records) < 2:
        raise VlocError(f"a map needs at least 2 images, got {len(records)}")
    if any(r.camera is None for r in records):
        raise VlocError("some images have no camera: pass --camera 'MODEL W H PARAMS...'")
    posed_flags = {r.cam_from_world is not None for r in records}
    if len(posed_flags) > 1:
        raise VlocError("some images have poses and some do not: give poses for all or none")
    posed = posed_flags == {True}
    cfg = replace(cfg, feature_type=bundle_io.canonical_name(cfg.feature_type))

    sources = source_checksums(images_root, records, pose_file)
    if cluster is None:
        cache = StageCache(work_dir) if work_dir is not None else None
        s = reconstruct_set(images_root, records, cfg, reporter, cache, sources["images"])
    else:
        s = _reconstruct_on_cluster(images_root, records, cfg, reporter, work_dir or default_work_dir(out), cluster,
                                    sources["images"])
    stats = s.stats
    set_entry = feature_set_entry(cfg, ".", s)

    with bundle_io.atomic_directory(out) as tmp:
        t = time.perf_counter()
        write_set(tmp, s, with_keypoints=cfg.learned_features)
        s.timings["write_s"] = time.perf_counter() - t
        stats["build_seconds"] = time.perf_counter() - t0
        stats["timings"] = s.timings
        if "cluster" in stats:  # this process's peak, the bundle written (the workers report theirs)
            stats["cluster"]["client_peak_rss_bytes"] = process_peak_rss_bytes()
        manifest = {
            "vloc_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "conventions": bundle_io.CONVENTIONS,
            "world_frame": ({"kind": "poses", "source_format": pose_format, "metric": True} if posed else
                            {"kind": "sfm", "metric": False,
                             "note": "arbitrary similarity frame until georeferenced"}),
            "cameras": [{"camera_id": int(cid), **Camera.from_pycolmap(c).__dict__}
                        for cid, c in s.model.cameras.items()],
            "features": {k: set_entry[k] for k in ("type", "descriptor", "dim", "config")},
            "feature_sets": {cfg.feature_type: set_entry},
            "mapping": {"posed": posed, "config": _jsonable(asdict(cfg))},
            "retrieval": {"type": "vlad", "n_clusters": int(len(s.index.centroids)),
                          "dim": int(s.index.descriptors.shape[1])},
            "statistics": stats,
            "sources": sources,
        }
        bundle_io.record_pending_stage(manifest, "build")
        stats["bytes_on_disk"] = bundle_io.dir_size(tmp)
        stats["bytes_per_image"] = stats["bytes_on_disk"] / max(1, len(s.names))
        bundle_io.write_manifest(tmp, manifest)
    return bundle_io.read_manifest(out)


def _reconstruct_on_cluster(images_root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                            work_dir: Path, cluster: ClusterConfig, image_sha: dict[str, str]) -> FeatureSetModel:
    """:func:`reconstruct_set` with features and matches as Dask tasks; the cluster's workers are
    first asked whether they see the images and the work directory."""
    from mapping.cluster import check_workers, n_workers, open_cluster
    from mapping.dask_stages import DaskStages

    work_dir, images_root = Path(work_dir).absolute(), Path(images_root).absolute()
    t = time.perf_counter()
    with open_cluster(reporter=reporter, config=cluster) as client:
        check_workers(client, images_root, [r.name for r in records], work_dir)
        reporter.log(f"work directory {work_dir} (kept: a rerun resumes from it)")
        stages = DaskStages(client, cluster)
        start_s = time.perf_counter() - t
        s = reconstruct_set(images_root, records, cfg, reporter, StageCache(work_dir), image_sha, stages)
        s.timings["cluster_start_s"] = start_s
        s.stats["cluster"] = {"scheduler": cluster.scheduler, "n_workers": n_workers(client), **stages.summary()}
    return s


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
