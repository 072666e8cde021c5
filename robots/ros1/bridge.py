"""ROS 1 live bridge (rospy): camera frames in, poses and ``map -> odom`` out.

The ROS 1 twin of :mod:`robots.ros2.bridge`, with the same configuration file
(:class:`robots.config.BridgeConfig`; its ``dds`` section is ignored), the same pacing
(newest-frame-wins hand-off to one worker, ``max_rate_hz``, ``max_age_s`` against ROS time) and
the same counters. Subscribes to ``sensor_msgs/Image`` or ``CompressedImage`` (``compressed``),
``sensor_msgs/CameraInfo`` and ``tf2_msgs/TFMessage`` (``odom -> base_link``); publishes, for
accepted frames, ``geometry_msgs/PoseWithCovarianceStamped`` (base_link in map, the image's stamp)
and ``map -> odom`` on ``/tf`` (REP-105) when odometry is known at that stamp.

rospy comes from the Debian packages (``ros-core python3-rospy python3-sensor-msgs
python3-geometry-msgs python3-tf2-msgs``) in ``/usr/lib/python3/dist-packages``; that path is
appended to ``sys.path`` here only, when rospy is not importable otherwise. The master is
``ROS_MASTER_URI`` (and ``ROS_IP`` / ``ROS_HOSTNAME``) as for any ROS 1 node.

Run: ``vloc robots ros1 --config FILE`` or ``python -m robots.ros1.bridge --config FILE``.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from core.geometry import Rigid3
from core.types import VlocError
from robots.backend import Backend
from robots.config import BridgeConfig
from robots.entry import bridge_main, run_bridge
from robots.pipeline import Counters, FramePipeline, PendingFrame, Throttled
from robots.transforms import OdomBuffer, map_from_odom, rigid_from_ros, rigid_to_ros

log = logging.getLogger("vloc.robots.ros1")

#: where Debian's ROS 1 packages put rospy and the message modules.
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
INSTALL_HINT = ("apt-get install ros-core python3-rospy python3-sensor-msgs python3-geometry-msgs "
                "python3-tf2-msgs")


def import_rospy():
    """(rospy, sensor_msgs.msg, geometry_msgs.msg, tf2_msgs.msg); VlocError with the install hint when absent."""
    try:
        import rospy  # noqa: F401
    except ImportError:
        if DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)
    try:
        import geometry_msgs.msg
        import rospy
        import sensor_msgs.msg
        import tf2_msgs.msg
    except ImportError as e:
        raise VlocError(f"ROS 1 (rospy) is not available ({e}); install it with: {INSTALL_HINT}") from None
    return rospy, sensor_msgs.msg, geometry_msgs.msg, tf2_msgs.msg


def _frame(name: str) -> str:
    return name.lstrip("/")


class Ros1Bridge:
    """The live bridge on ROS 1: ``start()`` (initialises the node), then ``stop()`` (or ``run(stop_event)``)."""

    def __init__(self, cfg: BridgeConfig, backend: Backend, node_name: str = "vloc_bridge") -> None:
        self.cfg = cfg
        self.backend = backend
        self.node_name = node_name
        self.counters = Counters()
        self.base_from_camera = cfg.base_from_camera.base_from_optical()
        self.odom = OdomBuffer(max_age_s=cfg.odom_max_age_s)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._throttle = Throttled()
        self._pipeline = FramePipeline(cfg, backend, self.base_from_camera, self.odom, self.counters,
                                       self._throttle)
        self._ros: dict = {}

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Ros1Bridge":
        rospy, sensor_msgs, geometry_msgs, tf2_msgs = import_rospy()
        c, r = self.cfg, self._ros
        r.update(rospy=rospy, geometry_msgs=geometry_msgs, tf2_msgs=tf2_msgs)
        # signals stay with the caller (run_from_config): rospy's handlers would end the process abruptly
        # rospy.init_node replaces the root logger's handlers with a file in ROS_LOG_DIR: keep ours too
        root = logging.getLogger()
        handlers = list(root.handlers)
        rospy.init_node(self.node_name, anonymous=False, disable_signals=True)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        r["pose_out"] = rospy.Publisher(c.pose_topic, geometry_msgs.PoseWithCovarianceStamped, queue_size=10)
        r["tf_out"] = rospy.Publisher(c.tf_topic, tf2_msgs.TFMessage, queue_size=100) if c.publish_tf else None
        image_type = sensor_msgs.CompressedImage if c.compressed else sensor_msgs.Image
        r["subs"] = [
            rospy.Subscriber(c.camera_info_topic, sensor_msgs.CameraInfo, self._guard(self._on_camera_info), queue_size=5),
            rospy.Subscriber(c.tf_topic, tf2_msgs.TFMessage, self._guard(self._on_tf), queue_size=200),
            rospy.Subscriber(c.image_topic, image_type, self._guard(self._on_image), queue_size=2,
                             buff_size=1 << 25),
        ]
        self._worker = threading.Thread(target=self._pipeline.work, args=(self._stop, self._process),
                                        name="vloc-ros1-worker", daemon=True)
        self._worker.start()
        log.info("ROS 1 bridge %s: %s %s + %s -> %s%s (%s)", rospy.get_name(),
                 "CompressedImage" if c.compressed else "Image", c.image_topic, c.camera_info_topic, c.pose_topic,
                 f" + {c.tf_topic} {c.frames.map}->{c.frames.odom}" if c.publish_tf else "", self.backend.name)
        return self

    def stop(self) -> dict[str, int]:
        """Stop the worker, unregister, shut the node down; log and return the counters."""
        self._stop.set()
        self._pipeline.slot.close()
        if self._worker is not None:
            self._worker.join(30)
        r = self._ros
        for s in r.get("subs", []):
            s.unregister()
        if "rospy" in r:
            r["rospy"].signal_shutdown("vloc bridge stopped")
        snap = self.counters.snapshot()
        log.info("counters %s", json.dumps(snap))
        return snap

    def run(self, stop_event: threading.Event) -> dict[str, int]:
        """start(), log counters every ``stats_interval_s`` until ``stop_event`` or ROS shutdown, then stop()."""
        self.start()
        rospy = self._ros["rospy"]
        try:
            every = self.cfg.stats_interval_s
            last = time.monotonic()
            while not stop_event.wait(0.2) and not rospy.is_shutdown():
                if every > 0 and time.monotonic() - last >= every:
                    last = time.monotonic()
                    log.info("counters %s", json.dumps(self.counters.snapshot()))
        finally:
            snap = self.stop()
        return snap

    # callbacks (rospy threads) ---------------------------------------------------------------
    def _guard(self, handler):
        def wrapped(msg) -> None:
            try:
                handler(msg)
            except Exception:  # a callback error must not end the bridge
                self.counters.inc("errors")
                log.exception("error handling a message")
        return wrapped

    def _on_camera_info(self, m) -> None:
        self._pipeline.camera_info(m)

    def _on_tf(self, m) -> None:
        f = self.cfg.frames
        for t in m.transforms:
            if _frame(t.header.frame_id) != f.odom or _frame(t.child_frame_id) != f.base_link:
                continue
            tr, q = t.transform.translation, t.transform.rotation
            self._pipeline.odometry(t.header.stamp.to_sec(),
                                    lambda: rigid_from_ros([tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w]))

    def _on_image(self, m) -> None:
        self._pipeline.image(m, (m.header.stamp.secs, m.header.stamp.nsecs))

    # worker ----------------------------------------------------------------------------------
    def _process(self, frame: PendingFrame) -> None:
        r = self._ros
        out = self._pipeline(frame, r["rospy"].get_time())
        if out is None:
            return
        f, stamp = self.cfg.frames, r["rospy"].Time(*frame.ros_stamp)
        r["pose_out"].publish(self._pose_msg(stamp, f.map, out.map_from_base, out.covariance))
        if out.odom is not None:
            tf = self._transform_msg(stamp, f.map, f.odom, map_from_odom(out.map_from_base, out.odom.odom_from_base))
            r["tf_out"].publish(r["tf2_msgs"].TFMessage(transforms=[tf]))
            self.counters.inc("tf_published")

    # message construction --------------------------------------------------------------------
    def _pose_msg(self, stamp, frame_id: str, map_from_base: Rigid3, covariance: np.ndarray):
        g = self._ros["geometry_msgs"]
        p, q = rigid_to_ros(map_from_base)
        msg = g.PoseWithCovarianceStamped()
        msg.header.stamp, msg.header.frame_id = stamp, frame_id
        msg.pose.pose.position = g.Point(*map(float, p))
        msg.pose.pose.orientation = g.Quaternion(*map(float, q))
        msg.pose.covariance = [float(v) for v in np.asarray(covariance, dtype=np.float64).reshape(36)]
        return msg

    def _transform_msg(self, stamp, parent: str, child: str, parent_from_child: Rigid3):
        g = self._ros["geometry_msgs"]
        p, q = rigid_to_ros(parent_from_child)
        t = g.TransformStamped()
        t.header.stamp, t.header.frame_id, t.child_frame_id = stamp, parent, child
        t.transform.translation = g.Vector3(*map(float, p))
        t.transform.rotation = g.Quaternion(*map(float, q))
        return t


# --- entry points ----------------------------------------------------------------------------
def run_from_config(config_path: str | Path, log_level: str = "info", node_name: str = "vloc_bridge"
                    ) -> dict[str, int]:
    """Run the bridge of a config file until SIGINT / SIGTERM or ROS shutdown; returns the counters
    (VlocError on a bad config: the CLI prints it and exits 2)."""
    import_rospy()  # fail early, before loading a map
    return run_bridge(config_path, log_level, lambda cfg, backend: Ros1Bridge(cfg, backend, node_name))


def main(argv: list[str] | None = None) -> int:
    """``python -m robots.ros1.bridge --config FILE [--log-level info] [--node-name vloc_bridge]``."""
    return bridge_main("python -m robots.ros1.bridge", __doc__.splitlines()[0], run_from_config, argv,
                       node_name=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
