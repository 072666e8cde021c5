"""Acceptance with the map points' uncertainty, on a generated room with known truth: the bundle
stores each point's quality, older bundles derive the same from model/, and a pose resting on
uncertain points is rejected where pixel noise alone would accept it."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from core.geometry import pose_error
from datasets.synthetic import generate_scene, write_dataset
from localize import Localizer, LocalizerConfig
from localize.localizer import centre_covariance
from localize.map import LocalizationMap
from localize.uncertainty import frame_floor_covariance
from mapping.build import BuildConfig, build_map


@pytest.fixture(scope="module")
def scene():
    return generate_scene(seed=5)


@pytest.fixture(scope="module")
def bundle(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("unc-map")
    records = write_dataset(scene, root, 24)
    build_map(root, records, root / "map", BuildConfig())
    return root / "map"


@pytest.fixture(scope="module")
def query(scene):
    from datasets.synthetic import DEFAULT_CAMERA
    T = scene.trajectory(12, pass_id=1)[4]
    return scene.render(T, DEFAULT_CAMERA)[0], T, DEFAULT_CAMERA


def test_bundle_stores_point_quality_and_old_bundles_derive_the_same(bundle, tmp_path):
    m = LocalizationMap.load(bundle)
    q = m.point_quality
    P = len(m.points_xyz)
    assert q["covariance"].shape == (P, 3, 3) and q["track_length"].shape == (P,)
    assert (q["track_length"] >= 2).all() and (q["tri_angle_deg"] > 0).all()
    assert np.all(np.linalg.eigvalsh(q["covariance"]) > 0)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    with h5py.File(old / "features.h5", "a") as f:
        for name in [k for k in f if k.startswith("points3D_") and k not in ("points3D_id", "points3D_xyz")]:
            del f[name]
    derived = LocalizationMap.load(old).point_quality       # (the manifest's checksums are not verified here)
    assert np.array_equal(derived["track_length"], q["track_length"])
    np.testing.assert_allclose(derived["covariance"], q["covariance"], rtol=1e-4, atol=1e-12)
    assert LocalizationMap.load(old, point_quality=False).point_quality is None


def test_pose_on_uncertain_points_is_rejected_by_its_covariance(bundle, query):
    rgb, truth, camera = query
    loc = Localizer(bundle)
    res = loc.localize(rgb, camera)
    assert res.accepted, res.reason
    assert pose_error(res.cam_from_world, truth)[0] < 0.01
    # the reported sigma includes the map floor: never below it
    assert res.position_sigma_m >= loc.cfg.map_sigma_m * 0.999
    # the same map with every point 20x less certain (sigma): the pose is no longer trusted ...
    m = LocalizationMap.load(bundle)
    m.point_quality = {**m.point_quality, "covariance": m.point_quality["covariance"] * 400.0}
    shaky = Localizer(m).localize(rgb, camera)
    assert not shaky.accepted and "position uncertainty" in shaky.reason, shaky.reason
    assert shaky.position_sigma_m > 3 * res.position_sigma_m
    # ... while pixel noise alone (point_uncertainty off) would have accepted it
    blind = Localizer(m, LocalizerConfig(point_uncertainty=False, max_position_sigma_m=0.03)).localize(rgb, camera)
    assert blind.accepted, blind.reason


def test_map_floor_covariance_moves_the_centre_and_orientation_independently():
    from scipy.spatial.transform import Rotation

    from core.geometry import Rigid3
    pose = Rigid3(Rotation.from_rotvec([0.3, -0.1, 0.2]).as_matrix(), np.array([1.0, -2.0, 3.0]))
    F = frame_floor_covariance(pose, 0.01, 0.25)
    C = centre_covariance(pose, F)
    np.testing.assert_allclose(C, np.eye(3) * 1e-4, atol=1e-12)      # centre: 1 cm, whatever |t|
    np.testing.assert_allclose(F[:3, :3], np.eye(3) * np.radians(0.25) ** 2)


def test_guided_matching_keeps_the_pose_accurate_and_the_ransac_covariance(bundle, query):
    rgb, truth, camera = query
    plain = Localizer(bundle).localize(rgb, camera)
    loc = Localizer(bundle, LocalizerConfig(guided_radius_px=6.0))
    res = loc.localize(rgb, camera)
    assert res.accepted and "guided" in res.timings_ms
    assert pose_error(res.cam_from_world, truth)[0] < 0.01
    assert res.num_inliers == plain.num_inliers                 # acceptance rests on the RANSAC inliers
    assert res.position_sigma_m == pytest.approx(plain.position_sigma_m, rel=0.05)


def test_coarse_attempt_above_the_sigma_bar_runs_the_full_setting_and_keeps_the_more_certain(bundle, query):
    rgb, truth, camera = query
    loc = Localizer(bundle, LocalizerConfig(coarse_max_position_sigma_m=1e-9))
    res = loc.localize(rgb, camera)
    assert res.accepted and "coarse_attempt" in res.timings_ms
    coarse = loc._localize(rgb, camera, None, loc.attempts.coarse)
    full = loc._localize(rgb, camera, None, loc.attempts.full)
    assert res.attempt == min((coarse, full), key=lambda r: r.position_sigma_m).attempt
    relaxed = Localizer(bundle, LocalizerConfig(coarse_max_position_sigma_m=1.0)).localize(rgb, camera)
    assert relaxed.attempt == "coarse" and "coarse_attempt" not in relaxed.timings_ms
