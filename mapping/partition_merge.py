"""Partitioned reconstruction, part 2: merging parts' models, and posed maps by tiles.

:func:`merge_tracks` adds the 3D points of several models in one world frame to one model
without duplicates: points that share an observation (image, keypoint) become one track.
Posed maps (:func:`partitioned_triangulation`): every tile is triangulated with the same fixed
known poses, so the tiles' points are already in one frame; they are merged, adjusted with the
poses held and filtered. Unposed maps: :mod:`mapping.partition_sfm`.

Model images are matched across parts by name; a part's 2D points are its images' full keypoint
lists (what :func:`mapping.reconstruct.write_database` writes), so a keypoint index means the same
keypoint in every part. Poses are ``cam_from_world``.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.geometry import Rigid3
from core.types import ImageRecord, VlocError
from mapping.partition import PartitionConfig, assign_pairs, partition_posed
from mapping.reconstruct import (
    ReconstructionConfig,
    filter_points,
    posed_reconstruction,
    triangulate_known_poses,
)
from vision.features import Features
from vision.matching import VerifiedPair

Pairs = dict[tuple[int, int], VerifiedPair]


@dataclass
class PartInputs:
    """The records, features and verified pairs of one part, re-indexed 0..K-1.

    index: (K,) int64 the part's images as indices into the full record list.
    """

    index: np.ndarray
    records: list[ImageRecord]
    features: list[Features]
    verified: Pairs = field(default_factory=dict)


def part_inputs(index: np.ndarray, records: list[ImageRecord], features: list[Features], verified: Pairs,
                pairs: list[tuple[int, int]] | None = None) -> PartInputs:
    """The subset of a map's inputs a part reconstructs: its images and the verified pairs
    between them (only ``pairs`` when given)."""
    index = np.asarray(index, np.int64)
    local = {int(g): k for k, g in enumerate(index)}
    keys = list(verified) if pairs is None else [p for p in pairs if p in verified]  # (a MatchStore iterates)
    sub = {(local[i], local[j]): verified[(i, j)] for i, j in keys if i in local and j in local}
    return PartInputs(index, [records[int(g)] for g in index], [features[int(g)] for g in index], sub)


# ---- track merging ----------------------------------------------------------------------------

def model_observations(model: pycolmap.Reconstruction) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray,
                                                               np.ndarray, np.ndarray]:
    """Every observation of a model's 3D points.

    Returns (point ids (M,) int64, image names (one per registered image), image (M,) int64 into
    those names, keypoint (M,) int64, xyz (P, 3) and colours (P, 3) uint8 of the point ids in
    order of ``np.unique(point ids)``).
    """
    names = [model.image(i).name for i in sorted(model.reg_image_ids())]
    row_of = {model.find_image_with_name(n).image_id: k for k, n in enumerate(names)}
    pid, img, kp = [], [], []
    xyz, rgb = [], []
    for p_id in sorted(model.point3D_ids()):
        p = model.points3D[p_id]
        els = p.track.elements
        pid.extend([p_id] * len(els))
        img.extend(row_of[e.image_id] for e in els)
        kp.extend(e.point2D_idx for e in els)
        xyz.append(p.xyz)
        rgb.append(p.color)
    return (np.asarray(pid, np.int64), names, np.asarray(img, np.int64), np.asarray(kp, np.int64),
            np.asarray(xyz, np.float64).reshape(-1, 3), np.asarray(rgb, np.uint8).reshape(-1, 3))


def reprojection_errors_at(model: pycolmap.Reconstruction, image_ids: np.ndarray, xyz: np.ndarray,
                           uv: np.ndarray) -> np.ndarray:
    """(M,) pixel errors of world points (M, 3) seen at pixels (M, 2) in registered images
    (M,) image ids of ``model`` (their ``cam_from_world`` and camera); inf behind a camera."""
    err = np.full(len(image_ids), np.inf)
    for iid in np.unique(image_ids):
        sel = np.flatnonzero(image_ids == iid)
        im = model.image(int(iid))
        pc = Rigid3.from_pycolmap(im.cam_from_world()).transform(xyz[sel])
        front = pc[:, 2] > 1e-9
        proj = np.asarray(im.camera.img_from_cam(pc[front], check_cheirality=False)).reshape(-1, 2)
        err[sel[front]] = np.linalg.norm(proj - uv[sel[front]], axis=1)
    return err


def merge_tracks(models: list[pycolmap.Reconstruction], base: pycolmap.Reconstruction,
                 max_reproj_error_px: float) -> dict:
    """Add the 3D points of several models, in one world frame, to ``base`` without duplicates.

    base: a model holding every image the points observe (matched by name), registered at the
    poses the merged model keeps, with the full keypoint lists as 2D points, and no 3D points.
    Points of different models that share an observation (image, keypoint) are one track
    (union-find over shared observations, transitively). Each track keeps the position of the
    candidate point that reprojects within ``max_reproj_error_px`` into most of the track's
    observations under base's poses (then: smallest mean error); observations beyond that error
    are dropped, and an image seen twice in a track (two keypoints) keeps its closer keypoint.
    Tracks left with fewer than 2 images are dropped. Returns counts.
    """
    gid_of = {im.name: iid for iid, im in base.images.items() if im.has_pose}
    node_xyz, node_rgb, obs_node, obs_img, obs_kp = [], [], [], [], []
    n_nodes = 0
    for model in models:
        pid, names, img, kp, xyz, rgb = model_observations(model)
        gids = np.array([gid_of.get(n, -1) for n in names], np.int64)
        uniq, node = np.unique(pid, return_inverse=True)
        keep = gids[img] >= 0
        obs_node.append(node[keep] + n_nodes)
        obs_img.append(gids[img[keep]])
        obs_kp.append(kp[keep])
        node_xyz.append(xyz)
        node_rgb.append(rgb)
        n_nodes += len(uniq)
    if n_nodes == 0 or not sum(len(a) for a in obs_node):
        return {"n_points_in": 0, "n_points": 0, "n_tracks_unified": 0, "n_observations_dropped": 0}
    o_node, o_img, o_kp = (np.concatenate(a) for a in (obs_node, obs_img, obs_kp))
    xyz, rgb = np.concatenate(node_xyz), np.concatenate(node_rgb)
    # union-find over shared observations: connected components of the node-observation graph
    obs_key, o_key = np.unique(o_img * (int(o_kp.max()) + 1) + o_kp, return_inverse=True)
    n_all = n_nodes + len(obs_key)
    graph = coo_matrix((np.ones(len(o_node)), (o_node, n_nodes + o_key)), shape=(n_all, n_all))
    group = connected_components(graph, directed=False)[1][:n_nodes]
    # each track's distinct observations, and every (candidate node, observation) of its track
    o_group = group[o_node]
    first = np.unique(np.c_[o_group, o_key], axis=0, return_index=True)[1]
    u_group, u_img, u_kp = o_group[first], o_img[first], o_kp[first]
    order = np.argsort(u_group, kind="stable")
    u_group, u_img, u_kp = u_group[order], u_img[order], u_kp[order]
    n_groups = int(group.max()) + 1
    u_count = np.bincount(u_group, minlength=n_groups)
    u_start = np.r_[0, np.cumsum(u_count)[:-1]]
    reps = u_count[group]
    cand = np.repeat(np.arange(n_nodes), reps)
    obs = u_start[group[cand]] + np.arange(len(cand)) - np.repeat(np.cumsum(reps) - reps, reps)
    uv = np.zeros((len(u_img), 2))
    for iid in np.unique(u_img):
        sel = np.flatnonzero(u_img == iid)
        uv[sel] = np.asarray([base.image(int(iid)).points2D[int(k)].xy for k in u_kp[sel]])
    err = reprojection_errors_at(base, u_img[obs], xyz[cand], uv[obs])
    ok = err <= max_reproj_error_px
    # best candidate per track: most observations within the threshold, then smallest mean error
    n_ok = np.bincount(cand, weights=ok, minlength=n_nodes)
    mean_ok = np.bincount(cand, weights=np.where(ok, err, 0.0), minlength=n_nodes) / np.maximum(n_ok, 1)
    rank = np.lexsort((mean_ok, -n_ok, group))
    best = rank[np.r_[True, group[rank][1:] != group[rank][:-1]]]         # one node per group
    is_best = np.zeros(n_nodes, bool)
    is_best[best] = True
    sel = np.flatnonzero(is_best[cand] & ok)
    # an image twice in a track: keep its keypoint with the smaller error
    sel = sel[np.lexsort((err[sel], u_img[obs[sel]], group[cand[sel]]))]
    g_s, i_s = group[cand[sel]], u_img[obs[sel]]
    sel = sel[np.r_[True, (g_s[1:] != g_s[:-1]) | (i_s[1:] != i_s[:-1])]]
    g_s = group[cand[sel]]
    bounds = np.r_[0, np.flatnonzero(g_s[1:] != g_s[:-1]) + 1, len(sel)]
    n_added = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a < 2:
            continue
        c = cand[sel[a]]
        track = pycolmap.Track()
        track.add_elements([pycolmap.TrackElement(int(i), int(k))
                            for i, k in zip(u_img[obs[sel[a:b]]], u_kp[obs[sel[a:b]]])])
        base.add_point3D(xyz[c], track, rgb[c])
        n_added += 1
    return {"n_points_in": int(n_nodes), "n_points": n_added,
            "n_tracks_unified": int(np.sum(np.bincount(group) > 1)),
            "n_observations_dropped": int(len(u_img) - len(sel))}


def bundle_adjust(rec: pycolmap.Reconstruction, refine_poses: bool, robust: bool = True) -> dict:
    """Global bundle adjustment of ``rec`` in place (pycolmap's default adjuster): every 3D point,
    and every registered pose when ``refine_poses`` (gauge: two cameras' poses), else the poses
    held; intrinsics fixed; a soft-L1 loss when ``robust``. Returns the solver's summary numbers.
    (``pycolmap.bundle_adjustment`` is not used: in pycolmap 4.2.1 it resets COLMAP's log level.)"""
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = False
    opts.refine_principal_point = False
    opts.refine_extra_params = False
    opts.refine_sensor_from_rig = False
    opts.print_summary = False
    if robust:
        opts.ceres.loss_function_type = pycolmap.LossFunctionType.SOFT_L1
    config = pycolmap.BundleAdjustmentConfig()
    for iid in rec.reg_image_ids():
        config.add_image(iid)
        if not refine_poses:
            config.set_constant_rig_from_world_pose(rec.image(iid).frame_id)
    if refine_poses:
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    summary = pycolmap.create_default_bundle_adjuster(opts, config, rec).solve()
    if not summary.is_solution_usable:
        raise VlocError(f"bundle adjustment of the merged model failed ({summary.termination_type})")
    return {"residuals": int(summary.num_residuals), "termination": str(summary.termination_type).split(".")[-1]}


# ---- posed maps --------------------------------------------------------------------------------

def merge_posed(models: list[pycolmap.Reconstruction], records: list[ImageRecord], features: list[Features],
                cfg: ReconstructionConfig) -> tuple[pycolmap.Reconstruction, dict]:
    """One model from tiles triangulated with the same fixed ``cam_from_world`` of ``records``:
    tracks unified (:func:`merge_tracks`, within ``cfg.max_reproj_error_px``), points refined by a
    bundle adjustment with the poses held, then :func:`mapping.reconstruct.filter_points`."""
    base = posed_reconstruction(records, features)
    stats = merge_tracks(models, base, cfg.max_reproj_error_px)
    if base.num_points3D():
        bundle_adjust(base, refine_poses=False)
    stats["n_points_filtered"] = filter_points(base, cfg)
    return base, stats


def partitioned_triangulation(records: list[ImageRecord], features: list[Features], verified: Pairs, workdir: Path,
                              cfg: ReconstructionConfig, pcfg: PartitionConfig = PartitionConfig(),
                              tiles: list[np.ndarray] | None = None) -> tuple[pycolmap.Reconstruction, dict]:
    """:func:`mapping.reconstruct.triangulate_known_poses` tile by tile, merged.

    tiles: image index arrays (default :func:`partition_posed` of the camera centres with
    ``pcfg.tile_m`` / ``pcfg.overlap_m``); every verified pair is placed in a tile
    (:func:`assign_pairs`). Tiles are triangulated ``pcfg.workers`` at a time, each in its own
    folder under ``workdir``. Returns the merged model and a report (tiles, counts, timings).
    """
    t0 = time.perf_counter()
    if tiles is None:
        tiles = partition_posed(np.array([r.cam_from_world.centre for r in records]), pcfg.tile_m, pcfg.overlap_m)
    tiles, tile_pairs = assign_pairs(tiles, sorted(verified))
    parts = [part_inputs(t, records, features, verified, p) for t, p in zip(tiles, tile_pairs)]
    parts = [p for p in parts if p.verified]
    run_cfg = per_worker(cfg, pcfg.workers, len(parts))

    with ThreadPoolExecutor(max(1, pcfg.workers)) as ex:
        found = list(ex.map(lambda k: triangulate_tile(parts[k], fresh_folder(workdir, f"tile{k:03d}"), run_cfg),
                            range(len(parts))))
    models = [m for m in found if m is not None]
    t1 = time.perf_counter()
    merged, stats = merge_posed(models, records, features, cfg)
    if merged.num_points3D() == 0:
        raise VlocError("the merged tiles hold no 3D points: the images share too few verified matches")
    stats.update(n_parts=len(parts), part_sizes=[len(p.index) for p in parts],
                 part_points=[0 if m is None else m.num_points3D() for m in found],
                 timings={"parts_s": t1 - t0, "merge_s": time.perf_counter() - t1})
    return merged, stats


def triangulate_tile(part: PartInputs, folder: Path, cfg: ReconstructionConfig) -> pycolmap.Reconstruction | None:
    """One tile triangulated with its records' fixed ``cam_from_world``
    (:func:`mapping.reconstruct.triangulate_known_poses` in ``folder``), written to ``folder/model``
    (what a Dask task would hand back: Reconstructions do not pickle); None when the tile yields no
    point (its pairs may still be triangulated in a neighbouring tile)."""
    try:
        model = triangulate_known_poses(part.records, part.features, part.verified, Path(folder), cfg)
    except VlocError:
        return None
    (Path(folder) / "model").mkdir(exist_ok=True)
    model.write_binary(str(Path(folder) / "model"))
    return model


def fresh_folder(workdir: Path, name: str) -> Path:
    """``workdir/name``, created, without the COLMAP database a previous run may have left there
    (pycolmap refuses to write an image id twice)."""
    folder = Path(workdir) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "database.db").unlink(missing_ok=True)
    return folder


def per_worker(cfg: ReconstructionConfig, workers: int, n_parts: int) -> ReconstructionConfig:
    """One solver thread per part when parts run side by side."""
    return replace(cfg, num_threads=1) if workers > 1 and n_parts > 1 else cfg
