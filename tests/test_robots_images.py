"""ROS image / camera-info fields -> vloc inputs: every encoding, padding, byte order, bad input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.types import VlocError
from robots.images import ImageError, camera_from_camera_info, decode_compressed, decode_image

H, W = 5, 7


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def pack(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """(H, W, C) or (H, W) array -> (row-padded bytes, step)."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    step = rows.shape[1] + pad
    out = np.full((rows.shape[0], step), 0xAB, np.uint8)
    out[:, :rows.shape[1]] = rows
    return out.tobytes() + b"\x00" * 3, step   # trailing bytes past step * height are ignored


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_color_encodings_decode_to_rgb(rgb, encoding, pad):
    alpha = np.full((H, W, 1), 200, np.uint8)
    src = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
           "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2)}[encoding]
    data, step = pack(np.ascontiguousarray(src), pad)
    out = decode_image(encoding, H, W, step, 0, data)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    # the same field as cyclonedds (list of ints) and rosbags (numpy uint8) deliver it
    np.testing.assert_array_equal(decode_image(encoding, H, W, step, 0, list(data)), rgb)
    np.testing.assert_array_equal(decode_image(encoding, H, W, step, 0, np.frombuffer(data, np.uint8)), rgb)


def test_mono8_with_padding(rgb):
    gray = rgb[:, :, 0].copy()
    data, step = pack(gray, 5)
    out = decode_image("mono8", H, W, step, False, data)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_respects_byte_order_and_scales_to_the_frame_maximum(bigendian):
    px = np.random.default_rng(1).integers(0, 4096, (H, W)).astype(np.uint16)   # a 12-bit sensor
    px[0, 0] = 4000
    data, step = pack(px.astype(">u2" if bigendian else "<u2"), 2)
    out = decode_image("mono16", H, W, step, bigendian, data)
    expected = np.floor(px.astype(np.float64) * 255.0 / px.max() + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out[:, :, 0].max() == 255
    # read with the wrong byte order, the picture is a different one
    wrong = decode_image("mono16", H, W, step, 1 - bigendian, data)
    assert not np.array_equal(wrong, out)
    dark = decode_image("mono16", H, W, W * 2, 0, bytes(H * W * 2))
    assert dark.max() == 0


@pytest.mark.parametrize("encoding", ["yuv422", "32FC1", "bayer_rggb8", "16UC1", "RGB8", ""])
def test_unsupported_encodings_are_clear_errors(encoding):
    with pytest.raises(ImageError, match="unsupported image encoding.*supported: rgb8"):
        decode_image(encoding, H, W, W * 3, 0, bytes(H * W * 4))


def test_truncated_and_inconsistent_images_are_errors(rgb):
    data, step = pack(rgb, 0)
    with pytest.raises(ImageError, match="truncated"):
        decode_image("rgb8", H, W, step, 0, data[:step * H - 1])
    with pytest.raises(ImageError, match="step"):
        decode_image("rgb8", H, W, W * 3 - 1, 0, data)
    with pytest.raises(ImageError, match="empty size"):
        decode_image("rgb8", 0, W, step, 0, data)
    assert issubclass(ImageError, VlocError)   # CLI: exit 2 with the message


def test_compressed_png_is_exact_and_jpeg_close(rgb):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), big)
    smooth = cv2.GaussianBlur(big, (0, 0), 3)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    out = decode_compressed("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 3
    # channel order: a pure red picture stays red
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    ok, png = cv2.imencode(".png", cv2.cvtColor(red, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), red)


@pytest.mark.parametrize("fmt, data, match", [
    ("jpeg", b"not a jpeg at all", "cannot decode"),
    ("jpeg", b"", "empty"),
    ("16UC1; compressedDepth", b"\x00" * 20, "depth"),
    ("tiff", b"II*\x00", "unsupported compressed format"),
])
def test_bad_compressed_images_are_errors(fmt, data, match):
    with pytest.raises(ImageError, match=match):
        decode_compressed(fmt, data)


K = [525.0, 0.0, 319.5, 0.0, 526.0, 239.5, 0.0, 0.0, 1.0]


def test_camera_info_plumb_bob_zero_is_pinhole_in_colmap_pixels():
    cam = camera_from_camera_info(K, [0.0] * 5, 640, 480, "plumb_bob")
    assert cam.model == "PINHOLE" and (cam.width, cam.height) == (640, 480)
    assert cam.params == (525.0, 526.0, 320.0, 240.0)      # ROS centre-of-pixel (0, 0) -> COLMAP (0.5, 0.5)
    assert camera_from_camera_info(K, [], 640, 480, "").model == "PINHOLE"


def test_camera_info_distortion_is_opencv_and_projects_like_opencv():
    D = [-0.21, 0.05, 0.001, -0.0007, 0.0]
    cam = camera_from_camera_info(K, D, 640, 480, "plumb_bob")
    assert cam.model == "OPENCV" and cam.params[4:] == tuple(D[:4])
    pts = np.random.default_rng(2).uniform([-1, -0.7, 2], [1, 0.7, 4], (20, 3))
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), np.array(K).reshape(3, 3), np.array(D))
    np.testing.assert_allclose(cam.project(pts), ref[:, 0] + 0.5, atol=1e-6)
    rational = camera_from_camera_info(K, D[:4] + [0.0] * 4, 640, 480, "rational_polynomial")
    assert rational == cam


def test_camera_info_binning_and_roi():
    full = camera_from_camera_info(K, [0.0] * 5, 640, 480, "plumb_bob")
    binned = camera_from_camera_info(K, [0.0] * 5, 640, 480, "plumb_bob", binning_x=2, binning_y=2)
    assert binned == full.scaled(0.5)
    crop = camera_from_camera_info(K, [0.0] * 5, 640, 480, "plumb_bob", roi=(100, 50, 320, 240))
    assert (crop.width, crop.height) == (320, 240) and crop.params == (525.0, 526.0, 220.0, 190.0)


@pytest.mark.parametrize("k, d, model, match", [
    (K, [0.1, 0, 0, 0, 0.02], "plumb_bob", "k3"),
    (K, [0.1, 0, 0, 0], "equidistant", "unsupported distortion model"),
    ([0.0] * 9, [], "plumb_bob", "uncalibrated"),
    (K[:6], [], "plumb_bob", "9 expected"),
    (K, [0.1], "", "no distortion model"),
])
def test_unusable_camera_info_is_an_error(k, d, model, match):
    with pytest.raises(ImageError, match=match):
        camera_from_camera_info(k, d, 640, 480, model)
