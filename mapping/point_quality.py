"""Per-point uncertainty of a map: triangulation angle, reprojection error, track length and the
3D covariance they imply, computed once when a bundle is written (``features.h5`` stores it, see
:mod:`bundleio.features_h5`) and used by the localizer to weigh each 2D-3D match.

The covariance of point ``X`` (world frame, metres) is the Gauss-Newton one of its triangulation
with the map's camera poses held fixed: ``inv(sum_k J_k^T J_k / s^2 + I / prior^2)`` with ``J_k``
the (2, 3) Jacobian of image k's projection at ``X`` and ``s`` the point's observation noise
(its RMS reprojection error, never below ``noise_floor_px``). A point seen from a narrow baseline
gets a long ellipsoid along its viewing rays; ``prior_sigma_m`` only bounds the degenerate ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3

#: pixel noise floor of a map observation (SIFT keypoints and the map's own pose errors). Chosen
#: on the cv mean of `vloc bench 7scenes --protocol cv` (redkitchen, 6 folds): 1 px left wrong
#: one-pass poses at 3.1 cm sigma next to true ones at 2.2 cm; 2 px separates them (4.1 vs 2.4 cm
#: at the 99th percentile) and refines 8 more poses into 2 cm / 1 deg; 4 px rejects true ones.
#: With the localizer's guided matching on, 1.5 / 2 / 3 px give the same cv mean (89.2 %).
NOISE_FLOOR_PX = 2.0
#: 1-sigma bound (metres) on any direction of a point's uncertainty (regularises 1-view-like tracks).
PRIOR_SIGMA_M = 10.0


@dataclass
class PointQuality:
    """Per 3D point, rows aligned with ``ids`` (P,) int64.

    track_length: (P,) int32 observations; tri_angle_deg: (P,) float32 largest angle between two
    of its viewing rays; reproj_error_px: (P,) float32 RMS reprojection error; covariance: (P, 3, 3)
    float64 world-frame position covariance (m^2).
    """

    ids: np.ndarray
    track_length: np.ndarray
    tri_angle_deg: np.ndarray
    reproj_error_px: np.ndarray
    covariance: np.ndarray


def projection_jacobian(camera: Camera, points_cam: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(N, 2, 3) Jacobian of ``camera.project`` at (N, 3) camera-frame points (central differences
    relative to depth, so distortion models are covered)."""
    p = np.asarray(points_cam, np.float64).reshape(-1, 3)
    if not camera.has_distortion:  # closed form for pinhole models
        fx, fy = camera.focals
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        J = np.zeros((len(p), 2, 3))
        J[:, 0, 0], J[:, 0, 2] = fx / z, -fx * x / z ** 2
        J[:, 1, 1], J[:, 1, 2] = fy / z, -fy * y / z ** 2
        return J
    h = eps * np.maximum(np.abs(p[:, 2]), 1e-3)
    J = np.zeros((len(p), 2, 3))
    for a in range(3):
        d = np.zeros_like(p)
        d[:, a] = h
        J[:, :, a] = (camera.project(p + d) - camera.project(p - d)) / (2 * h[:, None])
    return J


def point_quality(points_id: np.ndarray, points_xyz: np.ndarray, cams_from_world: Sequence[Rigid3],
                  cameras: Sequence[Camera], keypoints: Sequence[np.ndarray], point3d_ids: Sequence[np.ndarray],
                  noise_floor_px: float = NOISE_FLOOR_PX, prior_sigma_m: float = PRIOR_SIGMA_M) -> PointQuality:
    """Quality of each point ``points_id`` (P,) at ``points_xyz`` (P, 3) (world, metres) from its
    observations: per map image k, ``cams_from_world[k]``, ``cameras[k]``, ``keypoints[k]`` (n_k, 2)
    COLMAP pixels observing the points ``point3d_ids[k]`` (n_k,)."""
    ids = np.asarray(points_id, np.int64)
    xyz = np.asarray(points_xyz, np.float64).reshape(-1, 3)
    P = len(ids)
    by_id = np.argsort(ids)
    # per-point sums, image by image (memory: a few arrays of P, and each observation's ray)
    n, err2_sum = np.zeros(P, np.int64), np.zeros(P)
    jtj = np.zeros((P, 3, 3))
    obs_row, rays = [], []
    for pose, cam, kp, pid in zip(cams_from_world, cameras, keypoints, point3d_ids):
        pid = np.asarray(pid, np.int64)
        if len(pid) == 0:
            continue
        rows = by_id[np.searchsorted(ids, pid, sorter=by_id)]
        X = xyz[rows]
        xc = pose.transform(X)
        J = projection_jacobian(cam, xc) @ pose.rotation            # (n, 2, 3) w.r.t. the world point
        r = cam.project(xc) - np.asarray(kp, np.float64).reshape(-1, 2)
        ray = X - pose.centre
        np.add.at(n, rows, 1)
        np.add.at(err2_sum, rows, np.nan_to_num(np.sum(r ** 2, axis=1), nan=1e6))
        np.add.at(jtj, rows, np.einsum("nia,nib->nab", J, J))
        obs_row.append(rows.astype(np.int32))
        rays.append((ray / np.linalg.norm(ray, axis=1, keepdims=True)).astype(np.float32))
    if not obs_row:
        z = np.zeros(P)
        return PointQuality(ids, z.astype(np.int32), z.astype(np.float32), z.astype(np.float32),
                            np.tile(np.eye(3) * prior_sigma_m ** 2, (P, 1, 1)))
    rms = np.sqrt(err2_sum / np.maximum(n, 1))
    sigma2 = np.maximum(rms, noise_floor_px) ** 2
    # each observation's information J^T J / sigma^2 uses its point's sigma: the sum divides once
    info = jtj
    info /= sigma2[:, None, None]
    info += np.eye(3) / prior_sigma_m ** 2
    angle = max_ray_angle_deg(np.concatenate(obs_row), np.concatenate(rays), P)
    return PointQuality(ids, n.astype(np.int32), angle, rms.astype(np.float32), np.linalg.inv(info))


def max_ray_angle_deg(obs_row: np.ndarray, rays: np.ndarray, n_points: int) -> np.ndarray:
    """(P,) float32 largest angle (degrees) between two unit rays (M, 3) of the same point
    (``obs_row`` (M,) its row); 0 for points with fewer than two rays. Exact, grouped by track length."""
    order = np.argsort(obs_row, kind="stable")
    counts = np.bincount(obs_row, minlength=n_points)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    out = np.zeros(n_points, np.float32)
    for length in np.unique(counts[counts >= 2]):
        pts = np.nonzero(counts == length)[0]
        idx = starts[pts][:, None] + np.arange(length)[None, :]
        U = rays[order[idx]].astype(np.float64)                      # (p, length, 3); rays may be float32
        cos = np.einsum("pia,pja->pij", U, U).reshape(len(pts), -1).min(axis=1)
        out[pts] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def from_reconstruction(rec, image_names: Sequence[str], **kw) -> PointQuality:
    """:func:`point_quality` of a pycolmap Reconstruction's points, observed by ``image_names``
    (a bundle's ``model/``: bundles written before ``features.h5`` stored the quality)."""
    ids = np.array(sorted(rec.points3D), np.int64)
    xyz = np.array([rec.points3D[int(i)].xyz for i in ids]).reshape(-1, 3)
    poses, cams, kps, pids = [], [], [], []
    for name in image_names:
        im = rec.find_image_with_name(name)
        if im is None:
            continue
        obs = [p for p in im.points2D if p.has_point3D()]
        poses.append(Rigid3.from_pycolmap(im.cam_from_world()))
        cams.append(Camera.from_pycolmap(rec.cameras[im.camera_id]))
        kps.append(np.array([p.xy for p in obs], np.float64).reshape(-1, 2))
        pids.append(np.array([p.point3D_id for p in obs], np.int64))
    return point_quality(ids, xyz, poses, cams, kps, pids, **kw)


def of_feature_set(rec, names: Sequence[str], keypoints: Sequence[np.ndarray], point3d_ids: Sequence[np.ndarray],
                   points_id: np.ndarray, points_xyz: np.ndarray, **kw) -> PointQuality:
    """:func:`point_quality` of a feature set being written: poses and cameras from the pycolmap
    model ``rec``, observations from the per-image arrays of ``names`` (as in features.h5)."""
    images = [rec.find_image_with_name(n) for n in names]
    poses = [Rigid3.from_pycolmap(im.cam_from_world()) for im in images]
    cams = [Camera.from_pycolmap(rec.cameras[im.camera_id]) for im in images]
    return point_quality(points_id, points_xyz, poses, cams, keypoints, point3d_ids, **kw)
