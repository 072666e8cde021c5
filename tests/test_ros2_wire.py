"""Wire compatibility of the ROS 2 types: cyclonedds CDR bytes <-> rosbags' ROS 2 (Humble) CDR,
for every message the bridge subscribes to or publishes, and for the bridge's own message builders."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

from core.geometry import Rigid3
from robots.ros2 import msgs
from robots.ros2.bridge import pose_message, rigid_from_pose, rigid_from_transform, transform_stamped

TS = get_typestore(Stores.ROS2_HUMBLE)


def plain(x):
    """A cyclonedds or rosbags message -> nested dicts / lists / scalars (uint8 sequences as lists)."""
    if dataclasses.is_dataclass(x):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "__msgtype__"}
    if isinstance(x, (bytes, bytearray)):
        return list(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    return x


def header(sec=1712345678, nanosec=123456789, frame_id="cam"):
    return msgs.Header(stamp=msgs.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def samples() -> dict[str, object]:
    """One non-trivial sample per type (odd lengths everywhere, to exercise CDR alignment)."""
    q = msgs.Quaternion(x=0.1, y=-0.2, z=0.3, w=0.9273618495495704)
    ts = msgs.TransformStamped(header=header(frame_id="odom"), child_frame_id="base_link",
                               transform=msgs.Transform(translation=msgs.Vector3(1.5, -2.25, 0.125), rotation=q))
    ts2 = msgs.TransformStamped(header=header(5, 7, "map"), child_frame_id="o",
                                transform=msgs.Transform(translation=msgs.Vector3(-1e-9, 3e8, 0.0)))
    return {
        "builtin_interfaces/msg/Time": msgs.Time(sec=-3, nanosec=999_999_999),
        "std_msgs/msg/Header": header(frame_id="a/b"),
        "sensor_msgs/msg/Image": msgs.Image(header=header(), height=3, width=5, encoding="rgb8", is_bigendian=1,
                                            step=17, data=bytes(range(51))),
        "sensor_msgs/msg/CompressedImage": msgs.CompressedImage(header=header(frame_id="c"), format="jpeg",
                                                                data=b"\xff\xd8\x01\x02\x03"),
        "sensor_msgs/msg/RegionOfInterest": msgs.RegionOfInterest(1, 2, 3, 4, True),
        "sensor_msgs/msg/CameraInfo": msgs.CameraInfo(
            header=header(frame_id="camera_optical"), height=480, width=640, distortion_model="plumb_bob",
            d=[-0.2, 0.05, 0.001, -0.0007, 0.0], k=[525.0, 0, 319.5, 0, 526.0, 239.5, 0, 0, 1],
            r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[525.0, 0, 319.5, 0.1, 0, 526.0, 239.5, 0, 0, 0, 1, 0],
            binning_x=2, binning_y=3, roi=msgs.RegionOfInterest(10, 20, 30, 40, True)),
        "geometry_msgs/msg/Point": msgs.Point(1.0, 2.0, 3.0),
        "geometry_msgs/msg/Vector3": msgs.Vector3(-1.0, 0.5, 1e-12),
        "geometry_msgs/msg/Quaternion": q,
        "geometry_msgs/msg/Pose": msgs.Pose(position=msgs.Point(4.0, 5.0, 6.0), orientation=q),
        "geometry_msgs/msg/PoseWithCovariance": msgs.PoseWithCovariance(
            pose=msgs.Pose(position=msgs.Point(1, 2, 3), orientation=q), covariance=[i * 0.5 for i in range(36)]),
        "geometry_msgs/msg/PoseWithCovarianceStamped": msgs.PoseWithCovarianceStamped(
            header=header(frame_id="map"), pose=msgs.PoseWithCovariance(
                pose=msgs.Pose(position=msgs.Point(1, 2, 3), orientation=q), covariance=[-i for i in range(36)])),
        "geometry_msgs/msg/Transform": ts.transform,
        "geometry_msgs/msg/TransformStamped": ts,
        "tf2_msgs/msg/TFMessage": msgs.TFMessage(transforms=[ts, ts2]),
    }


def test_every_wire_type_has_a_sample_and_the_ros2_type_name():
    assert set(samples()) == set(msgs.ROS_TYPES)
    for name, cls in msgs.ROS_TYPES.items():
        pkg, kind, short = name.split("/")
        assert cls.__idl_typename__.replace("::", "/") == f"{pkg}/{kind}/dds_/{short}_"


@pytest.mark.parametrize("name", sorted(msgs.ROS_TYPES))
def test_cyclonedds_bytes_read_by_rosbags_and_back(name):
    msg = samples()[name]
    data = msg.serialize()
    assert data[:4] == b"\x00\x01\x00\x00"             # CDR little-endian, as rmw_cyclonedds writes
    ros = TS.deserialize_cdr(data, name)
    assert plain(ros) == plain(msg)
    back = TS.serialize_cdr(ros, name)
    assert bytes(back) == data                          # byte-identical both ways
    assert plain(msgs.ROS_TYPES[name].deserialize(bytes(back))) == plain(msg)


@pytest.mark.parametrize("name", sorted(msgs.ROS_TYPES))
def test_rosbags_messages_read_by_cyclonedds(name):
    """Built on the rosbags side (its own classes and defaults), read with ours."""
    ros = TS.deserialize_cdr(samples()[name].serialize(), name)
    data = bytes(TS.serialize_cdr(ros, name))
    got = msgs.ROS_TYPES[name].deserialize(data)
    assert plain(got) == plain(ros)


def test_defaults_match_ros():
    """A default-constructed message equals ROS's defaults (identity quaternion, empty data)."""
    for name, cls in msgs.ROS_TYPES.items():
        ros = TS.deserialize_cdr(cls().serialize(), name)
        assert plain(ros) == plain(cls())
    assert msgs.Quaternion().w == 1.0


def test_published_pose_and_tf_bytes_carry_the_intended_pose():
    rng = np.random.default_rng(0)
    T = Rigid3(Rotation.random(random_state=1).as_matrix(), rng.normal(size=3))
    cov = rng.normal(size=(6, 6))
    m = pose_message(1712345678.25, "map", T, cov)
    ros = TS.deserialize_cdr(m.serialize(), "geometry_msgs/msg/PoseWithCovarianceStamped")
    assert ros.header.frame_id == "map" and (ros.header.stamp.sec, ros.header.stamp.nanosec) == (1712345678, 250_000_000)
    o = ros.pose.pose.orientation
    R = Rotation.from_quat([o.x, o.y, o.z, o.w]).as_matrix()          # ROS order x, y, z, w
    np.testing.assert_allclose(R, T.rotation, atol=1e-12)
    p = ros.pose.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], T.translation)
    np.testing.assert_array_equal(ros.pose.covariance.reshape(6, 6), cov)   # row-major
    np.testing.assert_allclose(rigid_from_pose(m.pose.pose).matrix4(), T.matrix4(), atol=1e-12)
    exact = TS.deserialize_cdr(pose_message((1712345678, 123456789), "map", T, cov).serialize(),
                               "geometry_msgs/msg/PoseWithCovarianceStamped")
    assert (exact.header.stamp.sec, exact.header.stamp.nanosec) == (1712345678, 123456789)  # echoed exactly

    ts = transform_stamped(12.5, "map", "odom", T)
    tf = TS.deserialize_cdr(msgs.TFMessage(transforms=[ts]).serialize(), "tf2_msgs/msg/TFMessage")
    (t,) = tf.transforms
    assert (t.header.frame_id, t.child_frame_id, t.header.stamp.sec, t.header.stamp.nanosec) == ("map", "odom", 12,
                                                                                                   500_000_000)
    r = t.transform.rotation
    np.testing.assert_allclose(Rotation.from_quat([r.x, r.y, r.z, r.w]).as_matrix(), T.rotation, atol=1e-12)
    np.testing.assert_allclose(rigid_from_transform(ts.transform).matrix4(), T.matrix4(), atol=1e-12)


def test_ros2_topic_names():
    assert msgs.dds_topic("/camera/image_raw") == "rt/camera/image_raw"
    assert msgs.dds_topic("tf") == "rt/tf"
    with pytest.raises(ValueError):
        msgs.dds_topic("/")
