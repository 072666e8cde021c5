"""Sparse 3D models with pycolmap: database writing, triangulation from known poses, SfM, filtering.

Image ids are 1-based positions in the record list. Every two-view geometry is
written *with* a configuration type (CALIBRATED): pycolmap's triangulator
silently ignores geometries without one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError
from mapping.loop_check import LoopCheckConfig, LoopReport, loop_report
from mapping.sfm_refine import refine_model
from mapping.two_view import classified_geometry, essential_geometry
from vision.features import Features
from vision.matching import VerifiedPair

pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING chatter; errors still print.


@dataclass(frozen=True)
class ReconstructionConfig:
    """Triangulation / SfM / filtering settings."""

    #: points whose mean reprojection error exceeds this (pixels) are removed.
    max_reproj_error_px: float = 2.0
    #: points observed in fewer images are removed.
    min_track_length: int = 2
    #: minimum triangulation angle (degrees) used by COLMAP.
    min_tri_angle_deg: float = 1.5
    #: SfM method for unposed images: "incremental", "global", or "auto" (incremental; when it
    #: registers fewer than ``auto_min_registered`` of the images, e.g. forward-moving street
    #: sequences without a good initial pair, global too, keeping the model with more images).
    sfm_method: str = "auto"
    auto_min_registered: float = 0.8
    #: global bundle-adjustment rounds (with track merging / completion) when triangulating known
    #: poses; COLMAP's default is 5. Measured (100 posed redkitchen images): 5 rounds 3.9 s, 1 round
    #: 2.0 s at the same global-query accuracy; but 1 round left a longer tail in 400-px tracking
    #: (one map: max 15.8 cm vs 4.8 cm), 2 rounds did not.
    posed_ba_refinements: int = 2
    #: posed maps: split tracks that observe one image twice (:mod:`mapping.track_conflicts`, what
    #: the tuned reference of the accuracy issue does) before filtering. Measured on the cv mean
    #: (`vloc bench 7scenes --protocol cv`, redkitchen, 6 folds, 2026-12-04), within 2 cm / 1 deg and
    #: median: as triangulated 89.2 % / 0.99 cm; split 87.9 % / 1.00 cm; only the best sub-track
    #: kept 88.3 % / 0.98 cm; conflicting points deleted 85.8 % / 0.94 cm (one-pass maps lose
    #: coverage, one pose 15 cm off accepted). Off: not chosen by the cv mean.
    split_conflicting_tracks: bool = False
    #: keep two-view tracks (COLMAP drops them by default); useful for small maps.
    keep_two_view_tracks: bool = True
    #: unposed: rounds of retriangulation + track merging + global bundle adjustment after the
    #: mapper (:func:`mapping.sfm_refine.refine_model`); 0 = the mapper's model as it is.
    #: Measured (Strecha fountain-P11 / Herz-Jesus-P8, generated loops): 1 round at a 4 px merge
    #: limit leaves right models as they were (fountain 0.160 / 0.325 cm both ways, +3 s), 2 rounds
    #: add nothing; it does not repair a folded model (the 1536x1024 loop: 90 / 275 cm before and
    #: after), which the loop check refuses instead.
    sfm_refine_passes: int = 1
    #: unposed: tracks whose reprojections lie this far apart (pixels) may still merge in those
    #: rounds. Measured: 8 px made fountain-P11 worse (0.16 / 0.32 -> 0.19 / 0.37 cm median / max
    #: centre error), Herz-Jesus-P8 too (0.37 / 0.47 -> 0.41 / 0.54 cm); 4 px (COLMAP's) does not.
    sfm_merge_max_reproj_px: float = 4.0
    #: unposed: the two-view geometries the mappers are given, tried in this order per method
    #: until a model passes the loop check: "essential" (each pair as verified) and "classified"
    #: (COLMAP's own E / planar H / panoramic classification, :mod:`mapping.two_view`). Measured:
    #: neither is right everywhere. Generated 384x256 loop: incremental folded with "essential",
    #: right with "classified" (0.36 / 0.56 cm); generated 1536x1024 30-image loop: incremental
    #: folded with both, global right with "essential" (0.04 / 0.09 cm) and wrong with
    #: "classified"; Strecha: "essential" as before (fountain-P11 0.16 / 0.32 cm), "classified"
    #: 0.20 / 0.32. So "essential" first (same models as before whenever they were right).
    two_view_geometries: tuple[str, ...] = ("essential", "classified")
    #: "classified": RANSAC error (pixels, as the pair verification's) and minimum inliers.
    two_view_max_error_px: float = 4.0
    two_view_min_inliers: int = 15
    #: unposed: when a model counts as inconsistent with its verified pairs (refused).
    loop_check: LoopCheckConfig = field(default_factory=LoopCheckConfig)
    num_threads: int = -1
    seed: int = 0


def camera_ids(cameras: list[Camera]) -> tuple[list[int], dict[int, Camera]]:
    """Share one camera id among identical intrinsics: per-image ids and id -> Camera."""
    ids: dict[Camera, int] = {}
    per_image = []
    for cam in cameras:
        if cam not in ids:
            ids[cam] = len(ids) + 1
        per_image.append(ids[cam])
    return per_image, {i: c for c, i in ids.items()}


def write_database(db_path: Path, records: list[ImageRecord], features: list[Features],
                   verified: dict[tuple[int, int], VerifiedPair], classify: ReconstructionConfig | None = None
                   ) -> None:
    """COLMAP database with cameras, trivial rigs/frames, keypoints, matches and two-view geometries.
    ``classify`` (unposed builds): each pair's geometry as COLMAP classifies its verified matches
    (:func:`mapping.two_view.classified_geometry`); else the verified essential matrix."""
    cam_of_image, cams = camera_ids([r.camera for r in records])
    db = pycolmap.Database.open(str(db_path))
    try:
        for cid, cam in cams.items():
            db.write_camera(cam.to_pycolmap(cid), use_camera_id=True)
            rig = pycolmap.Rig()
            rig.rig_id = cid
            rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cid))
            db.write_rig(rig, use_rig_id=True)
        for i, (rec, feats) in enumerate(zip(records, features)):
            iid, cid = i + 1, cam_of_image[i]
            db.write_image(pycolmap.Image(name=rec.name, camera_id=cid, image_id=iid), use_image_id=True)
            frame = pycolmap.Frame()
            frame.frame_id = iid
            frame.rig_id = cid
            frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cid), iid))
            db.write_frame(frame, use_frame_id=True)
            db.write_keypoints(iid, feats.keypoints.astype(np.float32))
        for (i, j), vp in verified.items():
            db.write_matches(i + 1, j + 1, vp.matches.astype(np.uint32))
            tvg = essential_geometry(vp) if classify is None else classified_geometry(
                features[i].keypoints, features[j].keypoints, vp, records[i].camera, records[j].camera,
                classify.two_view_max_error_px, classify.two_view_min_inliers, classify.seed)
            db.write_two_view_geometry(i + 1, j + 1, tvg)
    finally:
        db.close()


def posed_reconstruction(records: list[ImageRecord], features: list[Features]) -> pycolmap.Reconstruction:
    """A pycolmap Reconstruction with all images registered at their known ``cam_from_world``, no points."""
    cam_of_image, cams = camera_ids([r.camera for r in records])
    rec = pycolmap.Reconstruction()
    for cid, cam in cams.items():
        rec.add_camera_with_trivial_rig(cam.to_pycolmap(cid))
    for i, (r, f) in enumerate(zip(records, features)):
        im = pycolmap.Image(name=r.name, keypoints=f.keypoints.astype(np.float64),
                            camera_id=cam_of_image[i], image_id=i + 1)
        rec.add_image_with_trivial_frame(im, r.cam_from_world.to_pycolmap())
    return rec


def pipeline_options(cfg: ReconstructionConfig) -> pycolmap.IncrementalPipelineOptions:
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.seed
    opts.triangulation.min_angle = cfg.min_tri_angle_deg
    opts.triangulation.ignore_two_view_tracks = not cfg.keep_two_view_tracks
    opts.ba_refine_focal_length = False
    opts.ba_refine_principal_point = False
    opts.ba_refine_extra_params = False
    return opts


def prepare_workdir(workdir: Path, records: list[ImageRecord], features: list[Features],
                    verified: dict[tuple[int, int], VerifiedPair], output: str,
                    classify: ReconstructionConfig | None = None) -> tuple[Path, Path]:
    """Write the COLMAP database into workdir; returns (database path, empty output folder)."""
    db_path = workdir / "database.db"
    write_database(db_path, records, features, verified, classify)
    out = workdir / output
    out.mkdir(parents=True, exist_ok=True)
    return db_path, out


def triangulate_known_poses(records: list[ImageRecord], features: list[Features],
                            verified: dict[tuple[int, int], VerifiedPair], workdir: Path,
                            cfg: ReconstructionConfig) -> pycolmap.Reconstruction:
    """Triangulate verified matches with fixed known poses (COLMAP point_triangulator)."""
    db_path, out = prepare_workdir(workdir, records, features, verified, "triangulated")
    rec = posed_reconstruction(records, features)
    opts = pipeline_options(cfg)
    opts.ba_global_max_refinements = cfg.posed_ba_refinements
    rec = pycolmap.triangulate_points(rec, str(db_path), str(workdir), str(out), clear_points=True,
                                      options=opts, refine_intrinsics=False)
    if rec.num_points3D() == 0:
        raise VlocError("triangulation produced no 3D points: the images share too few verified matches "
                        "(check the poses, the camera, and that the images overlap)")
    return rec


def structure_from_motion(records: list[ImageRecord], features: list[Features],
                          verified: dict[tuple[int, int], VerifiedPair], workdir: Path,
                          cfg: ReconstructionConfig, report: dict | None = None
                          ) -> tuple[pycolmap.Reconstruction, str]:
    """Unknown poses: pycolmap incremental and/or global mapping (``cfg.sfm_method``; "auto":
    incremental first), each method with each of ``cfg.two_view_geometries`` in turn; every model
    refined (:func:`mapping.sfm_refine.refine_model`) and checked against its verified pairs
    (:func:`mapping.loop_check.loop_report`). Returns the first consistent model that registers
    ``cfg.auto_min_registered`` of the images (else the consistent one with the most) and the
    method that made it. A model that is inconsistent (a loop that did not close, a global model
    placed wrongly) is never returned: when none is consistent, VlocError naming the numbers.
    ``report``: when given, filled with the chosen model's check numbers (``loop_check``)."""
    if cfg.sfm_method not in ("auto", "incremental", "global"):
        raise VlocError(f"unknown SfM method {cfg.sfm_method!r}: use auto, incremental or global")
    unknown = set(cfg.two_view_geometries) - {"essential", "classified"}
    if unknown or not cfg.two_view_geometries:
        raise VlocError(f"unknown two-view geometries {sorted(unknown)}: use essential and/or classified")
    methods = ["incremental", "global"] if cfg.sfm_method == "auto" else [cfg.sfm_method]
    databases: dict[str, Path] = {}
    best: tuple[pycolmap.Reconstruction, str, LoopReport] | None = None
    refused: list[tuple[str, LoopReport]] = []
    for method in methods:
        for geometry in cfg.two_view_geometries:
            if geometry not in databases:
                (workdir / geometry).mkdir(parents=True, exist_ok=True)
                databases[geometry], _ = prepare_workdir(workdir / geometry, records, features, verified, "sfm",
                                                         classify=cfg if geometry == "classified" else None)
            db_path = databases[geometry]
            model = _mapping(method, db_path, db_path.parent, db_path.parent / "sfm" / method, cfg)
            if model is None or model.num_points3D() == 0:
                continue
            model = refine_model(model, db_path, pipeline_options(cfg), cfg.sfm_refine_passes,
                                 cfg.sfm_merge_max_reproj_px)
            check = loop_report(model, records, features, verified, cfg.loop_check)
            if not check.consistent:
                refused.append((f"{method} ({geometry} pairs)", check))
                continue
            if best is None or model.num_reg_images() > best[0].num_reg_images():
                best = (model, method, check)
            if best[0].num_reg_images() >= cfg.auto_min_registered * len(records):
                break
        if best is not None and best[0].num_reg_images() >= cfg.auto_min_registered * len(records):
            break
    if best is None:
        if refused:
            raise VlocError("SfM model refused as inconsistent with its image pairs: "
                            + "; ".join(f"{m}: {c.reason}" for m, c in refused))
        raise VlocError("SfM registered no images: the images share too few verified matches")
    if report is not None:
        report["loop_check"] = {**best[2].summary(),
                                "refused": {m: c.summary() for m, c in refused}}
    return best[0], best[1]


def _mapping(method: str, db_path: Path, workdir: Path, out: Path, cfg: ReconstructionConfig
             ) -> pycolmap.Reconstruction | None:
    """The largest model of one pycolmap mapper, or None."""
    out.mkdir(parents=True, exist_ok=True)
    if method == "global":
        gopts = pycolmap.GlobalPipelineOptions()
        gopts.num_threads = cfg.num_threads
        gopts.random_seed = cfg.seed
        # known intrinsics, as in the incremental mapper (the global mapper refines the focal
        # length and distortion by default)
        gopts.mapper.bundle_adjustment.refine_focal_length = False
        gopts.mapper.bundle_adjustment.refine_extra_params = False
        gopts.mapper.bundle_adjustment.refine_principal_point = False
        models = pycolmap.global_mapping(str(db_path), str(workdir), str(out), gopts)
    else:
        models = pycolmap.incremental_mapping(str(db_path), str(workdir), str(out), pipeline_options(cfg))
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def filter_points(rec: pycolmap.Reconstruction, cfg: ReconstructionConfig) -> int:
    """Remove points with short tracks or large mean reprojection error; returns how many were removed."""
    rec.update_point_3d_errors()
    bad = [pid for pid, p in rec.points3D.items()
           if p.track.length() < cfg.min_track_length or p.error > cfg.max_reproj_error_px]
    for pid in bad:
        rec.delete_point3D(pid)
    return len(bad)


def images_cam_from_world(rec: pycolmap.Reconstruction) -> dict[str, Rigid3]:
    """Registered image name -> ``cam_from_world``."""
    return {im.name: Rigid3.from_pycolmap(im.cam_from_world())
            for im in rec.images.values() if im.has_pose}


def reprojection_errors(rec: pycolmap.Reconstruction) -> np.ndarray:
    """(num_observations,) reprojection errors in pixels over all tracks."""
    names, keypoints, point_ids = [], [], []
    for im in rec.images.values():
        idx = im.get_observation_point2D_idxs() if im.has_pose else []
        if not len(idx):
            continue
        points2d = im.points2D
        names.append(im.name)
        keypoints.append(np.array([points2d[k].xy for k in idx], np.float64).reshape(-1, 2))
        point_ids.append(np.array([points2d[k].point3D_id for k in idx], np.int64))
    return observation_errors(rec, names, keypoints, point_ids)


def points_xyz(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(P,) sorted point ids and (P, 3) their world positions, filled in place (no per-point arrays
    held: a 20,000-image map has millions of points)."""
    ids = np.sort(np.fromiter(rec.point3D_ids(), np.int64))
    xyz = np.empty((len(ids), 3))
    for k, i in enumerate(ids.tolist()):
        xyz[k] = rec.points3D[i].xyz
    return ids, xyz


def observation_errors(rec: pycolmap.Reconstruction, names: list[str], keypoints: list[np.ndarray],
                       point_ids: list[np.ndarray]) -> np.ndarray:
    """Reprojection errors (pixels) of given observations, vectorised per image.

    names: registered images; keypoints[k]: (N_k, 2) pixels of image k; point_ids[k]: (N_k,) the
    point3D each keypoint observes (the build passes its arrays; :func:`reprojection_errors`
    gathers them from a model's 2D points).
    """
    ids_sorted, xyz = points_xyz(rec)
    errs = [np.zeros(0)]
    for name, xy, pid in zip(names, keypoints, point_ids):
        im = rec.find_image_with_name(name)
        world = xyz[np.searchsorted(ids_sorted, pid)]
        uv = im.camera.img_from_cam(Rigid3.from_pycolmap(im.cam_from_world()).transform(world),
                                    check_cheirality=False)
        errs.append(np.linalg.norm(np.asarray(uv) - np.asarray(xy, np.float64), axis=1))
    return np.concatenate(errs)

