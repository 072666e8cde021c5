"""Pose covariance that includes the map points' own uncertainty (pure geometry).

Each 2D-3D correspondence i gets the 2D covariance ``C_i = s^2 I + J_X Sigma_i J_X^T``: the query
keypoint noise ``s`` (pixels) plus the map point's world covariance ``Sigma_i`` (m^2, from
:mod:`mapping.point_quality`) projected into the query. The pose is refined by Gauss-Newton on
the whitened residuals (robust weights) and its covariance is ``inv(sum J_p^T W_i J_p)``, scaled up
by the variance factor when the residuals exceed the model. Pose convention: ``cam_from_world``
with the left perturbation ``R' = exp([d]x) R``, ``t' = t + dt``; covariance (6, 6) rotation
vector (rad) then translation (m), as :func:`localize.localizer.rotvec_covariance`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from mapping.point_quality import projection_jacobian


def _skew(v: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3, 3) cross-product matrices."""
    S = np.zeros((len(v), 3, 3))
    S[:, 0, 1], S[:, 0, 2], S[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    S[:, 1, 0], S[:, 2, 0], S[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    return S


def _inv2(C: np.ndarray) -> np.ndarray:
    """(N, 2, 2) inverses of symmetric positive-definite 2 x 2 matrices (closed form)."""
    a, b, d = C[:, 0, 0], C[:, 0, 1], C[:, 1, 1]
    det = a * d - b * b
    return np.stack([np.stack([d, -b], -1), np.stack([-b, a], -1)], 1) / det[:, None, None]


def _so3_exp(w: np.ndarray) -> np.ndarray:
    """(3,) rotation vector -> (3, 3) rotation matrix (Rodrigues)."""
    th = float(np.linalg.norm(w))
    K = _skew(w[None])[0]
    if th < 1e-12:
        return np.eye(3) + K
    return np.eye(3) + np.sin(th) / th * K + (1 - np.cos(th)) / th ** 2 * K @ K


def projection_jacobians(cam_from_world: Rigid3, camera: Camera, points_world: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (N, 2) of world points (N, 3) and the Jacobians of them w.r.t. the pose (N, 2, 6)
    (rotation vector, translation) and w.r.t. the world point (N, 2, 3)."""
    R = cam_from_world.rotation
    X = np.asarray(points_world, np.float64).reshape(-1, 3)
    RX = X @ R.T
    xc = RX + cam_from_world.translation
    Jc = projection_jacobian(camera, xc)                               # (N, 2, 3) w.r.t. camera point
    J_pose = np.concatenate([Jc @ -_skew(RX), Jc], axis=2)
    return camera.project(xc), J_pose, Jc @ R


def correspondence_covariances(cam_from_world: Rigid3, camera: Camera, points_world: np.ndarray,
                               point_covariances: np.ndarray | None, pixel_sigma: float) -> np.ndarray:
    """(N, 2, 2) pixel covariance of each correspondence: ``s^2 I`` plus the point's (N, 3, 3)
    world covariance projected into the query (None: the pixel noise alone)."""
    n = len(points_world)
    C = np.tile(np.eye(2) * pixel_sigma ** 2, (n, 1, 1))
    if point_covariances is not None:
        _, _, JX = projection_jacobians(cam_from_world, camera, points_world)
        C = C + JX @ point_covariances @ np.transpose(JX, (0, 2, 1))
    return C


@dataclass
class WeightedPose:
    """Result of :func:`refine_with_point_uncertainty`: the pose, its (6, 6) covariance, the
    variance factor (chi^2 / dof of the whitened residuals, >= 0) and the (N,) whitened residual norms."""

    cam_from_world: Rigid3
    covariance: np.ndarray
    variance_factor: float
    whitened_residuals: np.ndarray


def refine_with_point_uncertainty(points2d: np.ndarray, points_world: np.ndarray, camera: Camera,
                                  cam_from_world: Rigid3, point_covariances: np.ndarray | None,
                                  pixel_sigma: float, iterations: int = 5, loss_scale: float = 1.0,
                                  move: bool = True, loss: str = "cauchy") -> WeightedPose | None:
    """Gauss-Newton on (N, 2) pixels vs (N, 3) world points (inliers), each residual whitened by its
    :func:`correspondence_covariances` (recomputed each step), IRLS weights of the whitened residual
    norm ``m``: Cauchy ``1 / (1 + (m / loss_scale)^2)`` (pycolmap's pose refinement uses Cauchy at
    1 px) or Huber at ``loss_scale`` sigmas.
    ``move=False`` keeps the given pose and only computes its covariance. None when fewer than 4
    points or a singular system."""
    xy = np.asarray(points2d, np.float64).reshape(-1, 2)
    X = np.asarray(points_world, np.float64).reshape(-1, 3)
    if len(xy) < 4:
        return None
    R, t = cam_from_world.rotation.copy(), cam_from_world.translation.copy()
    C0 = np.eye(2) * pixel_sigma ** 2
    converged = False
    for it in range(iterations + 1):
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            return None
        uv, Jp, JX = projection_jacobians(Rigid3(R, t), camera, X)
        C = C0 + JX @ point_covariances @ np.transpose(JX, (0, 2, 1)) if point_covariances is not None \
            else np.broadcast_to(C0, (len(X), 2, 2))
        W = _inv2(C)
        r = np.nan_to_num(xy - uv, nan=1e6)
        Wr = np.einsum("nij,nj->ni", W, r)
        m = np.sqrt(np.maximum(np.einsum("ni,ni->n", r, Wr), 0))
        w = np.where(m <= loss_scale, 1.0, loss_scale / np.maximum(m, 1e-12)) if loss == "huber" \
            else 1.0 / (1.0 + (m / loss_scale) ** 2)
        Jw = Jp * w[:, None, None]
        H = np.tensordot(Jw, W @ Jp, axes=([0, 1], [0, 1]))          # sum_n w J^T W J  (6, 6)
        if it == iterations or not move or converged:
            break
        g = np.tensordot(Jw, Wr, axes=([0, 1], [0, 1]))               # sum_n w J^T W r  (6,)
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            return None
        R, t = _so3_exp(step[:3]) @ R, t + step[3:]
        converged = np.abs(step).max() < 1e-9  # then one more pass: weights and H at the new pose
    try:
        cov = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return None
    dof = max(2 * len(xy) - 6, 1)
    vf = float(np.sum(w * m ** 2) / dof)
    return WeightedPose(Rigid3(R, t), cov * max(vf, 1.0), vf, m)


def frame_floor_covariance(cam_from_world: Rigid3, sigma_m: float, sigma_deg: float) -> np.ndarray:
    """(6, 6) covariance (rotation vector, translation of ``cam_from_world``) of an independent
    isotropic error of the camera centre (``sigma_m``) and orientation (``sigma_deg``): the map's
    own accuracy, which no number of correspondences averages away. With the left perturbation,
    ``dt = -[t]x d - R dc`` for a rotation ``d`` and a centre shift ``dc``."""
    R, t = cam_from_world.rotation, cam_from_world.translation
    J = np.zeros((6, 6))
    J[:3, :3] = np.eye(3)
    J[3:, :3] = -_skew(t[None])[0]
    J[3:, 3:] = -R
    D = np.diag([np.radians(sigma_deg) ** 2] * 3 + [sigma_m ** 2] * 3)
    return J @ D @ J.T
