"""`vloc map build`: images (+ poses) -> map bundle. One entry function, configs as data."""
from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import pycolmap

import bundleio as bundle_io
from core import __version__
from core.camera import Camera
from core.geometry import Rigid3
from core.imageio import read_image
from core.progress import QUIET, Reporter
from core.threads import kernel_threads
from core.types import ImageRecord, VlocError
from mapping.pairs import PosePairConfig, pairs_exhaustive, pairs_from_poses, pairs_from_similarity
from mapping.reconstruct import (
    ReconstructionConfig,
    filter_points,
    observation_errors,
    structure_from_motion,
    triangulate_known_poses,
)
from mapping.stage_cache import StageCache, content_key
from vision.features import Features, SiftConfig, make_backend
from vision.matching import (
    MatchConfig,
    VerifiedPair,
    match_descriptors,
    match_sift_int8,
    normalise_descriptors,
    sift_int8,
    verify_unknown_pose,
    verify_with_poses,
)
from vision.retrieval import RetrievalConfig, RetrievalIndex

#: memory for the per-image int8 RootSIFT kept during pair matching.
INT8_CACHE_BYTES = 256 << 20

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a map build (recorded in the manifest)."""

    features: SiftConfig = field(default_factory=SiftConfig)
    pairs: PosePairConfig = field(default_factory=PosePairConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    #: unposed maps up to this many images are matched exhaustively, larger ones by retrieval.
    exhaustive_max_images: int = 40
    #: unposed: partners per image from retrieval, and sequential neighbours.
    retrieval_pairs_k: int = 15
    sequential_window: int = 3
    workers: int = max(1, os.cpu_count() or 1)


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


@contextmanager
def worker_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads whose OpenCV / torch kernels run single-threaded meanwhile
    (the workers already fill the cores; see :func:`core.threads.kernel_threads`)."""
    with kernel_threads(1) if workers > 1 else nullcontext(), ThreadPoolExecutor(workers) as ex:
        yield ex


def _feature_key(r: ImageRecord, image_sha: str, cfg: BuildConfig) -> str:
    return content_key("features", image_sha, str(r.camera), asdict(cfg.features))


def extract_all(root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                cache: StageCache | None = None, image_sha: dict[str, str] | None = None) -> list[Features]:
    """Features of every record (from ``cache`` when an identical image was done before)."""
    # OpenCV releases the GIL; one backend per thread keeps detector state separate.
    local = threading.local()

    def one(r: ImageRecord) -> Features:
        key = _feature_key(r, image_sha[r.name], cfg) if cache is not None else None
        if key is not None and (hit := cache.get("features", key)) is not None:
            return Features(hit["keypoints"], hit["scales"], hit["orientations"], hit["descriptors"])
        if not hasattr(local, "backend"):
            local.backend = make_backend("sift", **asdict(cfg.features))
        f = local.backend.extract(read_image(Path(root) / r.name, r.camera, gray=True))
        if key is not None:
            cache.put("features", key, keypoints=f.keypoints, scales=f.scales, orientations=f.orientations,
                      descriptors=f.descriptors)
        return f

    with worker_pool(cfg.workers) as ex:
        feats = list(reporter.track(ex.map(one, records), "features", total=len(records)))
    empty = [r.name for r, f in zip(records, feats) if len(f) < 20]
    if len(empty) == len(records):
        raise VlocError("no image has usable local features (blank or unreadable images?)")
    return feats


def match_pairs(records: list[ImageRecord], feats: list[Features], pairs: list[tuple[int, int]],
                posed: bool, cfg: BuildConfig, reporter: Reporter, cache: StageCache | None = None,
                feature_keys: list[str] | None = None) -> dict[tuple[int, int], VerifiedPair]:
    """Verified matches of each pair (from ``cache`` when the same pair was verified before)."""
    mc = cfg.matching

    def one(pair: tuple[int, int]):
        key = None
        if cache is not None:
            i, j = pair
            poses = [None if r.cam_from_world is None else r.cam_from_world.matrix3x4().tolist()
                     for r in (records[i], records[j])]
            key = content_key("matches", feature_keys[i], feature_keys[j], posed, poses, asdict(mc))
            if (hit := cache.get("matches", key)) is not None:
                if len(hit["matches"]) == 0:
                    return pair, None
                return pair, VerifiedPair(hit["matches"], Rigid3(hit["rotation"], hit["translation"]), hit["E"])
        pair, vp = _match_one(pair)
        if key is not None:
            if vp is None:
                cache.put("matches", key, matches=np.zeros((0, 2), np.int64))
            else:
                cache.put("matches", key, matches=vp.matches, rotation=vp.cam2_from_cam1.rotation,
                          translation=vp.cam2_from_cam1.translation, E=vp.E)
        return pair, vp

    # int8 RootSIFT once per image (128 bytes per keypoint, kept for the most recent images within
    # the budget) rather than per pair; exact scores come from the uint8 rows that need them.
    per_image = 128 * max(1, int(np.mean([len(f) for f in feats]))) if feats else 1
    int8_of = lru_cache(maxsize=max(2, INT8_CACHE_BYTES // per_image))(lambda i: sift_int8(feats[i].descriptors))

    def _match_one(pair: tuple[int, int]):
        i, j = pair
        d1, d2 = feats[i].descriptors, feats[j].descriptors
        if d1.dtype == np.uint8 and d2.dtype == np.uint8:  # SIFT
            m = match_sift_int8(int8_of(i), int8_of(j), d1, d2, mc.ratio, mc.mutual)
        else:  # learned float descriptors
            m = match_descriptors(normalise_descriptors(d1), normalise_descriptors(d2), mc.ratio, mc.mutual)
        if len(m) < mc.min_inliers:
            return pair, None
        a, b = records[i], records[j]
        if posed:
            vp = verify_with_poses(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                   a.cam_from_world, b.cam_from_world, mc.max_epipolar_error_px)
        else:
            vp = verify_unknown_pose(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                     mc.max_epipolar_error_px, mc.ransac_confidence)
        return pair, (vp if vp is not None and len(vp.matches) >= mc.min_inliers else None)

    with worker_pool(cfg.workers) as ex:
        results = list(reporter.track(ex.map(one, pairs), "matching", total=len(pairs)))
    return {p: vp for p, vp in results if vp is not None}


def compact_model(rec: pycolmap.Reconstruction, records: list[ImageRecord], feats: list[Features]):
    """Model with only observing 2D points per registered image, plus the matching feature rows.

    Returns (compact Reconstruction, names, keypoints, descriptors, point3D_ids) in image order.
    """
    out = pycolmap.Reconstruction()
    for cam_id, cam in rec.cameras.items():
        out.add_camera_with_trivial_rig(cam)
    name_to_idx = {r.name: k for k, r in enumerate(records)}
    names, kps, descs, pids = [], [], [], []
    obs_image, obs_row = [], []
    for image_id in sorted(rec.reg_image_ids()):
        im = rec.image(image_id)
        idx = np.sort(np.asarray(im.get_observation_point2D_idxs(), np.int64))
        if len(idx) == 0:
            continue
        f = feats[name_to_idx[im.name]]
        points2d = im.points2D
        new_kp = f.keypoints[idx].astype(np.float64)   # the model's 2D points are these keypoints
        ids = np.fromiter((points2d[k].point3D_id for k in idx.tolist()), np.int64, len(idx))
        new_im = pycolmap.Image(name=im.name, keypoints=new_kp, camera_id=im.camera_id, image_id=image_id)
        out.add_image_with_trivial_frame(new_im, im.cam_from_world())
        obs_image.append(np.full(len(ids), image_id, np.int64))
        obs_row.append(np.arange(len(ids), dtype=np.int64))
        names.append(im.name)
        kps.append(new_kp.astype(np.float32))
        descs.append(f.descriptors[idx])
        pids.append(ids)
    # tracks of the compact model, points in order of first observation
    all_pid = np.concatenate(pids) if pids else np.zeros(0, np.int64)
    all_image, all_row = (np.concatenate(obs_image), np.concatenate(obs_row)) if pids else (all_pid, all_pid)
    order = np.argsort(all_pid, kind="stable")
    uniq, start = np.unique(all_pid[order], return_index=True)
    bounds = np.r_[start, len(order)]
    first_seen = np.argsort(order[start], kind="stable")
    id_map = {}
    for u in first_seen.tolist():
        sel = order[bounds[u]:bounds[u + 1]]
        p = rec.points3D[int(uniq[u])]
        track = pycolmap.Track()
        track.add_elements([pycolmap.TrackElement(int(i), int(r)) for i, r in zip(all_image[sel], all_row[sel])])
        id_map[int(uniq[u])] = out.add_point3D(p.xyz, track, p.color)
    pids = [np.array([id_map[int(x)] for x in ids], np.int64) for ids in pids]
    out.update_point_3d_errors()
    return out, names, kps, descs, pids


def source_checksums(root: Path, records: list[ImageRecord], pose_file: Path | None) -> dict:
    out = {"images_root": str(Path(root).absolute()),
           "images": {r.name: bundle_io.sha256_file(Path(root) / r.name) for r in records}}
    if pose_file is not None:
        out["pose_file"] = {"path": str(Path(pose_file).absolute()), "sha256": bundle_io.sha256_file(pose_file)}
    return out


def build_map(images_root: Path, records: list[ImageRecord], out: Path, cfg: BuildConfig = BuildConfig(),
              pose_file: Path | None = None, pose_format: str | None = None,
              reporter: Reporter = QUIET, work_dir: Path | None = None) -> dict:
    """Build a bundle at ``out`` from records (all posed, or all unposed). Returns the manifest.

    ``work_dir``: a :class:`~mapping.stage_cache.StageCache` directory; an interrupted build
    rerun with the same work_dir skips the images and pairs it had finished.
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
    timings = {}

    sources = source_checksums(images_root, records, pose_file)
    cache = StageCache(work_dir) if work_dir is not None else None
    t = time.perf_counter()
    feats = extract_all(images_root, records, cfg, reporter, cache, sources["images"])
    fkeys = [_feature_key(r, sources["images"][r.name], cfg) for r in records] if cache is not None else None
    timings["features_s"] = time.perf_counter() - t

    def build_index() -> RetrievalIndex:
        t = time.perf_counter()
        index = RetrievalIndex.build([r.name for r in records], [f.descriptors for f in feats], cfg.retrieval)
        timings["retrieval_s"] = time.perf_counter() - t
        return index

    # Posed maps need the index only for the bundle: it is built beside the triangulation, which
    # leaves most of the second core idle. Unposed maps choose their pairs with it.
    index = None if posed else build_index()
    t = time.perf_counter()
    if posed:
        pairs = pairs_from_poses([r.camera for r in records], [r.cam_from_world for r in records], cfg.pairs)
    elif len(records) <= cfg.exhaustive_max_images:
        pairs = pairs_exhaustive(len(records))
    else:
        pairs = pairs_from_similarity(index.similarity_matrix(), cfg.retrieval_pairs_k, cfg.sequential_window)
    if not pairs:
        raise VlocError("no overlapping image pairs found (are the poses in metres and do the views overlap?)")
    verified = match_pairs(records, feats, pairs, posed, cfg, reporter, cache, fkeys)
    timings["matching_s"] = time.perf_counter() - t
    if not verified:
        raise VlocError("no image pair has enough verified matches")

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vloc-build-") as work, ThreadPoolExecutor(1) as side:
        sfm_used = None
        if posed:
            pending_index = side.submit(build_index)
            rec = triangulate_known_poses(records, feats, verified, Path(work), cfg.reconstruction)
            index = pending_index.result()
        else:
            rec, sfm_used = structure_from_motion(records, feats, verified, Path(work), cfg.reconstruction)
    removed = filter_points(rec, cfg.reconstruction)
    if rec.num_points3D() == 0:
        raise VlocError("every triangulated point failed the track-length / reprojection filter")
    rec.extract_colors_for_all_images(str(images_root))
    timings["reconstruction_s"] = time.perf_counter() - t

    compact, names, kps, descs, pids = compact_model(rec, records, feats)
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
        "mean_keypoints_per_image": float(np.mean([len(f) for f in feats])),
        **({"sfm_method_used": sfm_used} if sfm_used else {}),
    }
    keep = [k for k, n in enumerate(index.names) if n in registered]
    order = {n: k for k, n in enumerate(index.names)}
    index = RetrievalIndex(index.centroids, index.descriptors[[order[n] for n in names]], names) \
        if len(keep) != len(index.names) or names != index.names else index

    with bundle_io.atomic_directory(out) as tmp:
        (tmp / "model").mkdir()
        compact.write_binary(str(tmp / "model"))
        point_ids = np.array(list(compact.points3D.keys()), np.int64)
        point_xyz = np.array([compact.points3D[int(i)].xyz for i in point_ids]).reshape(-1, 3)
        centres = np.array([Rigid3.from_pycolmap(compact.find_image_with_name(n).cam_from_world()).centre
                            for n in names])
        bundle_io.write_features_h5(tmp / "features.h5", names, descs, pids, point_ids, point_xyz, centres)
        index.save(tmp / "retrieval.npz")
        stats["build_seconds"] = time.perf_counter() - t0
        stats["timings"] = timings
        manifest = {
            "vloc_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "conventions": bundle_io.CONVENTIONS,
            "world_frame": ({"kind": "poses", "source_format": pose_format, "metric": True} if posed else
                            {"kind": "sfm", "metric": False,
                             "note": "arbitrary similarity frame until georeferenced"}),
            "cameras": [{"camera_id": int(cid), **Camera.from_pycolmap(c).__dict__}
                        for cid, c in compact.cameras.items()],
            "features": {"type": "sift-opencv", "descriptor": "sift-uint8", "dim": 128,
                         "config": asdict(cfg.features)},
            "mapping": {"posed": posed, "config": _jsonable(asdict(cfg))},
            "retrieval": {"type": "vlad", "n_clusters": int(len(index.centroids)), "dim": int(index.descriptors.shape[1])},
            "statistics": stats,
            "sources": sources,
        }
        bundle_io.record_pending_stage(manifest, "build")
        stats["bytes_on_disk"] = bundle_io.dir_size(tmp)
        stats["bytes_per_image"] = stats["bytes_on_disk"] / max(1, len(names))
        bundle_io.write_manifest(tmp, manifest)
    return bundle_io.read_manifest(out)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
