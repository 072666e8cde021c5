"""The ROS 2 live bridge over real DDS on loopback: a bridge process (``vloc robots ros2``) and this
test as the robot (camera, CameraInfo, odometry on /tf), checking poses and map->odom against truth."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from api.testing import shared_test_map
from core.geometry import Rigid3, rotation_angle_deg
from datasets.synthetic import DEFAULT_CAMERA
from robots.backend import InProcessBackend, result_from_json
from robots.config import BackendConfig, BridgeConfig, DdsConfig, ExtrinsicConfig
from robots.ros2 import msgs
from robots.ros2.bridge import Ros2Bridge, rigid_from_pose, rigid_from_transform, transform_stamped
from robots.transforms import rigid_from_rpy, seconds_to_stamp
from vloc.cli import app

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
EXTRINSIC = {"translation": [0.25, -0.05, 0.9], "rpy": [-np.pi / 2 - 0.1, 0.0, -np.pi / 2], "optical": True}
BASE_FROM_CAMERA = rigid_from_rpy(EXTRINSIC["translation"], EXTRINSIC["rpy"])
MAP_FROM_ODOM = Rigid3(Rotation.from_euler("z", 25, degrees=True).as_matrix(), [1.2, -0.7, 0.05])
K_ROS = [525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1]   # DEFAULT_CAMERA in ROS pixel convention


def fresh_domain() -> int:
    """A DDS domain of its own for each test (other test runs share this loopback)."""
    return random.SystemRandom().randint(30, 230)


def dds_settings(domain: int) -> dict:
    return {"domain_id": domain, "interface": "lo", "peers": ["127.0.0.1"], "allow_multicast": False}


@pytest.fixture(scope="module")
def tmap():
    return shared_test_map()


@pytest.fixture(scope="module")
def walk(tmap):
    """Three frames of another pass through the room: (RGB, cam_from_world)."""
    return [(tmap.scene.render(T, DEFAULT_CAMERA)[0], T) for T in tmap.scene.trajectory(24, pass_id=1)[:3]]


def now_stamp() -> tuple[int, int]:
    return seconds_to_stamp(time.time())


def secs(st: tuple[int, int]) -> float:
    return st[0] + st[1] * 1e-9


class Peer:
    """This test's DDS participant: publishes camera frames, CameraInfo and odom->base_link on /tf;
    receives the bridge's poses and map->odom."""

    def __init__(self, domain: int, compressed: bool = False, image_topic: str = "/cam/image_raw",
                 own_domain: bool = True) -> None:
        from cyclonedds.domain import Domain, DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic
        # in the bridge's process, the bridge has configured the domain already
        self.domain = Domain(domain, config=DdsConfig(**dds_settings(domain)).xml()) if own_domain else None
        dp = self.dp = DomainParticipant(domain)
        image_type = msgs.CompressedImage if compressed else msgs.Image
        self.image = DataWriter(dp, Topic(dp, msgs.dds_topic(image_topic), image_type), qos=msgs.QOS_SENSOR_DATA)
        self.info = DataWriter(dp, Topic(dp, "rt/cam/camera_info", msgs.CameraInfo), qos=msgs.QOS_SENSOR_DATA)
        tf = Topic(dp, "rt/tf", msgs.TFMessage)
        self.tf = DataWriter(dp, tf, qos=msgs.QOS_TF)
        self.tf_in = DataReader(dp, tf, qos=msgs.QOS_TF)
        self.pose_in = DataReader(dp, Topic(dp, "rt/vloc/pose", msgs.PoseWithCovarianceStamped), qos=msgs.QOS_DEFAULT)
        self.poses: dict[tuple[int, int], msgs.PoseWithCovarianceStamped] = {}
        self.map_odom: dict[tuple[int, int], msgs.TransformStamped] = {}

    def wait_matched(self, timeout: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (all(w.get_matched_subscriptions() for w in (self.image, self.info, self.tf))
                    and self.pose_in.get_matched_publications()):
                return
            assert proc is None or proc.poll() is None, "the bridge process exited"
            time.sleep(0.1)
        raise AssertionError("the bridge did not appear on DDS")

    def send_camera_info(self) -> None:
        self.info.write(msgs.CameraInfo(header=msgs.Header(msgs.Time(*now_stamp()), "camera_optical"), height=480,
                                        width=640, distortion_model="plumb_bob", d=[0.0] * 5, k=K_ROS,
                                        r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=K_ROS[:3] + [0] + K_ROS[3:6] + [0, 0, 0, 1, 0]))

    def send_odom(self, stamp: tuple[int, int], odom_from_base: Rigid3) -> None:
        """Two odometry samples 50 ms either side of ``stamp`` whose slerp midpoint is ``odom_from_base``."""
        w, d = np.array([0.0, 0.0, 0.02]), np.array([0.01, -0.02, 0.0])
        for dt, sign in ((-0.05, 1), (0.05, -1)):
            T = Rigid3(odom_from_base.rotation @ Rotation.from_rotvec(sign * w).as_matrix(),
                       odom_from_base.translation + sign * d)
            self.tf.write(msgs.TFMessage([transform_stamped(secs(stamp) + dt, "odom", "base_link", T)]))

    def send_image(self, stamp: tuple[int, int], rgb: np.ndarray, encoding: str = "rgb8", pad: int = 0,
                   data: bytes | None = None) -> None:
        px = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
              "yuv422": rgb[:, :, :2]}[encoding]
        rows = np.ascontiguousarray(px).reshape(px.shape[0], -1)
        padded = np.zeros((rows.shape[0], rows.shape[1] + pad), np.uint8)
        padded[:, :rows.shape[1]] = rows
        self.image.write(msgs.Image(header=msgs.Header(msgs.Time(*stamp), "camera_optical"), height=rgb.shape[0],
                                    width=rgb.shape[1], encoding=encoding, is_bigendian=0, step=padded.shape[1],
                                    data=padded.tobytes() if data is None else data))

    def send_jpeg(self, stamp: tuple[int, int], rgb: np.ndarray | None, data: bytes | None = None) -> None:
        if data is None:
            data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        self.image.write(msgs.CompressedImage(header=msgs.Header(msgs.Time(*stamp), "camera_optical"), format="jpeg",
                                              data=data))

    def poll(self) -> None:
        for m in self.pose_in.take(N=100):
            self.poses[(m.header.stamp.sec, m.header.stamp.nanosec)] = m
        for m in self.tf_in.take(N=100):
            for t in m.transforms:
                if (t.header.frame_id, t.child_frame_id) == ("map", "odom"):
                    self.map_odom[(t.header.stamp.sec, t.header.stamp.nanosec)] = t

    def wait_pose(self, stamp: tuple[int, int], timeout: float) -> msgs.PoseWithCovarianceStamped | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if stamp in self.poses:
                return self.poses[stamp]
            time.sleep(0.05)
        return None


def wait_for_log(path: Path, text: str, timeout: float, resend=None) -> bool:
    """Poll the bridge's log for ``text``, calling ``resend()`` every second (best-effort frames may be lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        if resend is not None:
            resend()
        time.sleep(1.0)
    return text in path.read_text()


def last_counters(log: str) -> dict:
    lines = [ln for ln in log.splitlines() if "counters {" in ln]
    assert lines, log[-3000:]
    return json.loads(lines[-1].split("counters ", 1)[1])


def check_pose(msg: msgs.PoseWithCovarianceStamped, cam_from_world_true: Rigid3) -> Rigid3:
    """The published pose is base_link in map at cm / sub-degree level; returns it."""
    assert msg.header.frame_id == "map"
    got = rigid_from_pose(msg.pose.pose)
    truth = cam_from_world_true.inverse() * BASE_FROM_CAMERA.inverse()
    assert np.linalg.norm(got.translation - truth.translation) < 0.02, (got.translation, truth.translation)
    assert rotation_angle_deg(got.rotation, truth.rotation) < 0.5
    cov = np.asarray(msg.pose.covariance).reshape(6, 6)
    np.testing.assert_allclose(cov, cov.T, atol=1e-12)
    assert np.all(np.diag(cov) > 0) and np.sqrt(np.diag(cov)[:3]).max() < 0.05
    return got


@contextlib.contextmanager
def bridge_process(cfg: dict, tmp: Path, env: dict | None = None):
    """``vloc robots ros2`` as a subprocess with this config; yields (process, log path); always
    stopped (SIGINT, then kill) on exit."""
    (tmp / "bridge.yaml").write_text(yaml.safe_dump(cfg))
    log_path = tmp / "bridge.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "vloc.cli", "robots", "ros2", "--config", str(tmp / "bridge.yaml")],
                                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_bridge_process_localizes_frames_over_dds(tmap, walk, tmp_path):
    domain = fresh_domain()
    cfg = {"backend": {"bundle": str(tmap.bundle)}, "image_topic": "/cam/image_raw",
           "camera_info_topic": "/cam/camera_info", "base_from_camera": EXTRINSIC, "max_rate_hz": 20,
           "max_age_s": 20, "stats_interval_s": 0, "dds": dds_settings(domain)}
    peer = None
    with bridge_process(cfg, tmp_path, {"OMP_NUM_THREADS": "1"}) as (proc, log_path):
        peer = Peer(domain)
        peer.wait_matched(120, proc)
        rgb0 = walk[0][0]
        # frames before any CameraInfo: one clear warning, and they are dropped
        assert wait_for_log(log_path, "no CameraInfo has arrived", 15,
                            lambda: peer.send_image(now_stamp(), rgb0)), log_path.read_text()[-3000:]
        variants = [("rgb8", 0), ("bgr8", 6), ("mono8", 3)]
        for k, ((rgb, truth), (encoding, pad)) in enumerate(zip(walk, variants)):
            if k == 1:   # malformed frames in between: logged, skipped, the bridge keeps going
                assert wait_for_log(log_path, "unsupported image encoding 'yuv422'", 15,
                                    lambda: peer.send_image(now_stamp(), rgb, "yuv422"))
                assert wait_for_log(log_path, "truncated rgb8 image", 15,
                                    lambda: peer.send_image(now_stamp(), rgb, data=rgb.tobytes()[:-7]))
            odom_from_base = MAP_FROM_ODOM.inverse() * truth.inverse() * BASE_FROM_CAMERA.inverse()
            msg = None
            for _attempt in range(3):   # a best-effort frame (~1 MB in fragments) may be lost: send again
                stamp = now_stamp()
                peer.send_odom(stamp, odom_from_base)
                peer.send_camera_info()
                time.sleep(0.05)
                peer.send_image(stamp, rgb, encoding, pad)
                msg = peer.wait_pose(stamp, 30)
                if msg is not None:
                    break
            assert msg is not None, f"no pose for frame {k}: " + log_path.read_text()[-3000:]
            map_from_base = check_pose(msg, truth)
            deadline = time.monotonic() + 5
            while stamp not in peer.map_odom and time.monotonic() < deadline:
                peer.poll()
                time.sleep(0.05)
            tf = peer.map_odom[stamp]   # same stamp as the image and the pose, exactly
            map_from_odom = rigid_from_transform(tf.transform)
            assert np.linalg.norm(map_from_odom.translation - MAP_FROM_ODOM.translation) < 0.03
            assert rotation_angle_deg(map_from_odom.rotation, MAP_FROM_ODOM.rotation) < 0.5
            both = map_from_odom * odom_from_base   # REP-105: map->odom->base_link == the published pose
            np.testing.assert_allclose(both.translation, map_from_base.translation, atol=1e-6)
            np.testing.assert_allclose(both.rotation, map_from_base.rotation, atol=1e-6)
    peer = None  # the DDS participant goes before the next test
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    c = last_counters(log)
    assert c["localized"] >= 3 and c["tf_published"] >= 3 and c["missing_odom"] == 0, c
    assert c["malformed"] >= 2 and c["no_camera_info"] >= 1 and c["errors"] == 0, c
    assert "Traceback" not in log


def test_bridge_compressed_stale_rate_and_missing_odom(tmap, walk):
    """In this process (two DDS participants): CompressedImage input, a frame without odometry
    (pose only, no TF), stale frames, a burst above the rate limit, a corrupt JPEG."""
    domain = fresh_domain()
    cfg = BridgeConfig(backend=BackendConfig(bundle=tmap.bundle), compressed=True,
                       image_topic="/cam/image_raw/compressed", camera_info_topic="/cam/camera_info",
                       base_from_camera=ExtrinsicConfig(**EXTRINSIC), max_rate_hz=2.0, max_age_s=5.0,
                       stats_interval_s=0, dds=DdsConfig(**dds_settings(domain)))
    bridge = Ros2Bridge(cfg, InProcessBackend(tmap.bundle)).start()
    c = bridge.counters
    peer = None

    def wait_counter(name: str, value: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while c.snapshot()[name] < value and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.snapshot()[name] >= value, (name, c.snapshot())

    try:
        peer = Peer(domain, compressed=True, image_topic="/cam/image_raw/compressed", own_domain=False)
        peer.wait_matched(30)
        peer.send_camera_info()
        time.sleep(0.3)
        rgb, truth = walk[1]
        stamp = now_stamp()
        peer.send_jpeg(stamp, rgb)                  # no odometry for this one
        msg = peer.wait_pose(stamp, 60)
        assert msg is not None, c.snapshot()
        check_pose(msg, truth)
        wait_counter("missing_odom", 1)
        # an unusable CameraInfo (uncalibrated) and a TF with a zero quaternion: logged, skipped
        peer.info.write(msgs.CameraInfo(height=480, width=640, distortion_model="plumb_bob", d=[0.0] * 5))
        bad_tf = transform_stamped(now_stamp(), "odom", "base_link", Rigid3.identity())
        bad_tf.transform.rotation.w = 0.0
        peer.tf.write(msgs.TFMessage([bad_tf]))
        wait_counter("malformed", 2)
        time.sleep(0.6)
        old = seconds_to_stamp(time.time() - 30)    # 30 s old: stale
        for _ in range(3):                           # a burst: the first passes the rate gate, then is stale
            peer.send_jpeg(old, rgb)
        wait_counter("dropped_stale", 1)
        wait_counter("dropped_rate", 2)
        time.sleep(0.6)
        peer.send_jpeg(now_stamp(), None, data=b"\xff\xd8\xff\xe0 not really a jpeg")
        wait_counter("malformed", 3)
        time.sleep(0.6)
        stamp = now_stamp()
        peer.send_jpeg(stamp, rgb)                  # still going
        assert peer.wait_pose(stamp, 60) is not None   # with the last good camera
        time.sleep(0.2)
        peer.poll()
        assert not peer.map_odom, "map->odom published without odometry"
    finally:
        del peer
        counters = bridge.stop()
    assert counters["localized"] == 2 and counters["tf_published"] == 0 and counters["missing_odom"] == 2
    assert counters["received"] == 6 and counters["malformed"] == 3 and counters["errors"] == 0, counters


def test_service_backend_localizes_through_a_live_server(tmap, walk, tmp_path):
    """The bridge's service backend (api.client) against a real server on loopback."""
    from api.app import create_app
    from api.settings import Settings
    from api.testing import LiveServer
    from core.types import VlocError
    from robots.backend import make_backend

    app_ = create_app(Settings(data_dir=tmp_path / "data", workers=1, import_roots=[tmap.bundle.parent]))
    reg = app_.state.vloc.registry
    admin, robot = reg.create_key("admin")[1], reg.create_key("robot", ["room"])[1]
    with LiveServer(app_) as srv:
        from api.client import VlocClient
        with VlocClient(srv.url, admin, timeout=120) as c:
            c.register_map_path("room", tmap.bundle)
        os.environ["VLOC_TEST_ROBOT_KEY"] = robot
        try:
            backend = make_backend(BackendConfig(service_url=srv.url, map_id="room", api_key_env="VLOC_TEST_ROBOT_KEY",
                                                 robot_id="r1"))
        finally:
            del os.environ["VLOC_TEST_ROBOT_KEY"]
        rgb, truth = walk[2]
        res = backend.localize(rgb, DEFAULT_CAMERA, timestamp=12.5)
        assert res.accepted, res.reason
        assert np.linalg.norm(res.cam_from_world.centre - truth.centre) < 0.01
        assert res.covariance.shape == (6, 6) and res.num_inliers > 30
        wrong = make_backend(BackendConfig(service_url=srv.url, map_id="elsewhere", api_key=robot))
        with pytest.raises(VlocError, match="vloc service: HTTP 403"):
            wrong.localize(rgb, DEFAULT_CAMERA)
        backend.close()
        wrong.close()


def test_service_answer_converts_to_the_same_result(tmap, walk):
    """The service backend's JSON (LocalizationResult.to_dict()) becomes the same pose and covariance."""
    rgb, _ = walk[0]
    res = InProcessBackend(tmap.bundle).localize(rgb, DEFAULT_CAMERA)
    back = result_from_json(json.loads(json.dumps(res.to_dict())))
    assert back.accepted and back.num_inliers == res.num_inliers
    np.testing.assert_allclose(back.cam_from_world.matrix4(), res.cam_from_world.matrix4(), atol=1e-12)
    np.testing.assert_allclose(back.covariance, res.covariance)


def test_cli_config_errors_exit_2(tmap, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["robots", "ros2", "--config", str(tmp_path / "none.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"backend": {"bundle": "m", "service_url": "http://x"}, "max_rate_hz": -1,
                                   "imagetopic": "/x"}))
    r = runner.invoke(app, ["robots", "ros2", "--config", str(bad)])
    assert r.exit_code == 2, r.output
    assert "exactly one of backend.bundle or backend.service_url" in r.output
    assert "max_rate_hz" in r.output and "imagetopic" in r.output
    nomap = tmp_path / "nomap.json"
    nomap.write_text(json.dumps({"backend": {"bundle": str(tmp_path)}}))
    r = runner.invoke(app, ["robots", "ros2", "--config", str(nomap)])
    assert r.exit_code == 2 and "not a map bundle" in r.output
    nonet = tmp_path / "nonet.yaml"
    nonet.write_text(yaml.safe_dump({"backend": {"bundle": str(tmap.bundle)},
                                     "dds": {"domain_id": fresh_domain(), "interface": "no-such-nic0"}}))
    r = runner.invoke(app, ["robots", "ros2", "--config", str(nonet)])
    assert r.exit_code == 2 and "cannot start DDS" in r.output, r.output


@pytest.mark.realdata
@pytest.mark.slow
def test_bridge_process_localizes_the_shared_frames_over_dds(tmp_path_factory):
    """The same two processes with the shared redkitchen frames: a map of the revisit map frames,
    the peer publishes revisit query frames (another pass through the kitchen) as rgb8 Images."""
    from conftest import shared_dataset

    from bench.serve_config import ServeBenchConfig
    from bench.serve_workload import prepare_7scenes
    root = shared_dataset("7scenes-redkitchen")
    tmp = tmp_path_factory.mktemp("ros2-kitchen")
    bundle, frames, _ = prepare_7scenes(root, tmp, ServeBenchConfig())
    frames = frames[:: max(1, len(frames) // 4)][:4]
    domain = fresh_domain()
    cfg = {"backend": {"bundle": str(bundle)}, "image_topic": "/cam/image_raw", "camera_info_topic": "/cam/camera_info",
           "base_from_camera": EXTRINSIC, "max_rate_hz": 20, "max_age_s": 30, "stats_interval_s": 0,
           "dds": dds_settings(domain)}
    peer, errors = None, []
    with bridge_process(cfg, tmp) as (proc, log_path):
        peer = Peer(domain)
        peer.wait_matched(120, proc)
        for f in frames:
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            odom_from_base = MAP_FROM_ODOM.inverse() * f.truth.inverse() * BASE_FROM_CAMERA.inverse()
            msg = None
            for _attempt in range(3):
                stamp = now_stamp()
                peer.send_odom(stamp, odom_from_base)
                peer.send_camera_info()   # the 7-Scenes RGB camera: f 525, centre 320, 240
                time.sleep(0.05)
                peer.send_image(stamp, rgb)
                msg = peer.wait_pose(stamp, 60)
                if msg is not None:
                    break
            assert msg is not None, f"no pose for {f.name}: " + log_path.read_text()[-3000:]
            got = rigid_from_pose(msg.pose.pose)
            truth = f.truth.inverse() * BASE_FROM_CAMERA.inverse()
            errors.append((np.linalg.norm(got.translation - truth.translation),
                           rotation_angle_deg(got.rotation, truth.rotation)))
    peer = None  # the DDS participant goes before the next test
    t, r = np.array(errors).T
    print(f"\nredkitchen over DDS: {len(errors)} frames, errors (cm) {np.round(t * 100, 2)}, (deg) {np.round(r, 2)}")
    assert t.max() < 0.05 and r.max() < 5.0   # pgt_sfm truth; the revisit target is 5 cm / 5 deg
    assert proc.returncode == 0 and "Traceback" not in log_path.read_text()
