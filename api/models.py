"""Pydantic models: the wire contract of the localization service (names are read by other tools).

Frames and units (as everywhere in vloc): poses are ``cam_from_world`` (``x_cam = R x_world + t``)
and its inverse ``world_from_cam`` (whose translation is the camera centre in the map frame);
quaternions are (w, x, y, z); metres; camera frame x right, y down, z forward; pixels in
COLMAP's convention. Geodetic fields (WGS84 degrees, metres above the ellipsoid, heading in
degrees clockwise from north) appear only when the map bundle is georeferenced.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.camera import CAMERA_MODELS

#: finite float: NaN and +-inf are refused at the boundary (422), never reach the core.
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: map and version ids: one safe path component (letters, digits, '_', '.', '-'; starts alphanumeric).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Strict(BaseModel):
    """Inputs refuse unknown fields (a misspelt field is an error, not silently ignored) and
    coercions (``true`` is not a timestamp, ``"640"`` not a width; integers are fine as floats)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# inputs ----------------------------------------------------------------------------------------
class CameraIn(Strict):
    """Intrinsics of the query frame: a COLMAP camera model, the image size in pixels and the
    model's parameters in COLMAP order (e.g. PINHOLE: fx, fy, cx, cy)."""

    model: str = Field(description=f"COLMAP model: one of {', '.join(CAMERA_MODELS)}",
                       examples=["PINHOLE"], max_length=32)
    width: int = Field(gt=0, le=1_000_000, description="image width in pixels; must equal the image's")
    height: int = Field(gt=0, le=1_000_000, description="image height in pixels; must equal the image's")
    params: list[Finite] = Field(max_length=16, description="parameters in COLMAP order",
                                 examples=[[525.0, 525.0, 320.0, 240.0]])


class PriorIn(Strict):
    """A rough camera-centre position in the map frame (metres) with a 1-sigma radius (metres);
    it narrows retrieval to map images near it."""

    position: list[Finite] = Field(min_length=3, max_length=3)
    sigma: Finite = Field(gt=0, le=1e6)


class LocalizeMeta(Strict):
    """The ``meta`` multipart field of ``POST /v1/maps/{map_id}/localize`` (a JSON object)."""

    camera: CameraIn
    prior: PriorIn | None = None
    robot_id: str | None = Field(None, max_length=128)
    timestamp: Finite | None = Field(None, description="capture time, Unix seconds (UTC)")
    track: bool = Field(False, description="with robot_id: the server keeps this robot's last accepted pose as "
                                           "the next frame's motion prior (like a stream session); "
                                           "an explicit prior wins")
    max_wait_ms: float | None = Field(None, gt=0, le=600_000,
                                      description="real-time robots: answer 429 ('busy: ...', Retry-After 0) instead of "
                                                  "localizing when the frame waited on the server longer than "
                                                  "this for a worker; a newer frame is worth more than a late pose")
    features: str | None = Field(None, max_length=32,
                                 description="the map's feature set to localize with (sift, aliked, aliked-n32, "
                                             "aliked-t16, disk); default: the map's first set. A set the map lacks "
                                             "is a 422 naming those it has")
    inliers: bool = Field(False, description="also return the PnP inliers: query keypoints (pixels, COLMAP "
                                             "convention) and their map points (``inliers`` in the response)")


class StreamFrameMeta(Strict):
    """JSON header of one frame on ``WS /v1/maps/{map_id}/stream``.

    ``camera`` may be omitted after the first frame of a session (the last one is reused).
    ``timestamp``: capture time in Unix seconds on a synchronised clock; a frame whose age
    (server receive time minus timestamp, plus its wait on the server) exceeds the server's
    ``max_frame_age_s`` is dropped as stale. Omit it when the robot's clock is not synchronised.
    A frame that waits on the server longer than ``max_queue_wait_s`` is dropped as busy.
    ``prior`` overrides the session's own motion prior for this frame.
    """

    frame_id: int | str = Field(description="echoed in the reply; any int or string up to 128 chars")
    robot_id: str | None = Field(None, max_length=128, description="the robot's name on the live fleet "
                                 "(``GET /v1/maps/{map_id}/live``); kept by the session after the first frame; "
                                 "default: the API key's name, else its id")
    camera: CameraIn | None = None
    features: str | None = Field(None, max_length=32, description="the map's feature set (as in LocalizeMeta); "
                                 "may be omitted after the first frame (the session keeps it)")
    timestamp: Finite | None = None
    prior: PriorIn | None = None


class RegisterPathRequest(Strict):
    """Register a bundle that already lies on the server (copied into the data directory)."""

    path: str = Field(min_length=1, max_length=4096, description="server-side bundle directory")
    version: str | None = Field(None, pattern=ID_PATTERN, description="default: next integer")
    activate: bool | None = Field(None, description="default: activate when the map has no active version")


class KeyCreateRequest(Strict):
    role: Literal["robot", "admin"]
    maps: list[Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")]] = Field(
        default_factory=list, max_length=10_000, description="maps a robot key may use ('*' = all)")
    name: str = Field("", max_length=128)


# outputs ---------------------------------------------------------------------------------------
class PoseOut(BaseModel):
    """A rigid transform ``b_from_a``: translation (3,) metres, unit quaternion (w, x, y, z)."""

    translation: list[float]
    quaternion_wxyz: list[float]


class PriorOut(BaseModel):
    position: list[float]
    sigma: float


class InliersOut(BaseModel):
    """The PnP inliers of a pose: ``keypoints`` (K, 2) query pixels (COLMAP convention: the centre
    of the top-left pixel is (0.5, 0.5)) and ``points3D`` (K, 3) their map points (map frame, m)."""

    keypoints: list[list[float]]
    points3D: list[list[float]]


class LocalizeResponse(BaseModel):
    """The core's result (``localize.LocalizationResult.to_dict()``) plus serving context.

    covariance: (6, 6) of ``cam_from_world``, rotation vector (rad, left perturbation) then translation (m); non-finite
    entries are sent as null. timings_ms: the core's stages (features, retrieval, matching,
    pose, total) plus the server's ``decode`` and ``wait`` (thread-pool queue).
    latitude / longitude / altitude / heading: only when the map is georeferenced.
    """

    accepted: bool
    reason: str
    cam_from_world: PoseOut | None
    world_from_cam: PoseOut | None
    covariance: list[list[float | None]] | None
    covariance_order: str
    num_inliers: int
    num_matches: int
    inlier_ratio: float | None
    median_reproj_error_px: float | None
    position_sigma_m: float | None
    rotation_sigma_deg: float | None
    retrieved: list[str]
    num_keypoints: int
    timings_ms: dict[str, float | None]
    attempt: str = Field("full", description='setting that produced the result: "full", or the cheaper first '
                                             'attempt "coarse" (no prior) / "tracking" (prior) when kept')
    map_id: str
    map_version: str
    features: str = Field("sift", description="the map's feature set that answered")
    batch_size: int = Field(1, description="frames in the micro-batch this one ran in (1: alone)")
    robot_id: str | None = None
    timestamp: float | None = None
    prior_used: bool = False
    latitude: float | None = Field(None, description="WGS84 degrees (georeferenced maps only)")
    longitude: float | None = Field(None, description="WGS84 degrees (georeferenced maps only)")
    altitude: float | None = Field(None, description="metres above the WGS84 ellipsoid (georeferenced maps only)")
    heading: float | None = Field(None, description="optical axis, degrees clockwise from north "
                                                    "(georeferenced maps only)")
    inliers: InliersOut | None = Field(None, description="only when the request asked (``meta.inliers``)")


class StreamReply(BaseModel):
    """One reply per received frame on the stream, in the order the frames were sent.

    A processed frame carries every :class:`LocalizeResponse` field plus ``frame_id``,
    ``dropped: false``, ``prior_used``, ``prior`` and ``tracking`` ("global": no prior,
    first frames; "tracking": motion prior from the last accepted pose; "lost": the last
    ``lost_after`` frames were rejected, back to global search). A dropped frame is
    ``{"frame_id", "dropped": true, "reason": "stale" | "busy" | "overflow", "age_ms"}``; a frame that
    could not be used is ``{"frame_id", "dropped": true, "reason": "error", "status", "detail"}``.
    """

    model_config = ConfigDict(extra="allow")

    frame_id: int | str | None
    dropped: bool
    reason: str | None = None
    status: int | None = None
    detail: str | None = None
    age_ms: float | None = None
    tracking: Literal["global", "tracking", "lost"] | None = None
    prior: PriorOut | None = None


class VersionInfo(BaseModel):
    map_id: str
    version: str
    active: bool
    bytes: int
    registered_utc: str
    summary: dict = Field(description="from the bundle manifest: images, points, format and vloc versions, "
                                      "georeferenced")


class Activation(BaseModel):
    """A version becoming the map's active one (``key_id``: the admin key that did it, null when it
    was not done through the API)."""

    version: str
    activated_utc: str
    key_id: str | None = None


class MapInfo(BaseModel):
    map_id: str
    active_version: str | None
    created_utc: str
    versions: list[VersionInfo]
    activations: list[Activation] = Field(default_factory=list, description="newest first (at most 100)")


class Extent(BaseModel):
    """Axis-aligned box of the map's 3D points, map frame, metres."""

    min: list[float]
    max: list[float]
    size: list[float]


class VersionDetails(VersionInfo):
    """One version with what its manifest says: statistics, georeference, feature sets, layers."""

    world_frame: dict | None = None
    statistics: dict = Field(default_factory=dict)
    georeference: dict | None = Field(None, description="origin (WGS84), CRS, residuals: null when not "
                                                        "georeferenced")
    feature_sets: list[str] = Field(default_factory=list)
    layers: list[str] = Field(default_factory=list, description="files under layers/ (HD layers)")
    extent: Extent | None = None
    revision: int | None = None
    history: list[dict] = Field(default_factory=list)


class CameraModelOut(BaseModel):
    """A map camera's intrinsics (COLMAP model, size, parameters): usable as a query ``camera``."""

    camera_id: int
    model: str
    width: int
    height: int
    params: list[float]


class MapImageOut(BaseModel):
    """A map image: its name, camera and pose (``world_from_cam``: translation = centre, map frame)."""

    name: str
    camera_id: int
    world_from_cam: PoseOut


class CamerasOut(BaseModel):
    map_id: str
    version: str
    cameras: list[CameraModelOut]
    images: list[MapImageOut]


class FloorOut(BaseModel):
    index: int
    elevation: float
    top: float | None = None
    n_cameras: int = 0
    observed: bool = True


class OccupancyOut(BaseModel):
    """One floor's occupancy grid (ROS map_server trinary: 0 occupied, 254 free, 205 unknown),
    level frame: pixel (row, col) has its centre at ``(origin[0] + (col + 0.5) * resolution,
    origin[1] + (height - 1 - row + 0.5) * resolution)`` (row 0 is the top, largest y)."""

    floor: int
    resolution: float
    origin: list[float]
    width: int
    height: int
    png: str = Field(description="file name under .../layers/ of the grid as a greyscale PNG")
    cells: dict = Field(default_factory=dict)


class LayersOut(BaseModel):
    """The HD layers of a map version (empty lists when it has none: ``vloc map layers``).

    ``level_from_map``: rotation (3x3) from the map frame to the level frame (up = +z) in which
    floors and occupancy grids are expressed; the identity when the map's z is up."""

    map_id: str
    version: str
    has_layers: bool
    level_from_map: list[list[float]]
    up_source: str | None = None
    floors: list[FloorOut] = Field(default_factory=list)
    occupancy: list[OccupancyOut] = Field(default_factory=list)
    mesh: dict | None = Field(None, description="``file``, ``bytes``, vertices, triangles, source: null without")
    files: list[dict] = Field(default_factory=list, description="every layer file: name, kind, bytes")


class RobotLive(BaseModel):
    """A robot on the live fleet of a map: its last answer and last accepted pose.

    position: camera centre (map frame, m) of the last *accepted* pose (null before one);
    xy / z: the same in the level frame (floor plan); heading_deg: optical axis in the level
    frame, degrees counter-clockwise from +x; ellipse: 1-sigma ellipse of xy from the pose
    covariance (``major``, ``minor`` m, ``angle_deg`` of the major axis from +x); accepted /
    reason: of the *last* answer; latency_ms: frame receipt to answer on the server; last_seen /
    last_accepted: Unix seconds; track: recent accepted [x, y, z] (level frame) in the first
    message only (later ones carry ``position`` to append)."""

    robot_id: str
    map_version: str | None = None
    source: str
    accepted: bool
    reason: str
    position: list[float] | None = None
    xy: list[float] | None = None
    z: float | None = None
    heading_deg: float | None = None
    ellipse: dict | None = None
    position_sigma_m: float | None = None
    rotation_sigma_deg: float | None = None
    num_inliers: int = 0
    latency_ms: float | None = None
    last_seen: float
    last_accepted: float | None = None
    frames: int = 0
    accepted_frames: int = 0
    track: list[list[float]] | None = None


class LiveEvent(BaseModel):
    """One ``data:`` line of ``GET /v1/maps/{map_id}/live`` (event ``snapshot`` first, then
    ``update``): the robots that changed since the last event (all of them in the snapshot), the
    ids that left (``gone``), and the server's clock (Unix seconds) for ages."""

    map_id: str
    server_time: float
    robots: list[RobotLive]
    gone: list[str] = Field(default_factory=list)


class Me(BaseModel):
    """The caller's key: what the console may show."""

    key_id: str
    name: str
    role: Literal["robot", "admin"]
    maps: list[str] = Field(description="maps a robot key is granted ('*' = all); admin keys see every map")


class MapList(BaseModel):
    maps: list[MapInfo]


class Deleted(BaseModel):
    deleted: bool = True
    map_id: str
    version: str | None = None


class KeyInfo(BaseModel):
    key_id: str
    name: str
    role: Literal["robot", "admin"]
    maps: list[str]
    created_utc: str
    revoked_utc: str | None = None


class KeyCreated(KeyInfo):
    key: str = Field(description="the secret; shown once, stored hashed")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    maps: int
    active: int
    resident: int
    problems: list[str] = []


class ErrorResponse(BaseModel):
    detail: str
