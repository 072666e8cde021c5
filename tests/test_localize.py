"""Localization on a generated room: accuracy on a different pass, honest rejections, covariance."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from core.geometry import pose_error
from datasets.synthetic import generate_scene, write_dataset
from localize import Localizer, LocalizerConfig, PosePrior
from localize.localizer import estimate_pose
from mapping.build import BuildConfig, build_map
from vloc.cli import app

CAM_FRAMES = 30


@pytest.fixture(scope="module")
def scene():
    return generate_scene(seed=5)


@pytest.fixture(scope="module")
def bundle(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("loc-map")
    records = write_dataset(scene, root, CAM_FRAMES)
    build_map(root, records, root / "map", BuildConfig())
    return root / "map"


@pytest.fixture(scope="module")
def localizer(bundle):
    return Localizer(bundle)


@pytest.fixture(scope="module")
def queries(scene):
    """Frames of a different pass through the room (other radius, height, phase)."""
    from datasets.synthetic import DEFAULT_CAMERA
    poses = scene.trajectory(12, pass_id=1)
    return [(scene.render(T, DEFAULT_CAMERA)[0], T) for T in poses], DEFAULT_CAMERA


def test_queries_from_another_pass_localize_within_1cm_0_2deg(localizer, queries):
    frames, camera = queries
    errors = []
    for rgb, truth in frames:
        res = localizer.localize(rgb, camera)
        assert res.accepted, res.reason
        errors.append(pose_error(res.cam_from_world, truth))
        assert res.covariance.shape == (6, 6) and res.num_inliers >= 30
        assert set(res.timings_ms) >= {"features", "retrieval", "matching", "pose", "total"}
        assert len(res.retrieved) == localizer.cfg.top_k
    t, r = np.array(errors).T
    assert t.max() < 0.01, f"translation errors (m): {np.round(t, 4)}"
    assert r.max() < 0.2, f"rotation errors (deg): {np.round(r, 3)}"


def test_pose_prior_narrows_retrieval(localizer, queries):
    frames, camera = queries
    rgb, truth = frames[0]
    prior = PosePrior(position=truth.centre + np.array([0.1, -0.1, 0.0]), sigma_m=0.2)
    res = localizer.localize(rgb, camera, prior=prior)
    assert res.accepted
    centres = {n: c for n, c in zip(localizer.map.image_names, localizer.map.image_centres)}
    radius = max(localizer.cfg.prior_radius_m, 0.6)
    assert all(np.linalg.norm(centres[n] - prior.position) <= radius for n in res.retrieved)
    assert pose_error(res.cam_from_world, truth)[0] < 0.01


def test_frame_of_a_different_scene_is_rejected(localizer):
    from datasets.synthetic import DEFAULT_CAMERA
    other = generate_scene(seed=77)
    for T in other.trajectory(3, pass_id=0):
        res = localizer.localize(other.render(T, DEFAULT_CAMERA)[0], DEFAULT_CAMERA)
        assert not res.accepted, f"accepted a frame of another room: {res.to_dict()}"


def test_blank_frame_is_rejected(localizer):
    from datasets.synthetic import DEFAULT_CAMERA
    for value in (0, 128, 255):
        res = localizer.localize(np.full((480, 640, 3), value, np.uint8), DEFAULT_CAMERA)
        assert not res.accepted and "keypoints" in res.reason


def test_heavily_blurred_frame_is_rejected(localizer, queries):
    frames, camera = queries
    blurred = cv2.GaussianBlur(frames[0][0], (0, 0), sigmaX=12)
    res = localizer.localize(blurred, camera)
    assert not res.accepted


def test_covariance_grows_when_inliers_are_removed(localizer, queries):
    frames, camera = queries
    rgb, truth = frames[3]
    m = localizer.map
    feats = localizer.extract(rgb)
    import torch

    from localize.localizer import first_observation_per_point, match_to_points
    from vision.features import root_sift
    obs = first_observation_per_point(m.observations(localizer.retrieve(feats, None)), m.obs_point)
    qi, pi = match_to_points(torch.from_numpy(root_sift(feats.descriptors)),
                             m.rootsift_int8(obs), lambda rows: m.rootsift(obs[rows]), m.obs_point[obs], 0.9)
    xy, xyz = feats.keypoints[qi].astype(np.float64), m.points_xyz[pi]
    full = estimate_pose(xy, xyz, camera, localizer.cfg)
    inl = np.nonzero(full.inlier_mask)[0]
    rng = np.random.default_rng(0)
    traces = [np.trace(full.covariance)]
    sigmas = [full.position_sigma_m]
    for keep in (0.5, 0.2, 0.08):
        sub = rng.choice(inl, int(len(inl) * keep), replace=False)
        est = estimate_pose(xy[sub], xyz[sub], camera, localizer.cfg)
        traces.append(np.trace(est.covariance))
        sigmas.append(est.position_sigma_m)
    assert all(b > a for a, b in zip(traces, traces[1:])), traces
    assert all(b > a for a, b in zip(sigmas, sigmas[1:])), sigmas


def test_covariance_is_in_the_documented_tangent_and_units():
    """estimate_pose's (6, 6) covariance equals the Gauss-Newton covariance inv(J^T J) of the
    reprojection errors (1 px noise) in vloc's convention: rotation vector of the left
    perturbation R' = exp([d]x) R (rad), then translation (m). pycolmap's own rotation block is
    in quaternion half-angle units (a factor 2 in sigma): a convention slip shows here."""
    from scipy.spatial.transform import Rotation

    from core.camera import Camera
    from localize.localizer import centre_covariance
    rng = np.random.default_rng(4)
    camera = Camera.pinhole(525.0, 640, 480)
    R = Rotation.from_rotvec([0.2, -0.4, 0.1]).as_matrix()
    t = np.array([0.3, -0.2, 1.5])
    pts_cam = np.c_[rng.uniform(-1.5, 1.5, (300, 2)), rng.uniform(2.0, 5.0, 300)]
    world = (pts_cam - t) @ R                      # x_world = R^T (x_cam - t)
    xy = camera.project(pts_cam) + rng.normal(0, 0.05, (300, 2))  # ~no noise: robust loss weights ~1
    est = estimate_pose(xy, world, camera, LocalizerConfig(point_uncertainty=False))
    # the re-weighted refinement (no point covariances, no map floor) uses the same convention
    own = estimate_pose(xy, world, camera, LocalizerConfig(map_sigma_m=0.0, map_sigma_deg=0.0))
    R, t = est.cam_from_world.rotation, est.cam_from_world.translation
    H = np.zeros((6, 6))
    for x in world:
        c = R @ x + t
        f_z = 525.0 / c[2]
        P = np.array([[f_z, 0, -f_z * c[0] / c[2]], [0, f_z, -f_z * c[1] / c[2]]])  # d pixel / d x_cam
        r = R @ x                                   # x_cam = exp([d]x) R x + t: d x_cam / d d = -[R x]x
        skew = np.array([[0, -r[2], r[1]], [r[2], 0, -r[0]], [-r[1], r[0], 0]])
        J = P @ np.hstack([-skew, np.eye(3)])       # d pixel / d(rotation vector, translation)
        H += J.T @ J
    expected = np.linalg.inv(H)
    np.testing.assert_allclose(est.covariance, expected, rtol=0.03, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(own.covariance, expected, rtol=0.03, atol=1e-3 * np.abs(expected).max())
    # and the centre's sigma follows from it: c = -R^T t
    sigma_c = np.sqrt(np.linalg.eigvalsh(centre_covariance(est.cam_from_world, expected)).max())
    assert est.position_sigma_m == pytest.approx(sigma_c, rel=0.03)
    assert est.rotation_sigma_deg == pytest.approx(np.degrees(np.sqrt(np.linalg.eigvalsh(expected[:3, :3]).max())), rel=0.03)


def test_localize_cli_json(bundle, queries, tmp_path):
    frames, camera = queries
    path = tmp_path / "q.png"
    cv2.imwrite(str(path), cv2.cvtColor(frames[1][0], cv2.COLOR_RGB2BGR))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((480, 640, 3), np.uint8))
    res = CliRunner().invoke(app, ["localize", "--map", str(bundle), str(path), str(blank), "--json",
                                   "--camera", str(camera)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert lines[0]["accepted"] and not lines[1]["accepted"]
    q = np.array(lines[0]["world_from_cam"]["translation"])
    assert np.linalg.norm(q - frames[1][1].centre) < 0.01
    res = CliRunner().invoke(app, ["localize", "--map", str(bundle), str(tmp_path / "nope.png")])
    assert res.exit_code == 2 and "cannot read image" in res.output


def test_image_camera_size_mismatch_is_a_clear_error(localizer, queries):
    from core.types import VlocError
    frames, camera = queries
    with pytest.raises(VlocError, match="camera says"):
        localizer.localize(frames[0][0][:240], camera)


def test_strict_config_rejects_rather_than_guesses(bundle, queries):
    frames, camera = queries
    strict = Localizer(bundle, LocalizerConfig(min_inliers=100000))
    res = strict.localize(frames[0][0], camera)
    assert not res.accepted and "too few" in res.reason


def test_dark_and_noisy_frames_still_localize(localizer, queries):
    from localize.localizer import noise_sigma, stretch_contrast
    frames, camera = queries
    rgb, truth = frames[2]
    dark = np.round(255 * 0.35 * (rgb / 255.0) ** 1.8).astype(np.uint8)
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert noise_sigma(cv2.cvtColor(noisy, cv2.COLOR_RGB2GRAY)) > 3 * noise_sigma(gray)
    assert np.ptp(stretch_contrast(cv2.cvtColor(dark, cv2.COLOR_RGB2GRAY))) > 200
    for img in (dark, noisy):
        res = localizer.localize(img, camera)
        assert res.accepted, res.reason
        assert pose_error(res.cam_from_world, truth)[0] < 0.02


def test_tracking_mode_is_cheaper_and_falls_back_when_unsure(bundle, localizer, queries):
    frames, camera = queries
    rgb, truth = frames[4]
    prior = PosePrior(position=truth.centre + np.array([0.05, 0.0, 0.0]), sigma_m=0.2)
    res = localizer.localize(rgb, camera, prior=prior)
    assert res.accepted and "tracking_attempt" not in res.timings_ms and res.attempt == "tracking"
    assert res.num_keypoints <= localizer.cfg.tracking_max_keypoints
    assert len(res.retrieved) <= localizer.cfg.tracking_top_k
    assert pose_error(res.cam_from_world, truth)[0] < 0.01
    # a tracking setting too weak to be accepted: the full setting runs and its time is added
    weak = Localizer(bundle, LocalizerConfig(tracking_max_keypoints=15))  # < min_inliers: never accepted
    res = weak.localize(rgb, camera, prior=prior)
    assert res.accepted and "tracking_attempt" in res.timings_ms
    assert res.num_keypoints > 15
    assert res.timings_ms["total"] >= res.timings_ms["tracking_attempt"]
    # no tracking mode: priors only narrow retrieval
    off = Localizer(bundle, LocalizerConfig(tracking_max_image_side=0))
    assert off.localize(rgb, camera, prior=prior).num_keypoints > localizer.cfg.tracking_max_keypoints


def test_coarse_attempt_first_and_the_full_setting_when_it_is_unsure(bundle, localizer, queries):
    frames, camera = queries
    rgb, truth = frames[2]
    res = localizer.localize(rgb, camera)  # no prior: the coarse attempt first
    assert res.accepted and res.attempt == "coarse" and "coarse_attempt" not in res.timings_ms
    assert pose_error(res.cam_from_world, truth)[0] < 0.01
    full_only = Localizer(localizer.map, LocalizerConfig(coarse_max_image_side=0))
    full = full_only.localize(rgb, camera)
    assert full.accepted and full.attempt == "full" and full_only.attempts.coarse is None
    assert localizer.attempts.coarse.max_image_side < localizer.attempts.full.max_image_side
    # a coarse pose below the inlier bar: the full setting runs, both times are counted
    picky = Localizer(localizer.map, LocalizerConfig(coarse_min_inliers=10 ** 6))
    res = picky.localize(rgb, camera)
    assert res.accepted and res.attempt == "full" and "coarse_attempt" in res.timings_ms
    assert res.timings_ms["total"] >= res.timings_ms["coarse_attempt"]
    # a frame already at or below the coarse resolution runs once, at the full setting
    small = cv2.resize(rgb, (camera.width // 2, camera.height // 2), interpolation=cv2.INTER_AREA)
    res = picky.localize(small, camera.scaled(0.5))
    assert res.attempt == "full" and "coarse_attempt" not in res.timings_ms


def test_inverted_file_retrieval_localizes_like_exhaustive(bundle, localizer, queries):
    frames, camera = queries
    ivf_loc = Localizer(localizer.map, LocalizerConfig(retrieval_ivf_min_images=1, retrieval_nprobe=3))
    assert ivf_loc.ivf is not None and localizer.ivf is None  # small maps search exhaustively by default
    for rgb, truth in frames[:4]:
        res = ivf_loc.localize(rgb, camera)
        assert res.accepted, res.reason
        assert pose_error(res.cam_from_world, truth)[0] < 0.01


def test_memory_mapped_descriptors_give_the_same_poses(bundle, localizer, queries, tmp_path):
    frames, camera = queries
    mapped = Localizer(bundle, mmap_dir=tmp_path)
    assert isinstance(mapped.map.obs_descriptors, np.memmap)
    assert np.array_equal(np.asarray(mapped.map.obs_descriptors), localizer.map.obs_descriptors)
    (side,) = tmp_path.glob("*.npy")
    made = side.stat().st_mtime_ns
    again = Localizer(bundle, mmap_dir=tmp_path)  # a second load reuses the sidecar
    assert side.stat().st_mtime_ns == made and isinstance(again.map.obs_descriptors, np.memmap)
    rgb, _ = frames[0]
    a, b = localizer.localize(rgb, camera), mapped.localize(rgb, camera)
    assert a.accepted and b.accepted and a.num_inliers == b.num_inliers
    assert np.allclose(a.cam_from_world.matrix4(), b.cam_from_world.matrix4())


def test_noise_estimate_and_contrast_stretch_on_known_images():
    from localize.localizer import noise_sigma, stretch_contrast
    rng = np.random.default_rng(3)
    ramp = np.tile(np.linspace(60, 180, 320), (240, 1))  # smooth: the Laplacian-like kernel ignores it
    for sigma in (2.0, 8.0):
        noisy = np.clip(np.round(ramp + rng.normal(0, sigma, ramp.shape)), 0, 255).astype(np.uint8)
        assert abs(noise_sigma(noisy) - sigma) < 0.15 * sigma + 0.3
    assert noise_sigma(ramp.astype(np.uint8)) < 0.5
    dim = (ramp * 0.25).astype(np.uint8)  # grey levels 15..45
    out = stretch_contrast(dim, percentile=0.5)
    assert out.min() <= 2 and out.max() >= 253 and np.all(np.diff(out[0].astype(int)) >= 0)
    wide = ramp.astype(np.uint8)  # a range of 120 levels is stretched; one of 200 is left alone
    full = np.tile(np.arange(256, dtype=np.uint8), (10, 1))
    assert stretch_contrast(full) is full
    assert stretch_contrast(wide).max() > wide.max()
