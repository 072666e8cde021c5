"""One entry point for ground-truth / prior pose files: ``load_poses(path, fmt)``.

Every loader returns records with ``cam_from_world`` (world-to-camera, metres)
and errors are :class:`VlocError` naming the file (and line where there is one).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from core.camera import Camera
from core.types import ImageRecord, VlocError

POSE_FORMATS = ("7scenes", "pgt", "colmap", "kapture")


def load_poses(path: str | Path, fmt: str, camera: Camera | None = None) -> list[ImageRecord]:
    """Load poses of format ``fmt`` (one of :data:`POSE_FORMATS`) from ``path``.

    path: 7scenes: the scene folder or one ``seq-XX`` folder; pgt: the file;
    colmap: the model folder; kapture: the kapture root.
    camera: 7scenes: the camera (default PINHOLE 640x480 f=525); pgt: size and
    principal point (the file gives f); colmap / kapture: replaces every
    record's camera.
    """
    fmt = str(fmt).lower()
    if fmt not in POSE_FORMATS:
        raise VlocError(f"unknown pose format {fmt!r}; expected one of {', '.join(POSE_FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise VlocError(f"pose {'file' if fmt == 'pgt' else 'folder'} {path} does not exist")
    if fmt == "7scenes":
        from datasets.sevenscenes import load_7scenes_poses
        return load_7scenes_poses(path, camera=camera)
    if fmt == "pgt":
        from datasets.sevenscenes import load_pgt
        return load_pgt(path, camera=camera)
    if fmt == "colmap":
        from datasets.colmap_model import load_colmap_model
        records = load_colmap_model(path)
    else:
        from datasets.kapture_io import load_kapture
        records = load_kapture(path)
    if camera is not None:
        records = [dataclasses.replace(r, camera=camera) for r in records]
    return records
