"""COLMAP sparse models (binary or text) <-> image records, via pycolmap 4.x.

Poses are **cam_from_world** (COLMAP's image pose).  pycolmap 4 stores poses on
frames (``rig_from_world``); ``Image.cam_from_world()`` is a method composing
the frame pose with the rig's sensor_from_rig, so rigs are handled on reading.
Writing builds one trivial rig per camera and one trivial frame per image.
"""
from __future__ import annotations

from pathlib import Path

import pycolmap

from core.camera import CAMERA_MODELS, Camera, CameraError
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError


def load_colmap_model(path: str | Path) -> list[ImageRecord]:
    """All images of the model in ``path`` (cameras/images/points3D .bin or .txt), sorted by name.

    Unregistered images (if any) get ``cam_from_world=None``.
    ``extra``: ``image_id``, ``camera_id``.
    """
    path = Path(path)
    if not path.is_dir():
        raise VlocError(f"COLMAP model folder {path} does not exist")
    try:
        rec = pycolmap.Reconstruction(path)
    except (ValueError, RuntimeError) as e:
        raise VlocError(f"cannot read COLMAP model {path}: {_locate_text_error(path) or e}") from None
    cameras: dict[int, Camera] = {}
    for cid, cam in rec.cameras.items():
        try:
            cameras[cid] = Camera.from_pycolmap(cam)
        except CameraError as e:
            raise VlocError(f"COLMAP model {path}, camera {cid}: {e}") from None
    records = []
    for iid, img in rec.images.items():
        try:
            pose = Rigid3.from_pycolmap(img.cam_from_world()) if img.has_pose else None
        except ValueError as e:
            raise VlocError(f"COLMAP model {path}, image {iid} ({img.name}): {e}") from None
        records.append(ImageRecord(name=img.name, camera=cameras.get(img.camera_id), cam_from_world=pose,
                                   extra={"image_id": int(iid), "camera_id": int(img.camera_id)}))
    return sorted(records, key=lambda r: r.name)


def _numbers(fields: list[str]) -> bool:
    try:
        return all(isinstance(float(x), float) for x in fields)
    except ValueError:
        return False


def _locate_text_error(path: Path) -> str | None:
    """'file:line: what' for the first malformed line of a text model (pycolmap does not say), else None."""
    def lines(name):
        f = path / name
        return list(enumerate(f.read_text(errors="replace").splitlines(), 1)) if f.is_file() else []

    for lineno, line in lines("cameras.txt"):
        p = line.split()
        if not p or p[0].startswith("#"):
            continue
        try:
            int(p[0]), int(p[2]), int(p[3]), [float(x) for x in p[4:]]
        except (ValueError, IndexError):
            return f"{path / 'cameras.txt'}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]': {line!r}"
        if p[1] in CAMERA_MODELS and len(p) - 4 != len(CAMERA_MODELS[p[1]]):
            return f"{path / 'cameras.txt'}:{lineno}: {p[1]} takes {len(CAMERA_MODELS[p[1]])} parameters: {line!r}"
    it = iter(lines("images.txt"))
    for lineno, line in it:
        p = line.split()
        if not p or p[0].startswith("#"):
            continue
        try:
            int(p[0]), [float(x) for x in p[1:8]], int(p[8]), p[9]
        except (ValueError, IndexError):
            return (f"{path / 'images.txt'}:{lineno}: expected "
                    f"'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME': {line!r}")
        lineno, pts = next(it, (lineno + 1, ""))  # the POINTS2D line (may be empty)
        if not _numbers(pts.split()) or len(pts.split()) % 3:
            return f"{path / 'images.txt'}:{lineno}: expected POINTS2D triples 'X Y POINT3D_ID ...'"
    return None


def build_reconstruction(records: list[ImageRecord]) -> pycolmap.Reconstruction:
    """A pycolmap Reconstruction with cameras, trivial rigs/frames and posed images, no points.

    Records with equal :class:`Camera` share one camera id (ids from 1 in
    order of appearance); image ids are 1..N in record order.  Every record
    needs a camera; unposed records are added but unregistered (COLMAP
    writers then omit them).
    """
    rec = pycolmap.Reconstruction()
    camera_ids: dict[Camera, int] = {}
    names = set()
    for image_id, r in enumerate(records, 1):
        if r.camera is None:
            raise VlocError(f"cannot put {r.name!r} into a COLMAP model: it has no camera")
        if r.name in names:
            raise VlocError(f"duplicate image name {r.name!r}")
        names.add(r.name)
        if r.camera not in camera_ids:
            camera_ids[r.camera] = len(camera_ids) + 1
            rec.add_camera_with_trivial_rig(r.camera.to_pycolmap(camera_ids[r.camera]))
        image = pycolmap.Image(name=r.name, camera_id=camera_ids[r.camera], image_id=image_id)
        if r.cam_from_world is None:
            rec.add_image_with_trivial_frame(image)
        else:
            rec.add_image_with_trivial_frame(image, r.cam_from_world.to_pycolmap())
    return rec


def write_colmap_model(records: list[ImageRecord], path: str | Path, binary: bool = True) -> int:
    """Write a COLMAP model (rigs, cameras, frames, images, empty points3D) into folder ``path``.

    Only posed records are written (COLMAP model files hold registered images
    only).  Returns the number of images written.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rec = build_reconstruction(records)
    (rec.write_binary if binary else rec.write_text)(str(path))
    return rec.num_reg_images()
