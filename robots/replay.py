"""`vloc robots replay IN_BAG --map BUNDLE --out OUT_BAG`: localize a recorded bag offline.

Input: a ROS 1 ``.bag`` or a ROS 2 bag (sqlite3 or MCAP directory), read with rosbags' AnyReader
(message definitions from the bag). Output: a bag of the same family unless ``out_format`` says
otherwise (``rosbag1``, ``sqlite3``, ``mcap``), written with rosbags' writers, holding

* ``/vloc/pose`` ``geometry_msgs/PoseWithCovarianceStamped``: the pose of ``base_link`` in
  ``map`` when the extrinsic ``base_from_camera`` is known, else of the camera (frame id of the
  image header) in ``map``; covariance in ROS order (x, y, z, rot_x, rot_y, rot_z), converted from
  vloc's cam_from_world tangent (:func:`robots.transforms.ros_pose_covariance`);
* ``/tf`` ``tf2_msgs/TFMessage``: ``map -> odom`` (REP-105) when the bag has ``odom -> base_link``
  on /tf and the extrinsic is known; otherwise ``map -> base_link`` (extrinsic known) or
  ``map -> <camera frame>``; one per accepted frame, stamped with the image;
* the input's messages, copied unchanged (same family only; ``copy_input``).

The extrinsic comes from ``ReplayConfig.base_from_camera`` or else from the bag's ``/tf_static``
(a ``base_link -> <image frame_id>`` transform). Odometry is looked up at the image stamp with
:class:`robots.transforms.OdomBuffer` over the whole bag (a first pass reads /tf, /tf_static,
CameraInfo and the ground-truth topic).

A TUM trajectory (:mod:`robots.tum`) of the accepted frames is written too: ``world_from_cam``
(the camera optical frame in the map), stamped with the image header.

Frames: every image of the image topic, or at most ``rate_hz`` per second of image-stamp time.
Unusable messages (undeserializable bytes, unsupported encodings, truncated data, no camera
intrinsics yet, a camera whose size differs from the image) are logged, counted by reason and
skipped; the replay goes on.

Ground truth (optional): a topic of the bag (``geometry_msgs/PoseStamped``,
``PoseWithCovarianceStamped`` or ``TransformStamped``; the pose of the camera, or of base_link with
``gt_frame="base"``, in the map frame), matched to images by stamp within ``gt_max_dt``; or a file:
TUM (``timestamp tx ty tz qx qy qz qw``, world_from_cam, matched by stamp) or pgt (``name qw qx qy
qz tx ty tz f``, cam_from_world, the k-th line for the k-th image of the topic). Accuracy: the
error of every image that has a truth (a rejected or unlocalized frame is a miss, error +inf):
median cm / deg, % within 5 cm / 5 deg, rejected.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3, pose_error
from core.types import VlocError
from robots.bag_io import (
    CAMERA_INFO_TYPE,
    GT_TYPES,
    IMAGE_TYPES,
    OUT_FORMATS,
    POSE_TYPE,
    TF_TYPE,
    TF_TYPES,
    BagWriter,
    decode_image_msg,
    gt_pose_from_msg,
    input_format,
    load_gt_file,
    msg_stamp,
    reader_path,
    rigid_from_transform_msg,
)
from robots.config import FramesConfig
from robots.images import camera_from_info_msg
from robots.transforms import OdomBuffer, map_from_base_from_camera, map_from_odom, ros_pose_covariance
from robots.tum import StampedPose, associate, write_tum

log = logging.getLogger("vloc.robots.replay")


@dataclass(frozen=True)
class ReplayConfig:
    """How a bag is replayed (see the module docstring)."""

    #: image topic (sensor_msgs/Image or CompressedImage); None: the bag's only image topic.
    image_topic: str | None = None
    #: CameraInfo topic; None: the bag's only CameraInfo topic (if any).
    camera_info_topic: str | None = None
    #: intrinsics ``"MODEL W H PARAMS..."`` (vloc / COLMAP convention); overrides CameraInfo.
    camera: str | None = None
    #: at most this many localized frames per second of image-stamp time; 0: every frame.
    rate_hz: float = 0.0
    #: "rosbag1", "sqlite3" or "mcap"; None: the input's family (ROS 2: its storage).
    out_format: str | None = None
    #: copy the input's messages into the output bag (same family only).
    copy_input: bool = True
    #: output pose topic (geometry_msgs/PoseWithCovarianceStamped).
    pose_topic: str = "/vloc/pose"
    #: TF topic: odom -> base_link read from it, the map TF written to it.
    tf_topic: str = "/tf"
    #: static TF topic the extrinsic may be read from.
    tf_static_topic: str = "/tf_static"
    #: frame ids (map, odom, base_link; camera: used when the image header has no frame_id).
    frames: FramesConfig = FramesConfig()
    #: extrinsic ``base_from_camera`` (camera optical frame in base_link); None: from /tf_static or unknown.
    base_from_camera: Rigid3 | None = None
    #: odom -> base_link samples may be held this long (s) beyond the recorded span.
    odom_max_age_s: float = 0.25
    #: ground-truth topic in the bag, or None.
    gt_topic: str | None = None
    #: ground-truth file (TUM or pgt), or None.
    gt_file: Path | None = None
    #: "tum" or "pgt"; None: pgt when the file has 9 fields per line, else TUM.
    gt_format: str | None = None
    #: the truth is the pose of the "camera" (optical frame) or of the "base" (needs the extrinsic).
    gt_frame: str = "camera"
    #: largest stamp difference (s) between an image and its truth (topic or TUM file).
    gt_max_dt: float = 0.02

    def check(self) -> None:
        if self.rate_hz < 0:
            raise VlocError("--rate must be >= 0")
        if self.out_format is not None and self.out_format not in OUT_FORMATS:
            raise VlocError(f"--out-format must be one of {', '.join(OUT_FORMATS)}, not {self.out_format!r}")
        if self.gt_format is not None and self.gt_format not in ("tum", "pgt"):
            raise VlocError(f"--gt-format must be 'tum' or 'pgt', not {self.gt_format!r}")
        if self.gt_frame not in ("camera", "base"):
            raise VlocError(f"--gt-frame must be 'camera' or 'base', not {self.gt_frame!r}")
        if self.gt_topic and self.gt_file:
            raise VlocError("give --gt-topic or --gt, not both")


def accuracy(t_err_m: list[float], r_err_deg: list[float]) -> dict:
    """Median cm / deg over all frames with a truth (misses = inf), % within 5 cm / 5 deg, rejected."""
    from core.accuracy import accuracy_metrics
    a = accuracy_metrics(t_err_m, r_err_deg)
    return {"n": a["n_queries"], "rejected": a["rejected"], "median_t_cm": a["median_t_cm"],
            "median_r_deg": a["median_r_deg"], "pct_5cm_5deg": a["pct_5cm_5deg"]}


# --------------------------------------------------------------------------------------------------
# the replay
# --------------------------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    """What a replay did. ``skipped`` counts unusable image messages by reason."""

    input: str
    input_format: str
    output: str
    output_format: str
    tum: str
    image_topic: str
    pose_frame: str
    tf: str
    extrinsic: str
    images: int = 0
    localized: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped_rate: int = 0
    skipped: dict = field(default_factory=dict)
    other_malformed: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)
    copied_input: bool = False
    localize_ms_median: float | None = None
    accuracy: dict | None = None
    frames: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def _pick_topic(conns, types: tuple[str, ...], wanted: str | None, what: str, required: bool) -> str | None:
    topics = sorted({c.topic for c in conns if c.msgtype in types})
    if wanted is not None:
        if wanted not in topics:
            raise VlocError(f"{what} topic {wanted!r} is not in the bag (it has: {', '.join(topics) or 'none'})")
        return wanted
    if len(topics) == 1:
        return topics[0]
    if not topics and not required:
        return None
    if not topics:
        raise VlocError(f"the bag has no {what} topic ({' / '.join(types)})")
    raise VlocError(f"the bag has several {what} topics ({', '.join(topics)}); choose one")


def _scan(reader, cfg: ReplayConfig, image_topic: str, info_topic: str | None) -> dict:
    """First pass: odometry, extrinsic candidates, camera infos, ground truth (all but images)."""
    odom = OdomBuffer(max_age_s=cfg.odom_max_age_s, history_s=1e12, max_gap_s=1.0)
    static: dict[tuple[str, str], Rigid3] = {}
    infos: list[tuple[float, Camera]] = []
    gt: list[StampedPose] = []
    bad: Counter = Counter()
    topics = {cfg.tf_topic, cfg.tf_static_topic, info_topic, cfg.gt_topic} - {None}
    conns = [c for c in reader.connections if c.topic in topics]
    for conn, t_ns, raw in reader.messages(connections=conns):
        try:
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == info_topic and conn.msgtype == CAMERA_INFO_TYPE:
                infos.append((t_ns * 1e-9, camera_from_info_msg(msg)))
            elif conn.topic == cfg.gt_topic and conn.msgtype in GT_TYPES:
                gt.append(StampedPose(msg_stamp(msg), gt_pose_from_msg(msg, conn.msgtype)))
            elif conn.msgtype in TF_TYPES:
                for tr in msg.transforms:
                    T = rigid_from_transform_msg(tr.transform)
                    parent, child = tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")
                    if conn.topic == cfg.tf_static_topic:
                        static[(parent, child)] = T
                    elif parent == cfg.frames.odom and child == cfg.frames.base_link:
                        odom.add(msg_stamp(tr), T)
        except Exception as e:  # noqa: BLE001 - a broken message is counted and skipped
            bad[f"{conn.topic}: {type(e).__name__}"] += 1
            log.warning("skipping a malformed message on %s at %.3f s: %s", conn.topic, t_ns * 1e-9, e)
    gt.sort(key=lambda r: r.stamp)
    return {"odom": odom, "static": static, "infos": infos, "gt": gt, "bad": bad}


def replay(in_bag: Path, bundle: Path, out_bag: Path, cfg: ReplayConfig = ReplayConfig(),
           tum_path: Path | None = None, localizer=None) -> ReplayReport:
    """Replay ``in_bag`` against the map ``bundle`` into ``out_bag`` (+ a TUM file); see the module
    docstring. ``localizer``: an already loaded :class:`localize.Localizer` (else loaded here)."""
    from rosbags.highlevel import AnyReader

    cfg.check()
    t_start = time.perf_counter()
    in_bag, out_bag = Path(in_bag), Path(out_bag)
    fmt_in = input_format(in_bag)
    fmt_out = cfg.out_format or fmt_in
    same_family = (fmt_in == "rosbag1") == (fmt_out == "rosbag1")
    tum_path = Path(tum_path) if tum_path else out_bag.with_name(out_bag.name.removesuffix(".bag") + ".tum")
    if localizer is None:
        bundle = Path(bundle)
        if not (bundle / "manifest.json").is_file():
            raise VlocError(f"{bundle} is not a map bundle (no manifest.json)")
        from localize import Localizer
        localizer = Localizer(bundle)
    fixed_camera = Camera.parse(cfg.camera) if cfg.camera else None
    gt_kind, gt_rows = load_gt_file(cfg.gt_file, cfg.gt_format) if cfg.gt_file else (None, None)

    try:
        reader_ctx = AnyReader([reader_path(in_bag)])
        reader_ctx.__enter__()
    except Exception as e:  # noqa: BLE001 - rosbags' reader errors: an unreadable bag is the user's input
        raise VlocError(f"cannot read bag {in_bag}: {e}") from None
    reader = reader_ctx
    try:
        image_topic = _pick_topic(reader.connections, IMAGE_TYPES, cfg.image_topic, "image", True)
        info_topic = None if fixed_camera else _pick_topic(reader.connections, (CAMERA_INFO_TYPE,),
                                                           cfg.camera_info_topic, "CameraInfo", False)
        if fixed_camera is None and info_topic is None:
            raise VlocError("the bag has no sensor_msgs/CameraInfo topic: pass --camera 'MODEL W H PARAMS'")
        if cfg.gt_topic:
            _pick_topic(reader.connections, GT_TYPES, cfg.gt_topic, "ground-truth", True)
        scan = _scan(reader, cfg, image_topic, info_topic)
        image_conns = [c for c in reader.connections if c.topic == image_topic and c.msgtype in IMAGE_TYPES]

        # extrinsic: configured, else /tf_static base_link -> <camera frame> (resolved per frame id)
        def base_from_camera_for(camera_frame: str) -> Rigid3 | None:
            if cfg.base_from_camera is not None:
                return cfg.base_from_camera
            return scan["static"].get((cfg.frames.base_link, camera_frame))

        has_odom = len(scan["odom"]) > 0
        if cfg.gt_frame == "base" and cfg.base_from_camera is None and not scan["static"]:
            raise VlocError("--gt-frame base needs the extrinsic (--base-from-camera or /tf_static in the bag)")

        report = ReplayReport(input=str(in_bag), input_format=fmt_in, output=str(out_bag), output_format=fmt_out,
                              tum=str(tum_path), image_topic=image_topic, pose_frame="", tf="", extrinsic="")
        if cfg.copy_input and not same_family:
            log.warning("input messages are not copied between ROS 1 and ROS 2 bags (only vloc's output is "
                        "written); convert the input with rosbags-convert if you need both in one bag")
        copy = cfg.copy_input and same_family
        report.copied_input = copy
        rows_tum: list[StampedPose] = []
        t_err: list[float] = []
        r_err: list[float] = []
        loc_ms: list[float] = []
        skipped: Counter = Counter()
        last_localized: float | None = None
        infos = scan["infos"]
        info_i = -1
        image_index = -1
        pose_frames, tf_kinds, extrinsics = set(), set(), set()

        with BagWriter(out_bag, fmt_out) as out:
            f = out.factory
            conns = list(reader.connections) if copy else image_conns
            if copy:
                for c in reader.connections:
                    out.copy_connection(c)
            for conn, t_ns, raw in reader.messages(connections=conns):
                if copy:
                    out.write_raw(conn.topic, conn.msgtype, t_ns, raw)
                if conn.topic != image_topic or conn.msgtype not in IMAGE_TYPES:
                    continue
                report.images += 1
                image_index += 1
                t_bag = t_ns * 1e-9
                while info_i + 1 < len(infos) and infos[info_i + 1][0] <= t_bag:
                    info_i += 1
                # -- decode (malformed -> counted, logged, skipped) ------------------------------
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as e:  # noqa: BLE001
                    skipped["undeserializable"] += 1
                    log.warning("image %d at %.3f s: cannot deserialize %s: %s", image_index, t_bag,
                                conn.msgtype, e)
                    continue
                stamp = msg_stamp(msg) or t_bag
                if cfg.rate_hz > 0 and last_localized is not None and stamp - last_localized < 1.0 / cfg.rate_hz - 1e-9:
                    report.skipped_rate += 1
                    continue
                camera = fixed_camera or (infos[info_i][1] if info_i >= 0 else (infos[0][1] if infos else None))
                if camera is None:
                    skipped["no_camera_info"] += 1
                    log.warning("image %d at %.3f s: no CameraInfo yet; skipped", image_index, stamp)
                    continue
                try:
                    rgb = decode_image_msg(msg, conn.msgtype)
                except VlocError as e:
                    reason = "bad_encoding" if "encoding" in str(e) or "format" in str(e) else "bad_data"
                    skipped[reason] += 1
                    log.warning("image %d at %.3f s: %s; skipped", image_index, stamp, e)
                    continue
                if (rgb.shape[1], rgb.shape[0]) != (camera.width, camera.height):
                    skipped["camera_size_mismatch"] += 1
                    log.warning("image %d at %.3f s: %dx%d image, camera %dx%d; skipped", image_index, stamp,
                                rgb.shape[1], rgb.shape[0], camera.width, camera.height)
                    continue
                # -- localize --------------------------------------------------------------------
                last_localized = stamp
                report.localized += 1
                t0 = time.perf_counter()
                res = localizer.localize(rgb, camera)
                loc_ms.append((time.perf_counter() - t0) * 1000)
                cam_frame = msg.header.frame_id.lstrip("/") or cfg.frames.camera
                base_from_camera = base_from_camera_for(cam_frame)
                truth = _truth(cfg, gt_kind, gt_rows, scan["gt"], stamp, image_index, base_from_camera)
                row = {"index": image_index, "stamp": stamp, "accepted": bool(res.accepted), "reason": res.reason,
                       "t_err_cm": None, "r_err_deg": None}
                if res.accepted:
                    report.accepted += 1
                    map_from_camera = res.world_from_cam
                    rows_tum.append(StampedPose(stamp, map_from_camera))
                    if base_from_camera is not None:
                        pose = map_from_base_from_camera(map_from_camera, base_from_camera)
                        child, extr = cfg.frames.base_link, base_from_camera
                    else:
                        pose, child, extr = map_from_camera, cam_frame, Rigid3.identity()
                    cov = (ros_pose_covariance(res.cam_from_world, res.covariance, extr)
                           if res.covariance is not None and np.all(np.isfinite(res.covariance))
                           else np.diag([-1.0] + [0.0] * 5))  # ROS: -1 in the first cell = unknown
                    out.write(cfg.pose_topic, POSE_TYPE, t_ns, f.pose_with_covariance(stamp, cfg.frames.map, pose, cov))
                    lookup = scan["odom"].lookup(stamp) if (has_odom and base_from_camera is not None) else None
                    if lookup is not None:
                        tfm = f.transform_stamped(stamp, cfg.frames.map, cfg.frames.odom,
                                                  map_from_odom(pose, lookup.odom_from_base))
                        tf_kinds.add(f"{cfg.frames.map} -> {cfg.frames.odom}")
                    else:
                        if has_odom and base_from_camera is not None:
                            log.warning("image %d: no odom -> base_link at %.3f s; publishing map -> %s instead",
                                        image_index, stamp, child)
                        tfm = f.transform_stamped(stamp, cfg.frames.map, child, pose)
                        tf_kinds.add(f"{cfg.frames.map} -> {child}")
                    out.write(cfg.tf_topic, TF_TYPE, t_ns, f.tf_message([tfm]))
                    pose_frames.add(child)
                    extrinsics.add("configured" if cfg.base_from_camera is not None else
                                   ("/tf_static" if base_from_camera is not None else "none"))
                else:
                    report.rejected += 1
                if truth is not None:
                    if res.accepted:
                        dt, dr = pose_error(res.cam_from_world, truth)
                        row["t_err_cm"], row["r_err_deg"] = dt * 100, dr
                    else:
                        dt = dr = math.inf
                    t_err.append(dt)
                    r_err.append(dr)
                report.frames.append(row)
        write_tum(tum_path, rows_tum, "world_from_cam: the camera (optical frame, x right, y down, z forward) "
                                      "in the map frame; stamps = image header stamps")
    finally:
        reader_ctx.__exit__(None, None, None)
    report.skipped = dict(skipped)
    report.other_malformed = dict(scan["bad"])
    report.written = dict(out.counts)
    report.pose_frame = ", ".join(sorted(pose_frames)) or "-"
    report.tf = ", ".join(sorted(tf_kinds)) or "-"
    report.extrinsic = ", ".join(sorted(extrinsics)) or "-"
    report.localize_ms_median = float(np.median(loc_ms)) if loc_ms else None
    if t_err:
        report.accuracy = accuracy(t_err, r_err)
    elif cfg.gt_topic or cfg.gt_file:
        log.warning("no localized frame has a ground truth (stamps farther apart than %.3f s?)", cfg.gt_max_dt)
        report.accuracy = accuracy([], [])
    report.seconds = time.perf_counter() - t_start
    return report


def _truth(cfg: ReplayConfig, gt_kind, gt_rows, gt_topic_rows: list[StampedPose], stamp: float, index: int,
           base_from_camera: Rigid3 | None) -> Rigid3 | None:
    """The true ``cam_from_world`` of an image, or None (see the module docstring)."""
    if gt_kind == "pgt":
        return gt_rows[index] if index < len(gt_rows) else None
    rows = gt_rows if gt_kind == "tum" else (gt_topic_rows if cfg.gt_topic else None)
    if not rows:
        return None
    hit = associate([stamp], rows, cfg.gt_max_dt)[0]
    if hit is None:
        return None
    map_from_x = hit.pose
    if cfg.gt_frame == "base":
        if base_from_camera is None:
            return None
        map_from_x = map_from_x * base_from_camera  # map_from_base * base_from_camera = map_from_camera
    return map_from_x.inverse()


def print_report(rep: ReplayReport, console=None) -> None:
    """Counts, outputs and the accuracy table, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    t = Table(title=f"vloc robots replay: {rep.input} ({rep.input_format}) -> {rep.output} ({rep.output_format})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("image topic", rep.image_topic)
    t.add_row("images / localized / accepted / rejected", f"{rep.images} / {rep.localized} / {rep.accepted} / {rep.rejected}")
    t.add_row("skipped by --rate", str(rep.skipped_rate))
    t.add_row("skipped (unusable)", ", ".join(f"{k}: {v}" for k, v in rep.skipped.items()) or "0")
    if rep.other_malformed:
        t.add_row("other malformed messages", ", ".join(f"{k}: {v}" for k, v in rep.other_malformed.items()))
    t.add_row("pose of / TF / extrinsic", f"{rep.pose_frame} / {rep.tf} / {rep.extrinsic}")
    t.add_row("written", ", ".join(f"{k}: {v}" for k, v in sorted(rep.written.items())) +
              ("" if rep.copied_input else " (input not copied)"))
    t.add_row("TUM trajectory (world_from_cam)", rep.tum)
    t.add_row("localize median", f(rep.localize_ms_median, "{:.0f} ms"))
    t.add_row("run time", f"{rep.seconds:.1f} s")
    console.print(t)
    a = rep.accuracy
    if a is not None:
        s = Table(title="accuracy vs ground truth (frames with a truth; rejected = miss)")
        for col in ("frames", "rejected", "median cm", "median deg", "within 5 cm / 5 deg"):
            s.add_column(col, justify="right")
        s.add_row(str(a["n"]), str(a["rejected"]), f(a["median_t_cm"]), f(a["median_r_deg"]),
                  f(a["pct_5cm_5deg"], "{:.1f} %"))
        console.print(s)
