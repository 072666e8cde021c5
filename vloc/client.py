"""Python client of the vloc localization service (REST + WebSocket stream), sync and async.

::

    from vloc.client import VlocClient, VlocClientError
    with VlocClient("http://127.0.0.1:8080", api_key) as c:
        res = c.localize("kitchen", rgb, camera)                    # dict: the server's JSON
        if res["accepted"]:
            print(res["world_from_cam"]["translation"])
        with c.stream("kitchen") as s:                              # one session per robot
            s.send(rgb, camera, frame_id=0, timestamp=time.time())
            reply = s.recv()                                        # one reply per frame, in order

    async with AsyncVlocClient(url, key) as c:                      # the same methods, awaited
        res = await c.localize("kitchen", rgb, camera)
        async with c.stream("kitchen") as s:
            await s.send(rgb, camera, frame_id=0)
            reply = await s.recv()

Images: an ``(H, W, 3)`` / ``(H, W)`` uint8 RGB array (encoded here, JPEG quality 95 by default,
``image_format="png"`` for lossless) or already encoded JPEG / PNG bytes (sent as they are).
Cameras: a :class:`vloc.camera.Camera` (or anything with ``model``, ``width``, ``height``,
``params``), a ``"MODEL W H PARAMS..."`` string or the wire dict. Priors: a
:class:`localize.PosePrior`, a ``(position, sigma_m)`` pair or ``{"position", "sigma"}``.

Every HTTP status >= 400 raises :class:`VlocClientError` with ``status`` and the server's
``detail`` (and ``request_id``, to find the request in the server's logs); a refused WebSocket
handshake too. Connection failures and timeouts raise :class:`VlocConnectionError` (a
VlocClientError with ``status`` None).

Sockets are opened with TCP_NODELAY: a request's small body written after its headers would
otherwise wait for the peer's delayed ACK (~40 ms per request on Linux).
"""
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
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import httpx

__all__ = ["VlocClient", "AsyncVlocClient", "VlocClientError", "VlocConnectionError", "StreamSession",
           "AsyncStreamSession", "encode_image", "stream_message"]

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
        raise TypeError(f"camera must be a vloc.camera.Camera, a 'MODEL W H PARAMS' string or a dict, "
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


# --------------------------------------------------------------------------------------------------
# sync
# --------------------------------------------------------------------------------------------------
class StreamSession:
    """A synchronous streaming session (``VlocClient.stream``): ``send`` frames, ``recv`` replies.

    The server answers every frame, in order, with one reply: a pose (``dropped`` False, with
    ``tracking`` and the motion ``prior`` it used) or a drop (``{"dropped": true, "reason":
    "stale" | "overflow" | "error", ...}``). ``send`` does not wait for the reply, so a robot
    may keep sending at its frame rate and read replies from another thread.
    """

    def __init__(self, ws, client: "VlocClient") -> None:
        self._ws, self._client = ws, client

    def send(self, image, camera, frame_id: int | str, timestamp: float | None = None, prior=None) -> None:
        """Send one frame (``camera`` may be None after the session's first frame)."""
        from websockets.exceptions import ConnectionClosed
        try:
            self._ws.send(self._client._frame(image, camera, frame_id, timestamp, prior))
        except ConnectionClosed as e:
            raise _closed_error(e) from None

    def recv(self, timeout: float | None = None) -> dict:
        """The next reply (TimeoutError after ``timeout`` seconds; default: the client's timeout)."""
        from websockets.exceptions import ConnectionClosed
        try:
            msg = self._ws.recv(timeout=self._client.timeout if timeout is None else timeout)
        except ConnectionClosed as e:
            raise _closed_error(e) from None
        return json.loads(msg)

    def localize(self, image, camera, frame_id: int | str, timestamp: float | None = None, prior=None) -> dict:
        """send + recv: one frame, its reply (for a robot that waits for each answer)."""
        self.send(image, camera, frame_id, timestamp, prior)
        return self.recv()

    def close(self) -> None:
        self._ws.close()


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


class VlocClient(_Shared):
    """Synchronous client of one vloc server (httpx; keep-alive connection, TCP_NODELAY).

    base_url: ``http://host:port``; api_key: a robot key (localize, stream, list its maps) or an
    admin key (everything); timeout: seconds per request (and per stream reply / handshake).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0, *,
                 image_format: str = "jpeg", jpeg_quality: int = 95, trust_env: bool = False,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._b = _Base(base_url, api_key, timeout, image_format, jpeg_quality)
        self._http = httpx.Client(base_url=self._b.base_url, timeout=timeout, trust_env=trust_env,
                                  headers=self._b._auth,
                                  transport=transport or httpx.HTTPTransport(socket_options=_NODELAY))


    def _request(self, method: str, url: str, ok: tuple[int, ...] = (), **kw) -> httpx.Response:
        try:
            r = self._http.request(method, url, **kw)
        except httpx.TimeoutException as e:
            raise VlocConnectionError(f"{method} {url}: no answer within {self.timeout} s ({type(e).__name__})") \
                from None
        except httpx.TransportError as e:
            raise VlocConnectionError(f"{method} {url}: cannot reach {self.base_url}: {e}") from None
        return _check(r, ok)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "VlocClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # probes ------------------------------------------------------------------------------------
    def health(self) -> dict:
        """``GET /healthz``: ``{"status": "ok"}`` when the process answers."""
        return self._request("GET", "/healthz").json()

    def ready(self) -> dict:
        """``GET /readyz``: ``{"ready", "maps", "active", "resident", "problems"}`` (a not-ready
        server's 503 is returned as its body, ``ready`` False, not raised)."""
        return self._request("GET", "/readyz", ok=(503,)).json()

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self._request("GET", "/metrics").text

    # maps --------------------------------------------------------------------------------------
    def list_maps(self) -> list[dict]:
        """The maps this key may see: ``[{"map_id", "active_version", "created_utc", "versions"}]``."""
        return self._request("GET", "/v1/maps").json()["maps"]

    def get_map(self, map_id: str) -> dict:
        return self._request("GET", _path(map_id)).json()

    def register_map(self, map_id: str, bundle: str | os.PathLike, version: str | None = None,
                     activate: bool | None = True) -> dict:
        """Upload a bundle (a directory, archived to tar.gz on the fly, or a .tar/.tar.gz file) as a
        new version of ``map_id`` (created on its first version). version: default the next
        integer; activate: True (default) makes it active, None lets the server decide (active
        when the map has none). Returns the version info. Admin key."""
        with _bundle_file(bundle) as (name, f):
            return self._request("POST", _path(map_id, "versions"), files={"bundle": (name, f, "application/gzip")},
                                 data=_register_fields(version, activate)).json()

    def register_map_path(self, map_id: str, server_path: str | os.PathLike, version: str | None = None,
                          activate: bool | None = True) -> dict:
        """Register a bundle that already lies on the server's disk (copied into its data dir)."""
        body: dict = {"path": str(server_path)}
        if version is not None:
            body["version"] = str(version)
        if activate is not None:
            body["activate"] = bool(activate)
        return self._request("POST", _path(map_id, "versions"), json=body).json()

    def activate(self, map_id: str, version: str) -> dict:
        """Make ``version`` the active one (hot swap); returns the map info."""
        return self._request("POST", _path(map_id, "versions", version, "activate")).json()

    def delete_version(self, map_id: str, version: str) -> dict:
        """Delete a version that is not active."""
        return self._request("DELETE", _path(map_id, "versions", version)).json()

    def delete_map(self, map_id: str) -> dict:
        """Delete a map and all its versions."""
        return self._request("DELETE", _path(map_id)).json()

    # keys (admin) ------------------------------------------------------------------------------
    def create_key(self, role: str, maps: list[str] | tuple[str, ...] = (), name: str = "") -> dict:
        """A new key; the secret is in ``["key"]`` of this answer only."""
        return self._request("POST", "/v1/keys", json={"role": role, "maps": list(maps), "name": name}).json()

    def list_keys(self) -> list[dict]:
        return self._request("GET", "/v1/keys").json()["keys"]

    def revoke_key(self, key_id: str) -> dict:
        return self._request("DELETE", f"/v1/keys/{quote(key_id, safe='')}").json()

    # localization ------------------------------------------------------------------------------
    def localize(self, map_id: str, image, camera, prior=None, robot_id: str | None = None,
                 timestamp: float | None = None, track: bool = False, max_wait_ms: float | None = None) -> dict:
        """Localize one frame on the map's active version; returns the server's JSON (pose both
        ways, covariance, ``accepted`` / ``reason``, inliers, timings, ...). ``track`` (with
        ``robot_id``): the server keeps this robot's last pose as the next frame's prior.
        ``max_wait_ms``: the server answers 429 ("busy: ...", :func:`is_busy`) instead of a late
        pose when the frame waited longer than this for a worker."""
        files, data = self._b._localize_parts(image, camera, prior, robot_id, timestamp, track, max_wait_ms)
        return self._request("POST", _path(map_id, "localize"), files=files, data=data).json()

    @contextlib.contextmanager
    def stream(self, map_id: str, open_timeout: float | None = None) -> Iterator[StreamSession]:
        """A streaming session on ``WS /v1/maps/{map_id}/stream`` (closed on exit)."""
        from websockets.exceptions import InvalidStatus, InvalidHandshake
        from websockets.sync.client import connect  # sets TCP_NODELAY on its socket
        with contextlib.ExitStack() as stack:
            try:
                ws = stack.enter_context(connect(_ws_url(self.base_url, map_id), additional_headers=self._b._auth,
                                                 proxy=None, max_size=None, compression=None,
                                                 open_timeout=open_timeout or self.timeout))
            except InvalidStatus as e:
                raise _handshake_error(e) from None
            except (InvalidHandshake, OSError, TimeoutError) as e:
                raise VlocConnectionError(f"stream to {self.base_url}: {e}") from None
            yield StreamSession(ws, self)


# --------------------------------------------------------------------------------------------------
# async
# --------------------------------------------------------------------------------------------------
class AsyncStreamSession:
    """An asyncio streaming session (``AsyncVlocClient.stream``); ``send`` and ``recv`` may run in
    different tasks (send at the frame rate, read replies as they come)."""

    def __init__(self, ws, client: "AsyncVlocClient") -> None:
        self._ws, self._client = ws, client

    async def send(self, image, camera, frame_id: int | str, timestamp: float | None = None, prior=None) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            await self._ws.send(self._client._frame(image, camera, frame_id, timestamp, prior))
        except ConnectionClosed as e:
            raise _closed_error(e) from None

    async def recv(self, timeout: float | None = None) -> dict:
        """The next reply (TimeoutError after ``timeout`` seconds; default: the client's timeout)."""
        import asyncio

        from websockets.exceptions import ConnectionClosed
        try:
            async with asyncio.timeout(self._client.timeout if timeout is None else timeout):
                msg = await self._ws.recv()
        except ConnectionClosed as e:
            raise _closed_error(e) from None
        return json.loads(msg)

    async def localize(self, image, camera, frame_id: int | str, timestamp: float | None = None,
                       prior=None) -> dict:
        await self.send(image, camera, frame_id, timestamp, prior)
        return await self.recv()

    async def paced(self, times, t0: float, send, on_reply, pending: dict, drain_s: float) -> None:
        """A robot's frame clock: ``await send(k)`` at loop time ``t0 + times[k]`` (it sends frame
        ``k`` with ``frame_id=k`` and puts ``k`` in ``pending``) while replies are read as they
        come: ``on_reply(k, reply)`` for each answered ``k`` (removed from ``pending``). After the
        last frame, replies are awaited up to ``drain_s``; what is left in ``pending`` was never
        answered. Exceptions (closed connection, ...) propagate with ``pending`` as it stands."""
        import asyncio

        loop = asyncio.get_running_loop()
        sending_done = asyncio.Event()

        async def receive() -> None:
            deadline = None
            while True:
                if sending_done.is_set():
                    if not pending:
                        return
                    deadline = deadline or loop.time() + drain_s
                    if loop.time() > deadline:
                        return
                try:
                    reply = await self.recv(timeout=0.25)  # cancelling a websockets recv loses nothing
                except TimeoutError:
                    continue
                k = reply.get("frame_id")
                if k in pending:
                    on_reply(k, reply)
                    pending.pop(k, None)

        receiver = asyncio.create_task(receive())
        try:
            for k, ts in enumerate(times):
                now = loop.time() - t0
                if now < ts:
                    await asyncio.sleep(ts - now)
                if receiver.done():
                    break
                await send(k)
            sending_done.set()
            await receiver
        finally:
            sending_done.set()
            if not receiver.done():
                receiver.cancel()

    async def close(self) -> None:
        await self._ws.close()


class AsyncVlocClient(_Shared):
    """asyncio client: the methods of :class:`VlocClient`, awaited (httpx.AsyncClient, websockets)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0, *,
                 image_format: str = "jpeg", jpeg_quality: int = 95, trust_env: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._b = _Base(base_url, api_key, timeout, image_format, jpeg_quality)
        self._http = httpx.AsyncClient(base_url=self._b.base_url, timeout=timeout, trust_env=trust_env,
                                       headers=self._b._auth,
                                       transport=transport or httpx.AsyncHTTPTransport(socket_options=_NODELAY))

    async def _request(self, method: str, url: str, ok: tuple[int, ...] = (), **kw) -> httpx.Response:
        try:
            r = await self._http.request(method, url, **kw)
        except httpx.TimeoutException as e:
            raise VlocConnectionError(f"{method} {url}: no answer within {self.timeout} s ({type(e).__name__})") \
                from None
        except httpx.TransportError as e:
            raise VlocConnectionError(f"{method} {url}: cannot reach {self.base_url}: {e}") from None
        return _check(r, ok)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncVlocClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def health(self) -> dict:
        return (await self._request("GET", "/healthz")).json()

    async def ready(self) -> dict:
        return (await self._request("GET", "/readyz", ok=(503,))).json()

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).text

    async def list_maps(self) -> list[dict]:
        return (await self._request("GET", "/v1/maps")).json()["maps"]

    async def get_map(self, map_id: str) -> dict:
        return (await self._request("GET", _path(map_id))).json()

    async def register_map(self, map_id: str, bundle: str | os.PathLike, version: str | None = None,
                           activate: bool | None = True) -> dict:
        import asyncio
        p = Path(bundle)
        if p.is_dir():
            if not (p / "manifest.json").is_file():
                raise ValueError(f"{p} has no manifest.json: not a map bundle")
            with tempfile.TemporaryFile(prefix="vloc-bundle-") as f:
                await asyncio.to_thread(_tar_bundle, p, f)  # archiving must not block the event loop
                return await self._upload(map_id, f"{p.name or 'bundle'}.tar.gz", f, version, activate)
        with _bundle_file(p) as (name, f):
            return await self._upload(map_id, name, f, version, activate)

    async def _upload(self, map_id, name, f, version, activate) -> dict:
        return (await self._request("POST", _path(map_id, "versions"),
                                    files={"bundle": (name, f, "application/gzip")},
                                    data=_register_fields(version, activate))).json()

    async def register_map_path(self, map_id: str, server_path: str | os.PathLike, version: str | None = None,
                                activate: bool | None = True) -> dict:
        body: dict = {"path": str(server_path)}
        if version is not None:
            body["version"] = str(version)
        if activate is not None:
            body["activate"] = bool(activate)
        return (await self._request("POST", _path(map_id, "versions"), json=body)).json()

    async def activate(self, map_id: str, version: str) -> dict:
        return (await self._request("POST", _path(map_id, "versions", version, "activate"))).json()

    async def delete_version(self, map_id: str, version: str) -> dict:
        return (await self._request("DELETE", _path(map_id, "versions", version))).json()

    async def delete_map(self, map_id: str) -> dict:
        return (await self._request("DELETE", _path(map_id))).json()

    async def create_key(self, role: str, maps: list[str] | tuple[str, ...] = (), name: str = "") -> dict:
        return (await self._request("POST", "/v1/keys", json={"role": role, "maps": list(maps), "name": name})).json()

    async def list_keys(self) -> list[dict]:
        return (await self._request("GET", "/v1/keys")).json()["keys"]

    async def revoke_key(self, key_id: str) -> dict:
        return (await self._request("DELETE", f"/v1/keys/{quote(key_id, safe='')}")).json()

    async def localize(self, map_id: str, image, camera, prior=None, robot_id: str | None = None,
                       timestamp: float | None = None, track: bool = False, max_wait_ms: float | None = None
                       ) -> dict:
        files, data = self._b._localize_parts(image, camera, prior, robot_id, timestamp, track, max_wait_ms)
        return (await self._request("POST", _path(map_id, "localize"), files=files, data=data)).json()

    @contextlib.asynccontextmanager
    async def stream(self, map_id: str, open_timeout: float | None = None) -> AsyncIterator[AsyncStreamSession]:
        """An asyncio streaming session on ``WS /v1/maps/{map_id}/stream`` (closed on exit).
        asyncio sets TCP_NODELAY on its TCP transports."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        async with contextlib.AsyncExitStack() as stack:
            try:
                ws = await stack.enter_async_context(connect(
                    _ws_url(self.base_url, map_id), additional_headers=self._b._auth, proxy=None, max_size=None,
                    compression=None, open_timeout=open_timeout or self.timeout))
            except InvalidStatus as e:
                raise _handshake_error(e) from None
            except (InvalidHandshake, OSError, TimeoutError) as e:
                raise VlocConnectionError(f"stream to {self.base_url}: {e}") from None
            yield AsyncStreamSession(ws, self)
