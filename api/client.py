"""Python client of the vloc localization service (REST + WebSocket stream), sync and async.

::

    from api.client import VlocClient, VlocClientError
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
Cameras: a :class:`core.camera.Camera` (or anything with ``model``, ``width``, ``height``,
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
import json
import os
from typing import Iterator
from urllib.parse import quote

import httpx

from api.client_base import (
    _NODELAY,
    VlocClientError,
    VlocConnectionError,
    _Base,
    _bundle_file,
    _check,
    _closed_error,
    _handshake_error,
    _path,
    _register_fields,
    _Shared,
    _ws_url,
    camera_json,
    encode_image,
    is_busy,
    stream_message,
)

__all__ = ["VlocClient", "AsyncVlocClient", "VlocClientError", "VlocConnectionError", "StreamSession",
           "AsyncStreamSession", "encode_image", "stream_message", "camera_json", "is_busy"]


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
        """Register a bundle that already lies on the server's disk (copied into its data dir); only
        under the directories the server's ``import_roots`` names (none by default: 403)."""
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
        from websockets.exceptions import InvalidHandshake, InvalidStatus
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


from api.client_async import AsyncStreamSession, AsyncVlocClient  # noqa: E402  (one import for both clients)
