"""Rigid transforms with named frames: the one pose vocabulary of vloc.

Conventions (used by every stage, written into every bundle manifest):

* A transform is named ``b_from_a``: it maps a point expressed in frame ``a``
  to frame ``b``: ``x_b = R @ x_a + t``.  ``cam_from_world`` is COLMAP's
  image pose (world-to-camera); ``world_from_cam`` is its inverse (the camera
  centre is ``world_from_cam.translation``).
* Camera frame: x right, y down, z forward (OpenCV / COLMAP).
* Quaternions are **(w, x, y, z)**, unit norm, Hamilton convention, as in
  COLMAP text files and kapture.  (pycolmap's ``Rotation3d.quat`` is
  (x, y, z, w); conversions happen only in this module.)
* Units: metres.

No bare 4x4 crosses a module boundary: pass a :class:`Rigid3`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation


def quat_wxyz_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """(4,) quaternion (w, x, y, z) -> (3, 3) rotation matrix. Normalises the input."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"invalid quaternion {q_wxyz!r}")
    return Rotation.from_quat(np.r_[q[1:], q[0]] / n).as_matrix()


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (w, x, y, z) with w >= 0."""
    xyzw = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    q = np.r_[xyzw[3], xyzw[:3]]
    return q if q[0] >= 0 else -q


@dataclass(frozen=True)
class Rigid3:
    """A rigid transform ``b_from_a``: ``x_b = rotation @ x_a + translation``.

    rotation: (3, 3) float64 orthonormal, det +1.  translation: (3,) float64, metres.
    The variable holding it names the frames (``cam_from_world``).
    """

    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self) -> None:
        R = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.translation, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("Rigid3 with non-finite values")
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    # constructors -----------------------------------------------------------------
    @staticmethod
    def identity() -> "Rigid3":
        return Rigid3(np.eye(3), np.zeros(3))

    @staticmethod
    def from_quat_wxyz(q_wxyz, t) -> "Rigid3":
        """From a (w, x, y, z) quaternion and a translation (3,)."""
        return Rigid3(quat_wxyz_to_matrix(q_wxyz), np.asarray(t, dtype=np.float64))

    @staticmethod
    def from_matrix4(T: np.ndarray) -> "Rigid3":
        """From a homogeneous (4, 4) or (3, 4) matrix ``[R | t]`` (for file parsers only).

        The rotation block is re-orthonormalised (SVD) so that slightly
        non-orthogonal matrices from text files are accepted.
        """
        T = np.asarray(T, dtype=np.float64)
        if T.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"expected a 4x4 or 3x4 matrix, got shape {T.shape}")
        U, _, Vt = np.linalg.svd(T[:3, :3])
        R = U @ Vt
        if np.linalg.det(R) < 0:
            raise ValueError("matrix has a reflection, not a rotation")
        return Rigid3(R, T[:3, 3])

    @staticmethod
    def from_pycolmap(r: "pycolmap.Rigid3d") -> "Rigid3":
        return Rigid3(np.asarray(r.rotation.matrix()), np.asarray(r.translation))

    # accessors --------------------------------------------------------------------
    @property
    def quat_wxyz(self) -> np.ndarray:
        """(4,) unit quaternion (w, x, y, z), w >= 0."""
        return matrix_to_quat_wxyz(self.rotation)

    def matrix3x4(self) -> np.ndarray:
        """(3, 4) ``[R | t]`` (for writers and numeric kernels only)."""
        return np.hstack([self.rotation, self.translation[:, None]])

    def matrix4(self) -> np.ndarray:
        """(4, 4) homogeneous matrix (for writers and numeric kernels only)."""
        T = np.eye(4)
        T[:3] = self.matrix3x4()
        return T

    def to_pycolmap(self) -> "pycolmap.Rigid3d":
        xyzw = Rotation.from_matrix(self.rotation).as_quat()
        return pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw), self.translation.copy())

    # algebra ----------------------------------------------------------------------
    def inverse(self) -> "Rigid3":
        """``a_from_b`` for ``self = b_from_a``."""
        Rt = self.rotation.T
        return Rigid3(Rt, -Rt @ self.translation)

    def __mul__(self, other: "Rigid3") -> "Rigid3":
        """Composition: ``c_from_b * b_from_a = c_from_a``."""
        return Rigid3(self.rotation @ other.rotation,
                      self.rotation @ other.translation + self.translation)

    def transform(self, points_a: np.ndarray) -> np.ndarray:
        """(N, 3) points in frame a -> (N, 3) points in frame b."""
        p = np.asarray(points_a, dtype=np.float64)
        return p @ self.rotation.T + self.translation

    @property
    def centre(self) -> np.ndarray:
        """For ``cam_from_world``: the camera centre in world, (3,)."""
        return -self.rotation.T @ self.translation


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (degrees) of the relative rotation ``R_a^T R_b``."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def pose_error(cam_from_world_est: Rigid3, cam_from_world_gt: Rigid3) -> tuple[float, float]:
    """(centre error in metres, rotation error in degrees) between two ``cam_from_world``."""
    dt = float(np.linalg.norm(cam_from_world_est.centre - cam_from_world_gt.centre))
    return dt, rotation_angle_deg(cam_from_world_est.rotation, cam_from_world_gt.rotation)


@dataclass(frozen=True)
class Sim3:
    """A similarity ``b_from_a``: ``x_b = scale * rotation @ x_a + translation``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def transform(self, points_a: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * np.asarray(points_a, dtype=np.float64) @ self.rotation.T + self.translation

    def transform_pose(self, cam_from_a: Rigid3) -> Rigid3:
        """Re-express a ``cam_from_a`` pose as ``cam_from_b`` (scale goes into the translation)."""
        R = cam_from_a.rotation @ self.rotation.T
        c_b = self.transform(cam_from_a.centre[None])[0]
        return Rigid3(R, -R @ c_b)


def estimate_sim3(points_a: np.ndarray, points_b: np.ndarray) -> Sim3:
    """Least-squares similarity ``b_from_a`` from (N, 3) correspondences (N >= 3), via pycolmap."""
    a = np.asarray(points_a, dtype=np.float64)
    b = np.asarray(points_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3 or len(a) < 3:
        raise ValueError("estimate_sim3 needs two (N, 3) arrays with N >= 3")
    sim = pycolmap.estimate_sim3d(a, b)
    if sim is None:
        raise ValueError("similarity estimation failed (degenerate points)")
    return Sim3(float(sim.scale), np.asarray(sim.rotation.matrix()), np.asarray(sim.translation))


def estimate_sim3_robust(points_a: np.ndarray, points_b: np.ndarray, max_error: float, seed: int = 0) -> Sim3:
    """LO-RANSAC similarity ``b_from_a`` (pycolmap) of (N, 3) correspondences; ``max_error`` in
    units of frame b. ``seed`` fixes RANSAC's sampling (pycolmap's own default is random): the same
    points give the same answer every time."""
    opts = pycolmap.RANSACOptions()
    opts.max_error = float(max_error)
    opts.random_seed = int(seed)
    ans = pycolmap.estimate_sim3d_robust(np.asarray(points_a, np.float64), np.asarray(points_b, np.float64), opts)
    if ans is None:
        raise ValueError("robust similarity estimation failed")
    sim = ans["tgt_from_src"]
    return Sim3(float(sim.scale), np.asarray(sim.rotation.matrix()), np.asarray(sim.translation))
