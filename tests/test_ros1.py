"""ROS 1 bridge against a real roscore on loopback: a publisher node (subprocess) sends rendered
frames of a generated room + CameraInfo + odom TF + one badly encoded image; the bridge
(subprocess, ``vloc robots ros1``) must answer each good frame with the true base_link pose and
the true map -> odom, and count the bad one. Skipped with a reason when rospy / roscore are absent."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.geometry import Rigid3, pose_error
from robots.transforms import BODY_FROM_OPTICAL, rigid_from_ros, rigid_to_ros

REPO = Path(__file__).resolve().parents[1]
BASE_FROM_CAMERA = Rigid3(np.eye(3), [0.1, 0.0, 0.9]) * BODY_FROM_OPTICAL
MAP_FROM_ODOM = Rigid3.from_quat_wxyz([np.cos(0.2), 0, 0, np.sin(0.2)], [0.5, -0.3, 0.0])
N_FRAMES = 3


def _rospy_or_skip():
    from core.types import VlocError
    from robots.ros1.bridge import import_rospy
    try:
        import_rospy()
    except VlocError as e:
        pytest.skip(str(e))
    if shutil.which("roscore") is None:
        pytest.skip("roscore is not on PATH (apt-get install ros-core)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, wait: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


PUBLISHER = textwrap.dedent("""
    import json, sys, time
    sys.path.append("/usr/lib/python3/dist-packages")
    import numpy as np, rospy
    from sensor_msgs.msg import Image, CameraInfo
    from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
    from tf2_msgs.msg import TFMessage

    spec = json.load(open(sys.argv[1]))
    frames = np.load(spec["frames"])
    rospy.init_node("vloc_test_robot", disable_signals=True)
    poses, tfs = [], []
    rospy.Subscriber("/vloc/pose", PoseWithCovarianceStamped, lambda m: poses.append(m))
    rospy.Subscriber("/tf", TFMessage, lambda m: tfs.extend(t for t in m.transforms if t.header.frame_id == "map"))
    info_pub = rospy.Publisher("/camera/camera_info", CameraInfo, queue_size=1, latch=True)
    img_pub = rospy.Publisher("/camera/image_raw", Image, queue_size=2)
    tf_pub = rospy.Publisher("/tf", TFMessage, queue_size=10)
    deadline = time.time() + 60
    while img_pub.get_num_connections() == 0 or tf_pub.get_num_connections() == 0:
        if time.time() > deadline: sys.exit("the bridge never subscribed")
        time.sleep(0.1)
    time.sleep(1.0)  # let the bridge's publishers connect to our subscribers too
    fx, fy, cx, cy = spec["camera"]
    info = CameraInfo(height=480, width=640, distortion_model="plumb_bob", D=[0.0] * 5,
                      K=[fx, 0, cx - 0.5, 0, fy, cy - 0.5, 0, 0, 1])
    info.header.frame_id = "camera_optical"
    info_pub.publish(info)

    def image(rgb, stamp, encoding="rgb8"):
        m = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0,
                  step=rgb.shape[1] * 3, data=rgb.tobytes())
        m.header.stamp, m.header.frame_id = stamp, "camera_optical"
        return m

    def odom_tf(stamp, p, q):
        t = TransformStamped()
        t.header.stamp, t.header.frame_id, t.child_frame_id = stamp, "odom", "base_link"
        (t.transform.translation.x, t.transform.translation.y, t.transform.translation.z) = p
        (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w) = q
        return TFMessage(transforms=[t])

    sent = []
    # a badly encoded frame first: it must be counted and skipped, not stop the bridge
    img_pub.publish(image(frames[0], rospy.Time.now(), encoding="yuv422"))
    time.sleep(0.3)
    for k, (rgb, odom) in enumerate(zip(frames, spec["odom"])):
        stamp = rospy.Time.now()
        tf_pub.publish(odom_tf(stamp, odom[0], odom[1]))
        time.sleep(0.05)
        img_pub.publish(image(rgb, stamp))
        sent.append(stamp.to_sec())
        t_end = time.time() + 60
        while len(poses) <= k and time.time() < t_end:
            time.sleep(0.05)
    time.sleep(0.5)
    out = {"sent": sent,
           "poses": [{"stamp": m.header.stamp.to_sec(), "frame": m.header.frame_id,
                      "p": [m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z],
                      "q": [m.pose.pose.orientation.x, m.pose.pose.orientation.y, m.pose.pose.orientation.z,
                            m.pose.pose.orientation.w], "cov": list(m.pose.covariance)} for m in poses],
           "tfs": [{"stamp": t.header.stamp.to_sec(), "child": t.child_frame_id,
                    "p": [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z],
                    "q": [t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
                          t.transform.rotation.w]} for t in tfs]}
    json.dump(out, open(spec["out"], "w"))
""")


@pytest.mark.slow
def test_ros1_bridge_against_roscore(tmp_path):
    _rospy_or_skip()
    from api.testing import shared_test_map
    from datasets.synthetic import DEFAULT_CAMERA

    tm = shared_test_map()
    poses = tm.scene.trajectory(N_FRAMES, pass_id=1)
    np.save(tmp_path / "frames.npy", np.stack([tm.scene.render(T, DEFAULT_CAMERA)[0] for T in poses]))
    odom = []
    for T in poses:
        odom_from_base = MAP_FROM_ODOM.inverse() * T.inverse() * BASE_FROM_CAMERA.inverse()
        p, q = rigid_to_ros(odom_from_base)
        odom.append([p.tolist(), q.tolist()])
    spec = {"frames": str(tmp_path / "frames.npy"), "camera": list(DEFAULT_CAMERA.params), "odom": odom,
            "out": str(tmp_path / "received.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    p, q = rigid_to_ros(BASE_FROM_CAMERA)
    config = {"backend": {"bundle": str(tm.bundle)}, "frames": {"camera": "camera_optical"},
              "base_from_camera": {"translation": p.tolist(), "quaternion_xyzw": q.tolist(), "optical": True},
              "max_rate_hz": 0, "max_age_s": 0, "stats_interval_s": 0}
    (tmp_path / "bridge.json").write_text(json.dumps(config))

    port = _free_port()
    env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{port}", "ROS_IP": "127.0.0.1",
           "ROS_HOME": str(tmp_path / "ros"), "ROS_LOG_DIR": str(tmp_path / "ros" / "log"), "NO_PROXY": "*"}
    env.pop("ROS_HOSTNAME", None)
    procs: list[subprocess.Popen] = []
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("roscore", "bridge", "robot")}
    try:
        # roscore is a Debian python3 script: run it with the system interpreter, not the venv's
        procs.append(subprocess.Popen(["roscore", "-p", str(port)], env=env, stdout=logs["roscore"],
                                      stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert procs[0].poll() is None, (tmp_path / "roscore.log").read_text()
            assert time.monotonic() < deadline, "roscore did not open its port"
            time.sleep(0.2)
        bridge = subprocess.Popen([sys.executable, "-m", "vloc.cli", "robots", "ros1", "--config",
                                   str(tmp_path / "bridge.json")], env=env, cwd=REPO, stdout=logs["bridge"],
                                  stderr=subprocess.STDOUT)
        procs.append(bridge)
        robot = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(tmp_path / "spec.json")], env=env, cwd=REPO,
                                 stdout=logs["robot"], stderr=subprocess.STDOUT)
        procs.append(robot)
        rc = robot.wait(240)
        assert rc == 0, (tmp_path / "robot.log").read_text()[-3000:] + (tmp_path / "bridge.log").read_text()[-3000:]
        _stop(bridge)
        assert bridge.returncode == 0, (tmp_path / "bridge.log").read_text()[-3000:]
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs.values():
            f.close()

    got = json.loads((tmp_path / "received.json").read_text())
    bridge_log = (tmp_path / "bridge.log").read_text()
    assert len(got["poses"]) == N_FRAMES, bridge_log[-3000:]
    for msg, stamp, T in zip(got["poses"], got["sent"], poses):
        assert msg["frame"] == "map" and msg["stamp"] == pytest.approx(stamp, abs=1e-6)
        true_map_from_base = T.inverse() * BASE_FROM_CAMERA.inverse()
        dt, dr = pose_error(rigid_from_ros(msg["p"], msg["q"]).inverse(), true_map_from_base.inverse())
        assert dt < 0.01 and dr < 0.2, (dt, dr)
        cov = np.asarray(msg["cov"]).reshape(6, 6)
        assert np.all(np.diag(cov) > 0) and np.sqrt(cov[0, 0]) < 0.05
    assert len(got["tfs"]) == N_FRAMES
    for tf in got["tfs"]:
        assert tf["child"] == "odom"
        dt, dr = pose_error(rigid_from_ros(tf["p"], tf["q"]).inverse(), MAP_FROM_ODOM.inverse())
        assert dt < 0.01 and dr < 0.2, (dt, dr)
    counters = json.loads(bridge_log.rsplit("counters ", 1)[1].splitlines()[0])
    assert counters["malformed"] == 1 and counters["localized"] == N_FRAMES and counters["tf_published"] == N_FRAMES
    assert counters["errors"] == 0 and counters["rejected"] == 0
