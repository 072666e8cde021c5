"""ROS bags for replay: message types, typestores and input formats (rosbags), ROS message <->
vloc conversions (stamps, poses, images), the output bag writer, and ground-truth files (TUM / pgt)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from core.geometry import Rigid3
from core.types import VlocError
from robots.transforms import rigid_from_ros, rigid_to_ros, seconds_to_stamp, stamp_to_seconds
from robots.tum import StampedPose, read_tum

OUT_FORMATS = ("rosbag1", "sqlite3", "mcap")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPES = ("tf2_msgs/msg/TFMessage", "tf/msg/tfMessage")
GT_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
            "geometry_msgs/msg/TransformStamped")
POSE_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"
TF_TYPE = "tf2_msgs/msg/TFMessage"
#: ROS 1 ``tf2_msgs/TFMessage`` (absent from rosbags' Noetic typestore); md5 94810edda583a504dfda3829e70d7eec.
TF_MSGDEF_ROS1 = "geometry_msgs/TransformStamped[] transforms"


# --------------------------------------------------------------------------------------------------
# typestores and formats
# --------------------------------------------------------------------------------------------------
def ros1_typestore():
    """rosbags' Noetic typestore with ``tf2_msgs/msg/TFMessage`` registered (a fresh instance)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    ts = get_typestore(Stores.ROS1_NOETIC)
    ts.register(get_types_from_msg(TF_MSGDEF_ROS1, TF_TYPE))
    return ts


def ros2_typestore():
    """rosbags' Humble typestore (a fresh instance)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def input_format(path: Path) -> str:
    """``rosbag1`` (a .bag file), ``mcap`` or ``sqlite3`` (a ROS 2 bag directory or its storage file)."""
    path = Path(path)
    if not path.exists():
        raise VlocError(f"bag {path} does not exist")
    if path.is_file():
        if path.suffix == ".bag":
            return "rosbag1"
        if path.suffix in (".mcap", ".db3"):
            return "mcap" if path.suffix == ".mcap" else "sqlite3"
        raise VlocError(f"{path}: not a ROS 1 .bag file nor a ROS 2 bag directory")
    meta = path / "metadata.yaml"
    if meta.is_file():
        text = meta.read_text()
        if "storage_identifier: mcap" in text:
            return "mcap"
        if "storage_identifier: sqlite3" in text:
            return "sqlite3"
    if any(path.glob("*.mcap")):
        return "mcap"
    if any(path.glob("*.db3")):
        return "sqlite3"
    raise VlocError(f"{path}: not a ROS 2 bag directory (no metadata.yaml / .db3 / .mcap)")


def reader_path(path: Path) -> Path:
    """AnyReader opens ROS 2 bags by directory: a storage file given alone means its directory."""
    return path.parent if path.is_file() and path.suffix in (".mcap", ".db3") else path


# --------------------------------------------------------------------------------------------------
# message helpers (rosbags message objects of either family)
# --------------------------------------------------------------------------------------------------
def msg_stamp(msg) -> float:
    """``header.stamp`` in seconds (builtin_interfaces/Time sec + nanosec; ROS 1 time is read alike)."""
    s = msg.header.stamp
    return stamp_to_seconds(s.sec, s.nanosec)


def rigid_from_pose_msg(pose) -> Rigid3:
    """geometry_msgs/Pose -> Rigid3 ``parent_from_child``."""
    p, q = pose.position, pose.orientation
    return rigid_from_ros([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def rigid_from_transform_msg(tr) -> Rigid3:
    """geometry_msgs/Transform -> Rigid3 ``parent_from_child``."""
    t, q = tr.translation, tr.rotation
    return rigid_from_ros([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def gt_pose_from_msg(msg, msgtype: str) -> Rigid3:
    """The pose in a ground-truth message (PoseStamped / PoseWithCovarianceStamped / TransformStamped)."""
    if msgtype.endswith("TransformStamped"):
        return rigid_from_transform_msg(msg.transform)
    if msgtype.endswith("PoseWithCovarianceStamped"):
        return rigid_from_pose_msg(msg.pose.pose)
    return rigid_from_pose_msg(msg.pose)


def decode_image_msg(msg, msgtype: str) -> np.ndarray:
    """A sensor_msgs Image / CompressedImage message -> (H, W, 3) uint8 RGB (ImageError when unusable)."""
    from robots.images import decode_compressed, decode_image
    if msgtype.endswith("CompressedImage"):
        return decode_compressed(msg.format, msg.data)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


class MessageFactory:
    """Builds and serializes the output messages for one family (ROS 1 or ROS 2 typestore)."""

    def __init__(self, ros1: bool) -> None:
        self.ros1 = ros1
        self.ts = ros1_typestore() if ros1 else ros2_typestore()
        self.T = self.ts.types
        self._seq = Counter()

    def serialize(self, msg, msgtype: str) -> bytes:
        return bytes(self.ts.serialize_ros1(msg, msgtype) if self.ros1 else self.ts.serialize_cdr(msg, msgtype))

    def header(self, stamp: float, frame_id: str, stream: str):
        sec, nsec = seconds_to_stamp(stamp)
        t = self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec)
        if self.ros1:
            self._seq[stream] += 1
            return self.T["std_msgs/msg/Header"](seq=self._seq[stream] - 1, stamp=t, frame_id=frame_id)
        return self.T["std_msgs/msg/Header"](stamp=t, frame_id=frame_id)

    def _pose(self, T: Rigid3):
        p, q = rigid_to_ros(T)
        return self.T["geometry_msgs/msg/Pose"](
            position=self.T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2])),
            orientation=self.T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                               w=float(q[3])))

    def pose_with_covariance(self, stamp: float, frame_id: str, parent_from_child: Rigid3,
                             covariance_ros: np.ndarray):
        cov = np.asarray(covariance_ros, dtype=np.float64).reshape(36)
        pwc = self.T["geometry_msgs/msg/PoseWithCovariance"](pose=self._pose(parent_from_child), covariance=cov)
        return self.T[POSE_TYPE](header=self.header(stamp, frame_id, "pose"), pose=pwc)

    def transform_stamped(self, stamp: float, parent: str, child: str, parent_from_child: Rigid3):
        p, q = rigid_to_ros(parent_from_child)
        tr = self.T["geometry_msgs/msg/Transform"](
            translation=self.T["geometry_msgs/msg/Vector3"](x=float(p[0]), y=float(p[1]), z=float(p[2])),
            rotation=self.T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                            w=float(q[3])))
        return self.T["geometry_msgs/msg/TransformStamped"](header=self.header(stamp, parent, "tf"),
                                                            child_frame_id=child, transform=tr)

    def tf_message(self, transforms: list):
        return self.T[TF_TYPE](transforms=transforms)


# --------------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------------
class BagWriter:
    """One output bag (rosbags writers); connections by topic, the input's copied unchanged."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = Path(path), fmt
        if self.path.exists():
            raise VlocError(f"output bag {self.path} already exists; remove it or choose another --out")
        if fmt == "rosbag1":
            from rosbags.rosbag1 import Writer
            if self.path.suffix != ".bag":
                raise VlocError(f"a ROS 1 output bag must end in .bag: {self.path}")
            self.writer = Writer(self.path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer
            plugin = StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3
            self.writer = Writer(self.path, version=9, storage_plugin=plugin)
        self.factory = MessageFactory(fmt == "rosbag1")
        self.conns: dict[tuple[str, str], object] = {}
        self.counts: Counter = Counter()

    def __enter__(self) -> "BagWriter":
        self.writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def copy_connection(self, conn) -> None:
        """Add an output connection equal to an input one (same family), keyed by topic + type."""
        key = (conn.topic, conn.msgtype)
        if key in self.conns:
            return
        if self.fmt == "rosbag1":
            ext = conn.ext
            self.conns[key] = self.writer.add_connection(
                conn.topic, conn.msgtype, msgdef=conn.msgdef.data, md5sum=conn.digest,
                callerid=getattr(ext, "callerid", None), latching=getattr(ext, "latching", None))
        else:
            ext = conn.ext
            kw = {"serialization_format": getattr(ext, "serialization_format", "cdr"),
                  "offered_qos_profiles": getattr(ext, "offered_qos_profiles", ()) or ()}
            if conn.msgdef is not None and conn.msgdef.data:
                kw["msgdef"], kw["rihs01"] = conn.msgdef.data, conn.digest
            else:
                kw["typestore"] = self.factory.ts
            self.conns[key] = self.writer.add_connection(conn.topic, conn.msgtype, **kw)

    def write_raw(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        self.writer.write(self.conns[(topic, msgtype)], timestamp_ns, data)
        self.counts[topic] += 1

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg) -> None:
        key = (topic, msgtype)
        if key not in self.conns:
            self.conns[key] = self.writer.add_connection(topic, msgtype, typestore=self.factory.ts)
        self.write_raw(topic, msgtype, timestamp_ns, self.factory.serialize(msg, msgtype))


# --------------------------------------------------------------------------------------------------
# ground truth and accuracy
# --------------------------------------------------------------------------------------------------
def load_gt_file(path: Path, fmt: str | None) -> tuple[str, list[StampedPose] | list[Rigid3]]:
    """("tum", rows of world_from_cam) or ("pgt", cam_from_world in file order)."""
    path = Path(path)
    if not path.is_file():
        raise VlocError(f"ground-truth file {path} does not exist")
    if fmt is None:
        first = next((ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")), [])
        fmt = "pgt" if len(first) == 9 else "tum"
    if fmt == "pgt":
        from datasets.sevenscenes import load_pgt
        return "pgt", [r.cam_from_world for r in load_pgt(path)]
    return "tum", read_tum(path)
