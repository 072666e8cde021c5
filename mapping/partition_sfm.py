"""Partitioned reconstruction, part 3: unposed maps by view-graph clusters.

Every cluster (:func:`mapping.partition.partition_view_graph`) is reconstructed with pycolmap's
incremental mapper (:func:`mapping.reconstruct.structure_from_motion`) in its own arbitrary
similarity frame; :func:`align_models` brings each onto a reference cluster (LO-RANSAC
similarity, :func:`core.geometry.estimate_sim3_robust`, on the centres of the images two clusters
share and the 3D points of the tracks through them) and refuses a cluster it cannot align well;
:func:`merge_aligned` keeps one pose per image, unifies the tracks
(:func:`mapping.partition_merge.merge_tracks`), runs a global bundle adjustment, re-triangulates
with every verified pair (COLMAP's point triangulator, existing points kept) and adjusts once
more. COLMAP's hierarchical mapper does the same with its own clustering and merging
(``pycolmap.hierarchical_mapping``); here each step is a function a build (or a Dask task per
cluster) can call, with vloc's matches and checks. Poses are ``cam_from_world``.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pycolmap

from core.geometry import Rigid3, Sim3, estimate_sim3_robust, rotation_angle_deg
from core.types import ImageRecord, VlocError
from mapping.partition import PartitionConfig, partition_view_graph
from mapping.partition_merge import (
    Pairs,
    PartInputs,
    bundle_adjust,
    fresh_folder,
    merge_tracks,
    part_inputs,
    per_worker,
)
from mapping.reconstruct import (
    ReconstructionConfig,
    filter_points,
    pipeline_options,
    posed_reconstruction,
    prepare_workdir,
    structure_from_motion,
)
from vision.features import Features

# ---- unposed maps ------------------------------------------------------------------------------

def reconstruct_clusters(records: list[ImageRecord], features: list[Features], verified: Pairs,
                         clusters: list[np.ndarray], workdir: Path, cfg: ReconstructionConfig,
                         workers: int = 1, seconds: list[float] | None = None) -> list[pycolmap.Reconstruction]:
    """Incremental SfM of each cluster (its images and the verified pairs among them), each in
    ``workdir/clusterNNN``, ``workers`` at a time; each model in its own arbitrary frame.
    A cluster that registers no image raises VlocError. ``seconds``: filled with each cluster's
    wall time (what one worker per cluster would take)."""
    cfg = per_worker(cfg, workers, len(clusters))

    def one(k: int) -> tuple[pycolmap.Reconstruction, float]:
        t = time.perf_counter()
        model = reconstruct_cluster(part_inputs(clusters[k], records, features, verified),
                                    fresh_folder(workdir, f"cluster{k:03d}"), cfg, label=f"cluster {k}")
        return model, time.perf_counter() - t

    with ThreadPoolExecutor(max(1, workers)) as ex:
        done = list(ex.map(one, range(len(clusters))))
    if seconds is not None:
        seconds[:] = [t for _, t in done]
    return [m for m, _ in done]


def reconstruct_cluster(part: PartInputs, folder: Path, cfg: ReconstructionConfig, label: str = "cluster"
                        ) -> pycolmap.Reconstruction:
    """Incremental SfM of one cluster's images and pairs in ``folder`` (records' poses ignored),
    the model written to ``folder/model`` (what a Dask task would hand back: Reconstructions do
    not pickle). VlocError, naming ``label``, when it registers nothing."""
    try:
        model = structure_from_motion([replace(r, cam_from_world=None) for r in part.records], part.features,
                                      part.verified, Path(folder), replace(cfg, sfm_method="incremental"))[0]
    except VlocError as e:
        raise VlocError(f"{label} ({len(part.index)} images): {e}") from e
    (Path(folder) / "model").mkdir(exist_ok=True)
    model.write_binary(str(Path(folder) / "model"))
    return model


@dataclass(frozen=True)
class Alignment:
    """How a cluster's model was brought into the merged frame: ``ref_from_model`` (a similarity),
    the cluster it was aligned to (None: the reference), and the check's numbers (residuals as
    fractions of the scene depth, rotations in degrees)."""

    ref_from_model: Sim3
    target: int | None
    n_shared_images: int = 0
    n_correspondences: int = 0
    inlier_ratio: float = 1.0
    centre_residual: float = 0.0
    rotation_residual_deg: float = 0.0


def _sim3d(s: Sim3) -> pycolmap.Sim3d:
    return pycolmap.Sim3d(float(s.scale), pycolmap.Rotation3d(s.rotation), s.translation.copy())


def _shared_correspondences(src: pycolmap.Reconstruction, tgt: pycolmap.Reconstruction, names: list[str]
                            ) -> tuple[np.ndarray, np.ndarray, float]:
    """(K, 3) src and tgt positions of the shared images' points seen through the same keypoint
    in both models (unique pairs of points), and the scene depth: the median distance in tgt
    from a shared camera to the points it observes."""
    pairs, depth = set(), []
    for n in names:
        a, b = src.find_image_with_name(n), tgt.find_image_with_name(n)
        pa = {k: a.points2D[k].point3D_id for k in a.get_observation_point2D_idxs()}
        pb = {k: b.points2D[k].point3D_id for k in b.get_observation_point2D_idxs()}
        pairs.update((pa[k], pb[k]) for k in pa.keys() & pb.keys())
        centre = Rigid3.from_pycolmap(b.cam_from_world()).centre
        depth.extend(np.linalg.norm(tgt.points3D[p].xyz - centre) for p in pb.values())
    pairs = sorted(pairs)
    xs = np.array([src.points3D[a].xyz for a, _ in pairs]).reshape(-1, 3)
    xt = np.array([tgt.points3D[b].xyz for _, b in pairs]).reshape(-1, 3)
    return xs, xt, float(np.median(depth)) if depth else float("nan")


def align_pair(src: pycolmap.Reconstruction, tgt: pycolmap.Reconstruction, pcfg: PartitionConfig,
               label: str = "cluster") -> Alignment:
    """``tgt_from_src`` similarity of two models of overlapping clusters, by LO-RANSAC on the
    camera centres of the images both registered and the 3D points of tracks through the same
    keypoints of those images (centres alone barely fix the rotation about a short, nearly
    straight run of shared cameras). Raises VlocError, with the numbers, when there are too few
    shared images or inliers, or the shared cameras' centres or rotations disagree after it."""
    names = sorted({im.name for im in src.images.values() if im.has_pose}
                   & {im.name for im in tgt.images.values() if im.has_pose})
    if len(names) < pcfg.min_shared_images:
        raise VlocError(f"{label} shares {len(names)} registered images with the model it joins "
                        f"(needs {pcfg.min_shared_images}): raise the cluster overlap")
    pose_s = [Rigid3.from_pycolmap(src.find_image_with_name(n).cam_from_world()) for n in names]
    pose_t = [Rigid3.from_pycolmap(tgt.find_image_with_name(n).cam_from_world()) for n in names]
    cs, ct = np.array([p.centre for p in pose_s]), np.array([p.centre for p in pose_t])
    xs, xt, depth = _shared_correspondences(src, tgt, names)
    if not np.isfinite(depth) or depth <= 0:
        raise VlocError(f"{label}: the shared images observe no 3D points in the model it joins")
    a, b = np.r_[cs, xs], np.r_[ct, xt]
    thr = pcfg.align_max_error * depth
    try:
        sim = estimate_sim3_robust(a, b, thr)
    except ValueError as e:
        raise VlocError(f"{label}: no similarity aligns its {len(names)} shared images and {len(xs)} shared "
                        f"points ({e})") from e
    inlier_ratio = float(np.mean(np.linalg.norm(sim.transform(a) - b, axis=1) <= thr))
    centre_res = float(np.median(np.linalg.norm(sim.transform(cs) - ct, axis=1))) / depth
    rot_res = float(np.median([rotation_angle_deg(ps.rotation @ sim.rotation.T, pt.rotation)
                               for ps, pt in zip(pose_s, pose_t)]))
    al = Alignment(sim, None, len(names), len(a), inlier_ratio, centre_res, rot_res)
    if (inlier_ratio < pcfg.min_inlier_ratio or centre_res > pcfg.max_centre_residual
            or rot_res > pcfg.max_rotation_residual_deg):
        raise VlocError(
            f"{label} does not align with the model it joins: {inlier_ratio:.0%} of {len(a)} correspondences "
            f"inliers (needs {pcfg.min_inlier_ratio:.0%}), median centre residual {centre_res:.2%} of the scene "
            f"depth (max {pcfg.max_centre_residual:.2%}), median rotation residual {rot_res:.2f} deg (max "
            f"{pcfg.max_rotation_residual_deg} deg) over {len(names)} shared images; the cluster's own "
            "reconstruction is probably wrong (too few matches inside it?)")
    return al


def align_models(models: list[pycolmap.Reconstruction], pcfg: PartitionConfig) -> list[Alignment]:
    """Bring every model into the frame of the reference (the one with most registered images),
    **in place** (``Reconstruction.transform``), along a maximum spanning tree of the shared
    registered images: each model is aligned (:func:`align_pair`) to an already aligned one it
    shares most images with. Raises VlocError for a model sharing too few images with all the
    others or failing its alignment check."""
    reg = [{im.name for im in m.images.values() if im.has_pose} for m in models]
    ref = int(np.argmax([len(r) for r in reg]))
    out: list[Alignment | None] = [None] * len(models)
    out[ref] = Alignment(Sim3(1.0, np.eye(3), np.zeros(3)), None)
    done = {ref}
    while len(done) < len(models):
        k, t, n = max(((k, t, len(reg[k] & reg[t])) for k in range(len(models)) if k not in done for t in done),
                      key=lambda x: x[2])
        if n < pcfg.min_shared_images:
            left = sorted(set(range(len(models))) - done)
            raise VlocError(f"clusters {left} share at most {n} registered images with the others (needs "
                            f"{pcfg.min_shared_images}): the view graph may be split, or raise the overlap")
        al = align_pair(models[k], models[t], pcfg, label=f"cluster {k}")
        models[k].transform(_sim3d(al.ref_from_model))
        out[k] = replace(al, target=t)
        done.add(k)
    return out  # type: ignore[return-value]


def merge_aligned(models: list[pycolmap.Reconstruction], records: list[ImageRecord], features: list[Features],
                  verified: Pairs, workdir: Path, cfg: ReconstructionConfig, pcfg: PartitionConfig
                  ) -> tuple[pycolmap.Reconstruction, dict]:
    """One model from cluster models already in one frame (:func:`align_models`).

    Each image keeps the pose of the model where it observes most points; the images no model
    registered are left out. Tracks are unified (:func:`merge_tracks`, within
    ``pcfg.merge_max_reproj_error_px``), then: global bundle adjustment (poses and points, squared loss),
    COLMAP's point triangulator over every verified pair among the registered images (keeps the
    points, adds tracks of pairs across clusters, merges and completes tracks; poses held),
    :func:`filter_points`, and a last global bundle adjustment (soft-L1 loss).
    Image ids of the result are 1-based positions among the registered records.
    """
    best: dict[str, tuple[int, pycolmap.Rigid3d]] = {}
    for m in models:
        for im in m.images.values():
            if im.has_pose and im.num_points3D > best.get(im.name, (-1, None))[0]:
                best[im.name] = (im.num_points3D, im.cam_from_world())
    keep = [k for k, r in enumerate(records) if r.name in best]
    sub = part_inputs(np.array(keep, np.int64), records, features, verified)
    posed = [replace(r, cam_from_world=Rigid3.from_pycolmap(best[r.name][1])) for r in sub.records]
    base = posed_reconstruction(posed, sub.features)
    stats = merge_tracks(models, base, pcfg.merge_max_reproj_error_px)
    timings = {}
    t = time.perf_counter()
    bundle_adjust(base, refine_poses=True, robust=False)  # squared loss first: 3x fewer iterations from afar
    timings["adjust_s"] = time.perf_counter() - t
    t = time.perf_counter()
    folder = fresh_folder(workdir, "merged")
    db_path, out = prepare_workdir(folder, posed, sub.features, sub.verified, "model")
    opts = pipeline_options(cfg)
    opts.ba_global_max_refinements = cfg.posed_ba_refinements
    timings["preparation_s"] = time.perf_counter() - t
    stats.update(n_points_retriangulated=[], n_points_filtered=0, rounds_s=[])
    # each round re-triangulates every verified pair under the adjusted poses: tracks across the
    # clusters' seams (dropped by the merge while the chained alignments had drifted, e.g. where a
    # loop closes) come back, and the next adjustment uses them
    for _ in range(max(1, pcfg.merge_rounds)):
        t = time.perf_counter()
        n_before = base.num_points3D()
        base = pycolmap.triangulate_points(base, str(db_path), str(folder), str(out), clear_points=False,
                                           options=opts, refine_intrinsics=False)
        stats["n_points_retriangulated"].append(base.num_points3D() - n_before)
        stats["n_points_filtered"] += filter_points(base, cfg)
        bundle_adjust(base, refine_poses=True)
        stats["n_points_filtered"] += filter_points(base, cfg)
        stats["rounds_s"].append(time.perf_counter() - t)
    stats["merge_timings"] = timings
    stats["n_images_unregistered"] = len(records) - len(keep)
    return base, stats


def partitioned_sfm(records: list[ImageRecord], features: list[Features], verified: Pairs, workdir: Path,
                    cfg: ReconstructionConfig, pcfg: PartitionConfig = PartitionConfig(),
                    clusters: list[np.ndarray] | None = None, positions: np.ndarray | None = None
                    ) -> tuple[pycolmap.Reconstruction, dict]:
    """Unposed map by parts: view-graph clusters (default :func:`partition_view_graph` with
    ``pcfg``, on GPS ``positions`` (N, 3) metres when given), incremental SfM per cluster
    (:func:`reconstruct_clusters`), alignment onto the largest (:func:`align_models`; a cluster
    that does not align raises VlocError), merge and global adjustment (:func:`merge_aligned`).
    The result's frame is the reference cluster's (arbitrary similarity). Returns it and a report.
    """
    t0 = time.perf_counter()
    if clusters is None:
        clusters = partition_view_graph(len(records), {p: len(vp.matches) for p, vp in verified.items()},
                                        pcfg.max_cluster_images, pcfg.overlap_images, positions,
                                        pcfg.min_link_matches)
    part_s: list[float] = []
    models = reconstruct_clusters(records, features, verified, clusters, Path(workdir), cfg, pcfg.workers, part_s)
    t1 = time.perf_counter()
    alignments = align_models(models, pcfg)
    t2 = time.perf_counter()
    merged, stats = merge_aligned(models, records, features, verified, Path(workdir), cfg, pcfg)
    if merged.num_points3D() == 0:
        raise VlocError("the merged clusters hold no 3D points after adjustment")
    stats.update(
        n_parts=len(clusters), part_sizes=[len(c) for c in clusters],
        part_registered=[m.num_reg_images() for m in models], part_seconds=part_s,
        alignments=[{"target": a.target, "scale": a.ref_from_model.scale, "n_shared_images": a.n_shared_images,
                     "n_correspondences": a.n_correspondences, "inlier_ratio": a.inlier_ratio,
                     "centre_residual": a.centre_residual, "rotation_residual_deg": a.rotation_residual_deg}
                    for a in alignments],
        timings={"parts_s": t1 - t0, "align_s": t2 - t1, "merge_s": time.perf_counter() - t2})
    return merged, stats

