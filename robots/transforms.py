"""REP-105 frame math for robot bridges: pure functions over :class:`Rigid3`, no message types.

Frames (REP-105 / REP-103):

* ``map``: the vloc map frame (the bundle's world). A vloc ``cam_from_world`` is
  ``camera_from_map``; its inverse ``world_from_cam`` is ``map_from_camera``.
* ``odom``: the robot's drifting odometry frame; ``odom_from_base`` comes from ``/tf``
  (transform ``odom -> base_link``: header.frame_id ``odom``, child_frame_id ``base_link``).
* ``base_link``: the robot body (x forward, y left, z up).
* camera *optical* frame: z forward, x right, y down (OpenCV / COLMAP, the frame of vloc
  poses). A body-style camera frame (``camera_link``: x forward, y left, z up) differs by the
  fixed rotation :data:`BODY_FROM_OPTICAL`.

A ROS ``TransformStamped`` with ``frame_id = a`` and ``child_frame_id = b`` carries ``a_from_b``
(it maps points of ``b`` into ``a``); the localizer's result becomes ``map_from_base`` and the
published TF ``map -> odom`` is ``map_from_odom``.

Quaternions: ROS messages use (x, y, z, w); vloc uses (w, x, y, z). Convert only with
:func:`rigid_from_ros` / :func:`rigid_to_ros`.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from core.geometry import Rigid3

#: ``camera_link_from_camera_optical``: the optical frame (z fwd, x right, y down) expressed in a
#: body-style camera frame (x fwd, y left, z up); RPY (-pi/2, 0, -pi/2) as in REP-103.
BODY_FROM_OPTICAL = Rigid3(np.array([[0.0, 0.0, 1.0],
                                     [-1.0, 0.0, 0.0],
                                     [0.0, -1.0, 0.0]]), np.zeros(3))


# ---------------------------------------------------------------------------------------------
# ROS <-> vloc conversions
# ---------------------------------------------------------------------------------------------
def rigid_from_ros(position_xyz, quaternion_xyzw) -> Rigid3:
    """A ROS pose / transform (position (3,), quaternion (x, y, z, w)) -> ``Rigid3`` ``parent_from_child``.

    The quaternion is normalised; a zero or non-finite one raises ValueError.
    """
    q = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"invalid quaternion (x, y, z, w) {q.tolist()}")
    return Rigid3(Rotation.from_quat(q / n).as_matrix(), np.asarray(position_xyz, dtype=np.float64))


def rigid_to_ros(T: Rigid3) -> tuple[np.ndarray, np.ndarray]:
    """``Rigid3`` -> (position (3,), unit quaternion (x, y, z, w) with w >= 0) for ROS messages."""
    q = Rotation.from_matrix(T.rotation).as_quat()
    return T.translation.copy(), (q if q[3] >= 0 else -q)


def rigid_from_rpy(translation, rpy) -> Rigid3:
    """Translation (3,) and ROS roll, pitch, yaw (radians; fixed axes X, Y, Z, i.e.
    ``R = Rz(yaw) Ry(pitch) Rx(roll)``, as in URDF / tf2) -> ``Rigid3`` ``parent_from_child``."""
    return Rigid3(Rotation.from_euler("xyz", np.asarray(rpy, dtype=np.float64).reshape(3)).as_matrix(),
                  np.asarray(translation, dtype=np.float64))


def base_from_optical(base_from_camera: Rigid3, camera_frame_is_optical: bool) -> Rigid3:
    """The extrinsic ``base_from_camera_optical`` that vloc needs, from a configured
    ``base_from_camera``: unchanged when the configured camera frame is already optical,
    else composed with :data:`BODY_FROM_OPTICAL` (the configured frame is ``camera_link``)."""
    return base_from_camera if camera_frame_is_optical else base_from_camera * BODY_FROM_OPTICAL


# ---------------------------------------------------------------------------------------------
# REP-105 chain
# ---------------------------------------------------------------------------------------------
def map_from_base_from_camera(map_from_camera: Rigid3, base_from_camera: Rigid3) -> Rigid3:
    """``map_from_base = map_from_camera * camera_from_base``.

    map_from_camera: vloc's ``world_from_cam`` (camera optical frame).
    base_from_camera: the extrinsic ``base_link -> camera_optical`` (optical frame).
    """
    return map_from_camera * base_from_camera.inverse()


def map_from_odom(map_from_base: Rigid3, odom_from_base: Rigid3) -> Rigid3:
    """``map_from_odom = map_from_base * base_from_odom``: the REP-105 ``map -> odom`` TF that
    makes ``map_from_odom * odom_from_base == map_from_base`` at the image stamp."""
    return map_from_base * odom_from_base.inverse()


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def base_covariance_jacobian(cam_from_world: Rigid3, base_from_camera: Rigid3) -> np.ndarray:
    """(6, 6) Jacobian from vloc's tangent of ``cam_from_world`` to ROS's tangent of ``map_from_base``.

    vloc (pycolmap) tangent ``(d_rot, d_t)``: ``R_cw' = exp([d_rot]x) R_cw``, ``t_cw' = t_cw + d_t``
    (rotation (3, rad) first, then translation (3, m); left perturbation in the camera frame).

    ROS tangent ``(d_p, d_phi)`` of the pose of base_link in map (``geometry_msgs/PoseWithCovariance``
    order x, y, z, rot_x, rot_y, rot_z): ``p' = p + d_p`` (position in map),
    ``R_mb' = exp([d_phi]x) R_mb`` (small rotation about the fixed map axes).

    Derivation: ``R_mc = R_cw^T`` so ``d_phi = -R_mc d_rot``; the camera centre moves by
    ``-R_mc [t_cw]x d_rot - R_mc d_t``; the base origin ``p = c + R_mc t_cb`` (``t_cb`` from
    ``camera_from_base``) additionally moves by ``-[R_mc t_cb]x d_phi``.
    """
    R_mc = cam_from_world.rotation.T
    t_cb = base_from_camera.inverse().translation
    lever = R_mc @ t_cb                       # camera centre -> base origin, in map
    J = np.zeros((6, 6))
    d_phi_d_rot = -R_mc
    J[0:3, 0:3] = -R_mc @ _skew(cam_from_world.translation) - _skew(lever) @ d_phi_d_rot
    J[0:3, 3:6] = -R_mc
    J[3:6, 0:3] = d_phi_d_rot
    return J


def ros_pose_covariance(cam_from_world: Rigid3, covariance: np.ndarray, base_from_camera: Rigid3) -> np.ndarray:
    """(6, 6) covariance of ``map_from_base`` in ROS order (x, y, z, rot_x, rot_y, rot_z), from
    vloc's (6, 6) covariance of ``cam_from_world`` (rotation then translation); see
    :func:`base_covariance_jacobian` for both tangent conventions. Flatten row-major for the
    message's ``float64[36]``. Symmetrised."""
    J = base_covariance_jacobian(cam_from_world, base_from_camera)
    C = J @ np.asarray(covariance, dtype=np.float64).reshape(6, 6) @ J.T
    return 0.5 * (C + C.T)


def ros_tangent(reference: Rigid3, perturbed: Rigid3) -> np.ndarray:
    """(6,) ROS tangent ``(d_p, d_phi)`` of ``perturbed`` around ``reference`` (both ``parent_from_child``):
    ``d_p = p' - p``, ``d_phi = log(R' R^T)`` (rotation vector about the parent's fixed axes)."""
    d_phi = Rotation.from_matrix(perturbed.rotation @ reference.rotation.T).as_rotvec()
    return np.r_[perturbed.translation - reference.translation, d_phi]


# ---------------------------------------------------------------------------------------------
# odom -> base_link history
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OdomLookup:
    """An ``odom_from_base`` at a query stamp: ``interpolated`` False when the nearest sample was
    held (stamp outside the buffered span but within the max age); ``gap_s`` the time to the
    nearest sample used."""

    odom_from_base: Rigid3
    interpolated: bool
    gap_s: float


class OdomBuffer:
    """Timestamped ``odom_from_base`` transforms (from ``/tf``), queried at image stamps.

    Inside the buffered span the pose is interpolated (slerp for rotation, linear for
    translation) between the two bracketing samples when they are at most ``max_gap_s`` apart.
    Outside it, the nearest sample is held when it is at most ``max_age_s`` away; otherwise
    there is no answer (None). Samples older than ``history_s`` behind the newest are dropped.
    Thread-safe (the DDS thread adds, the worker looks up).
    """

    def __init__(self, max_age_s: float = 0.2, history_s: float = 10.0, max_gap_s: float = 1.0) -> None:
        self.max_age_s = float(max_age_s)
        self.history_s = float(history_s)
        self.max_gap_s = float(max_gap_s)
        self._stamps: list[float] = []
        self._poses: list[Rigid3] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def latest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def add(self, stamp: float, odom_from_base: Rigid3) -> None:
        """Insert a sample (seconds); out-of-order stamps are placed in order, a repeated stamp replaces."""
        stamp = float(stamp)
        with self._lock:
            i = bisect.bisect_left(self._stamps, stamp)
            if i < len(self._stamps) and self._stamps[i] == stamp:
                self._poses[i] = odom_from_base
            else:
                self._stamps.insert(i, stamp)
                self._poses.insert(i, odom_from_base)
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.history_s)
            if cut:
                del self._stamps[:cut], self._poses[:cut]

    def lookup(self, stamp: float) -> OdomLookup | None:
        """``odom_from_base`` at ``stamp`` (seconds), or None when no sample is close enough."""
        stamp = float(stamp)
        with self._lock:
            if not self._stamps:
                return None
            i = bisect.bisect_left(self._stamps, stamp)
            if i < len(self._stamps) and self._stamps[i] == stamp:
                return OdomLookup(self._poses[i], True, 0.0)
            if 0 < i < len(self._stamps):
                t0, t1 = self._stamps[i - 1], self._stamps[i]
                if t1 - t0 <= self.max_gap_s:
                    return OdomLookup(interpolate(self._poses[i - 1], self._poses[i], (stamp - t0) / (t1 - t0)),
                                      True, min(stamp - t0, t1 - stamp))
                j = i - 1 if stamp - t0 <= t1 - stamp else i
            else:
                j = 0 if i == 0 else len(self._stamps) - 1
            gap = abs(self._stamps[j] - stamp)
            return OdomLookup(self._poses[j], False, gap) if gap <= self.max_age_s else None


def interpolate(a: Rigid3, b: Rigid3, s: float) -> Rigid3:
    """Pose at fraction ``s`` in [0, 1] from ``a`` (s=0) to ``b`` (s=1): slerp of the rotations,
    linear interpolation of the translations (both ``parent_from_child`` of the same frames)."""
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([a.rotation, b.rotation])))
    s = float(np.clip(s, 0.0, 1.0))
    return Rigid3(slerp([s]).as_matrix()[0], (1 - s) * a.translation + s * b.translation)


def stamp_to_seconds(sec: int, nanosec: int) -> float:
    """builtin_interfaces/Time (sec, nanosec) -> float seconds."""
    return int(sec) + int(nanosec) * 1e-9


def seconds_to_stamp(t: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec) with 0 <= nanosec < 1e9 (rounded to the nanosecond).

    A float near 1.7e9 s resolves ~0.24 us only: to echo a message's stamp, keep its (sec,
    nanosec) rather than a round trip through seconds."""
    sec = int(np.floor(float(t)))
    ns = int(round((float(t) - sec) * 1e9))
    return (sec + 1, ns - 1_000_000_000) if ns >= 1_000_000_000 else (sec, ns)
