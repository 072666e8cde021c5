"""ROS image and camera-info fields -> vloc inputs: pure functions over plain fields (no message
classes), shared by the ROS 2 (DDS), ROS 1 and bag paths.

* :func:`decode_image`: ``sensor_msgs/Image`` (encoding, height, width, step, is_bigendian, data)
  -> (H, W, 3) uint8 RGB.
* :func:`decode_compressed`: ``sensor_msgs/CompressedImage`` (format, data) -> (H, W, 3) uint8 RGB.
* :func:`camera_from_camera_info`: ``sensor_msgs/CameraInfo`` (K, D, size, distortion model,
  binning, ROI) -> :class:`core.camera.Camera`.

Every unusable input raises :class:`ImageError` (a :class:`VlocError`) whose message says what
is wrong; bridges log it and skip the message.
"""
from __future__ import annotations

import cv2
import numpy as np

from core.camera import Camera, CameraError
from core.types import VlocError

#: encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1), "mono16": (1, 2),
}


class ImageError(VlocError):
    """A ROS image or camera-info message that cannot be used (the message says why)."""


def as_uint8(data) -> np.ndarray:
    """A message's ``uint8[]`` field (bytes, bytearray, memoryview, numpy array as rosbags gives,
    or a list of ints as cyclonedds gives) -> 1-D uint8 array (no copy for bytes-like input)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    return arr.reshape(-1)


def check_image_fields(encoding: str, height: int, width: int, step: int, data_len: int) -> None:
    """Cheap validation (no pixel access) of ``sensor_msgs/Image`` fields; raises :class:`ImageError`.

    Checks: a supported encoding, a positive size, ``step >= width * bytes_per_pixel`` and
    ``data_len >= step * height`` (rows may be padded; trailing bytes are ignored).
    """
    if encoding not in ENCODINGS:
        raise ImageError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ImageError(f"image has an empty size {width}x{height}")
    channels, depth = ENCODINGS[encoding]
    row = width * channels * depth
    if step < row:
        raise ImageError(f"step {step} is shorter than a {encoding} row of {width} pixels ({row} bytes)")
    if data_len < step * height:
        raise ImageError(f"truncated {encoding} image: {data_len} bytes, {step} x {height} = {step * height} expected")


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool | int, data) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> (height, width, 3) uint8 RGB.

    data: the ``uint8[]`` field (see :func:`as_uint8`), ``step`` bytes per row (padding ignored). rgb8 / bgr8 / rgba8 / bgra8 lose
    their alpha and are reordered to RGB; mono8 is replicated to three channels; mono16
    (byte order from ``is_bigendian``) is scaled linearly so that the frame's maximum maps to
    255 (10-, 12- and 16-bit sensors alike; SIFT is invariant to this gain).
    """
    check_image_fields(encoding, int(height), int(width), int(step), len(data))
    channels, depth = ENCODINGS[encoding]
    h, w, step = int(height), int(width), int(step)
    buf = as_uint8(data)[:step * h].reshape(h, step)[:, :w * channels * depth]
    if depth == 2:
        px = buf.view(">u2" if is_bigendian else "<u2").reshape(h, w)
        top = int(px.max())
        gray = (px.astype(np.float32) * (255.0 / top) + 0.5).astype(np.uint8) if top > 0 else np.zeros((h, w), np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    px = buf.reshape(h, w, channels)
    if encoding == "mono8":
        return np.repeat(px, 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(px[:, :, 2::-1])
    return np.ascontiguousarray(px[:, :, :3])


def check_compressed_fields(fmt: str, data_len: int) -> None:
    """Cheap validation of ``sensor_msgs/CompressedImage`` fields (format, data length); ImageError."""
    f = (fmt or "").lower()
    if "compresseddepth" in f:
        raise ImageError(f"compressed depth images ({fmt!r}) cannot be localized")
    if f and not any(k in f for k in ("jpeg", "jpg", "png")):
        raise ImageError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")
    if data_len == 0:
        raise ImageError("empty compressed image")


def decode_compressed(fmt: str, data) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (format, data) -> (H, W, 3) uint8 RGB (JPEG or PNG via OpenCV).

    fmt: ``"jpeg"``, ``"png"`` or image_transport's ``"rgb8; jpeg compressed bgr8"``; depth
    images (``compressedDepth``) are refused.
    """
    check_compressed_fields(fmt, len(data))
    img = cv2.imdecode(as_uint8(data), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode the {fmt or 'compressed'} image ({len(data)} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def camera_from_camera_info(K, D, width: int, height: int, distortion_model: str,
                            binning_x: int = 0, binning_y: int = 0,
                            roi: tuple[int, int, int, int] | None = None) -> Camera:
    """``sensor_msgs/CameraInfo`` fields -> vloc :class:`Camera` of the published image.

    K: 9 floats row-major (fx 0 cx; 0 fy cy; 0 0 1), ROS / OpenCV pixel convention (centre of
    the top-left pixel at (0, 0)); shifted by +0.5 into vloc's COLMAP convention.
    D: distortion coefficients. ``plumb_bob`` (k1 k2 p1 p2 k3) or ``rational_polynomial``
    (k1 k2 p1 p2 k3 k4 k5 k6): all zero -> PINHOLE; only k1 k2 p1 p2 nonzero -> OPENCV; a
    nonzero k3..k6 cannot be represented -> :class:`ImageError`. An empty model with an
    empty / zero D is taken as PINHOLE. Other models (``equidistant``...) -> ImageError.
    binning_x / binning_y (0 or 1: none) and roi (x_offset, y_offset, width, height; None or
    zero size: full frame) describe a cropped / binned image, as image_geometry does.
    """
    k = np.asarray(K, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise ImageError(f"CameraInfo K has {k.size} values, 9 expected")
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if not np.all(np.isfinite(k)) or fx <= 0 or fy <= 0:
        raise ImageError("CameraInfo K is uncalibrated (zero or invalid focal length)")
    d = np.asarray(D, dtype=np.float64).reshape(-1)
    model = (distortion_model or "").strip().lower()
    if model not in ("plumb_bob", "rational_polynomial", ""):
        raise ImageError(f"unsupported distortion model {distortion_model!r}; supported: plumb_bob, "
                         f"rational_polynomial (k3..k6 zero)")
    if model == "" and np.any(d != 0):
        raise ImageError("CameraInfo has distortion coefficients but no distortion model")
    if not np.all(np.isfinite(d)):
        raise ImageError("CameraInfo D has non-finite values")
    if np.any(d[4:] != 0):
        raise ImageError(f"distortion k3..k6 = {d[4:].tolist()} cannot be represented (vloc's OPENCV "
                         f"model has k1 k2 p1 p2 only); rectify the image or recalibrate without k3")
    # vloc (COLMAP) pixel convention, then crop and binning
    cx, cy = cx + 0.5, cy + 0.5
    w, h = int(width), int(height)
    if roi is not None and roi[2] > 0 and roi[3] > 0:
        cx, cy, w, h = cx - roi[0], cy - roi[1], int(roi[2]), int(roi[3])
    bx, by = max(int(binning_x), 1), max(int(binning_y), 1)
    fx, fy, cx, cy, w, h = fx / bx, fy / by, cx / bx, cy / by, w // bx, h // by
    dist = np.zeros(4) if d.size == 0 else np.r_[d[:4], np.zeros(max(0, 4 - d.size))]
    try:
        if np.all(dist == 0):
            return Camera("PINHOLE", w, h, (fx, fy, cx, cy))
        return Camera("OPENCV", w, h, (fx, fy, cx, cy, *dist))
    except CameraError as e:
        raise ImageError(f"CameraInfo: {e}") from None


def camera_from_info_msg(msg) -> Camera:
    """A sensor_msgs/CameraInfo message of either family (ROS 1 ``K``/``D`` or ROS 2 ``k``/``d``
    field names: rospy, rosbags or cyclonedds objects) -> Camera (ImageError when unusable)."""
    K = getattr(msg, "k", None)
    if K is None:
        K = msg.K
    D = getattr(msg, "d", None)
    if D is None:
        D = msg.D
    roi = msg.roi
    return camera_from_camera_info(K, D, msg.width, msg.height, msg.distortion_model, msg.binning_x,
                                   msg.binning_y, (roi.x_offset, roi.y_offset, roi.width, roi.height))
