"""Partitioned reconstruction inside `vloc map build`: whether to partition, each part as a job, the merge.

:func:`plan_partitions` decides (``BuildConfig.partition``: "auto" partitions a map of more images
than one partition holds, "on" always, "off" never) and splits: posed maps into balanced k-d tiles
of the camera centres grown by ``PartitionConfig.overlap_m`` (every verified pair placed in a tile,
:func:`mapping.partition.assign_pairs`), unposed maps into overlapping view-graph clusters of the
largest connected part of the view graph (GPS positions in a local east / north / up frame when the
images have them, :func:`mapping.partition.partition_view_graph`).

Each part is a :class:`PartJob`: plain data that pickles (a Dask task's argument). :func:`run_part`
reads the part's keypoints and verified matches from the work directory (or takes them from memory),
triangulates the tile with the known ``cam_from_world`` or runs incremental SfM on the cluster, and
writes the model to ``<folder>/model`` with a ``summary.json`` last: a part whose summary is there is
not run again (a rerun resumes; a task rerun after its worker died redoes only the unfinished
parts). Each attempt works in its own scratch folder, so two attempts never share a COLMAP database.
:func:`merge_parts` merges the models (:func:`mapping.partition_merge.merge_posed`, or
:func:`mapping.partition_sfm.align_models` + :func:`~mapping.partition_sfm.merge_aligned`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pycolmap
from scipy.sparse.csgraph import connected_components

from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError
from mapping.config import BuildConfig
from mapping.feature_store import ImageKeypoints, load_feature_arrays
from mapping.match import load_matches
from mapping.partition import assign_pairs, partition_balanced, partition_view_graph, view_graph
from mapping.partition_merge import PartInputs, finish_tile, merge_tile_tables, triangulate_tile
from mapping.partition_sfm import align_models, merge_aligned, reconstruct_cluster
from mapping.point_table import PointTable
from mapping.reconstruct import ReconstructionConfig
from mapping.stage_cache import StageCache, content_key
from vision.matching import VerifiedPair

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class PartitionPlan:
    """How a map is split: ``kind`` "tiles" (posed) or "clusters" (unposed); ``parts[k]`` (K,) sorted
    image indices into the build's records; ``part_pairs[k]`` the verified pairs (i, j), i < j,
    reconstructed in part k; ``max_images``: the partition size used."""

    kind: str
    parts: list[np.ndarray]
    part_pairs: list[list[tuple[int, int]]]
    max_images: int


@dataclass(frozen=True)
class PartJob:
    """One part's work as data (a Dask task's argument).

    index: (K,) global image indices; records: the part's records (posed tiles keep
    ``cam_from_world``); pairs: global verified pairs of the part; feature_keys / match_keys: their
    stage-cache keys (None: the caller hands features and matches in memory); folder: where the
    model and ``summary.json`` go; cfg: the part's reconstruction settings."""

    kind: str
    label: str
    index: np.ndarray
    records: list[ImageRecord]
    pairs: list[tuple[int, int]]
    folder: str
    cfg: ReconstructionConfig
    cache_root: str | None = None
    feature_keys: list[str] | None = None
    match_keys: list[str] | None = None
    #: where the images are (a tile colours its points from them); None: no colours.
    images_root: str | None = None

    @property
    def output(self) -> Path:
        """What the part leaves in its folder: a tile's :class:`PointTable` (``points.npz``), a
        cluster's model (``model/``)."""
        return Path(self.folder) / ("points.npz" if self.kind == "tiles" else "model")


def gps_positions(records: Sequence[ImageRecord]) -> np.ndarray | None:
    """(N, 3) metres east / north / up of each record's GPS position around the first one's (a local
    tangent plane: enough to cluster a site), NaN rows for images without; None when none has GPS."""
    have = [r.gps for r in records if r.gps is not None]
    if not have:
        return None
    lat0, lon0 = np.radians(have[0].latitude), np.radians(have[0].longitude)
    out = np.full((len(records), 3), np.nan)
    for k, r in enumerate(records):
        if r.gps is None:
            continue
        lat, lon = np.radians(r.gps.latitude), np.radians(r.gps.longitude)
        out[k] = [EARTH_RADIUS_M * np.cos(lat0) * (lon - lon0), EARTH_RADIUS_M * (lat - lat0), r.gps.altitude or 0.0]
    return out


def plan_partitions(records: Sequence[ImageRecord], verified: Mapping[tuple[int, int], VerifiedPair],
                    cfg: BuildConfig, posed: bool) -> PartitionPlan | None:
    """The build's partitions, or None when it reconstructs the map whole (``cfg.partition`` "off",
    or "auto" and the map fits one partition). Parts without a verified pair are left out."""
    limit = cfg.partition_images(posed)
    if cfg.partition == "off" or (cfg.partition == "auto" and len(records) <= limit):
        return None
    pcfg = cfg.partitioning
    pairs = sorted(verified)
    if posed:
        centres = np.array([r.cam_from_world.centre for r in records]).reshape(-1, 3)
        parts, part_pairs = assign_pairs(partition_balanced(centres, limit, pcfg.overlap_m), pairs)
    else:
        parts = _view_graph_clusters(records, {p: len(verified[p].matches) for p in pairs}, limit, pcfg)
        members = [set(c.tolist()) for c in parts]
        part_pairs = [[(i, j) for i, j in pairs if i in m and j in m] for m in members]
    keep = [k for k, p in enumerate(part_pairs) if p]
    return PartitionPlan("tiles" if posed else "clusters", [parts[k] for k in keep], [part_pairs[k] for k in keep],
                         limit)


def whole_tile(records: Sequence[ImageRecord], verified: Mapping[tuple[int, int], VerifiedPair]) -> PartitionPlan:
    """A posed map as one tile: every image and every verified pair (the map reconstructed whole, as
    a part: on a worker of a cluster build, leaving a point table like the tiles do)."""
    return PartitionPlan("tiles", [np.arange(len(records))], [sorted(verified)], len(records))


def _view_graph_clusters(records: Sequence[ImageRecord], matches: dict[tuple[int, int], int], limit: int,
                         pcfg) -> list[np.ndarray]:
    """Clusters of the largest connected part of the view graph (one SfM keeps only its largest
    model too: images outside it stay unregistered)."""
    n = len(records)
    _, label = connected_components(view_graph(n, matches), directed=False)
    sizes = np.bincount(label, weights=np.isin(np.arange(n), np.array(list(matches), np.int64).ravel()))
    main = np.flatnonzero(label == int(np.argmax(sizes)))
    local = {int(g): k for k, g in enumerate(main)}
    sub = {(local[i], local[j]): w for (i, j), w in matches.items() if i in local and j in local}
    pos = gps_positions([records[int(g)] for g in main])
    clusters = partition_view_graph(len(main), sub, limit, pcfg.overlap_images, pos, pcfg.min_link_matches)
    return [main[c] for c in clusters]


def part_jobs(plan: PartitionPlan, records: Sequence[ImageRecord], cfg: BuildConfig, folder_root: Path,
              verified: Mapping[tuple[int, int], VerifiedPair], cache: StageCache | None,
              feature_keys: list[str] | None, parallel: bool, images_root: Path | None = None) -> list[PartJob]:
    """One :class:`PartJob` per part. With a ``cache`` (the work directory) each job reads its
    inputs from there and its folder is named by a key of everything that determines its model
    (a rerun finds it); ``verified`` must then be a :class:`mapping.match.MatchStore`.
    ``parallel``: parts run side by side (one solver thread each). ``images_root``: tiles colour
    their points from the images there."""
    rcfg = replace(cfg.reconstruction, num_threads=1) if parallel else cfg.reconstruction
    if plan.kind == "clusters":
        rcfg = replace(rcfg, sfm_method="incremental")
    jobs = []
    for k, (index, pairs) in enumerate(zip(plan.parts, plan.part_pairs)):
        recs = [records[int(g)] for g in index]
        if plan.kind == "clusters":
            recs = [replace(r, cam_from_world=None) for r in recs]
        label = f"{plan.kind[:-1]} {k}"
        if cache is None:
            jobs.append(PartJob(plan.kind, label, index, recs, pairs, str(Path(folder_root) / f"part{k:03d}"), rcfg,
                                images_root=None if images_root is None else str(images_root)))
            continue
        fkeys = [feature_keys[int(g)] for g in index]
        mkeys = [verified.keys[p] for p in pairs]  # type: ignore[attr-defined]
        poses = [None if r.cam_from_world is None else r.cam_from_world.matrix3x4().tolist() for r in recs]
        key = content_key("partition-v2", plan.kind, fkeys, poses, mkeys, asdict(rcfg), images_root is not None)
        jobs.append(PartJob(plan.kind, label, index, recs, pairs, str(cache.root / "partitions" /
                                                                      f"{plan.kind}-{key[:32]}"), rcfg,
                            str(cache.root), fkeys, mkeys, None if images_root is None else str(images_root)))
    return jobs


def run_part(job: PartJob, keypoints: Sequence | None = None,
             verified: Mapping[tuple[int, int], VerifiedPair] | None = None) -> dict:
    """Reconstruct one part into ``job.folder`` (:attr:`PartJob.output` and ``summary.json``); its
    summary. A tile is triangulated and finished here (:func:`mapping.partition_merge.finish_tile`:
    conflicting tracks, filter, colours), and leaves its points as a :class:`PointTable` of global image indices; a cluster
    leaves its model. Inputs from the work directory (``job.cache_root``) or, without one,
    ``keypoints`` (by global image index: objects with ``.keypoints``) and ``verified`` (global
    pairs). A finished part is read back, not run again. An unposed cluster that registers nothing
    raises VlocError."""
    folder = Path(job.folder)
    done = folder / "summary.json"
    if done.is_file() and job.output.exists() == json.loads(done.read_text())["model"]:
        return {**json.loads(done.read_text()), "resumed": True}
    t = time.perf_counter()
    local = {int(g): k for k, g in enumerate(job.index)}
    if job.cache_root is not None:
        cache = StageCache(Path(job.cache_root))
        feats = [ImageKeypoints(load_feature_arrays(cache, key, ("keypoints",), r.name)["keypoints"])
                 for key, r in zip(job.feature_keys, job.records)]
        pair_vp = {}
        for p, key in zip(job.pairs, job.match_keys):
            found, vp = load_matches(cache, key)
            if not found or vp is None:
                raise VlocError(f"the matches of pair {p} are missing from the work directory {cache.root}; "
                                "rerun to compute them again")
            pair_vp[p] = vp
    else:
        feats = [keypoints[int(g)] for g in job.index]
        pair_vp = {p: verified[p] for p in job.pairs}
    part = PartInputs(np.asarray(job.index, np.int64), list(job.records), feats,
                      {(local[i], local[j]): vp for (i, j), vp in pair_vp.items()})
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        filtered = 0
        if job.kind == "tiles":
            model = triangulate_tile(part, scratch, job.cfg)
            if model is not None:
                filtered = finish_tile(model, job.cfg, job.images_root)
                PointTable.of_model(model, {r.name: int(g) for r, g in zip(job.records, job.index)}).save(
                    scratch / "points.npz")
        else:
            model = reconstruct_cluster(part, scratch, job.cfg, label=job.label)
        if model is not None:
            shutil.rmtree(job.output, ignore_errors=True)
            os.replace(scratch / job.output.name, job.output)
        summary = {"label": job.label, "n_images": len(job.index), "n_pairs": len(job.pairs),
                   "n_registered": 0 if model is None else model.num_reg_images(),
                   "n_points3D": 0 if model is None else model.num_points3D(), "n_points_filtered": filtered,
                   "model": model is not None, "seconds": time.perf_counter() - t}
        tmp = folder / f".summary-{uuid.uuid4().hex[:8]}.json"
        tmp.write_text(json.dumps(summary))
        os.replace(tmp, done)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**summary, "resumed": False}


def load_part_model(job: PartJob) -> pycolmap.Reconstruction | None:
    """The model :func:`run_part` wrote for cluster ``job`` (None: none was made)."""
    return pycolmap.Reconstruction(str(job.output)) if job.output.is_dir() else None


def merge_parts(plan: PartitionPlan, jobs: list[PartJob], summaries: list[dict], records: list[ImageRecord],
                keypoints: Sequence, verified: Mapping[tuple[int, int], VerifiedPair], workdir: Path,
                cfg: BuildConfig) -> tuple[pycolmap.Reconstruction | PointTable, dict]:
    """One map from the parts' outputs (read from their folders): posed tiles' point tables merged
    without duplicate points (poses held; :func:`mapping.partition_merge.merge_tile_tables`: a
    :class:`PointTable`, never a model of the whole map), unposed clusters aligned onto the largest,
    merged and adjusted (a model). Returns it and the report recorded as ``statistics.partitions``."""
    t = time.perf_counter()
    if plan.kind == "tiles":
        tables = [PointTable.load(j.output) for j in jobs if j.output.is_file()]
        merged, stats = merge_tile_tables(tables, records, keypoints, cfg.reconstruction)
        if merged.n_points == 0:
            raise VlocError("the merged tiles hold no 3D points: the images share too few verified matches")
        stats["n_points_filtered"] += int(sum(s.get("n_points_filtered", 0) for s in summaries))
        alignments = None
    else:
        found = [m for m in (load_part_model(j) for j in jobs) if m is not None]
        if not found:
            raise VlocError("no cluster of the view graph was reconstructed")
        alignments = align_models(found, cfg.partitioning)
        merged, stats = merge_aligned(found, records, keypoints, verified, Path(workdir), cfg.reconstruction,
                                      cfg.partitioning)
        if merged.num_points3D() == 0:
            raise VlocError("the merged clusters hold no 3D points after adjustment")
    stats.update(kind=plan.kind, max_images=plan.max_images, n_parts=len(jobs),
                 part_sizes=[len(j.index) for j in jobs], part_pairs=[len(j.pairs) for j in jobs],
                 part_registered=[s["n_registered"] for s in summaries],
                 part_points=[s["n_points3D"] for s in summaries], part_seconds=[s["seconds"] for s in summaries],
                 parts_resumed=int(sum(bool(s.get("resumed")) for s in summaries)),
                 merge_s=time.perf_counter() - t)
    if alignments is not None:
        stats["alignments"] = [{"target": a.target, "scale": a.ref_from_model.scale,
                                "n_shared_images": a.n_shared_images, "inlier_ratio": a.inlier_ratio,
                                "centre_residual": a.centre_residual,
                                "rotation_residual_deg": a.rotation_residual_deg} for a in alignments]
    return merged, stats


def run_parts(jobs: list[PartJob], workers: int, reporter: Reporter = QUIET, keypoints: Sequence | None = None,
              verified: Mapping[tuple[int, int], VerifiedPair] | None = None) -> list[dict]:
    """:func:`run_part` of every job on ``workers`` threads of this process (pycolmap releases the
    GIL), a progress bar advanced per finished part; summaries in job order."""
    out: list[dict | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max(1, min(workers, len(jobs)))) as ex, \
            reporter.stage(f"reconstruction ({len(jobs)} {jobs[0].kind if jobs else 'parts'})", len(jobs),
                           unit="partitions") as advance:
        futures = {ex.submit(run_part, job, keypoints, verified): k for k, job in enumerate(jobs)}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            advance(1)
    return out  # type: ignore[return-value]
