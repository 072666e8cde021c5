"""Bag replay: bags written here with rosbags (ROS 1 .bag, ROS 2 sqlite3 and MCAP) hold rendered
frames of a generated room (exact truth), CameraInfo, odom TF, the extrinsic on /tf_static, ground
truth and malformed images; they are replayed against the room's map and the output bag (read
back with rosbags), the TUM file and the accuracy are checked against the truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from typer.testing import CliRunner

from core.geometry import Rigid3, pose_error
from datasets.synthetic import DEFAULT_CAMERA
from robots.bag_io import ros1_typestore, ros2_typestore
from robots.replay import ReplayConfig, replay
from robots.transforms import BODY_FROM_OPTICAL, rigid_from_ros, rigid_to_ros, seconds_to_stamp
from robots.tum import StampedPose, associate, read_tum, write_tum

T0 = 100.0
DT = 0.5
IMAGE = "/camera/image_raw"
INFO = "/camera/camera_info"
CAM_FRAME = "camera_optical"
#: the true extrinsic base_link -> camera optical frame (camera 0.9 m up, 0.1 m forward, looking ahead).
BASE_FROM_CAMERA = Rigid3(np.eye(3), [0.1, 0.0, 0.9]) * BODY_FROM_OPTICAL
#: the true map -> odom offset (odometry started elsewhere).
MAP_FROM_ODOM = Rigid3.from_quat_wxyz([np.cos(0.2), 0, 0, np.sin(0.2)], [0.5, -0.3, 0.0])


@pytest.fixture(scope="module")
def room():
    from api.testing import shared_test_map
    from localize import Localizer
    tm = shared_test_map()
    poses = tm.scene.trajectory(6, pass_id=1)
    frames = [tm.scene.render(T, DEFAULT_CAMERA)[0] for T in poses]
    return tm, Localizer(tm.bundle), poses, frames


# --------------------------------------------------------------------------------------------------
# bag writing (rosbags only, independent of the code under test)
# --------------------------------------------------------------------------------------------------
class _Msgs:
    def __init__(self, ros1: bool) -> None:
        self.ros1, self.ts = ros1, (ros1_typestore() if ros1 else ros2_typestore())
        self.T = self.ts.types
        self.seq = 0

    def header(self, t: float, frame: str):
        sec, nsec = seconds_to_stamp(t)
        stamp = self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec)
        if self.ros1:
            self.seq += 1
            return self.T["std_msgs/msg/Header"](seq=self.seq, stamp=stamp, frame_id=frame)
        return self.T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    def image(self, t: float, rgb: np.ndarray, encoding: str = "rgb8", truncate: bool = False):
        h, w = rgb.shape[:2]
        data = np.ascontiguousarray(rgb).reshape(-1)
        if truncate:
            data = data[: len(data) // 2]
        return self.T["sensor_msgs/msg/Image"](header=self.header(t, CAM_FRAME), height=h, width=w, encoding=encoding,
                                               is_bigendian=0, step=w * 3, data=data)

    def camera_info(self, t: float):
        fx, fy, cx, cy = DEFAULT_CAMERA.params
        K = np.array([fx, 0, cx - 0.5, 0, fy, cy - 0.5, 0, 0, 1.0])  # ROS pixel centres
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        kw = dict(header=self.header(t, CAM_FRAME), height=DEFAULT_CAMERA.height, width=DEFAULT_CAMERA.width,
                  distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi)
        names = ("D", "K", "R", "P") if self.ros1 else ("d", "k", "r", "p")
        kw.update({names[0]: np.zeros(5), names[1]: K, names[2]: np.eye(3).reshape(9),
                   names[3]: np.c_[K.reshape(3, 3), np.zeros(3)].reshape(12)})
        return self.T["sensor_msgs/msg/CameraInfo"](**kw)

    def _pose(self, T: Rigid3):
        p, q = rigid_to_ros(T)
        return self.T["geometry_msgs/msg/Pose"](
            position=self.T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=self.T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))

    def tf(self, t: float, parent: str, child: str, T: Rigid3):
        p, q = rigid_to_ros(T)
        tr = self.T["geometry_msgs/msg/Transform"](
            translation=self.T["geometry_msgs/msg/Vector3"](x=p[0], y=p[1], z=p[2]),
            rotation=self.T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        ts = self.T["geometry_msgs/msg/TransformStamped"](header=self.header(t, parent), child_frame_id=child,
                                                          transform=tr)
        return self.T["tf2_msgs/msg/TFMessage"](transforms=[ts])

    def pose_stamped(self, t: float, T: Rigid3):
        return self.T["geometry_msgs/msg/PoseStamped"](header=self.header(t, "map"), pose=self._pose(T))


def write_bag(path: Path, fmt: str, items: list[tuple[str, str, float, object]]) -> None:
    """items: (topic, msgtype, stamp s, message object or raw bytes), written in stamp order."""
    m = _Msgs(fmt == "rosbag1")
    if fmt == "rosbag1":
        from rosbags.rosbag1 import Writer
        writer = Writer(path)
        ser = m.ts.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer
        writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3)
        ser = m.ts.serialize_cdr
    conns = {}
    with writer:
        for topic, msgtype, t, msg in sorted(items, key=lambda x: x[2]):
            if (topic, msgtype) not in conns:
                conns[(topic, msgtype)] = writer.add_connection(topic, msgtype, typestore=m.ts)
            raw = msg if isinstance(msg, bytes) else bytes(ser(msg, msgtype))
            writer.write(conns[(topic, msgtype)], int(round(t * 1e9)), raw)


def bag_items(fmt: str, poses, frames, *, odom: bool, gt_topic: bool, camera_info: bool, malformed: bool):
    m = _Msgs(fmt == "rosbag1")
    items = [("/tf_static", "tf2_msgs/msg/TFMessage", T0 - 1, m.tf(T0 - 1, "base_link", CAM_FRAME, BASE_FROM_CAMERA))]
    for k, (T, rgb) in enumerate(zip(poses, frames)):
        t = T0 + k * DT
        map_from_camera = T.inverse()
        map_from_base = map_from_camera * BASE_FROM_CAMERA.inverse()
        if camera_info:
            items.append((INFO, "sensor_msgs/msg/CameraInfo", t, m.camera_info(t)))
        items.append((IMAGE, "sensor_msgs/msg/Image", t + 0.001, m.image(t, rgb)))
        if odom:  # odom -> base_link at the image stamp and between images
            items.append(("/tf", "tf2_msgs/msg/TFMessage", t, m.tf(t, "odom", "base_link",
                                                                   MAP_FROM_ODOM.inverse() * map_from_base)))
        if gt_topic:
            items.append(("/gt/pose", "geometry_msgs/msg/PoseStamped", t, m.pose_stamped(t, map_from_camera)))
    if malformed:
        t = T0 + len(poses) * DT + 1.0
        items += [(IMAGE, "sensor_msgs/msg/Image", t, m.image(t, frames[0], encoding="yuv422")),
                  (IMAGE, "sensor_msgs/msg/Image", t + 1, m.image(t + 1, frames[0], truncate=True)),
                  (IMAGE, "sensor_msgs/msg/Image", t + 2, b"\x07\x00\x00")]
    return items


def read_out(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with AnyReader([path]) as r:
        for conn, t, raw in r.messages():
            try:
                msg = r.deserialize(raw, conn.msgtype)
            except Exception:  # the copied garbage message stays garbage
                msg = bytes(raw)
            out.setdefault(conn.topic, []).append((conn.msgtype, t, msg))
    return out


def _rigid(pose) -> Rigid3:
    return rigid_from_ros([pose.position.x, pose.position.y, pose.position.z],
                          [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w])


def _rigid_tf(tr) -> Rigid3:
    t, q = tr.translation, tr.rotation
    return rigid_from_ros([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
def test_tum_roundtrip_and_association(tmp_path):
    rows = [StampedPose(1.0 + 0.1 * k, Rigid3.from_quat_wxyz([1, 0.1 * k, 0, 0], [k, 2.0, -1.0])) for k in range(5)]
    write_tum(tmp_path / "a.tum", rows, "world_from_cam")
    text = (tmp_path / "a.tum").read_text()
    assert text.startswith("# TUM trajectory") and "world_from_cam" in text.splitlines()[0]
    back = read_tum(tmp_path / "a.tum")
    for a, b in zip(rows, back):
        assert a.stamp == pytest.approx(b.stamp, abs=1e-9)
        assert max(pose_error(a.pose, b.pose)) < 1e-9
    hits = associate([0.5, 1.01, 1.25, 1.4, 9.0], back, max_dt=0.02)
    assert hits[0] is None and hits[2] is None and hits[4] is None
    assert hits[1].stamp == pytest.approx(1.0) and hits[3].stamp == pytest.approx(1.4)


def test_ros1_bag_replay_poses_tf_tum_accuracy_and_malformed(room, tmp_path):
    tm, loc, poses, frames = room
    bag = tmp_path / "in.bag"
    write_bag(bag, "rosbag1", bag_items("rosbag1", poses, frames, odom=True, gt_topic=True, camera_info=True,
                                        malformed=True))
    rep = replay(bag, tm.bundle, tmp_path / "out.bag", ReplayConfig(gt_topic="/gt/pose"), localizer=loc)
    assert rep.input_format == rep.output_format == "rosbag1"
    assert rep.images == 9 and rep.localized == 6 and rep.accepted == 6 and rep.rejected == 0
    assert rep.skipped == {"bad_encoding": 1, "bad_data": 1, "undeserializable": 1}
    assert rep.tf == "map -> odom" and rep.pose_frame == "base_link" and rep.extrinsic == "/tf_static"
    a = rep.accuracy
    assert a["n"] == 6 and a["rejected"] == 0 and a["median_t_cm"] < 1.0 and a["median_r_deg"] < 0.2
    assert a["pct_5cm_5deg"] == 100.0

    out = read_out(tmp_path / "out.bag")
    assert len(out[IMAGE]) == 9 and len(out["/gt/pose"]) == 6  # input copied, garbage included
    assert out[IMAGE][-1][2] == b"\x07\x00\x00"
    vloc = out["/vloc/pose"]
    assert len(vloc) == 6
    for (msgtype, t_ns, msg), T in zip(vloc, poses):
        assert msgtype == "geometry_msgs/msg/PoseWithCovarianceStamped" and msg.header.frame_id == "map"
        true_map_from_base = T.inverse() * BASE_FROM_CAMERA.inverse()
        dt, dr = pose_error(_rigid(msg.pose.pose).inverse(), true_map_from_base.inverse())
        assert dt < 0.01 and dr < 0.2
        cov = np.asarray(msg.pose.covariance).reshape(6, 6)
        assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0) and np.allclose(cov, cov.T)
        assert np.sqrt(cov[0, 0]) < 0.05  # cm-level position sigma
    map_tfs = [tr for _, _, msg in out["/tf"] for tr in msg.transforms if tr.header.frame_id == "map"]
    assert len(map_tfs) == 6 and all(tr.child_frame_id == "odom" for tr in map_tfs)
    for tr in map_tfs:
        dt, dr = pose_error(_rigid_tf(tr.transform).inverse(), MAP_FROM_ODOM.inverse())
        assert dt < 0.01 and dr < 0.2

    tum = read_tum(rep.tum)
    assert len(tum) == 6 and "world_from_cam" in Path(rep.tum).read_text().splitlines()[0]
    for row, T, k in zip(tum, poses, range(6)):
        assert row.stamp == pytest.approx(T0 + k * DT, abs=1e-6)
        assert pose_error(row.pose.inverse(), T)[0] < 0.01


def test_ros2_sqlite3_replay_with_rate_and_tum_truth(room, tmp_path):
    tm, loc, poses, frames = room
    bag = tmp_path / "in2"
    write_bag(bag, "sqlite3", bag_items("sqlite3", poses, frames, odom=True, gt_topic=False, camera_info=True,
                                        malformed=True))
    gt = tmp_path / "gt.tum"
    write_tum(gt, [StampedPose(T0 + k * DT, T.inverse()) for k, T in enumerate(poses)], "world_from_cam")
    rep = replay(bag, tm.bundle, tmp_path / "out2", ReplayConfig(rate_hz=1.0, gt_file=gt), localizer=loc)
    assert rep.input_format == rep.output_format == "sqlite3"
    # 0.5 s apart at 1 Hz: frames 0, 2, 4 localized; the malformed ones come later and are skipped
    assert rep.localized == 3 and rep.skipped_rate == 3 and rep.accepted == 3
    assert rep.skipped == {"bad_encoding": 1, "bad_data": 1, "undeserializable": 1}
    assert [r["index"] for r in rep.frames] == [0, 2, 4]
    assert rep.accuracy["n"] == 3 and rep.accuracy["median_t_cm"] < 1.0
    out = read_out(tmp_path / "out2")
    assert len(out["/vloc/pose"]) == 3 and len(out[IMAGE]) == 9
    map_tfs = [tr for _, _, msg in out["/tf"] for tr in msg.transforms if tr.header.frame_id == "map"]
    assert len(map_tfs) == 3
    assert all(pose_error(_rigid_tf(tr.transform).inverse(), MAP_FROM_ODOM.inverse())[0] < 0.01 for tr in map_tfs)


def test_mcap_to_ros1_with_camera_string_and_pgt_truth(room, tmp_path):
    """MCAP input without CameraInfo or odometry (--camera, map -> base_link TF), written as ROS 1."""
    tm, loc, poses, frames = room
    bag = tmp_path / "in3"
    write_bag(bag, "mcap", bag_items("mcap", poses[:3], frames[:3], odom=False, gt_topic=False, camera_info=False,
                                     malformed=False))
    pgt = tmp_path / "gt.txt"
    pgt.write_text("".join(f"f{k}.png " + " ".join(map(str, [*T.quat_wxyz, *T.translation, 525.0])) + "\n"
                           for k, T in enumerate(poses[:3])))
    cli = CliRunner().invoke(__import__("vloc.cli", fromlist=["app"]).app, [
        "robots", "replay", str(bag), "--map", str(tm.bundle), "--out", str(tmp_path / "out3.bag"),
        "--out-format", "rosbag1", "--camera", str(DEFAULT_CAMERA), "--gt", str(pgt), "--json"])
    assert cli.exit_code == 0, cli.output
    rep = json.loads(cli.stdout)
    assert rep["input_format"] == "mcap" and rep["output_format"] == "rosbag1" and not rep["copied_input"]
    assert rep["accepted"] == 3 and rep["tf"] == "map -> base_link"
    assert rep["accuracy"]["n"] == 3 and rep["accuracy"]["median_t_cm"] < 1.0
    out = read_out(tmp_path / "out3.bag")
    assert set(out) == {"/vloc/pose", "/tf"}  # input not copied across families
    for (_, _, msg), T in zip(out["/tf"], poses):
        tr = msg.transforms[0]
        assert (tr.header.frame_id, tr.child_frame_id) == ("map", "base_link")
        assert pose_error(_rigid_tf(tr.transform).inverse(), (T.inverse() * BASE_FROM_CAMERA.inverse()).inverse())[0] < 0.01


def test_cli_user_errors(room, tmp_path):
    from vloc.cli import app
    tm = room[0]
    r = CliRunner().invoke(app, ["robots", "replay", str(tmp_path / "nope.bag"), "--map", str(tm.bundle),
                                 "--out", str(tmp_path / "o.bag")])
    assert r.exit_code == 2 and "does not exist" in r.output
    bag = tmp_path / "in.bag"
    write_bag(bag, "rosbag1", [("/x", "geometry_msgs/msg/PoseStamped", 1.0, _Msgs(True).pose_stamped(1.0, Rigid3.identity()))])
    r = CliRunner().invoke(app, ["robots", "replay", str(bag), "--map", str(tm.bundle), "--out", str(tmp_path / "o.bag")])
    assert r.exit_code == 2 and "no image topic" in r.output, r.output
