"""REP-105 frame math of the robot bridges: map->odom, extrinsics, covariance propagation, odom buffer."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from core.geometry import Rigid3
from localize.localizer import centre_covariance
from robots.transforms import (
    BODY_FROM_OPTICAL,
    OdomBuffer,
    base_covariance_jacobian,
    base_from_optical,
    interpolate,
    map_from_base_from_camera,
    map_from_odom,
    rigid_from_ros,
    rigid_from_rpy,
    rigid_to_ros,
    ros_pose_covariance,
    ros_tangent,
    seconds_to_stamp,
    stamp_to_seconds,
)


def random_rigid(rng: np.random.Generator, scale: float = 3.0) -> Rigid3:
    return Rigid3(Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(0, scale, 3))


def assert_rigid_close(a: Rigid3, b: Rigid3, atol: float = 1e-9) -> None:
    np.testing.assert_allclose(a.rotation, b.rotation, atol=atol)
    np.testing.assert_allclose(a.translation, b.translation, atol=atol)


def robot_trajectory(n: int, seed: int) -> list[Rigid3]:
    """``odom_from_base`` of a robot driving a wobbly loop (x forward, z up), with small smooth
    pitch / roll from the floor."""
    out = []
    for k in range(n):
        a = 2 * np.pi * k / n
        yaw = a + np.pi / 2 + 0.1 * np.sin(3 * a)
        roll, pitch = 0.02 * np.sin(5 * a + seed), 0.02 * np.cos(7 * a + seed)
        R = Rotation.from_euler("xyz", [roll, pitch, yaw]).as_matrix()
        out.append(Rigid3(R, [3 * np.cos(a), 2 * np.sin(a), 0.0]))
    return out


def test_ros_quaternion_is_xyzw_and_round_trips():
    T = Rigid3(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [1.0, 2.0, 3.0])
    p, q = rigid_to_ros(T)
    np.testing.assert_allclose(q, [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)   # (x, y, z, w)
    np.testing.assert_allclose(p, [1, 2, 3])
    rng = np.random.default_rng(0)
    for _ in range(50):
        T = random_rigid(rng)
        p, q = rigid_to_ros(T)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(q, np.r_[T.quat_wxyz[1:], T.quat_wxyz[0]], atol=1e-12)
        assert_rigid_close(rigid_from_ros(p, q), T)
        assert_rigid_close(rigid_from_ros(p, -3 * q), T)   # sign and scale do not matter
    with pytest.raises(ValueError):
        rigid_from_ros([0, 0, 0], [0, 0, 0, 0])


def test_rpy_is_fixed_axis_xyz_and_optical_frame_convention():
    r, p, y = 0.3, -0.2, 1.1
    Rx = Rotation.from_rotvec([r, 0, 0]).as_matrix()
    Ry = Rotation.from_rotvec([0, p, 0]).as_matrix()
    Rz = Rotation.from_rotvec([0, 0, y]).as_matrix()
    np.testing.assert_allclose(rigid_from_rpy([0, 0, 0], [r, p, y]).rotation, Rz @ Ry @ Rx, atol=1e-12)
    # the optical frame (z forward, x right, y down) inside a body frame (x forward, y left, z up)
    assert_rigid_close(BODY_FROM_OPTICAL, rigid_from_rpy([0, 0, 0], [-np.pi / 2, 0, -np.pi / 2]))
    np.testing.assert_allclose(BODY_FROM_OPTICAL.rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)   # forward
    np.testing.assert_allclose(BODY_FROM_OPTICAL.rotation @ [1, 0, 0], [0, -1, 0], atol=1e-12)  # right
    np.testing.assert_allclose(BODY_FROM_OPTICAL.rotation @ [0, 1, 0], [0, 0, -1], atol=1e-12)  # down
    link = rigid_from_rpy([0.2, 0, 1.0], [0, 0.1, 0])
    assert_rigid_close(base_from_optical(link, camera_frame_is_optical=False), link * BODY_FROM_OPTICAL)
    assert_rigid_close(base_from_optical(link, camera_frame_is_optical=True), link)


def test_map_to_odom_on_a_generated_trajectory():
    """The localizer sees the camera; the bridge publishes map->odom; composing it with the robot's
    odom->base_link must give back the true base pose, for every frame of a drifting run."""
    rng = np.random.default_rng(1)
    base_from_camera = rigid_from_ros([0.25, -0.05, 1.1], Rotation.from_euler(
        "xyz", [-np.pi / 2 - 0.2, 0.01, -np.pi / 2]).as_quat())
    odom = robot_trajectory(40, seed=2)
    drift = Rigid3.identity()
    for k, odom_from_base in enumerate(odom):
        # odometry drift: map_from_odom changes slowly along the run
        drift = drift * Rigid3(Rotation.from_rotvec([0, 0, rng.normal(0, 0.01)]).as_matrix(), rng.normal(0, 0.01, 3))
        map_from_odom_true = Rigid3(Rotation.from_euler("z", 30, degrees=True).as_matrix(), [1.0, -2.0, 0.0]) * drift
        map_from_base_true = map_from_odom_true * odom_from_base
        cam_from_world = (map_from_base_true * base_from_camera).inverse()   # what vloc returns
        map_from_base = map_from_base_from_camera(cam_from_world.inverse(), base_from_camera)
        assert_rigid_close(map_from_base, map_from_base_true)
        m_o = map_from_odom(map_from_base, odom_from_base)
        assert_rigid_close(m_o, map_from_odom_true)
        assert_rigid_close(m_o * odom_from_base, map_from_base)
        # the camera centre in map is where the extrinsic puts it
        np.testing.assert_allclose(cam_from_world.centre, map_from_base.transform(base_from_camera.translation[None])[0],
                                   atol=1e-9)


def sampled_base_tangents(cam_from_world: Rigid3, cov: np.ndarray, base_from_camera: Rigid3, n: int,
                          rng) -> np.ndarray:
    """(n, 6) ROS tangents (d_p, d_phi) of map_from_base for cam_from_world perturbed in vloc's
    (pycolmap) tangent, R' = exp(d_rot) R, t' = t + d_t: plain matrix algebra, batched."""
    d = rng.multivariate_normal(np.zeros(6), cov, size=n)
    R_cw = Rotation.from_rotvec(d[:, :3]).as_matrix() @ cam_from_world.rotation      # (n, 3, 3)
    t_cw = cam_from_world.translation + d[:, 3:]
    R_mc = np.transpose(R_cw, (0, 2, 1))
    camera_from_base = base_from_camera.inverse()
    R_mb = R_mc @ camera_from_base.rotation
    p_mb = np.einsum("nij,nj->ni", R_mc, camera_from_base.translation - t_cw)
    ref = map_from_base_from_camera(cam_from_world.inverse(), base_from_camera)
    d_phi = Rotation.from_matrix(R_mb @ ref.rotation.T).as_rotvec()
    return np.hstack([p_mb - ref.translation, d_phi])


@pytest.mark.parametrize("seed", [3, 4])
def test_covariance_propagation_matches_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    cam_from_world = random_rigid(rng)
    base_from_camera = rigid_from_rpy([0.3, 0.1, 0.9], [-np.pi / 2, 0.05, -np.pi / 2 + 0.3])
    A = rng.normal(size=(6, 6))
    cov = A @ A.T * 1e-5 + np.diag([2e-5, 1e-5, 3e-5, 4e-5, 1e-5, 2e-5])
    ros_cov = ros_pose_covariance(cam_from_world, cov, base_from_camera)
    mc = np.cov(sampled_base_tangents(cam_from_world, cov, base_from_camera, 40000, rng).T)
    scale = np.sqrt(np.outer(np.diag(mc), np.diag(mc)))
    assert np.abs(ros_cov - mc).max() / np.abs(mc).max() < 0.05, np.round(ros_cov / scale - mc / scale, 3)
    np.testing.assert_allclose(np.diag(ros_cov), np.diag(mc), rtol=0.06)
    np.testing.assert_allclose(ros_cov, ros_cov.T)
    assert np.linalg.eigvalsh(ros_cov).min() > 0
    # a lever arm couples rotation into position: without the extrinsic the position block shrinks
    # to the localizer's own camera-centre covariance
    no_lever = ros_pose_covariance(cam_from_world, cov, Rigid3.identity())
    np.testing.assert_allclose(no_lever[:3, :3], centre_covariance(cam_from_world, cov), rtol=1e-9, atol=1e-15)
    assert not np.allclose(no_lever[:3, :3], ros_cov[:3, :3])


def test_covariance_jacobian_matches_finite_differences():
    rng = np.random.default_rng(5)
    cam_from_world, base_from_camera = random_rigid(rng), random_rigid(rng, 0.5)
    J = base_covariance_jacobian(cam_from_world, base_from_camera)
    ref = map_from_base_from_camera(cam_from_world.inverse(), base_from_camera)
    h = 1e-6
    for i in range(6):
        d = np.zeros(6)
        d[i] = h
        T = Rigid3(Rotation.from_rotvec(d[:3]).as_matrix() @ cam_from_world.rotation, cam_from_world.translation + d[3:])
        col = ros_tangent(ref, map_from_base_from_camera(T.inverse(), base_from_camera)) / h
        np.testing.assert_allclose(col, J[:, i], atol=1e-5)


def test_odom_buffer_interpolates_holds_and_expires():
    buf = OdomBuffer(max_age_s=0.2, history_s=5.0, max_gap_s=0.5)
    assert buf.lookup(1.0) is None
    yaw = lambda deg, x: Rigid3(Rotation.from_euler("z", deg, degrees=True).as_matrix(), [x, 0.0, 0.0])  # noqa: E731
    buf.add(10.2, yaw(40, 2.0))
    buf.add(10.0, yaw(0, 0.0))      # out of order
    mid = buf.lookup(10.05)
    assert mid.interpolated and mid.gap_s == pytest.approx(0.05)
    assert_rigid_close(mid.odom_from_base, yaw(10, 0.5), atol=1e-12)   # slerp: a quarter of 40 deg
    assert_rigid_close(buf.lookup(10.2).odom_from_base, yaw(40, 2.0))
    held = buf.lookup(10.35)           # newer than the newest sample, within max_age
    assert not held.interpolated and held.gap_s == pytest.approx(0.15)
    assert_rigid_close(held.odom_from_base, yaw(40, 2.0))
    assert buf.lookup(10.5) is None and buf.lookup(9.7) is None
    buf.add(11.5, yaw(90, 5.0))        # a 1.3 s gap: no interpolation across it
    assert buf.lookup(11.0) is None
    assert_rigid_close(buf.lookup(11.4).odom_from_base, yaw(90, 5.0))
    buf.add(16.0, yaw(0, 0.0))         # history 5 s: the samples before 11.0 are dropped
    assert len(buf) == 2 and buf.latest_stamp == 16.0
    assert buf.lookup(10.1) is None


def test_interpolate_on_a_generated_trajectory():
    """Slerp between the samples of a smooth trajectory stays close to the dense truth."""
    dense = robot_trajectory(400, seed=6)
    buf = OdomBuffer(max_age_s=0.0, max_gap_s=1.0)
    for k in range(0, 400, 4):          # 1 sample every 4 "ticks" of 0.01 s
        buf.add(k * 0.01, dense[k])
    for k in range(1, 396, 7):
        got = buf.lookup(k * 0.01).odom_from_base
        assert np.linalg.norm(got.translation - dense[k].translation) < 2e-3
        assert np.degrees(Rotation.from_matrix(got.rotation.T @ dense[k].rotation).magnitude()) < 0.6
    a, b = dense[0], dense[50]
    assert_rigid_close(interpolate(a, b, 0.0), a)
    assert_rigid_close(interpolate(a, b, 1.0), b)


def test_stamp_round_trip():
    for t in (0.0, 1.5, 1712345678.123456789, 59.999999999):
        sec, ns = seconds_to_stamp(t)
        assert 0 <= ns < 1_000_000_000
        assert stamp_to_seconds(sec, ns) == pytest.approx(t, abs=1e-6)
    assert seconds_to_stamp(2.9999999999) == (3, 0)
