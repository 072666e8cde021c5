"""ROS 2 live bridge over DDS (Cyclone): camera frames in, poses and ``map -> odom`` out.

Subscribes (ROS 2 wire types, ``rt/`` topics, sensor-data QoS) to ``sensor_msgs/Image`` or
``CompressedImage`` plus ``CameraInfo``, and to ``/tf`` for the robot's ``odom -> base_link``;
localizes frames with a :mod:`robots.backend` (a bundle in this process, or the service);
publishes, for accepted poses only, ``geometry_msgs/PoseWithCovarianceStamped`` (base_link in
map, stamp = the image's) and, when odometry is known at that stamp, ``tf2_msgs/TFMessage``
``map -> odom`` (REP-105: ``map_from_odom = map_from_base * base_from_odom``).

Threads: one DDS thread waits on a WaitSet and takes samples (cheap checks only, never
blocks on localization); one worker localizes the newest pending frame (newest-frame-wins: a
frame still pending when a newer one arrives is dropped). Malformed messages and wrong
encodings are logged and counted, never fatal.

Counters (logged every ``stats_interval_s`` and at exit as ``counters {json}``):
``received`` frames, ``localized`` (pose published), ``rejected`` (not accepted by vloc),
``dropped_stale`` (older than ``max_age_s`` or superseded while pending), ``dropped_rate``
(above ``max_rate_hz``), ``malformed`` (undecodable image / camera info / TF), ``no_camera_info``
(frames before any CameraInfo), ``errors`` (backend failures), ``tf_published``, ``missing_odom``.
"""
from __future__ import annotations

import json
import logging
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
from robots.ros2 import msgs
from robots.transforms import (
    OdomBuffer,
    map_from_odom,
    rigid_from_ros,
    rigid_to_ros,
    seconds_to_stamp,
    stamp_to_seconds,
)

log = logging.getLogger("vloc.robots.ros2")

# --- message construction / parsing (pure) ----------------------------------------------------
Stamp = tuple[int, int] | float


def header(stamp: Stamp, frame_id: str) -> msgs.Header:
    """std_msgs/Header; stamp: (sec, nanosec), kept exactly, or float seconds."""
    sec, nanosec = stamp if isinstance(stamp, tuple) else seconds_to_stamp(stamp)
    return msgs.Header(stamp=msgs.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def pose_message(stamp: Stamp, map_frame: str, map_from_base: Rigid3, covariance: np.ndarray
                 ) -> msgs.PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped of base_link in ``map_frame``; covariance (6, 6) in ROS order
    (x, y, z, rot_x, rot_y, rot_z), written row-major."""
    p, q = rigid_to_ros(map_from_base)
    pose = msgs.Pose(position=msgs.Point(*map(float, p)), orientation=msgs.Quaternion(*map(float, q)))
    cov = [float(v) for v in np.asarray(covariance, dtype=np.float64).reshape(36)]
    return msgs.PoseWithCovarianceStamped(header=header(stamp, map_frame),
                                          pose=msgs.PoseWithCovariance(pose=pose, covariance=cov))


def transform_stamped(stamp: Stamp, parent: str, child: str, parent_from_child: Rigid3) -> msgs.TransformStamped:
    """TransformStamped ``parent -> child`` carrying ``parent_from_child``."""
    p, q = rigid_to_ros(parent_from_child)
    return msgs.TransformStamped(header=header(stamp, parent), child_frame_id=child,
                                 transform=msgs.Transform(translation=msgs.Vector3(*map(float, p)),
                                                          rotation=msgs.Quaternion(*map(float, q))))


def rigid_from_transform(t: msgs.Transform) -> Rigid3:
    """geometry_msgs/Transform -> ``parent_from_child``."""
    r = t.rotation
    return rigid_from_ros([t.translation.x, t.translation.y, t.translation.z], [r.x, r.y, r.z, r.w])


def rigid_from_pose(p: msgs.Pose) -> Rigid3:
    """geometry_msgs/Pose -> ``parent_from_child``."""
    o = p.orientation
    return rigid_from_ros([p.position.x, p.position.y, p.position.z], [o.x, o.y, o.z, o.w])


def _frame(name: str) -> str:
    return name.lstrip("/")


# --- the bridge ------------------------------------------------------------------------------
class Ros2Bridge:
    """The live bridge: ``start()``, then ``stop()`` (or ``run(stop_event)``). ``counters`` while running."""

    def __init__(self, cfg: BridgeConfig, backend: Backend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.counters = Counters()
        self.base_from_camera = cfg.base_from_camera.base_from_optical()
        self.odom = OdomBuffer(max_age_s=cfg.odom_max_age_s)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._throttle = Throttled()
        self._pipeline = FramePipeline(cfg, backend, self.base_from_camera, self.odom, self.counters,
                                       self._throttle)
        self._dds: dict = {}

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Ros2Bridge":
        """Create the DDS entities and start the threads (VlocError when DDS cannot start)."""
        from cyclonedds.core import DDSException
        try:
            self._create_entities()
        except DDSException as e:
            self._dds.clear()
            raise VlocError(f"cannot start DDS on domain {self.cfg.dds.domain_id} (check dds.interface / "
                            f"dds.cyclonedds_xml): {e}") from None
        self._threads = [threading.Thread(target=self._receive_loop, name="vloc-ros2-dds", daemon=True),
                         threading.Thread(target=self._pipeline.work, args=(self._stop, self._process),
                                          name="vloc-ros2-worker", daemon=True)]
        for t in self._threads:
            t.start()
        c = self.cfg
        log.info("ROS 2 bridge on DDS domain %d: %s %s + %s -> %s%s (%s)", c.dds.domain_id,
                 "CompressedImage" if c.compressed else "Image", c.image_topic, c.camera_info_topic, c.pose_topic,
                 f" + {c.tf_topic} {c.frames.map}->{c.frames.odom}" if c.publish_tf else "", self.backend.name)
        return self

    def _create_entities(self) -> None:
        from cyclonedds.core import GuardCondition, InstanceState, ReadCondition, SampleState, ViewState, WaitSet
        from cyclonedds.domain import Domain, DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        c, d = self.cfg, self._dds
        xml = c.dds.xml()
        if xml is not None:
            d["domain"] = Domain(c.dds.domain_id, config=xml)
        dp = d["participant"] = DomainParticipant(c.dds.domain_id)
        image_type = msgs.CompressedImage if c.compressed else msgs.Image
        d["image"] = DataReader(dp, Topic(dp, msgs.dds_topic(c.image_topic), image_type), qos=msgs.QOS_SENSOR_DATA)
        d["info"] = DataReader(dp, Topic(dp, msgs.dds_topic(c.camera_info_topic), msgs.CameraInfo),
                               qos=msgs.QOS_SENSOR_DATA)
        tf_topic = Topic(dp, msgs.dds_topic(c.tf_topic), msgs.TFMessage)
        d["tf"] = DataReader(dp, tf_topic, qos=msgs.QOS_TF)
        d["pose_out"] = DataWriter(dp, Topic(dp, msgs.dds_topic(c.pose_topic), msgs.PoseWithCovarianceStamped),
                                   qos=msgs.QOS_DEFAULT)
        d["tf_out"] = DataWriter(dp, tf_topic, qos=msgs.QOS_TF) if c.publish_tf else None
        ws = d["waitset"] = WaitSet(dp)
        mask = SampleState.Any | ViewState.Any | InstanceState.Any
        d["conditions"] = [ReadCondition(d[name], mask) for name in ("image", "info", "tf")]
        for cond in d["conditions"]:
            ws.attach(cond)
        d["guard"] = GuardCondition(dp)
        ws.attach(d["guard"])

    def stop(self) -> dict[str, int]:
        """Stop the threads, delete the DDS entities, log and return the counters."""
        self._stop.set()
        self._pipeline.slot.close()
        if "guard" in self._dds:
            self._dds["guard"].set(True)
        for t in self._threads:
            t.join(30)
        for key in reversed(list(self._dds)):   # entities first, the domain (its config) last
            del self._dds[key]
        snap = self.counters.snapshot()
        log.info("counters %s", json.dumps(snap))
        return snap

    def run(self, stop_event: threading.Event) -> dict[str, int]:
        """start(), log counters every ``stats_interval_s`` until ``stop_event``, then stop()."""
        self.start()
        try:
            every = self.cfg.stats_interval_s
            while not stop_event.wait(every if every > 0 else 3600):
                if every > 0:
                    log.info("counters %s", json.dumps(self.counters.snapshot()))
        finally:
            snap = self.stop()
        return snap

    # DDS thread ------------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        from cyclonedds.util import duration
        d = self._dds
        from cyclonedds.internal import InvalidSample
        c = self.cfg
        readers = [(d["info"], c.camera_info_topic, self._on_camera_info), (d["tf"], c.tf_topic, self._on_tf),
                   (d["image"], c.image_topic, self._on_image)]
        ws = d["waitset"]
        while not self._stop.is_set():
            try:
                ws.wait(duration(milliseconds=500))
            except Exception:  # a waitset error must not end the bridge
                log.exception("DDS wait failed")
                time.sleep(0.1)
            for reader, topic, handler in readers:
                while not self._stop.is_set():
                    try:
                        samples = reader.take(N=1)
                    except Exception as e:  # undecodable CDR: the sample is consumed, go on
                        self.counters.inc("malformed")
                        self._throttle.warning(f"cdr:{topic}", "skipped an undecodable message on %s: %s", topic, e)
                        continue
                    if not samples:
                        break
                    s = samples[0]
                    if isinstance(s, InvalidSample):
                        continue  # a writer disposed / unregistered: no data
                    try:
                        handler(s)
                    except Exception:
                        self.counters.inc("errors")
                        log.exception("error handling a message")

    def _on_camera_info(self, m: msgs.CameraInfo) -> None:
        self._pipeline.camera_info(m)

    def _on_tf(self, m: msgs.TFMessage) -> None:
        f = self.cfg.frames
        for t in m.transforms:
            if _frame(t.header.frame_id) != f.odom or _frame(t.child_frame_id) != f.base_link:
                continue
            self._pipeline.odometry(stamp_to_seconds(t.header.stamp.sec, t.header.stamp.nanosec),
                                    lambda: rigid_from_transform(t.transform))

    def _on_image(self, m) -> None:
        self._pipeline.image(m, (m.header.stamp.sec, m.header.stamp.nanosec))

    # worker ----------------------------------------------------------------------------------
    def _process(self, frame: PendingFrame) -> None:
        out = self._pipeline(frame, time.time())
        if out is None:
            return
        f = self.cfg.frames
        self._dds["pose_out"].write(pose_message(frame.ros_stamp, f.map, out.map_from_base, out.covariance))
        if out.odom is not None:
            map_from_odom_ = map_from_odom(out.map_from_base, out.odom.odom_from_base)
            self._dds["tf_out"].write(msgs.TFMessage(transforms=[transform_stamped(frame.ros_stamp, f.map, f.odom,
                                                                                   map_from_odom_)]))
            self.counters.inc("tf_published")


# --- entry points ----------------------------------------------------------------------------
def run_from_config(config_path: str | Path, log_level: str = "info") -> dict[str, int]:
    """Run the bridge of a config file until SIGINT / SIGTERM; returns the counters (VlocError on
    a bad config: the CLI prints it and exits 2)."""
    return run_bridge(config_path, log_level, Ros2Bridge)


def main(argv: list[str] | None = None) -> int:
    """``python -m robots.ros2.bridge --config FILE [--log-level info]``."""
    return bridge_main("python -m robots.ros2.bridge", __doc__.splitlines()[0], run_from_config, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
