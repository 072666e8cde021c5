"""Map points' uncertainty (mapping.point_quality), its storage, and the pose covariance that
includes it (localize.uncertainty): generated geometry with known truth, Monte-Carlo checks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from bundleio import read_point_quality, write_features_h5
from core.camera import Camera
from core.geometry import Rigid3
from localize.localizer import estimate_pose
from localize.uncertainty import correspondence_covariances, projection_jacobians, refine_with_point_uncertainty
from mapping.point_quality import point_quality, projection_jacobian

CAM = Camera.pinhole(500.0, 640, 480)


def look_at(centre, target) -> Rigid3:
    """cam_from_world of a camera at ``centre`` looking at ``target`` (y down)."""
    z = np.asarray(target, float) - centre
    z /= np.linalg.norm(z)
    x = np.cross([0, -1.0, 0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return Rigid3(R, -R @ np.asarray(centre, float))


def triangulate(poses, cam, pixels) -> np.ndarray:
    """Linear (DLT) triangulation of one point from (K, 2) pixels, then 10 Gauss-Newton steps."""
    A = []
    K = cam.K()
    for T, (u, v) in zip(poses, pixels):
        P = K @ np.hstack([T.rotation, T.translation[:, None]])
        A += [u * P[2] - P[0], v * P[2] - P[1]]
    X = np.linalg.svd(np.array(A))[2][-1]
    X = X[:3] / X[3]
    for _ in range(10):
        r, J = [], []
        for T, uv in zip(poses, pixels):
            xc = T.transform(X[None])
            r.append(uv - cam.project(xc)[0])
            J.append(projection_jacobian(cam, xc)[0] @ T.rotation)
        X = X + np.linalg.lstsq(np.vstack(J), np.concatenate(r), rcond=None)[0]
    return X


def test_stereo_depth_sigma_angle_track_and_error_match_the_closed_form():
    b, z, s = 0.2, 4.0, 1.5
    poses = [Rigid3(np.eye(3), np.zeros(3)), Rigid3(np.eye(3), np.array([-b, 0, 0]))]
    X = np.array([[b / 2, 0.0, z]])
    pix = [CAM.project(T.transform(X)) for T in poses]
    pix[0] = pix[0] + [[s, 0.0]]                          # an RMS error of s / sqrt(2) px
    pix[1] = pix[1] + [[0.0, 0.0]]
    q = point_quality(np.array([7]), X, poses, [CAM, CAM], pix, [np.array([7]), np.array([7])], noise_floor_px=0.5)
    assert q.track_length.tolist() == [2]
    assert q.reproj_error_px[0] == pytest.approx(s / np.sqrt(2), rel=1e-4)
    assert q.tri_angle_deg[0] == pytest.approx(2 * np.degrees(np.arctan(b / 2 / z)), rel=1e-4)
    sigma = s / np.sqrt(2)
    # stereo: z = f b / d with the disparity d of two measurements (variance 2 sigma^2)
    var_z = q.covariance[0, 2, 2]
    expected = 2 * (z ** 2 * sigma / (500.0 * b)) ** 2
    assert var_z == pytest.approx(expected, rel=0.02)
    # lateral sigma ~ z sigma / f / sqrt(2): much smaller than the depth one
    assert np.sqrt(q.covariance[0, 0, 0]) < 0.1 * np.sqrt(var_z)


def test_point_covariance_matches_monte_carlo_triangulation():
    rng = np.random.default_rng(0)
    target = np.array([0.3, -0.2, 3.0])
    poses = [look_at(np.array([x, 0.1 * k, 0.0]), target) for k, x in enumerate([-0.3, -0.1, 0.05, 0.25])]
    X = target[None]
    sigma = 1.2
    truth = [CAM.project(T.transform(X))[0] for T in poses]
    q = point_quality(np.array([1]), X, poses, [CAM] * 4, [t[None] for t in truth], [np.array([1])] * 4,
                      noise_floor_px=sigma)
    samples = np.array([triangulate(poses, CAM, [t + rng.normal(0, sigma, 2) for t in truth]) for _ in range(600)])
    emp = np.cov(samples.T)
    pred = q.covariance[0]
    # same ellipsoid within sampling error: compare along the principal axes
    w, V = np.linalg.eigh(pred)
    emp_axes = np.einsum("ai,ab,bi->i", V, emp, V)
    assert np.allclose(emp_axes, w, rtol=0.2), (emp_axes, w)


def test_point_quality_round_trips_through_features_h5_and_old_files_have_none(tmp_path):
    rng = np.random.default_rng(1)
    poses = [look_at(np.array([x, 0, 0.0]), np.array([0, 0, 3.0])) for x in (-0.2, 0.2)]
    X = rng.uniform([-1, -1, 2.5], [1, 1, 3.5], (5, 3))
    ids = np.array([9, 3, 4, 12, 7])
    kps = [CAM.project(T.transform(X)) for T in poses]
    q = point_quality(ids, X, poses, [CAM] * 2, kps, [ids, ids])
    desc = [np.zeros((5, 128), np.uint8)] * 2
    write_features_h5(tmp_path / "f.h5", ["a", "b"], desc, [ids, ids], ids, X, np.zeros((2, 3)), point_quality=q)
    back = read_point_quality(tmp_path / "f.h5")
    order = np.argsort(ids)                                  # rows follow the sorted points3D_id
    assert np.array_equal(back["track_length"], q.track_length[order])
    assert np.allclose(back["covariance"], q.covariance[order], rtol=1e-5)
    assert np.allclose(back["tri_angle_deg"], q.tri_angle_deg[order])
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f["points3D_covariance"]
    assert read_point_quality(tmp_path / "f.h5") is None


def _scene(rng, n=120):
    """A query camera, world points in front of it and map covariances of mixed quality."""
    truth = look_at(np.array([0.1, -0.05, 0.0]), np.array([0.0, 0.0, 4.0]))
    xc = np.c_[rng.uniform(-1.6, 1.6, (n, 2)) * 3, rng.uniform(2.5, 5.5, n)]
    xc[:, :2] *= xc[:, 2:] / 6
    X = (xc - truth.translation) @ truth.rotation          # world points
    A = rng.normal(size=(n, 3, 3)) * rng.choice([0.002, 0.02], n)[:, None, None]
    covs = A @ np.transpose(A, (0, 2, 1)) + np.eye(3) * 1e-6
    return truth, X, covs


def test_projected_point_covariance_matches_monte_carlo():
    rng = np.random.default_rng(2)
    truth, X, covs = _scene(rng, 5)
    C = correspondence_covariances(truth, CAM, X, covs, pixel_sigma=0.8)
    for i in range(5):
        s = rng.multivariate_normal(X[i], covs[i], 4000)
        uv = CAM.project(truth.transform(s)) + rng.normal(0, 0.8, (4000, 2))
        assert np.allclose(np.cov(uv.T), C[i], rtol=0.15, atol=0.05), (np.cov(uv.T), C[i])
    uv, Jp, JX = projection_jacobians(truth, CAM, X)
    assert Jp.shape == (5, 2, 6) and JX.shape == (5, 2, 3)


def test_pose_covariance_with_point_uncertainty_is_calibrated_and_without_it_is_overconfident():
    """Noisy map points (drawn from their covariances) and noisy pixels: the Mahalanobis distance of
    the refined pose's error follows chi^2(6) (mean 6) with the points' covariance; ignoring it,
    the covariance is too small (the variance factor only rescales it uniformly)."""
    rng = np.random.default_rng(3)
    truth, X, covs = _scene(rng)
    d_with, d_without, moved = [], [], []
    for _ in range(60):
        Xn = X + np.einsum("nij,nj->ni", np.linalg.cholesky(covs), rng.normal(size=X.shape))
        xy = CAM.project(truth.transform(X)) + rng.normal(0, 0.7, (len(X), 2))
        est = estimate_pose(xy, Xn, CAM, _cfg())
        for covariances, out in ((covs, d_with), (None, d_without)):
            w = refine_with_point_uncertainty(xy, Xn, CAM, est.cam_from_world, covariances, 0.7, loss="huber",
                                              loss_scale=100.0)
            e = _pose_delta(w.cam_from_world, truth)
            out.append(float(e @ np.linalg.solve(w.covariance, e)))
            if covariances is not None:
                moved.append((np.linalg.norm(w.cam_from_world.centre - truth.centre),
                              np.linalg.norm(est.cam_from_world.centre - truth.centre)))
    assert 3.5 < np.mean(d_with) < 9.0, np.mean(d_with)
    assert np.mean(d_without) > 1.3 * np.mean(d_with)
    moved = np.array(moved)
    assert np.median(moved[:, 0]) < np.median(moved[:, 1])   # weighting the points helps the pose itself


def _cfg():
    from localize.config import LocalizerConfig
    return LocalizerConfig()


def _pose_delta(est: Rigid3, truth: Rigid3) -> np.ndarray:
    """(6,) left-perturbation rotation vector and translation difference taking truth to est."""
    import cv2
    dR = est.rotation @ truth.rotation.T
    return np.r_[cv2.Rodrigues(dR)[0].ravel(), est.translation - truth.translation]


def test_refinement_recovers_a_perturbed_pose_and_move_false_keeps_it():
    rng = np.random.default_rng(4)
    truth, X, covs = _scene(rng)
    xy = CAM.project(truth.transform(X))
    import cv2
    start = Rigid3(cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0] @ truth.rotation, truth.translation + 0.03)
    w = refine_with_point_uncertainty(xy, X, CAM, start, covs, 0.5, iterations=10)
    assert np.abs(_pose_delta(w.cam_from_world, truth)).max() < 1e-6
    kept = refine_with_point_uncertainty(xy, X, CAM, start, covs, 0.5, move=False)
    assert np.allclose(kept.cam_from_world.translation, start.translation)
    assert kept.variance_factor > 10 * max(w.variance_factor, 1e-9)
