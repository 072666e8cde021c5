"""kapture (format 1.1) import / export of image records.

Layout under a kapture root::

    sensors/sensors.txt          sensor_id, name, sensor_type, [sensor_params]+
    sensors/records_camera.txt   timestamp, device_id, image_path
    sensors/trajectories.txt     timestamp, device_id, qw, qx, qy, qz, tx, ty, tz
    sensors/rigs.txt (optional)  rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz
    sensors/records_data/<image_path>

Frames: a trajectory pose is **device_from_world** (= ``cam_from_world`` for a
camera; ``rig_from_world`` for a rig); a rigs.txt pose is ``cam_from_rig``.
Camera parameters use COLMAP model names and pixel convention.  Image names
are relative to ``records_data``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError

HEADER = "# kapture format: 1.1\n"


def _rows(path: Path, min_fields: int) -> list[tuple[int, list[str]]]:
    """(line number, comma-separated stripped fields) of the non-comment lines of a kapture CSV file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise VlocError(f"cannot read kapture file {path}: {e}") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < min_fields:
            raise VlocError(f"{path}:{lineno}: expected at least {min_fields} comma-separated fields, "
                            f"got {len(fields)}: {line.strip()!r}")
        rows.append((lineno, fields))
    return rows


def _pose(path: Path, lineno: int, fields: list[str]) -> Rigid3:
    try:
        v = [float(x) for x in fields]
        if len(v) != 7:
            raise ValueError(f"expected 7 pose values (qw qx qy qz tx ty tz), got {len(v)}")
        return Rigid3.from_quat_wxyz(v[:4], v[4:])
    except ValueError as e:
        raise VlocError(f"{path}:{lineno}: bad pose: {e}") from None


def load_kapture(root: str | Path) -> list[ImageRecord]:
    """Records of ``records_camera.txt``, in file order, with camera and (if any) trajectory pose.

    ``timestamp``: the kapture timestamp; ``extra["sensor_id"]``: the device id.
    Cameras with model ``UNKNOWN_CAMERA`` give ``camera=None``.
    """
    sensors_dir = Path(root) / "sensors"
    cameras: dict[str, Camera | None] = {}
    sensors_file = sensors_dir / "sensors.txt"
    for lineno, f in _rows(sensors_file, 3):
        if f[2] != "camera":
            continue
        if len(f) < 4 or f[3] == "UNKNOWN_CAMERA":
            cameras[f[0]] = None
            continue
        try:
            cameras[f[0]] = Camera.parse(" ".join(f[3:]))
        except ValueError as e:
            raise VlocError(f"{sensors_file}:{lineno}: {e}") from None
    cam_from_rig: dict[tuple[str, str], Rigid3] = {}
    rigs_file = sensors_dir / "rigs.txt"
    if rigs_file.exists():
        for lineno, f in _rows(rigs_file, 9):
            cam_from_rig[f[0], f[1]] = _pose(rigs_file, lineno, f[2:])
    poses: dict[tuple[str, str], Rigid3] = {}
    traj_file = sensors_dir / "trajectories.txt"
    if traj_file.exists():
        for lineno, f in _rows(traj_file, 9):
            poses[f[0], f[1]] = _pose(traj_file, lineno, f[2:])
    records = []
    rec_file = sensors_dir / "records_camera.txt"
    for lineno, f in _rows(rec_file, 3):
        ts, sensor, name = f[0], f[1], ",".join(f[2:])
        if sensor not in cameras:
            raise VlocError(f"{rec_file}:{lineno}: camera {sensor!r} is not in {sensors_file}")
        pose = poses.get((ts, sensor))
        if pose is None:  # the trajectory may be that of a rig holding this camera
            pose = next((c_r * poses[ts, rig] for (rig, cam), c_r in cam_from_rig.items()
                         if cam == sensor and (ts, rig) in poses), None)
        try:
            timestamp = float(ts)
        except ValueError:
            raise VlocError(f"{rec_file}:{lineno}: timestamp {ts!r} is not a number") from None
        records.append(ImageRecord(name=name.replace("\\", "/"), camera=cameras[sensor],
                                   cam_from_world=pose, timestamp=timestamp, extra={"sensor_id": sensor}))
    return records


def write_kapture(records: list[ImageRecord], root: str | Path,
                  copy_images_from: Path | None = None) -> None:
    """Write sensors.txt, records_camera.txt and (if any record is posed) trajectories.txt.

    One sensor ``cam{i}`` per distinct camera.  Timestamps: the records' own
    when all are integers and unique per sensor, else the record index.
    copy_images_from: folder holding the images (by record name), copied into
    ``records_data``.
    """
    sensors_dir = Path(root) / "sensors"
    sensors_dir.mkdir(parents=True, exist_ok=True)
    sensor_ids: dict[Camera | None, str] = {}
    for r in records:
        if r.camera not in sensor_ids:
            sensor_ids[r.camera] = f"cam{len(sensor_ids)}"
        if "," in r.name or "\n" in r.name:
            raise VlocError(f"kapture image paths cannot contain commas or newlines: {r.name!r}")
    keys = [(r.timestamp, sensor_ids[r.camera]) for r in records]
    use_own = all(t is not None and float(t).is_integer() and t >= 0 for t, _ in keys) \
        and len(set(keys)) == len(keys)
    stamps = [int(r.timestamp) if use_own else i for i, r in enumerate(records)]

    lines = [HEADER, "# sensor_id, name, sensor_type, [sensor_params]+\n"]
    for cam, sid in sensor_ids.items():
        params = ["UNKNOWN_CAMERA"] if cam is None else \
            [cam.model, str(cam.width), str(cam.height)] + [repr(p) for p in cam.params]
        lines.append(", ".join([sid, sid, "camera"] + params) + "\n")
    (sensors_dir / "sensors.txt").write_text("".join(lines))

    lines = [HEADER, "# timestamp, device_id, image_path\n"]
    lines += [f"{ts}, {sensor_ids[r.camera]}, {r.name}\n" for ts, r in zip(stamps, records)]
    (sensors_dir / "records_camera.txt").write_text("".join(lines))

    posed = [(ts, r) for ts, r in zip(stamps, records) if r.cam_from_world is not None]
    traj = sensors_dir / "trajectories.txt"
    if posed:
        lines = [HEADER, "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz\n"]
        for ts, r in posed:
            vals = [*r.cam_from_world.quat_wxyz, *r.cam_from_world.translation]
            lines.append(", ".join([str(ts), sensor_ids[r.camera]] + [repr(float(v)) for v in vals]) + "\n")
        traj.write_text("".join(lines))
    elif traj.exists():
        traj.unlink()

    if copy_images_from is not None:
        src_root, dst_root = Path(copy_images_from), sensors_dir / "records_data"
        for r in records:
            src = src_root / r.name
            if not src.is_file():
                raise VlocError(f"image {src} does not exist (copy_images_from={src_root})")
            (dst_root / r.name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst_root / r.name)
