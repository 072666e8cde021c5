"""ROS 2 wire types for cyclonedds-python, and ROS 2 QoS profiles.

Each class mirrors one ROS 2 message exactly as rmw_cyclonedds puts it on the wire: DDS type
name ``pkg::msg::dds_::Name_``, the message's fields in order with their IDL types, plain
(XCDR1, little-endian) CDR. ``uint8[]`` fields are ``sequence[uint8]`` (write ``bytes``; read
back as a list of ints: convert with ``np.asarray(data, np.uint8)``; cyclonedds cannot publish
the type information of a ``bytes`` field), fixed arrays ``array[float64, N]``. ROS 2 topics live on DDS topics named
``rt/<topic>`` (:func:`dds_topic`).
"""
# No ``from __future__ import annotations``: cyclonedds resolves field types at class creation.
from dataclasses import dataclass, field

from cyclonedds.core import Policy, Qos
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import array, float64, int32, sequence, uint8, uint32
from cyclonedds.util import duration


def dds_topic(ros_topic: str) -> str:
    """ROS 2 topic name (``/camera/image_raw`` or ``camera/image_raw``) -> DDS topic ``rt/camera/image_raw``."""
    name = "/" + str(ros_topic).strip().lstrip("/")
    if name == "/":
        raise ValueError("empty ROS topic name")
    return "rt" + name


# --- builtin_interfaces / std_msgs -----------------------------------------------------------
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


# --- sensor_msgs -----------------------------------------------------------------------------
@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ""
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = field(default_factory=list)


@dataclass
class CompressedImage(IdlStruct, typename="sensor_msgs::msg::dds_::CompressedImage_"):
    header: Header = field(default_factory=Header)
    format: str = ""
    data: sequence[uint8] = field(default_factory=list)


@dataclass
class RegionOfInterest(IdlStruct, typename="sensor_msgs::msg::dds_::RegionOfInterest_"):
    x_offset: uint32 = 0
    y_offset: uint32 = 0
    height: uint32 = 0
    width: uint32 = 0
    do_rectify: bool = False


@dataclass
class CameraInfo(IdlStruct, typename="sensor_msgs::msg::dds_::CameraInfo_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    distortion_model: str = ""
    d: sequence[float64] = field(default_factory=list)
    k: array[float64, 9] = field(default_factory=lambda: [0.0] * 9)
    r: array[float64, 9] = field(default_factory=lambda: [0.0] * 9)
    p: array[float64, 12] = field(default_factory=lambda: [0.0] * 12)
    binning_x: uint32 = 0
    binning_y: uint32 = 0
    roi: RegionOfInterest = field(default_factory=RegionOfInterest)


# --- geometry_msgs ---------------------------------------------------------------------------
@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@dataclass
class Pose(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseWithCovariance(IdlStruct, typename="geometry_msgs::msg::dds_::PoseWithCovariance_"):
    pose: Pose = field(default_factory=Pose)
    covariance: array[float64, 36] = field(default_factory=lambda: [0.0] * 36)


@dataclass
class PoseWithCovarianceStamped(IdlStruct, typename="geometry_msgs::msg::dds_::PoseWithCovarianceStamped_"):
    header: Header = field(default_factory=Header)
    pose: PoseWithCovariance = field(default_factory=PoseWithCovariance)


@dataclass
class Transform(IdlStruct, typename="geometry_msgs::msg::dds_::Transform_"):
    translation: Vector3 = field(default_factory=Vector3)
    rotation: Quaternion = field(default_factory=Quaternion)


@dataclass
class TransformStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TransformStamped_"):
    header: Header = field(default_factory=Header)
    child_frame_id: str = ""
    transform: Transform = field(default_factory=Transform)


# --- tf2_msgs --------------------------------------------------------------------------------
@dataclass
class TFMessage(IdlStruct, typename="tf2_msgs::msg::dds_::TFMessage_"):
    transforms: sequence[TransformStamped] = field(default_factory=list)


#: ROS 2 message type name -> wire class (for tests and tools).
ROS_TYPES: dict[str, type[IdlStruct]] = {
    "builtin_interfaces/msg/Time": Time, "std_msgs/msg/Header": Header,
    "sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
    "sensor_msgs/msg/RegionOfInterest": RegionOfInterest, "sensor_msgs/msg/CameraInfo": CameraInfo,
    "geometry_msgs/msg/Point": Point, "geometry_msgs/msg/Vector3": Vector3,
    "geometry_msgs/msg/Quaternion": Quaternion, "geometry_msgs/msg/Pose": Pose,
    "geometry_msgs/msg/PoseWithCovariance": PoseWithCovariance,
    "geometry_msgs/msg/PoseWithCovarianceStamped": PoseWithCovarianceStamped,
    "geometry_msgs/msg/Transform": Transform, "geometry_msgs/msg/TransformStamped": TransformStamped,
    "tf2_msgs/msg/TFMessage": TFMessage,
}


# --- QoS (rclcpp's profiles) -----------------------------------------------------------------
def _reliable() -> Policy.Reliability.Reliable:
    return Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))


#: rclcpp ``SensorDataQoS``: best effort, keep last 5, volatile (camera images, camera info).
QOS_SENSOR_DATA = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)
#: rclcpp default: reliable, keep last 10, volatile (poses).
QOS_DEFAULT = Qos(_reliable(), Policy.History.KeepLast(10), Policy.Durability.Volatile)
#: tf2 ``/tf`` (``DynamicBroadcasterQoS`` / listener): reliable, keep last 100, volatile.
QOS_TF = Qos(_reliable(), Policy.History.KeepLast(100), Policy.Durability.Volatile)
#: tf2 ``/tf_static``: reliable, keep last 1, transient local (late joiners get the latched transforms).
QOS_TF_STATIC = Qos(_reliable(), Policy.History.KeepLast(1), Policy.Durability.TransientLocal)
