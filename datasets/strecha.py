"""Strecha et al. (CVPR 2008) ground-truth cameras, as packaged by openMVG.

``gt_cameras/NNNN.jpg.camera``: lines 1-3 K of the ORIGINAL image (OpenCV
pixel convention: centre of the top-left pixel at 0), line 4 distortion
(zeros), lines 5-7 R, line 8 camera centre C (metres), line 9 original
``W H``.  Projection: ``x ~ K R^T (X - C)``, i.e. R is the rotation of
**world_from_cam**; here ``cam_from_world = (R^T, -R^T C)``.

The intrinsics are rescaled to the images actually present (downsampled) and
converted to COLMAP's pixel convention: ``cx' = (cx + 0.5) * s``, ``f' = f * s``
with ``s = W_actual / W_original`` (the README's ``(cx + 0.5) / 2 - 0.5``
plus COLMAP's +0.5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord, VlocError


def _parse_camera_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """(K (3, 3), R (3, 3) world_from_cam rotation, C (3,), (W, H) original)."""
    try:
        rows = [(i, line.split()) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    except OSError as e:
        raise VlocError(f"cannot read Strecha camera file {path}: {e}") from None
    expected = [3, 3, 3, None, 3, 3, 3, 3, 2]
    if len(rows) < 9:
        raise VlocError(f"{path}: expected 9 non-empty lines (K, distortion, R, C, size), got {len(rows)}")
    vals = []
    for (lineno, row), n in zip(rows, expected):
        try:
            v = [float(x) for x in row]
        except ValueError:
            raise VlocError(f"{path}:{lineno}: not numbers: {' '.join(row)!r}") from None
        if n is not None and len(v) != n:
            raise VlocError(f"{path}:{lineno}: expected {n} numbers, got {len(v)}")
        vals.append(v)
    K, R, C = np.array(vals[0:3]), np.array(vals[4:7]), np.array(vals[7])
    return K, R, C, (int(vals[8][0]), int(vals[8][1]))


def load_strecha(scene_root: str | Path) -> list[ImageRecord]:
    """Records of a Strecha scene (``scene_root/gt_cameras``), sorted by name.

    Names are relative to ``scene_root``: ``images/NNNN.jpg`` when the images
    are in ``images/`` (else ``NNNN.jpg`` next to ``gt_cameras``).  Camera:
    PINHOLE at the size of the image on disk (original size if it is absent).
    """
    root = Path(scene_root)
    cam_files = sorted((root / "gt_cameras").glob("*.camera"))
    if not cam_files:
        raise VlocError(f"no gt_cameras/*.camera files under {root}")
    records = []
    for path in cam_files:
        image_file = path.name[: -len(".camera")]
        K, R, C, (W0, H0) = _parse_camera_file(path)
        name = f"images/{image_file}"
        if not (root / name).exists() and (root / image_file).exists():
            name = image_file
        W, H = W0, H0
        if (root / name).exists():
            with Image.open(root / name) as im:
                W, H = im.size
        sx, sy = W / W0, H / H0
        cam = Camera("PINHOLE", W, H, (K[0, 0] * sx, K[1, 1] * sy, (K[0, 2] + 0.5) * sx, (K[1, 2] + 0.5) * sy))
        try:
            world_from_cam = Rigid3.from_matrix4(np.hstack([R, C[:, None]]))
        except ValueError as e:
            raise VlocError(f"{path}: bad rotation: {e}") from None
        records.append(ImageRecord(name=name, camera=cam, cam_from_world=world_from_cam.inverse()))
    return records
