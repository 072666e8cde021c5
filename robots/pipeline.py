"""The transport-independent part of a robot bridge (ROS 2 over DDS, ROS 1): event counters,
newest-frame-wins hand-off between the transport thread and the localization worker, rate
gate, cheap message checks and image decoding of Image / CompressedImage messages (ROS 1 and
ROS 2 field names are the same for these)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from core.camera import Camera
from robots.images import ImageError, check_compressed_fields, check_image_fields, decode_compressed, decode_image

log = logging.getLogger("vloc.robots")

COUNTERS = ("received", "localized", "rejected", "dropped_stale", "dropped_rate", "malformed", "no_camera_info",
            "errors", "tf_published", "missing_odom")

#: covariance published when the backend gave none: uninformative (1e6 on the diagonal).
UNKNOWN_COVARIANCE = np.eye(6) * 1e6


class Counters:
    """Thread-safe event counters (:data:`COUNTERS`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c = dict.fromkeys(COUNTERS, 0)

    def inc(self, name: str, n: int = 1) -> int:
        with self._lock:
            self._c[name] += n
            return self._c[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


class LatestSlot:
    """A one-element hand-off: ``put`` replaces the pending item (returned, so it can be counted as
    dropped), ``take`` waits for one. Newest-frame-wins between the DDS thread and the worker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item):
        with self._cond:
            prev, self._item = self._item, item
            self._cond.notify()
            return prev

    def take(self, timeout: float):
        """The pending item (cleared), or None after ``timeout`` seconds or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RateGate:
    """Lets at most ``max_rate_hz`` events per second through (0: all), on a monotonic clock."""

    def __init__(self, max_rate_hz: float) -> None:
        self.period = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.period:
            return False
        self._last = now
        return True


@dataclass(frozen=True)
class PendingFrame:
    """A frame handed to the worker: the message (Image or CompressedImage), its stamp (seconds;
    ``ros_stamp`` the exact (sec, nanosec) echoed in the outputs) and its camera."""

    msg: object
    stamp: float
    ros_stamp: tuple[int, int]
    camera: Camera


def check_frame(msg, compressed: bool, camera: Camera | None) -> None:
    """Cheap checks of an image message before it is queued (ImageError)."""
    if compressed:
        check_compressed_fields(msg.format, len(msg.data))
        return
    check_image_fields(msg.encoding, int(msg.height), int(msg.width), int(msg.step), len(msg.data))
    if camera is not None and (msg.width, msg.height) != (camera.width, camera.height):
        raise ImageError(f"image is {msg.width}x{msg.height} but CameraInfo says {camera.width}x{camera.height}")


def decode_frame(msg, compressed: bool) -> np.ndarray:
    """Image / CompressedImage message -> (H, W, 3) uint8 RGB (ImageError)."""
    if compressed:
        return decode_compressed(msg.format, msg.data)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


class Throttled:
    """Logs a warning the first time and then at most every ``every_s`` seconds per key."""

    def __init__(self, every_s: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.every_s = every_s
        self.logger = logger or log
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.every_s:
            self._last[key] = now
            self.logger.warning(msg, *args)


@dataclass(frozen=True)
class Localized:
    """An accepted frame: ``map_from_base`` (base_link in map) and its ROS-order 6x6 covariance."""

    map_from_base: object
    covariance: np.ndarray
    odom: object | None   # the robot's OdomLookup at the image stamp, or None


class FramePipeline:
    """The transport-independent handling of one frame, shared by the ROS 1 and ROS 2 bridges:
    stale check (``cfg.max_age_s`` against the transport's clock), decoding, localization with
    the robot's motion prior (:class:`localize.tracking.Tracker`), the pose of base_link in map
    with its covariance in ROS order, and the odometry at the image stamp. Counts and logs
    every outcome. Called from the bridge's single worker thread."""

    def __init__(self, cfg, backend, base_from_camera, odom_buffer, counters: Counters,
                 throttle: Throttled) -> None:
        from localize.tracking import Tracker
        self.cfg, self.backend, self.base_from_camera, self.odom = cfg, backend, base_from_camera, odom_buffer
        self.counters, self.throttle = counters, throttle
        self.tracker = (Tracker(cfg.prior_sigma_m, cfg.prior_lost_after, cfg.prior_max_gap_s)
                        if cfg.prior_sigma_m > 0 else None)
        self.gate = RateGate(cfg.max_rate_hz)
        self.slot = LatestSlot()
        self._warned_no_info = False
        #: the camera of the latest usable CameraInfo (None until one arrives).
        self.camera: Camera | None = None
        self._camera_key: tuple | None = None

    # transport thread ---------------------------------------------------------------------------
    def camera_info(self, msg) -> None:
        """Take the camera from a CameraInfo message (ROS 1 or ROS 2 field names) when it changed;
        an unusable one is counted as malformed and logged."""
        from robots.images import camera_from_info_msg
        k, d = (msg.k, msg.d) if hasattr(msg, "k") else (msg.K, msg.D)
        key = (msg.width, msg.height, msg.distortion_model, tuple(d), tuple(k), msg.binning_x, msg.binning_y,
               msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height)
        if key == self._camera_key:
            return
        try:
            cam = camera_from_info_msg(msg)
        except ImageError as e:
            self.counters.inc("malformed")
            self.throttle.warning(f"info:{e}", "unusable CameraInfo on %s: %s", self.cfg.camera_info_topic, e)
            return
        first = self.camera is None
        self.camera, self._camera_key = cam, key
        log.info("%s camera from CameraInfo: %s", "using" if first else "camera changed, now", cam)

    def image(self, msg, ros_stamp: tuple[int, int]) -> None:
        """An Image / CompressedImage message from the transport, stamped (sec, nanosec): counted,
        checked cheaply (a malformed one is logged and skipped) and admitted."""
        from robots.transforms import stamp_to_seconds
        c = self.counters
        c.inc("received")
        try:
            check_frame(msg, self.cfg.compressed, self.camera)
        except ImageError as e:
            n = c.inc("malformed")
            log.warning("skipped image #%d on %s (stamp %d.%09d): %s", n, self.cfg.image_topic, *ros_stamp, e)
            return
        self.admit(msg, stamp_to_seconds(*ros_stamp), ros_stamp, self.camera)

    def odometry(self, stamp_s: float, odom_from_base) -> None:
        """An odom -> base_link sample; ``odom_from_base()`` builds it (ValueError: malformed, skipped)."""
        try:
            self.odom.add(stamp_s, odom_from_base())
        except ValueError as e:
            f = self.cfg.frames
            self.counters.inc("malformed")
            self.throttle.warning("tf", "skipped a malformed %s->%s transform: %s", f.odom, f.base_link, e)

    def admit(self, msg, stamp: float, ros_stamp: tuple[int, int], camera: Camera | None) -> None:
        """Hand a checked frame to the worker (newest wins), unless no CameraInfo has arrived yet
        (one clear warning) or the rate limit refuses it. Never blocks."""
        c = self.counters
        if camera is None:
            c.inc("no_camera_info")
            if not self._warned_no_info:
                self._warned_no_info = True
                log.warning("frames arrive on %s but no CameraInfo has arrived on %s: frames are dropped until "
                            "it does (check the camera_info topic name and its QoS)", self.cfg.image_topic,
                            self.cfg.camera_info_topic)
            return
        if not self.gate.allow(time.monotonic()):
            c.inc("dropped_rate")
            return
        if self.slot.put(PendingFrame(msg, stamp, ros_stamp, camera)) is not None:
            c.inc("dropped_stale")  # superseded while the worker was busy

    # worker thread ------------------------------------------------------------------------------
    def work(self, stop: threading.Event, process) -> None:
        """The worker loop: ``process(frame)`` for each newest frame until ``stop``; a failure is
        counted and logged, never fatal."""
        while not stop.is_set():
            frame = self.slot.take(0.5)
            if frame is None:
                continue
            try:
                process(frame)
            except Exception:
                self.counters.inc("errors")
                log.exception("error processing the frame of stamp %.6f", frame.stamp)

    def __call__(self, frame: PendingFrame, now_s: float) -> Localized | None:
        """The frame's outputs, or None when nothing is to be published."""
        from core.types import VlocError
        from robots.transforms import map_from_base_from_camera, ros_pose_covariance

        cfg, counters, throttle = self.cfg, self.counters, self.throttle
        if cfg.max_age_s > 0:
            age = now_s - frame.stamp
            if age > cfg.max_age_s:
                counters.inc("dropped_stale")
                throttle.warning("stale", "dropping a frame %.2f s old (max_age_s %.2f; clocks in sync? 0 disables "
                                          "the check)", age, cfg.max_age_s)
                return None
        try:
            rgb = decode_frame(frame.msg, cfg.compressed)
            if rgb.shape[:2] != (frame.camera.height, frame.camera.width):
                raise ImageError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but CameraInfo says "
                                 f"{frame.camera.width}x{frame.camera.height}")
        except ImageError as e:
            n = counters.inc("malformed")
            log.warning("skipped image #%d (stamp %.6f): %s", n, frame.stamp, e)
            return None
        prior = self.tracker.prior(frame.stamp) if self.tracker is not None else None
        try:
            res = self.backend.localize(rgb, frame.camera, prior=prior, timestamp=frame.stamp)
        except VlocError as e:
            counters.inc("errors")
            throttle.warning(f"backend:{e}", "localization failed: %s", e)
            return None
        if self.tracker is not None:
            self.tracker.update(frame.stamp, res.accepted,
                                res.world_from_cam.translation if res.accepted and res.cam_from_world else None)
        if not res.accepted or res.cam_from_world is None:
            counters.inc("rejected")
            log.info("frame %.6f not localized: %s", frame.stamp, res.reason)
            return None
        map_from_base = map_from_base_from_camera(res.world_from_cam, self.base_from_camera)
        cov = (UNKNOWN_COVARIANCE if res.covariance is None or not np.all(np.isfinite(res.covariance))
               else ros_pose_covariance(res.cam_from_world, res.covariance, self.base_from_camera))
        counters.inc("localized")
        odom = self.odom.lookup(frame.stamp) if cfg.publish_tf else None
        if cfg.publish_tf and odom is None:
            counters.inc("missing_odom")
            f = cfg.frames
            throttle.warning("odom", "no %s->%s on %s near stamp %.3f (latest %s): publishing the pose only, "
                                     "no %s->%s", f.odom, f.base_link, cfg.tf_topic, frame.stamp,
                             self.odom.latest_stamp, f.map, f.odom)
        return Localized(map_from_base, cov, odom)
