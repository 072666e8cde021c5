"""Tests of the synthetic indoor scene generator (datasets/synthetic.py): exact GT conventions."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.camera import Camera
from core.geometry import Rigid3, rotation_angle_deg
from datasets.synthetic import DEFAULT_CAMERA, SyntheticScene, generate_scene, write_dataset

SMALL_ROOM = (3.6, 3.2, 2.4)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return generate_scene(0)


def _backproject(camera: Camera, cam_from_world: Rigid3, depth: np.ndarray, rng: np.random.Generator,
                 n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels with depth -> (pixels (n, 2) COLMAP convention, world points (n, 3))."""
    v, u = np.nonzero(depth > 0)
    pick = rng.choice(len(u), n, replace=False)
    uv = np.stack([u[pick], v[pick]], 1) + 0.5
    xy = camera.unproject(uv)
    p_cam = np.hstack([xy, np.ones((n, 1))]) * depth[v[pick], u[pick]].astype(np.float64)[:, None]
    return uv, cam_from_world.inverse().transform(p_cam)


def test_determinism() -> None:
    a, b, c = (generate_scene(s, SMALL_ROOM, n_boxes=2) for s in (3, 3, 4))
    assert len(a.quads) == len(b.quads)
    assert all(np.array_equal(qa.texture, qb.texture) for qa, qb in zip(a.quads, b.quads))
    pose = a.trajectory(8)[2]
    cam = DEFAULT_CAMERA.scaled(0.5)
    rgb_a, d_a = a.render(pose, cam)
    rgb_b, d_b = b.render(pose, cam)
    rgb_c, _ = c.render(pose, cam)
    assert np.array_equal(rgb_a, rgb_b) and np.array_equal(d_a, d_b)
    assert np.mean(np.abs(rgb_a.astype(int) - rgb_c.astype(int))) > 20


@pytest.mark.parametrize("camera", [
    DEFAULT_CAMERA,
    Camera("OPENCV", 320, 240, (260.0, 262.0, 161.0, 118.5, -0.12, 0.03, 0.001, -0.0005)),
], ids=["pinhole", "opencv"])
def test_depth_backprojects_onto_surfaces(scene: SyntheticScene, camera: Camera) -> None:
    rng = np.random.default_rng(1)
    for pose in scene.trajectory(12)[::4] + scene.trajectory(12, pass_id=1)[1::5]:
        rgb, depth = scene.render(pose, camera)
        assert rgb.shape == (camera.height, camera.width, 3) and rgb.dtype == np.uint8
        assert depth.shape == (camera.height, camera.width) and depth.dtype == np.float32
        assert (depth > 0).all(), "inside a closed room every ray hits something"
        uv, world = _backproject(camera, pose, depth, rng)
        assert scene.distance_to_surfaces(world).max() < 1e-4
        reproj = camera.project(pose.transform(world))
        np.testing.assert_allclose(reproj, uv, atol=1e-3)


def test_reprojection_between_frames(scene: SyntheticScene) -> None:
    cam = DEFAULT_CAMERA
    poses = scene.trajectory(30)
    pose_a, pose_b = poses[4], poses[5]
    rgb_a, depth_a = scene.render(pose_a, cam)
    rgb_b, depth_b = scene.render(pose_b, cam)
    _, world = _backproject(cam, pose_a, depth_a, np.random.default_rng(2), n=2000)
    p_b = pose_b.transform(world)
    uv_b = cam.project(p_b)
    inside = (p_b[:, 2] > 0) & (uv_b[:, 0] >= 1) & (uv_b[:, 0] < cam.width - 1) \
        & (uv_b[:, 1] >= 1) & (uv_b[:, 1] < cam.height - 1)
    assert inside.mean() > 0.5, "consecutive frames must overlap"
    uv_b, p_b, world = uv_b[inside], p_b[inside], world[inside]
    # exact ray cast at the continuous pixel: visible points agree to 0.1 mm
    rays = np.hstack([cam.unproject(uv_b), np.ones((len(uv_b), 1))])
    d_exact, _, _, _ = scene.cast(pose_b, rays)
    visible = np.abs(d_exact - p_b[:, 2]) < 1e-4
    assert visible.mean() > 0.8
    # the rendered depth map at the nearest pixel agrees within 2 cm (pixel discretisation)
    iu, iv = np.floor(uv_b[visible]).astype(int).T
    err = np.abs(depth_b[iv, iu] - p_b[visible, 2])
    assert np.mean(err < 0.02) > 0.95
    # and the colour seen in B matches the colour seen in A (texture fixed to surfaces)
    ua = np.floor(cam.project(pose_a.transform(world[visible]))).astype(int)
    diff = np.abs(rgb_a[ua[:, 1], ua[:, 0]].astype(int) - rgb_b[iv, iu].astype(int)).mean(1)
    assert np.median(diff) < 25


def test_texture_richness_sift(scene: SyntheticScene) -> None:
    for pose in scene.trajectory(30)[::10]:
        rgb, _ = scene.render(pose, DEFAULT_CAMERA)
        kps = cv2.SIFT_create().detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        assert len(kps) >= 500


def test_trajectory_inside_room(scene: SyntheticScene) -> None:
    lo, hi = scene.bounds
    passes = {k: scene.trajectory(40, pass_id=k) for k in (0, 1, 2)}
    for k, poses in passes.items():
        c = np.array([p.centre for p in poses])
        assert np.all(c > lo + 0.5) and np.all(c < hi - 0.5)
        assert not scene.inside_boxes(c).any()
        assert scene.distance_to_surfaces(c).min() >= 0.5
        assert 1.1 < c[:, 2].min() and c[:, 2].max() < 1.7
        for p, q in zip(poses, poses[1:] + poses[:1]):  # smooth closed loop
            assert rotation_angle_deg(p.rotation, q.rotation) < 25
            assert np.linalg.norm(p.centre - q.centre) < 0.4
            assert abs(np.linalg.det(p.rotation) - 1) < 1e-9
        z_axis = np.array([p.rotation[2] for p in poses])  # camera forward, in world
        assert np.all(np.abs(z_axis[:, 2]) < np.sin(np.radians(25)))
    c0 = np.array([p.centre for p in passes[0]])
    c1 = np.array([p.centre for p in passes[1]])
    assert np.linalg.norm(c0[:, None] - c1[None], axis=2).min() > 0.05, "passes must differ"


def test_distance_to_surfaces(scene: SyntheticScene) -> None:
    pts = scene.sample_surface_points(500, np.random.default_rng(3))
    assert scene.distance_to_surfaces(pts).max() < 1e-9
    lo, hi = scene.bounds
    centre = np.array([[0.0, 0.0, 1.0]])
    expected = min(1.0, hi[2] - 1.0, hi[0], hi[1], *(b.solid_distance(centre)[0] for b in scene.boxes))
    assert scene.distance_to_surfaces(centre)[0] == pytest.approx(expected)


def test_write_dataset(scene: SyntheticScene, tmp_path) -> None:
    recs = write_dataset(scene, tmp_path, 3, pass_id=1)
    assert [r.name for r in recs] == [f"seq-01/frame-{i:06d}.color.png" for i in range(3)]
    assert [r.timestamp for r in recs] == [0.0, 1.0, 2.0]
    assert Camera.parse((tmp_path / "camera.txt").read_text()) == DEFAULT_CAMERA
    lines = (tmp_path / "pgt_sfm_seq01.txt").read_text().splitlines()
    assert len(lines) == 3
    for rec, line in zip(recs, lines):
        parts = line.split()
        assert len(parts) == 9 and parts[0] == rec.name
        vals = [float(x) for x in parts[1:]]
        assert vals[7] == 525.0
        pgt = Rigid3.from_quat_wxyz(vals[:4], vals[4:7])
        stem = tmp_path / rec.name.replace(".color.png", "")
        world_from_cam = np.loadtxt(f"{stem}.pose.txt")
        assert world_from_cam.shape == (4, 4)
        np.testing.assert_allclose(world_from_cam[3], [0, 0, 0, 1])
        inv = Rigid3.from_matrix4(world_from_cam).inverse()
        np.testing.assert_allclose(inv.matrix4(), pgt.matrix4(), atol=1e-7)
        np.testing.assert_allclose(pgt.matrix4(), rec.cam_from_world.matrix4(), atol=1e-7)
        rgb, depth = scene.render(rec.cam_from_world, rec.camera)
        png = cv2.imread(str(tmp_path / rec.name), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and np.array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), rgb)
        dpng = cv2.imread(f"{stem}.depth.png", cv2.IMREAD_UNCHANGED)
        assert dpng.dtype == np.uint16 and dpng.shape == (480, 640)
        assert np.abs(dpng.astype(np.float64) / 1000 - depth).max() <= 0.0005 + 1e-6
