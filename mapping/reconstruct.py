"""Sparse 3D models with pycolmap: database writing, triangulation from known poses, SfM, filtering.

Image ids are 1-based positions in the record list. Every two-view geometry is
written *with* a configuration type (CALIBRATED): pycolmap's triangulator
silently ignores geometries without one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError
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
    #: keep two-view tracks (COLMAP drops them by default); useful for small maps.
    keep_two_view_tracks: bool = True
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
                   verified: dict[tuple[int, int], VerifiedPair]) -> None:
    """COLMAP database with cameras, trivial rigs/frames, keypoints, matches and two-view geometries."""
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
            m = vp.matches.astype(np.uint32)
            db.write_matches(i + 1, j + 1, m)
            tvg = pycolmap.TwoViewGeometry()
            tvg.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            tvg.inlier_matches = m
            tvg.E = vp.E
            tvg.cam2_from_cam1 = vp.cam2_from_cam1.to_pycolmap()
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
                    verified: dict[tuple[int, int], VerifiedPair], output: str) -> tuple[Path, Path]:
    """Write the COLMAP database into workdir; returns (database path, empty output folder)."""
    db_path = workdir / "database.db"
    write_database(db_path, records, features, verified)
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
                          cfg: ReconstructionConfig) -> tuple[pycolmap.Reconstruction, str]:
    """Unknown poses: pycolmap incremental and/or global mapping (``cfg.sfm_method``).
    Returns the largest model and the method that made it."""
    if cfg.sfm_method not in ("auto", "incremental", "global"):
        raise VlocError(f"unknown SfM method {cfg.sfm_method!r}: use auto, incremental or global")
    db_path, out = prepare_workdir(workdir, records, features, verified, "sfm")
    methods = ["incremental", "global"] if cfg.sfm_method == "auto" else [cfg.sfm_method]
    best, used = None, None
    for method in methods:
        model = _mapping(method, db_path, workdir, out / method, cfg)
        if model is not None and (best is None or model.num_reg_images() > best.num_reg_images()):
            best, used = model, method
        if best is not None and best.num_reg_images() >= cfg.auto_min_registered * len(records):
            break
    if best is None:
        raise VlocError("SfM registered no images: the images share too few verified matches")
    if best.num_points3D() == 0:
        raise VlocError("SfM produced a model without 3D points")
    return best, used


def _mapping(method: str, db_path: Path, workdir: Path, out: Path, cfg: ReconstructionConfig
             ) -> pycolmap.Reconstruction | None:
    """The largest model of one pycolmap mapper, or None."""
    out.mkdir(parents=True, exist_ok=True)
    if method == "global":
        gopts = pycolmap.GlobalPipelineOptions()
        gopts.num_threads = cfg.num_threads
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


def observation_errors(rec: pycolmap.Reconstruction, names: list[str], keypoints: list[np.ndarray],
                       point_ids: list[np.ndarray]) -> np.ndarray:
    """Reprojection errors (pixels) of given observations, vectorised per image.

    names: registered images; keypoints[k]: (N_k, 2) pixels of image k; point_ids[k]: (N_k,) the
    point3D each keypoint observes (the build passes its arrays; :func:`reprojection_errors`
    gathers them from a model's 2D points).
    """
    ids_sorted = np.sort(np.fromiter(rec.point3D_ids(), np.int64))
    xyz = np.array([rec.points3D[int(i)].xyz for i in ids_sorted], np.float64).reshape(-1, 3)
    errs = [np.zeros(0)]
    for name, xy, pid in zip(names, keypoints, point_ids):
        im = rec.find_image_with_name(name)
        world = xyz[np.searchsorted(ids_sorted, pid)]
        uv = im.camera.img_from_cam(Rigid3.from_pycolmap(im.cam_from_world()).transform(world),
                                    check_cheirality=False)
        errs.append(np.linalg.norm(np.asarray(uv) - np.asarray(xy, np.float64), axis=1))
    return np.concatenate(errs)

