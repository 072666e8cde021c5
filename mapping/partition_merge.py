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
from mapping.point_table import PointTable
from mapping.reconstruct import (
    ReconstructionConfig,
    filter_points,
    posed_reconstruction,
    triangulate_known_poses,
)
from mapping.track_conflicts import split_conflicting_tracks
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

def reprojection_errors(image: np.ndarray, xyz: np.ndarray, uv: np.ndarray, view) -> np.ndarray:
    """(M,) pixel errors of world points (M, 3) seen at pixels (M, 2) in images (M,); inf behind
    a camera. view(i) -> (cam_from_world :class:`Rigid3`, pycolmap.Camera) of image i."""
    err = np.full(len(image), np.inf)
    for i in np.unique(image):
        sel = np.flatnonzero(image == i)
        cam_from_world, camera = view(int(i))
        pc = cam_from_world.transform(xyz[sel])
        front = pc[:, 2] > 1e-9
        proj = np.asarray(camera.img_from_cam(pc[front], check_cheirality=False)).reshape(-1, 2)
        err[sel[front]] = np.linalg.norm(proj - uv[sel[front]], axis=1)
    return err


def merge_tracks(models: list[pycolmap.Reconstruction], base: pycolmap.Reconstruction,
                 max_reproj_error_px: float) -> dict:
    """Add the 3D points of several models, in one world frame, to ``base`` without duplicates.

    base: a model holding every image the points observe (matched by name), registered at the
    poses the merged model keeps, with the full keypoint lists as 2D points, and no 3D points.
    Tracks are unified as :func:`unify_tracks` says, errors measured under base's poses.
    Returns counts.
    """
    gid_of = {im.name: iid for iid, im in base.images.items() if im.has_pose}
    tables = []
    for model in models:
        t = PointTable.of_model(model, {im.name: gid_of.get(im.name, -1) for im in model.images.values()})
        keep = t.obs_image >= 0
        tables.append(PointTable(t.xyz, t.rgb, t.obs_point[keep], t.obs_image[keep], t.obs_kp[keep]))
    table = PointTable.concat(tables)

    def errors(img: np.ndarray, kp: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        uv = np.zeros((len(img), 2))
        for iid in np.unique(img):
            sel = np.flatnonzero(img == iid)
            uv[sel] = np.asarray([base.image(int(iid)).points2D[int(k)].xy for k in kp[sel]])
        return reprojection_errors(img, xyz, uv, lambda i: (Rigid3.from_pycolmap(base.image(i).cam_from_world()),
                                                            base.image(i).camera))

    merged, stats = unify_tracks(table, errors, max_reproj_error_px)
    add_table(base, merged, local=np.arange(max(gid_of.values(), default=0) + 1))  # ids are base's already
    return stats


def unify_tracks(table: PointTable, errors, max_reproj_error_px: float) -> tuple[PointTable, dict]:
    """One track per set of points that share an observation (image, keypoint).

    table: candidate points of several models in one world frame (a point may appear once per
    model). Points that share an observation are one track (union-find over shared observations,
    transitively). Each track keeps the position of the candidate point that reprojects within
    ``max_reproj_error_px`` into most of the track's observations (then: smallest mean error);
    observations beyond that error are dropped, and an image seen twice in a track (two keypoints)
    keeps its closer keypoint. Tracks left with fewer than 2 images are dropped.
    errors(image (K,), keypoint (K,), xyz (K, 3)) -> (K,) pixel errors (inf behind the camera).
    Returns the tracks (points in order of their group) and counts.
    """
    n_nodes = table.n_points
    o_node, o_img, o_kp = table.obs_point, table.obs_image, table.obs_kp
    if n_nodes == 0 or not len(o_node):
        return PointTable.empty(), {"n_points_in": int(n_nodes), "n_points": 0, "n_tracks_unified": 0,
                                    "n_observations_dropped": 0}
    xyz, rgb = table.xyz, table.rgb
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
    err = errors(u_img[obs], u_kp[obs], xyz[cand])
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
    sel = sel[np.r_[True, (g_s[1:] != g_s[:-1]) | (i_s[1:] != i_s[:-1])]] if len(sel) else sel
    g_s = group[cand[sel]]
    bounds = np.r_[0, np.flatnonzero(g_s[1:] != g_s[:-1]) + 1, len(sel)] if len(sel) else np.zeros(1, np.int64)
    size = np.diff(bounds)
    kept = np.flatnonzero(size >= 2)
    nodes = cand[sel[bounds[:-1][kept]]]
    track_of = np.repeat(np.arange(len(kept)), size[kept])
    obs_sel = np.concatenate([sel[bounds[k]:bounds[k + 1]] for k in kept]) if len(kept) else np.zeros(0, np.int64)
    out = PointTable(xyz[nodes].reshape(-1, 3), rgb[nodes].reshape(-1, 3), track_of,
                     u_img[obs[obs_sel]], u_kp[obs[obs_sel]])
    return out, {"n_points_in": int(n_nodes), "n_points": int(len(kept)),
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

def merge_tile_tables(tables: list[PointTable], records: list[ImageRecord], features, cfg: ReconstructionConfig,
                      chunk_points: int = 20000) -> tuple[PointTable, dict]:
    """One table from the points of tiles triangulated with the same fixed ``cam_from_world``.

    Only a point observing an image that points of another tile also observe can be a duplicate:
    those are unified (:func:`unify_tracks`, within ``cfg.max_reproj_error_px`` under the records'
    poses), refined by a bundle adjustment with the poses held on a model of just the images they
    observe (``chunk_points`` points at a time), and filtered
    (:func:`mapping.reconstruct.filter_points`); every other point passes through as its tile made
    it (refined and filtered there). ``features[i].keypoints``: image i's
    full keypoints (read only for the images the unified points observe). Memory: the tables, plus
    the unified points' images.
    """
    seen = np.zeros(len(records), np.int64)
    for t in tables:
        seen[np.unique(t.obs_image)] += 1
    shared = seen > 1
    passing, candidates = [], []
    for t in tables:
        touch = np.zeros(t.n_points, bool)
        touch[t.obs_point[shared[t.obs_image]]] = True
        passing.append(t.select(~touch))
        candidates.append(t.select(touch))
    unified, stats = unify_tracks(PointTable.concat(candidates), record_errors(records, features),
                                  cfg.max_reproj_error_px)
    # with the poses held each point is refined on its own: chunks of points give the same result
    # in bounded memory (a chunk's images, its points, the adjuster's problem)
    refined, stats["n_points_filtered"] = [], 0
    for start in range(0, unified.n_points, chunk_points):
        keep = np.zeros(unified.n_points, bool)
        keep[start:start + chunk_points] = True
        part = unified.select(keep)
        images = np.unique(part.obs_image)
        sub = posed_reconstruction([records[int(i)] for i in images], [features[int(i)] for i in images])
        add_table(sub, part, local=np.searchsorted(images, np.arange(len(records))) + 1)
        bundle_adjust(sub, refine_poses=False)
        stats["n_points_filtered"] += filter_points(sub, cfg)
        refined.append(PointTable.of_model(sub, {records[int(i)].name: int(i) for i in images}))
        del sub
    out = PointTable.concat(passing + refined)
    stats.update(n_points_in=int(sum(t.n_points for t in tables)), n_points=out.n_points,
                 n_points_passed=int(sum(t.n_points for t in passing)), n_shared_images=int(shared.sum()))
    return out, stats


def record_errors(records: list[ImageRecord], features):
    """errors(image (K,), keypoint (K,), xyz (K, 3)) -> (K,) pixel errors of world points at the
    records' keypoints under their ``cam_from_world`` (inf behind the camera)."""
    def errors(img: np.ndarray, kp: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        uv = np.zeros((len(img), 2))
        for i in np.unique(img):
            sel = np.flatnonzero(img == i)
            uv[sel] = np.asarray(features[int(i)].keypoints, np.float64)[kp[sel]]
        return reprojection_errors(img, xyz, uv, lambda i: (records[i].cam_from_world,
                                                            records[i].camera.to_pycolmap()))
    return errors


def add_table(base: pycolmap.Reconstruction, table: PointTable, local: np.ndarray) -> None:
    """Add a table's points to ``base``; ``local[i]``: base's image id of global image i."""
    order = np.argsort(table.obs_point, kind="stable")
    starts = np.searchsorted(table.obs_point[order], np.arange(table.n_points + 1))
    for p in range(table.n_points):
        sel = order[starts[p]:starts[p + 1]]
        track = pycolmap.Track()
        track.add_elements([pycolmap.TrackElement(int(local[i]), int(k))
                            for i, k in zip(table.obs_image[sel], table.obs_kp[sel])])
        base.add_point3D(table.xyz[p], track, table.rgb[p])


def partitioned_triangulation(records: list[ImageRecord], features: list[Features], verified: Pairs, workdir: Path,
                              cfg: ReconstructionConfig, pcfg: PartitionConfig = PartitionConfig(),
                              tiles: list[np.ndarray] | None = None) -> tuple[pycolmap.Reconstruction, dict]:
    """:func:`mapping.reconstruct.triangulate_known_poses` tile by tile, merged
    (:func:`merge_tile_tables`) into a model of every record at its pose.

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

    def one(k: int) -> PointTable | None:
        model = triangulate_tile(parts[k], fresh_folder(workdir, f"tile{k:03d}"), run_cfg)
        if model is None:
            return None
        finish_tile(model, cfg)
        return PointTable.of_model(model, {r.name: int(g) for r, g in zip(parts[k].records, parts[k].index)})

    with ThreadPoolExecutor(max(1, pcfg.workers)) as ex:
        found = list(ex.map(one, range(len(parts))))
    t1 = time.perf_counter()
    table, stats = merge_tile_tables([t for t in found if t is not None], records, features, cfg)
    if table.n_points == 0:
        raise VlocError("the merged tiles hold no 3D points: the images share too few verified matches")
    merged = posed_reconstruction(records, features)
    add_table(merged, table, local=np.arange(len(records)) + 1)
    stats.update(n_parts=len(parts), part_sizes=[len(p.index) for p in parts],
                 part_points=[0 if t is None else t.n_points for t in found],
                 timings={"parts_s": t1 - t0, "merge_s": time.perf_counter() - t1})
    return merged, stats


def triangulate_tile(part: PartInputs, folder: Path, cfg: ReconstructionConfig) -> pycolmap.Reconstruction | None:
    """One tile triangulated with its records' fixed ``cam_from_world``
    (:func:`mapping.reconstruct.triangulate_known_poses`, its COLMAP database in ``folder``); None
    when the tile yields no point (its pairs may still be triangulated in a neighbouring tile)."""
    try:
        return triangulate_known_poses(part.records, part.features, part.verified, Path(folder), cfg)
    except VlocError:
        return None


def finish_tile(model: pycolmap.Reconstruction, cfg: ReconstructionConfig, images_root: Path | None = None) -> int:
    """A triangulated tile made ready to merge, in place: conflicting tracks split when
    ``cfg.split_conflicting_tracks`` (:mod:`mapping.track_conflicts`), points filtered
    (:func:`mapping.reconstruct.filter_points`), coloured from ``images_root`` when given.
    Returns how many points the filter removed."""
    if cfg.split_conflicting_tracks:
        split_conflicting_tracks(model, cfg.max_reproj_error_px, cfg.min_tri_angle_deg)
    removed = filter_points(model, cfg)
    if images_root is not None:
        model.extract_colors_for_all_images(str(images_root))
    return removed


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
