"""Configuration of the robot bridges (pydantic; YAML or JSON files).

The parts (:class:`BackendConfig`, :class:`FramesConfig`, :class:`ExtrinsicConfig`,
:class:`DdsConfig`) are shared by every bridge; :class:`BridgeConfig` is the ROS 2 live bridge's
file (``vloc robots ros2 --config FILE``)::

    backend: {bundle: /maps/kitchen}            # or {service_url: http://..., map_id: kitchen, api_key_env: VLOC_KEY}
    image_topic: /camera/image_raw
    compressed: false                           # true: sensor_msgs/CompressedImage on image_topic
    camera_info_topic: /camera/camera_info
    frames: {map: map, odom: odom, base_link: base_link, camera: camera_optical}
    base_from_camera: {translation: [0.2, 0, 1.1], rpy: [-1.5708, 0, -1.5708], optical: true}
    max_rate_hz: 2
    dds: {domain_id: 0, interface: lo, peers: [127.0.0.1], allow_multicast: false}
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.geometry import Rigid3
from core.types import VlocError
from robots.transforms import base_from_optical, rigid_from_ros, rigid_from_rpy

Vec3 = Annotated[list[float], Field(min_length=3, max_length=3)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Strict):
    """Where frames are localized: a map bundle in this process, or the vloc service."""

    #: map bundle directory, localized in this process (``localize.Localizer``).
    bundle: Path | None = None
    #: base URL of the vloc service (``http://host:port``), instead of ``bundle``.
    service_url: str | None = None
    #: map id on the service (with ``service_url``).
    map_id: str | None = None
    #: robot API key (with ``service_url``); prefer ``api_key_env``.
    api_key: str | None = None
    #: name of an environment variable holding the API key.
    api_key_env: str | None = None
    #: seconds per service request.
    timeout_s: float = Field(30.0, gt=0)
    #: robot id sent to the service (its logs and metrics).
    robot_id: str | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> "BackendConfig":
        if (self.bundle is None) == (self.service_url is None):
            raise ValueError("give exactly one of backend.bundle or backend.service_url")
        if self.service_url is not None and not self.map_id:
            raise ValueError("backend.service_url needs backend.map_id")
        return self

    def resolved_api_key(self) -> str | None:
        """``api_key``, else the value of ``api_key_env`` (VlocError when that variable is unset)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise VlocError(f"environment variable {self.api_key_env} (backend.api_key_env) is not set")
            return key
        return None


class FramesConfig(_Strict):
    """REP-105 frame ids used in published messages and expected on ``/tf``."""

    #: the vloc map frame (PoseWithCovarianceStamped.header.frame_id, TF parent).
    map: str = "map"
    #: the odometry frame (parent of base_link on /tf; child of map in the published TF).
    odom: str = "odom"
    #: the robot body frame.
    base_link: str = "base_link"
    #: the camera frame of the extrinsic (informational; images' frame_id is not required to match).
    camera: str = "camera_optical_frame"


class ExtrinsicConfig(_Strict):
    """``base_from_camera``: the camera frame's pose in base_link (the TF ``base_link -> camera``)."""

    #: position of the camera in base_link, metres.
    translation: Vec3 = [0.0, 0.0, 0.0]
    #: orientation as a quaternion (x, y, z, w), ROS order; or give ``rpy``.
    quaternion_xyzw: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None
    #: orientation as roll, pitch, yaw in radians (fixed axes X, Y, Z as in URDF); or ``quaternion_xyzw``.
    rpy: Vec3 | None = None
    #: True: the child frame is the camera's optical frame (z forward, x right, y down);
    #: False: a body-style camera_link (x forward, y left, z up), rotated into the optical frame.
    optical: bool = True

    @model_validator(mode="after")
    def _one_rotation(self) -> "ExtrinsicConfig":
        if self.quaternion_xyzw is not None and self.rpy is not None:
            raise ValueError("give base_from_camera.quaternion_xyzw or base_from_camera.rpy, not both")
        return self

    def base_from_optical(self) -> Rigid3:
        """The extrinsic ``base_from_camera_optical`` (identity rotation when none is given)."""
        if self.quaternion_xyzw is not None:
            T = rigid_from_ros(self.translation, self.quaternion_xyzw)
        else:
            T = rigid_from_rpy(self.translation, self.rpy or [0.0, 0.0, 0.0])
        return base_from_optical(T, self.optical)


class DdsConfig(_Strict):
    """DDS participant settings (Cyclone DDS)."""

    #: DDS domain id (ROS_DOMAIN_ID), 0..232.
    domain_id: int = Field(0, ge=0, le=232)
    #: a complete CycloneDDS XML configuration (or a ``file://`` URI); overrides the fields below.
    cyclonedds_xml: str | None = None
    #: network interface name (``lo``, ``eth0``); None: Cyclone's default choice.
    interface: str | None = None
    #: unicast discovery peers (addresses).
    peers: list[str] = []
    #: False on networks (and loopback) without multicast.
    allow_multicast: bool = True

    def xml(self) -> str | None:
        """The CycloneDDS configuration for the participant's domain, or None for the defaults."""
        if self.cyclonedds_xml:
            return self.cyclonedds_xml
        general, discovery = [], []
        if self.interface:
            general.append(f'<Interfaces><NetworkInterface name="{self.interface}"/></Interfaces>')
        if not self.allow_multicast:
            general.append("<AllowMulticast>false</AllowMulticast>")
        if self.peers:
            discovery.append("<Peers>" + "".join(f'<Peer address="{p}"/>' for p in self.peers) + "</Peers>")
            discovery.append("<ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>60"
                             "</MaxAutoParticipantIndex>")
        if not general and not discovery:
            return None
        return ("<CycloneDDS><Domain id=\"any\"><General>" + "".join(general) + "</General><Discovery>"
                + "".join(discovery) + "</Discovery></Domain></CycloneDDS>")


class BridgeConfig(_Strict):
    """The ROS 2 live bridge: topics, frames, extrinsic, pacing, DDS."""

    #: where frames are localized.
    backend: BackendConfig
    #: image topic (sensor_msgs/Image, or CompressedImage when ``compressed``).
    image_topic: str = "/camera/image_raw"
    #: True: ``image_topic`` carries sensor_msgs/CompressedImage (jpeg / png).
    compressed: bool = False
    #: sensor_msgs/CameraInfo topic of the camera.
    camera_info_topic: str = "/camera/camera_info"
    #: output geometry_msgs/PoseWithCovarianceStamped topic (pose of base_link in map).
    pose_topic: str = "/vloc/pose"
    #: TF topic: odom -> base_link is read from it, map -> odom written to it.
    tf_topic: str = "/tf"
    #: frame ids.
    frames: FramesConfig = FramesConfig()
    #: extrinsic base_link -> camera.
    base_from_camera: ExtrinsicConfig = ExtrinsicConfig()
    #: at most this many frames per second are localized (others: dropped_rate); 0: no limit.
    max_rate_hz: float = Field(2.0, ge=0)
    #: frames whose stamp is older than this (seconds, against the wall clock) when the worker
    #: takes them are dropped (dropped_stale); 0: never (bag / simulated time).
    max_age_s: float = Field(1.0, ge=0)
    #: publish map -> odom on ``tf_topic``.
    publish_tf: bool = True
    #: odom -> base_link samples may be held this long (seconds) beyond the buffered span.
    odom_max_age_s: float = Field(0.25, ge=0)
    #: the last accepted pose + constant velocity is the next frame's prior (tracking: narrower
    #: retrieval and the localizer's cheaper first attempt); 0 turns it off.
    prior_sigma_m: float = Field(0.3, ge=0)
    #: consecutive rejections after which the bridge searches the whole map again.
    prior_lost_after: int = Field(3, ge=1)
    #: no prior when the last accepted pose is older than this, seconds.
    prior_max_gap_s: float = Field(5.0, gt=0)
    #: seconds between counter logs; 0: only at exit.
    stats_interval_s: float = Field(30.0, ge=0)
    #: DDS participant.
    dds: DdsConfig = DdsConfig()


def load_bridge_config(path: str | Path) -> BridgeConfig:
    """Read a :class:`BridgeConfig` from YAML (``.yaml`` / ``.yml``) or JSON; VlocError with the
    offending fields when invalid. A relative ``backend.bundle`` is relative to the file."""
    p = Path(path)
    if not p.is_file():
        raise VlocError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise VlocError(f"{p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise VlocError(f"{p}: expected a mapping of settings at the top level")
    try:
        cfg = BridgeConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise VlocError(f"{p}: invalid bridge config:\n" + "\n".join(lines)) from None
    b = cfg.backend.bundle
    if b is not None and not b.is_absolute():
        cfg = cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"bundle": (p.parent / b).resolve()})})
    return cfg
