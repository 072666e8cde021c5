"""The asyncio client of the vloc service (``AsyncVlocClient``): the same methods as
:class:`api.client.VlocClient`, awaited."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import httpx

from api.client_base import (
    _NODELAY,
    VlocConnectionError,
    _Base,
    _bundle_file,
    _check,
    _closed_error,
    _handshake_error,
    _path,
    _register_fields,
    _Shared,
    _tar_bundle,
    _ws_url,
)


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
