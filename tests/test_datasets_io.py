"""Dataset loaders / exporters: round trips on generated data, malformed inputs, real-data checks."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest
from conftest import shared_dataset
from PIL import Image, TiffImagePlugin

from core.camera import Camera
from core.geometry import Rigid3, pose_error
from core.types import ImageRecord, VlocError
from datasets.colmap_model import build_reconstruction, load_colmap_model, write_colmap_model
from datasets.image_folder import UERE_M, load_image_folder
from datasets.kapture_io import load_kapture, write_kapture
from datasets.posefile import POSE_FORMATS, load_poses
from datasets.sevenscenes import frame_number, load_7scenes_poses, load_pgt, write_pgt
from datasets.strecha import load_strecha

R_ = TiffImagePlugin.IFDRational


# helpers ---------------------------------------------------------------------------------
def random_pose(rng) -> Rigid3:
    q = rng.normal(size=4)
    return Rigid3.from_quat_wxyz(q, rng.uniform(-5, 5, 3))


def random_records(rng, n=7, posed=True) -> list[ImageRecord]:
    cams = [Camera("PINHOLE", 640, 480, (525.5, 526.25, 320.1, 239.7)),
            Camera("SIMPLE_RADIAL", 1024, 768, (900.123456789, 512.0, 384.0, -0.0123)),
            Camera("OPENCV", 800, 600, (700, 701, 400, 300, 0.1, -0.01, 1e-4, -2e-4))]
    return [ImageRecord(name=f"seq-{i % 2:02d}/frame-{i:06d}.color.png", camera=cams[i % 3],
                        cam_from_world=random_pose(rng) if posed else None, timestamp=float(10 * i))
            for i in range(n)]


def assert_same_poses(a: list[ImageRecord], b: list[ImageRecord], tol=1e-9, cameras=True):
    assert [r.name for r in a] == [r.name for r in b]
    for x, y in zip(a, b):
        assert (x.cam_from_world is None) == (y.cam_from_world is None), x.name
        if x.cam_from_world is not None:
            np.testing.assert_allclose(x.cam_from_world.matrix4(), y.cam_from_world.matrix4(), atol=tol)
        if cameras:
            assert x.camera.model == y.camera.model and (x.camera.width, x.camera.height) == \
                (y.camera.width, y.camera.height)
            np.testing.assert_allclose(x.camera.params, y.camera.params, rtol=1e-12)


# pgt / 7-Scenes ---------------------------------------------------------------------------
def test_pgt_round_trip_full_precision(tmp_path):
    rng = np.random.default_rng(0)
    recs = [ImageRecord(r.name, Camera.pinhole(525.505 + i * 1e-9, 640, 480), r.cam_from_world)
            for i, r in enumerate(random_records(rng))]
    write_pgt(recs, tmp_path / "p.txt")
    back = load_pgt(tmp_path / "p.txt")
    assert_same_poses(recs, back, tol=1e-14)
    # a given camera supplies size and principal point, the file the focal
    back = load_pgt(tmp_path / "p.txt", camera=Camera.pinhole(500, 1280, 960, 641.0, 479.0))
    assert back[3].camera == Camera("PINHOLE", 1280, 960, (525.505 + 3e-9, 525.505 + 3e-9, 641.0, 479.0))


def test_pgt_resolves_names_to_existing_files(tmp_path):
    (tmp_path / "seq-01").mkdir()
    (tmp_path / "seq-01/frame-000007.color.jpg").write_bytes(b"")
    (tmp_path / "p.txt").write_text("# comment\n\nseq-01/frame-000007.color.png 1 0 0 0 0 0 0 525\n")
    assert load_pgt(tmp_path / "p.txt")[0].name == "seq-01/frame-000007.color.png"
    assert load_pgt(tmp_path / "p.txt", image_root=tmp_path)[0].name == "seq-01/frame-000007.color.jpg"


@pytest.mark.parametrize("bad, what", [
    ("a.png 1 0 0 0 0 0 0\n", "9 fields"),
    ("a.png 1 0 0 x 0 0 0 525\n", "x"),
    ("a.png 0 0 0 0 0 0 0 525\n", "quaternion"),
    ("a.png 1 0 0 0 0 0 0 -5\n", "focal"),
])
def test_pgt_malformed_names_file_and_line(tmp_path, bad, what):
    p = tmp_path / "bad.txt"
    p.write_text("ok.png 1 0 0 0 0 0 0 525\n# comment\n" + bad)
    with pytest.raises(VlocError, match=rf"bad\.txt:3:.*{what}"):
        load_pgt(p)


def test_write_pgt_refuses_unposed(tmp_path):
    with pytest.raises(VlocError, match="no pose"):
        write_pgt([ImageRecord("a.png", Camera.pinhole(500, 640, 480))], tmp_path / "p.txt")


def test_frame_number():
    assert frame_number("seq-01/frame-000123.color.png") == 123
    assert frame_number("frame-7.pose.txt") == 7
    with pytest.raises(VlocError):
        frame_number("img_0001.jpg")


def _write_7scenes(root, rng):
    truth = {}
    for seq, ext in (("seq-01", ".color.png"), ("seq-02", ".color.jpg")):
        (root / seq).mkdir(parents=True)
        for i in (0, 1, 10):
            world_from_cam = random_pose(rng)
            np.savetxt(root / seq / f"frame-{i:06d}.pose.txt", world_from_cam.matrix4())
            (root / seq / f"frame-{i:06d}{ext}").write_bytes(b"")
            truth[f"{seq}/frame-{i:06d}{ext}"] = world_from_cam.inverse()
    return truth


def test_7scenes_pose_txt(tmp_path):
    truth = _write_7scenes(tmp_path, np.random.default_rng(1))
    recs = load_7scenes_poses(tmp_path)
    assert [r.name for r in recs] == list(truth)  # sorted by seq then frame number, actual colour ext
    for r in recs:
        np.testing.assert_allclose(r.cam_from_world.matrix4(), truth[r.name].matrix4(), atol=1e-12)
        assert r.camera == Camera("PINHOLE", 640, 480, (525, 525, 320, 240))
        assert r.timestamp == frame_number(r.name)
    assert [r.name for r in load_7scenes_poses(tmp_path, seqs=["seq-02"])] == list(truth)[3:]
    # a seq folder: names stay relative to the scene folder
    assert [r.name for r in load_7scenes_poses(tmp_path / "seq-01")] == list(truth)[:3]
    cam = Camera.pinhole(585, 640, 480)
    assert load_7scenes_poses(tmp_path, camera=cam)[0].camera == cam


def test_7scenes_malformed_and_invalid(tmp_path):
    _write_7scenes(tmp_path, np.random.default_rng(2))
    (tmp_path / "seq-01/frame-000001.pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(VlocError, match=r"frame-000001\.pose\.txt.*4x4"):
        load_7scenes_poses(tmp_path)
    (tmp_path / "seq-01/frame-000001.pose.txt").write_text("inf inf inf inf\n" * 4)
    assert load_7scenes_poses(tmp_path)[1].cam_from_world is None
    with pytest.raises(VlocError, match="no seq-XX"):
        load_7scenes_poses(tmp_path, seqs=["seq-09"])


# COLMAP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_colmap_round_trip(tmp_path, binary):
    recs = random_records(np.random.default_rng(3))
    assert write_colmap_model(recs, tmp_path / "m", binary=binary) == len(recs)
    suffix = ".bin" if binary else ".txt"
    assert {p.name for p in (tmp_path / "m").iterdir()} == \
        {n + suffix for n in ("cameras", "images", "points3D", "rigs", "frames")}
    back = load_colmap_model(tmp_path / "m")
    assert_same_poses(sorted(recs, key=lambda r: r.name), back, tol=1e-12)
    model = pycolmap.Reconstruction(tmp_path / "m")
    assert model.num_cameras() == 3  # identical intrinsics share a camera id
    assert sorted(model.reg_image_ids()) == list(range(1, len(recs) + 1))
    assert all(img.has_pose for img in model.images.values())


def test_colmap_unposed_records_are_not_written(tmp_path):
    recs = random_records(np.random.default_rng(4), n=4)
    recs[2] = ImageRecord(recs[2].name, recs[2].camera)
    rec = build_reconstruction(recs)
    assert rec.num_images() == 4 and rec.num_reg_images() == 3
    assert write_colmap_model(recs, tmp_path / "m") == 3
    assert recs[2].name not in [r.name for r in load_colmap_model(tmp_path / "m")]


def test_colmap_errors(tmp_path):
    with pytest.raises(VlocError, match="does not exist"):
        load_colmap_model(tmp_path / "nope")
    with pytest.raises(VlocError, match="cannot read COLMAP model"):
        load_colmap_model(tmp_path)  # empty folder
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (tmp_path / "images.txt").write_text("# c\n1 1 0 0 0 0 0 0 1 a.jpg\n\n2 1 0 0 0 0 zero 0 1 b.jpg\n\n")
    (tmp_path / "points3D.txt").write_text("")
    with pytest.raises(VlocError, match=r"images\.txt:4: expected 'IMAGE_ID"):
        load_colmap_model(tmp_path)
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n\n")
    (tmp_path / "cameras.txt").write_text("\n1 PINHOLE 640 480 500 500 320\n")
    with pytest.raises(VlocError, match=r"cameras\.txt:2: PINHOLE takes 4"):
        load_colmap_model(tmp_path)
    with pytest.raises(VlocError, match="no camera"):
        write_colmap_model([ImageRecord("a.jpg", None, Rigid3.identity())], tmp_path / "out")


# kapture ----------------------------------------------------------------------------------
def test_kapture_round_trip_with_images(tmp_path):
    recs = random_records(np.random.default_rng(5))
    recs[1] = ImageRecord(recs[1].name, recs[1].camera, None, timestamp=recs[1].timestamp)  # unposed
    src = tmp_path / "src"
    for r in recs:
        (src / r.name).parent.mkdir(parents=True, exist_ok=True)
        (src / r.name).write_bytes(r.name.encode())
    write_kapture(recs, tmp_path / "k", copy_images_from=src)
    sensors = tmp_path / "k/sensors"
    assert (sensors / "sensors.txt").read_text().startswith("# kapture format: 1.1\n")
    assert (sensors / "records_data" / recs[4].name).read_bytes() == recs[4].name.encode()
    back = load_kapture(tmp_path / "k")
    assert_same_poses(recs, back, tol=1e-14)
    assert [r.timestamp for r in back] == [r.timestamp for r in recs]  # integer, unique: kept
    with pytest.raises(VlocError, match="does not exist"):
        write_kapture(recs, tmp_path / "k2", copy_images_from=tmp_path / "empty")


def test_kapture_unposed_and_handwritten(tmp_path):
    recs = random_records(np.random.default_rng(6), posed=False)
    write_kapture(recs, tmp_path / "k")
    assert not (tmp_path / "k/sensors/trajectories.txt").exists()
    assert all(r.cam_from_world is None for r in load_kapture(tmp_path / "k"))
    # hand-written: spaces, comments, blank lines, a rig, an unknown camera
    s = tmp_path / "h/sensors"
    s.mkdir(parents=True)
    (s / "sensors.txt").write_text(
        "# kapture format: 1.1\n# sensor_id, name, sensor_type, [sensor_params]+\n"
        "cam0,cam0 , camera,PINHOLE, 640, 480, 525, 525, 320, 240\n\n"
        "cam1, , camera, UNKNOWN_CAMERA\nrig, rig, rig\nlidar0, l, lidar\n")
    (s / "rigs.txt").write_text("# rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz\nrig, cam1, 1, 0, 0, 0, 0.5, 0, 0\n")
    (s / "records_camera.txt").write_text(
        "# timestamp, device_id, image_path\n 5, cam0,  a/x.jpg\n5, cam1, b/x.jpg\n6, cam0, a/y.jpg\n")
    (s / "trajectories.txt").write_text(
        "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz\n5, cam0, 1, 0, 0, 0, 1, 2, 3\n"
        "5, rig, 0, 0, 0, 1, 0, 0, 1\n")
    r = load_kapture(tmp_path / "h")
    assert [x.name for x in r] == ["a/x.jpg", "b/x.jpg", "a/y.jpg"]
    assert r[0].camera == Camera.parse("PINHOLE 640 480 525 525 320 240") and r[1].camera is None
    np.testing.assert_allclose(r[0].cam_from_world.translation, [1, 2, 3])
    # cam1_from_world = cam1_from_rig * rig_from_world (rig: 180 deg about z, t = (0, 0, 1))
    np.testing.assert_allclose(r[1].cam_from_world.matrix3x4(),
                               [[-1, 0, 0, 0.5], [0, -1, 0, 0], [0, 0, 1, 1]], atol=1e-12)
    assert r[2].cam_from_world is None and r[2].timestamp == 6.0


def test_kapture_malformed(tmp_path):
    write_kapture(random_records(np.random.default_rng(7), n=2), tmp_path)
    traj = tmp_path / "sensors/trajectories.txt"
    traj.write_text(traj.read_text() + "3, cam0, 1, 0, 0, zero, 0, 0, 0\n")
    with pytest.raises(VlocError, match=r"trajectories\.txt:5:.*bad pose"):
        load_kapture(tmp_path)
    traj.unlink()
    rc = tmp_path / "sensors/records_camera.txt"
    rc.write_text(rc.read_text() + "9, cam7, z.jpg\n")
    with pytest.raises(VlocError, match=r"records_camera\.txt:5:.*cam7"):
        load_kapture(tmp_path)
    (tmp_path / "sensors/sensors.txt").write_text("cam0, cam0, camera, PINHOLE, 640, 480, 1\n")
    with pytest.raises(VlocError, match=r"sensors\.txt:1:"):
        load_kapture(tmp_path)


# image folder / EXIF ---------------------------------------------------------------------
def _jpeg(path, size=(64, 48), orientation=None, exif_ifd=None, gps=None, fmt="JPEG"):
    ex = Image.Exif()
    if orientation:
        ex[0x0112] = orientation
    for tag, v in (exif_ifd or {}).items():
        ex.get_ifd(0x8769)[tag] = v
    for tag, v in (gps or {}).items():
        ex.get_ifd(0x8825)[tag] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path, format=fmt, exif=ex)


def test_exif_gps_and_focal(tmp_path):
    # Sydney-ish: S and W refs, below sea level, DOP
    _jpeg(tmp_path / "a.jpg", orientation=6, exif_ifd={0xA405: 28, 0x920A: R_(43, 10)}, gps={
        1: "S", 2: (R_(33, 1), R_(51, 1), R_(5473, 100)), 3: "W", 4: (R_(151, 1), R_(12, 1), R_(3, 10)),
        5: 1, 6: R_(125, 10), 11: R_(3, 2)})
    # focal from FocalLength + focal-plane resolution (4.3 mm, 1000 px/cm at 128 px wide -> scale 0.5)
    _jpeg(tmp_path / "sub/b.JPG", exif_ifd={0x920A: R_(43, 10), 0xA20E: R_(1000, 1), 0xA210: 3,
                                            0xA002: 128, 0xA003: 96}, gps={
        1: "N", 2: (R_(55, 1), R_(41, 1), R_(534, 10)), 3: "E", 4: (R_(13, 1), R_(11, 1), R_(434, 10))})
    _jpeg(tmp_path / "c.png", fmt="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    recs = {r.name: r for r in load_image_folder(tmp_path)}
    assert list(recs) == ["a.jpg", "c.png", "sub/b.JPG"]
    a, c, b = recs["a.jpg"], recs["c.png"], recs["sub/b.JPG"]
    # a: rotated 90 deg by EXIF orientation 6 -> displayed 48x64
    assert (a.camera.width, a.camera.height) == (48, 64) and a.extra["rotated"]
    assert a.camera.model == "SIMPLE_RADIAL" and a.extra["focal_source"] == "exif_35mm"
    np.testing.assert_allclose(a.camera.params, (28 / 36 * 64, 24, 32, 0))
    np.testing.assert_allclose([a.gps.latitude, a.gps.longitude],
                               [-(33 + 51 / 60 + 54.73 / 3600), -(151 + 12 / 60 + 0.3 / 3600)])
    assert a.gps.altitude == pytest.approx(-12.5) and a.gps.accuracy_m == pytest.approx(1.5 * UERE_M)
    assert b.extra["focal_source"] == "exif_focal_plane" and not b.extra["rotated"]
    assert b.camera.params[0] == pytest.approx(4.3 * 1000 / 10 * 0.5)
    assert b.gps.latitude == pytest.approx(55 + 41 / 60 + 53.4 / 3600) and b.gps.longitude > 0
    assert b.gps.altitude is None and b.gps.accuracy_m is None
    assert c.gps is None and c.extra["focal_source"] == "default"
    assert c.camera.params[0] == pytest.approx(1.2 * 64)


def test_image_folder_errors(tmp_path):
    with pytest.raises(VlocError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VlocError, match="broken.jpg"):
        load_image_folder(tmp_path)


# Strecha (generated) ----------------------------------------------------------------------
def test_strecha_generated(tmp_path):
    rng = np.random.default_rng(8)
    world_from_cam = random_pose(rng)
    R, C = world_from_cam.rotation, world_from_cam.translation
    (tmp_path / "gt_cameras").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "gt_cameras/0000.jpg.camera").write_text(
        "2759.48 0 1520.69\n0 2764.16 1006.81\n0 0 1\n0 0 0\n"
        + "".join(" ".join(map(str, row.tolist())) + " \n" for row in R) + " ".join(map(str, C.tolist())) + "\n3072 2048\n")
    Image.new("RGB", (1536, 1024)).save(tmp_path / "images/0000.jpg")
    (r,) = load_strecha(tmp_path)
    assert r.name == "images/0000.jpg"
    assert r.camera == Camera("PINHOLE", 1536, 1024, (1379.74, 1382.08, 760.595, 503.655))
    # x ~ K R^T (X - C) in the original image (OpenCV pixels) == our projection (COLMAP pixels) * 2 - 0.5
    X = C + R @ np.array([0.3, -0.2, 4.0])
    K0 = np.array([[2759.48, 0, 1520.69], [0, 2764.16, 1006.81], [0, 0, 1]])
    x0 = K0 @ R.T @ (X - C)
    uv = r.camera.project(r.cam_from_world.transform(X[None]))[0]
    np.testing.assert_allclose(uv * 2 - 0.5, x0[:2] / x0[2], atol=1e-6)
    (tmp_path / "gt_cameras/0001.jpg.camera").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(VlocError, match="0001.jpg.camera"):
        load_strecha(tmp_path)


# dispatcher --------------------------------------------------------------------------------
def test_load_poses_dispatch(tmp_path):
    rng = np.random.default_rng(9)
    recs = random_records(rng, n=3)
    write_colmap_model(recs, tmp_path / "colmap")
    write_kapture(recs, tmp_path / "kapture")
    pinhole = [ImageRecord(r.name, Camera.pinhole(525, 640, 480, 320, 240), r.cam_from_world) for r in recs]
    write_pgt(pinhole, tmp_path / "p.txt")
    truth = _write_7scenes(tmp_path / "7s", rng)
    assert set(POSE_FORMATS) == {"7scenes", "pgt", "colmap", "kapture"}
    assert_same_poses(sorted(recs, key=lambda r: r.name), load_poses(tmp_path / "colmap", "colmap"), 1e-12)
    assert_same_poses(recs, load_poses(tmp_path / "kapture", "kapture"), 1e-12)
    assert_same_poses(pinhole, load_poses(tmp_path / "p.txt", "pgt"), 1e-12)
    assert [r.name for r in load_poses(tmp_path / "7s", "7scenes")] == list(truth)
    assert [r.name for r in load_poses(tmp_path / "7s/seq-02", "7scenes")] == list(truth)[3:]
    cam = Camera.pinhole(600, 640, 480)
    assert all(r.camera == cam for r in load_poses(tmp_path / "colmap", "COLMAP", camera=cam))
    with pytest.raises(VlocError, match="unknown pose format 'nvm'.*7scenes"):
        load_poses(tmp_path / "p.txt", "nvm")
    with pytest.raises(VlocError, match="missing.txt does not exist"):
        load_poses(tmp_path / "missing.txt", "pgt")
    (tmp_path / "p.txt").write_text((tmp_path / "p.txt").read_text() + "oops\n")
    with pytest.raises(VlocError, match=r"p\.txt:4:"):
        load_poses(tmp_path / "p.txt", "pgt")


# real data (skipped when ../shared/datasets is absent) ------------------------------------
@pytest.mark.realdata
def test_real_7scenes_pgt_and_pose_txt():
    root = shared_dataset("7scenes-redkitchen")
    sfm = load_pgt(root / "pgt_sfm_seq01.txt")
    assert len(sfm) == 300
    assert all(r.camera == Camera("PINHOLE", 640, 480, (525.505, 525.505, 320, 240)) for r in sfm)
    jpg_stems = {p.name.split(".")[0] for p in (root / "seq-01").glob("frame-*.color.jpg")}
    assert {r.name.split("/")[-1].split(".")[0] for r in sfm} == jpg_stems
    assert all((root / r.name).exists() for r in load_pgt(root / "pgt_sfm_seq01.txt", image_root=root))
    gt = load_7scenes_poses(root)
    assert len(gt) == 300 and all((root / r.name).exists() for r in gt)
    # pose.txt (inverted) vs dslam pgt: the same track up to one fixed depth-to-RGB offset
    dslam = {frame_number(r.name): r.cam_from_world for r in load_pgt(root / "pgt_dslam_seq01.txt")}
    offsets = [dslam[frame_number(r.name)] * r.cam_from_world.inverse() for r in gt]
    errs = np.array([pose_error(o, offsets[0]) for o in offsets])
    assert errs.max(axis=0).tolist() < [0.005, 0.2]
    # pgt sfm and dslam disagree by ~10 cm / few deg (README)
    med = np.median([pose_error(s.cam_from_world, dslam[frame_number(s.name)]) for s in sfm], axis=0)
    assert 0.03 < med[0] < 0.3 and 0.5 < med[1] < 10


@pytest.mark.realdata
def test_real_lund_gps():
    recs = load_image_folder(shared_dataset("lund-gps") / "images")
    assert len(recs) == 29
    for r in recs:
        assert r.gps is not None and abs(r.gps.latitude - 55.7) < 0.05 and abs(r.gps.longitude - 13.2) < 0.05
        assert r.gps.altitude is not None and r.gps.accuracy_m is not None
        assert r.extra["focal_source"] != "default" and (r.camera.width, r.camera.height) == (1024, 768)
        assert 500 < r.camera.params[0] < 2000


@pytest.mark.realdata
def test_real_strecha_fountain():
    root = shared_dataset("strecha") / "fountain-P11"
    recs = load_strecha(root)
    assert len(recs) == 11 and all((root / r.name).exists() for r in recs)
    centres = np.array([r.cam_from_world.centre for r in recs])
    spread = np.linalg.norm(centres - centres.mean(0), axis=1)
    assert 1 < spread.max() < 50  # metres
    for r in recs:
        assert (r.camera.width, r.camera.height) == (1536, 1024)
        cx, cy = r.camera.principal_point
        assert abs(cx - 768) < 50 and abs(cy - 512) < 50
        assert 1000 < r.camera.focals[0] < 2000
    # optical axes converge on the fountain: the point nearest all axes is in front of every camera
    dirs = np.array([r.cam_from_world.rotation[2] for r in recs])  # viewing directions in world
    A = sum(np.eye(3) - np.outer(d, d) for d in dirs)
    b = sum((np.eye(3) - np.outer(d, d)) @ c for d, c in zip(dirs, centres))
    X = np.linalg.solve(A, b)
    for r in recs:
        uv = r.camera.project(r.cam_from_world.transform(X[None]))[0]
        assert np.all(np.isfinite(uv)) and 0 < uv[0] < 1536 and 0 < uv[1] < 1024
