"""Request limits: body bytes (413), image type (415), pixel count / decode bombs (413), decoding (422).

Status codes, as documented in the OpenAPI description:

* 413: request body over the limit (checked from ``Content-Length`` before reading, and while
  reading a chunked body); an image whose header declares more than ``max_pixels`` pixels
  (checked from the header, before any pixel is decoded: a decode bomb never allocates).
* 415: an image that is neither JPEG nor PNG (by its magic bytes, not its declared type).
* 422: an empty, truncated or corrupt image.
"""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError

_BUNDLE_UPLOAD = re.compile(r"^/v1/maps/[^/]+/versions/?$")


class BodyLimitMiddleware:
    """413 for request bodies over the limit: bundle uploads get ``bundle_limit``, the rest ``limit``."""

    def __init__(self, app: ASGIApp, limit: int, bundle_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.bundle_limit = bundle_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.bundle_limit if _BUNDLE_UPLOAD.match(scope["path"]) else self.limit
        declared = next((v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"), None)
        if declared is not None:
            try:
                n = int(declared)
                if n < 0:
                    raise ValueError
            except ValueError:
                await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
                return
            if n > limit:
                await JSONResponse({"detail": f"request body of {n} bytes is over the limit of {limit} bytes"},
                                   413)(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


def sniff_image_type(data: bytes) -> str:
    """'jpeg' or 'png' from the magic bytes; ApiError 422 (empty) or 415 (anything else)."""
    if not data:
        raise ApiError(422, "the image is empty (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise ApiError(415, "unsupported image type: send a JPEG or PNG file")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB or (H, W) uint8 grey, with every limit checked.

    The pixel count comes from the header (``Image.open`` reads no pixel data) and is checked
    before decoding. EXIF orientation is ignored: the camera intrinsics describe the stored
    pixel grid.
    """
    kind = sniff_image_type(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["JPEG", "PNG", "MPO"] if kind == "jpeg" else ["PNG"])
    except Image.DecompressionBombError as e:
        raise ApiError(413, f"image has too many pixels: {e}") from None
    except Exception as e:  # PIL raises many types for corrupt headers (OSError, SyntaxError, ...)
        raise ApiError(422, f"cannot read the {kind.upper()} header: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ApiError(422, f"image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                return np.clip(arr / (257.0 if arr.max(initial=0) > 255 else 1.0), 0, 255).astype(np.uint8)
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # truncated data, bad Huffman tables, CRC errors, ...
        raise ApiError(422, f"cannot decode the {kind.upper()} image: {e}") from None
    if arr.shape[:2] != (h, w):
        raise ApiError(422, f"decoded image is {arr.shape[1]}x{arr.shape[0]}, header said {w}x{h}")
    return np.ascontiguousarray(arr)
