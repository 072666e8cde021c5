"""Microsoft 7-Scenes poses and "pseudo ground truth" (pgt) pose files.

Frames:

* ``seq-XX/frame-NNNNNN.pose.txt``: a (4, 4) **world_from_cam** matrix (depth
  camera, KinectFusion track), metres.  It is inverted here: every record
  carries ``cam_from_world``.  As in the localization literature it is used as
  the RGB camera's pose (7-Scenes RGB and depth are not registered).
* pgt files (Brachmann et al., ICCV 2021): one line per image
  ``name qw qx qy qz tx ty tz f``: **cam_from_world** (COLMAP convention),
  ``f`` the RGB focal in pixels.

Image names are POSIX paths relative to the dataset root (``seq-01/frame-000000.color.jpg``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError

#: the RGB camera of 7-Scenes used by the localization literature.
DEFAULT_CAMERA = Camera("PINHOLE", 640, 480, (525.0, 525.0, 320.0, 240.0))
_FRAME_RE = re.compile(r"frame-(\d+)")
_SEQ_RE = re.compile(r"^seq-?\d+$")


def frame_number(name: str) -> int:
    """The frame number n of a name containing ``frame-000123`` (any folder / suffix)."""
    m = _FRAME_RE.search(Path(str(name)).name)
    if m is None:
        raise VlocError(f"{name!r} is not a 7-Scenes frame name (expected 'frame-NNNNNN...')")
    return int(m.group(1))


def _color_name(pose_file: Path) -> str:
    """File name of the colour image next to a pose file (the one present, png preferred)."""
    stem = pose_file.name[: -len(".pose.txt")]
    for ext in (".color.png", ".color.jpg"):
        if (pose_file.parent / (stem + ext)).exists():
            return stem + ext
    return stem + ".color.png"  # images not shipped: keep the original 7-Scenes name


def _read_pose_txt(path: Path) -> Rigid3 | None:
    """``cam_from_world`` from a 7-Scenes pose.txt (world_from_cam 4x4); None for non-finite poses."""
    try:
        T = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise VlocError(f"{path}: cannot read a 4x4 pose matrix: {e}") from None
    if T.shape != (4, 4):
        raise VlocError(f"{path}: expected a 4x4 matrix (4 lines of 4 numbers), got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        return None  # some 7-/12-Scenes frames carry 'inf' for lost tracking
    try:
        return Rigid3.from_matrix4(T).inverse()
    except ValueError as e:
        raise VlocError(f"{path}: {e}") from None


def load_7scenes_poses(root: str | Path, seqs: list[str] | None = None,
                       camera: Camera | None = None) -> list[ImageRecord]:
    """Records for every ``seq-XX/frame-*.pose.txt`` under ``root``, sorted by (seq, frame).

    root: the scene folder holding ``seq-XX/`` (or one ``seq-XX`` folder: names
    then stay relative to its parent).  seqs: sequence folder names to keep
    (``["seq-01"]``), default all.  camera: default :data:`DEFAULT_CAMERA`.
    timestamp = frame number.
    """
    root = Path(root)
    camera = camera or DEFAULT_CAMERA
    if not root.is_dir():
        raise VlocError(f"7-Scenes folder {root} does not exist")
    if _SEQ_RE.match(root.name) and any(root.glob("frame-*.pose.txt")):
        root, seq_dirs = root.parent, [root]
    else:
        seq_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _SEQ_RE.match(p.name))
    if seqs is not None:
        wanted = set(seqs)
        seq_dirs = [d for d in seq_dirs if d.name in wanted]
    records = []
    for seq in seq_dirs:
        for pose_file in sorted(seq.glob("frame-*.pose.txt"), key=lambda p: frame_number(p.name)):
            records.append(ImageRecord(
                name=f"{seq.name}/{_color_name(pose_file)}", camera=camera,
                cam_from_world=_read_pose_txt(pose_file), timestamp=float(frame_number(pose_file.name))))
    if not records:
        raise VlocError(f"no seq-XX/frame-*.pose.txt files under {root}" + (f" for {seqs}" if seqs else ""))
    return records


def load_pgt(path: str | Path, camera: Camera | None = None, *,
             image_root: str | Path | None = None) -> list[ImageRecord]:
    """Read a pgt file (``name qw qx qy qz tx ty tz f`` per line, cam_from_world).

    Camera: PINHOLE ``W H f f cx cy`` with the file's f, W H cx cy from
    ``camera`` (default 640x480, principal point 320, 240).  Blank lines and
    ``#`` comments are skipped.  image_root: if given, a name whose file is
    absent there is replaced by the colour image with the same stem
    (``.color.png`` in the file, ``.color.jpg`` on disk).
    """
    path = Path(path)
    base = camera or DEFAULT_CAMERA
    (cx, cy), W, H = base.principal_point, base.width, base.height
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise VlocError(f"cannot read pose file {path}: {e}") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 9:
            raise VlocError(f"{path}:{lineno}: expected 'name qw qx qy qz tx ty tz f' (9 fields), "
                            f"got {len(parts)}: {line.strip()!r}")
        try:
            vals = [float(v) for v in parts[1:]]
            pose = Rigid3.from_quat_wxyz(vals[:4], vals[4:7])
            cam = Camera("PINHOLE", W, H, (vals[7], vals[7], cx, cy))
        except ValueError as e:  # includes CameraError
            raise VlocError(f"{path}:{lineno}: {e}: {line.strip()!r}") from None
        name = parts[0]
        if image_root is not None and not (Path(image_root) / name).exists():
            name = _resolve_stem(Path(image_root), name)
        records.append(ImageRecord(name=name, camera=cam, cam_from_world=pose))
    if not records:
        raise VlocError(f"pose file {path} has no poses")
    return records


def _resolve_stem(image_root: Path, name: str) -> str:
    stem = name.split(".color.")[0] if ".color." in name else name.rsplit(".", 1)[0]
    for ext in (".color.png", ".color.jpg", ".png", ".jpg"):
        if (image_root / (stem + ext)).exists():
            return stem + ext
    return name


def write_pgt(records: list[ImageRecord], path: str | Path) -> None:
    """Write ``name qw qx qy qz tx ty tz f`` lines (cam_from_world, full float precision).

    f is the camera's fx.  Every record needs a pose and a camera.
    """
    lines = []
    for r in records:
        if r.cam_from_world is None or r.camera is None:
            raise VlocError(f"cannot write {r.name!r} to a pgt file: it has no "
                            f"{'pose' if r.cam_from_world is None else 'camera'}")
        if any(c.isspace() for c in r.name):
            raise VlocError(f"pgt files cannot hold image names with spaces: {r.name!r}")
        vals = [*r.cam_from_world.quat_wxyz, *r.cam_from_world.translation, r.camera.focals[0]]
        lines.append(" ".join([r.name] + [repr(float(v)) for v in vals]))
    Path(path).write_text("\n".join(lines) + "\n")
