"""What the sync and async clients of the vloc service share: errors, encoding of images, cameras,
priors and stream frames, and the request parts (see :mod:`api.client`)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx

_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_HEADER = struct.Struct(">I")


class VlocClientError(Exception):
    """An error answer of the service (``status`` 4xx / 5xx, ``detail`` its reason), or no answer
    at all (:class:`VlocConnectionError`, ``status`` None)."""

    def __init__(self, status: int | None, detail: str, request_id: str | None = None,
                 body: Any = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status}: {self.detail}{where}" if self.status is not None else f"{self.detail}{where}"


class VlocConnectionError(VlocClientError):
    """The service could not be reached, or did not answer in time (``status`` None)."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


# --------------------------------------------------------------------------------------------------
# wire helpers (pure)
# --------------------------------------------------------------------------------------------------
def is_busy(e: Exception) -> bool:
    """A REST frame the server dropped under load (``meta.max_wait_ms``): not a failure."""
    return isinstance(e, VlocClientError) and e.status == 429 and e.detail.startswith("busy")


def encode_image(image, image_format: str = "jpeg", jpeg_quality: int = 95) -> tuple[bytes, str]:
    """(bytes, MIME type) of a frame: arrays are encoded (JPEG or PNG), bytes pass through."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if data.startswith(b"\x89PNG"):
            return data, "image/png"
        return data, "image/jpeg" if data.startswith(b"\xff\xd8") else "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        raise TypeError("pass the image as an array or as encoded bytes (Path(...).read_bytes())")
    import numpy as np
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    buf = io.BytesIO()
    fmt = image_format.lower()
    if fmt in ("jpeg", "jpg"):
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=int(jpeg_quality))
        return buf.getvalue(), "image/jpeg"
    if fmt == "png":
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")


def camera_json(camera) -> dict:
    """The wire form ``{"model", "width", "height", "params"}`` of a camera."""
    if isinstance(camera, dict):
        return {"model": camera["model"], "width": int(camera["width"]), "height": int(camera["height"]),
                "params": [float(p) for p in camera["params"]]}
    if isinstance(camera, str):
        parts = camera.replace(",", " ").split()
        if len(parts) < 4:
            raise ValueError(f"camera string {camera!r} must be 'MODEL WIDTH HEIGHT PARAMS...'")
        return {"model": parts[0].upper(), "width": int(parts[1]), "height": int(parts[2]),
                "params": [float(p) for p in parts[3:]]}
    try:
        return {"model": str(camera.model), "width": int(camera.width), "height": int(camera.height),
                "params": [float(p) for p in camera.params]}
    except AttributeError:
        raise TypeError(f"camera must be a core.camera.Camera, a 'MODEL W H PARAMS' string or a dict, "
                        f"got {type(camera).__name__}") from None


def prior_json(prior) -> dict | None:
    """The wire form ``{"position": [x, y, z], "sigma": s}`` of a position prior (or None)."""
    if prior is None:
        return None
    if isinstance(prior, dict):
        position, sigma = prior["position"], prior["sigma"]
    elif hasattr(prior, "position") and hasattr(prior, "sigma_m"):
        position, sigma = prior.position, prior.sigma_m
    else:
        try:
            position, sigma = prior
        except (TypeError, ValueError):
            raise TypeError("prior must be a localize.PosePrior, a (position, sigma_m) pair or "
                            "{'position', 'sigma'}") from None
    pos = [float(x) for x in position]
    if len(pos) != 3:
        raise ValueError(f"prior position must have 3 coordinates, got {len(pos)}")
    return {"position": pos, "sigma": float(sigma)}


def stream_message(header: dict, image: bytes) -> bytes:
    """One binary WS frame: [4-byte big-endian header length][JSON header][image bytes]."""
    h = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(h)) + h + image


def _detail(status: int, content: bytes) -> tuple[str, Any]:
    body: Any = None
    if content:
        try:
            body = json.loads(content)
        except ValueError:
            body = content[:2000].decode("utf-8", "replace")
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"], body
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], body
    return f"HTTP {status}", body


def _check(r: httpx.Response, ok: tuple[int, ...] = ()) -> httpx.Response:
    if r.status_code >= 400 and r.status_code not in ok:
        detail, body = _detail(r.status_code, r.content)
        raise VlocClientError(r.status_code, detail, r.headers.get("x-request-id"), body)
    return r


def _path(*parts: str) -> str:
    return "/v1/maps/" + "/".join(quote(str(p), safe="") for p in parts)


def _tar_bundle(bundle: Path, fileobj) -> None:
    """Write the bundle directory as a tar.gz (its files under one top-level folder) into fileobj."""
    with tarfile.open(fileobj=fileobj, mode="w:gz", compresslevel=1) as tf:  # features.h5 is gzip already
        tf.add(str(bundle), arcname=bundle.name or "bundle")
    fileobj.seek(0)


@contextlib.contextmanager
def _bundle_file(bundle) -> Iterator[tuple[str, Any]]:
    """(file name, open binary file) of a bundle: a directory is archived (tar.gz) into a temp
    file on the fly; a .tar / .tar.gz file is sent as it is."""
    p = Path(bundle)
    if p.is_dir():
        if not (p / "manifest.json").is_file():
            raise ValueError(f"{p} has no manifest.json: not a map bundle")
        with tempfile.TemporaryFile(prefix="vloc-bundle-") as f:
            _tar_bundle(p, f)
            yield f"{p.name or 'bundle'}.tar.gz", f
    elif p.is_file():
        with open(p, "rb") as f:
            yield p.name, f
    else:
        raise FileNotFoundError(f"bundle {p} is neither a directory nor a tar file")


def _register_fields(version: str | None, activate: bool | None) -> dict:
    data = {}
    if version is not None:
        data["version"] = str(version)
    if activate is not None:
        data["activate"] = "true" if activate else "false"
    return data


def _ws_url(base_url: str, map_id: str) -> str:
    u = httpx.URL(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
    return str(u.copy_with(scheme=scheme, path=u.path.rstrip("/") + _path(map_id, "stream"), query=None))


def _handshake_error(e: Exception) -> VlocClientError:
    """websockets' InvalidStatus (refused handshake) -> VlocClientError with the server's detail."""
    resp = getattr(e, "response", None)
    status = getattr(resp, "status_code", None)
    if status is None:
        return VlocConnectionError(f"stream handshake failed: {e}")
    headers = getattr(resp, "headers", {}) or {}
    detail, body = _detail(status, getattr(resp, "body", b"") or b"")
    return VlocClientError(status, detail, headers.get("x-request-id"), body)


def _closed_error(e: Exception) -> VlocClientError:
    rcvd = getattr(e, "rcvd", None)
    if rcvd is not None and 4000 <= rcvd.code < 5000:  # servers without HTTP denial: 4000 + status
        return VlocClientError(rcvd.code - 4000, rcvd.reason or f"refused ({rcvd.code})")
    code = f" (code {rcvd.code}: {rcvd.reason})" if rcvd is not None else ""
    return VlocConnectionError(f"the stream was closed{code}")


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, image_format: str,
                 jpeg_quality: int) -> None:
        self.base_url = str(base_url).rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        if image_format.lower() not in ("jpeg", "jpg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")

    @property
    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _localize_parts(self, image, camera, prior, robot_id, timestamp, track=False,
                        max_wait_ms: float | None = None) -> tuple[dict, dict]:
        data, mime = encode_image(image, self.image_format, self.jpeg_quality)
        meta: dict = {"camera": camera_json(camera)}
        p = prior_json(prior)
        if p is not None:
            meta["prior"] = p
        if robot_id is not None:
            meta["robot_id"] = str(robot_id)
        if timestamp is not None:
            meta["timestamp"] = float(timestamp)
        if track:
            meta["track"] = True
        if max_wait_ms is not None:
            meta["max_wait_ms"] = float(max_wait_ms)
        name = "frame.png" if mime == "image/png" else "frame.jpg"
        return {"image": (name, data, mime)}, {"meta": json.dumps(meta)}

    def _frame(self, image, camera, frame_id, timestamp, prior) -> bytes:
        data, _ = encode_image(image, self.image_format, self.jpeg_quality)
        header: dict = {"frame_id": frame_id}
        if camera is not None:
            header["camera"] = camera_json(camera)
        if timestamp is not None:
            header["timestamp"] = float(timestamp)
        p = prior_json(prior)
        if p is not None:
            header["prior"] = p
        return stream_message(header, data)


class _Shared:
    """What the sync and async clients share (``self._b`` is their :class:`_Base`)."""

    _b: "_Base"

    @property
    def base_url(self) -> str:
        return self._b.base_url

    @property
    def timeout(self) -> float:
        return self._b.timeout

    def _frame(self, *a) -> bytes:
        return self._b._frame(*a)
