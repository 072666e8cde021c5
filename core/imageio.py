"""Reading image files for every stage: one clear error for unreadable files and size mismatches."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.camera import Camera
from core.types import VlocError


def read_image(path: Path, camera: Camera | None = None, gray: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or (H, W) uint8 when gray; checks the size against camera when given."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise VlocError(f"cannot read image {path} (missing, empty or not an image)")
    if camera is not None and (img.shape[1], img.shape[0]) != (camera.width, camera.height):
        raise VlocError(f"image {path} is {img.shape[1]}x{img.shape[0]} but its camera says "
                        f"{camera.width}x{camera.height}")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
