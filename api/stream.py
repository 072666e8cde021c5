"""``WS /v1/maps/{map_id}/stream``: a per-robot localization session.

Protocol
--------
Authenticate the handshake like any request (``Authorization: Bearer <key>`` or ``X-API-Key``);
a refused handshake gets an HTTP 401 / 403 / 404 / 422 with ``{"detail": ...}`` (servers
without the ASGI denial-response extension close with code 4000 + status instead). A browser,
which cannot set headers on a WebSocket, offers the subprotocols ``["vloc", "vloc.key.<key>"]``
instead (``Sec-WebSocket-Protocol``: a header, so the key stays out of URLs and access logs); the
server then accepts with subprotocol ``vloc``.

Client -> server, one **binary** message per frame::

    [4 bytes: N, unsigned big-endian][N bytes: UTF-8 JSON header][image: JPEG or PNG bytes]

The header is :class:`api.models.StreamFrameMeta`: ``{"frame_id": 7, "camera": {"model":
"PINHOLE", "width": 640, "height": 480, "params": [...]}, "timestamp": 1700000000.25}``
(``camera`` may be left out after the first frame; ``prior`` may force a prior; ``robot_id``
names the robot on the live fleet, default the key's name).

Server -> client, one **text** message (JSON, :class:`api.models.StreamReply`) per frame, in
the order the frames were sent:

* processed: every field of the REST localize response plus ``frame_id``, ``dropped: false``,
  ``prior_used``, ``prior`` (``{"position", "sigma"}`` or null) and ``tracking``
  (``global`` | ``tracking`` | ``lost``);
* dropped: ``{"frame_id", "dropped": true, "reason": "stale", "age_ms"}`` when the frame is
  older than ``max_frame_age_s`` when a worker could take it (its lateness on arrival, receive
  time minus its ``timestamp``, plus its wait on the server); ``"reason": "busy"`` when it
  waited on the server longer than ``max_queue_wait_s`` (load shedding: under overload the
  server answers the newest frames promptly instead of every frame late); ``"reason":
  "overflow"`` when more than ``stream_max_pending`` frames wait (the oldest waiting one goes);
* unusable: ``{"frame_id", "dropped": true, "reason": "error", "status": 4xx, "detail"}``
  (bad header, bad image, camera mismatch, ...). The session goes on.

Tracking: the last accepted pose and a constant-velocity model give each next frame a
:class:`localize.PosePrior` that narrows retrieval (:mod:`localize.tracking`); after
``stream_lost_after`` consecutive rejections the session is lost and searches globally; a
switch of the map's active version (hot swap) also starts the motion model afresh.

Each session has its own queue and processes one frame at a time in the shared worker pool,
so a slow or flooding client only delays itself; a client that never reads its replies and
lets its queue grow past a hard cap is disconnected (close code 1008).
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from api.auth import authenticate, authorize_map, token_from_headers
from api.errors import ApiError, describe_errors
from api.frame_limits import FrameLimits
from api.models import CameraIn, PriorIn, StreamFrameMeta
from api.service import Service, StaleFrame
from localize.tracking import Tracker

log = logging.getLogger("vloc.api.stream")
router = APIRouter()
HEADER = struct.Struct(">I")


@dataclass
class _Frame:
    frame_id: object
    received_mono: float
    received_wall: float
    meta: StreamFrameMeta | None = None
    image: bytes | None = None
    error: tuple[int, str] | None = None
    drop: str | None = None


def parse_frame(data: bytes, max_meta_bytes: int) -> tuple[StreamFrameMeta, bytes]:
    """Split one binary message into (header, image bytes); ApiError 4xx when malformed."""
    if len(data) < HEADER.size:
        raise ApiError(400, "a frame is [4-byte big-endian header length][JSON header][image bytes]")
    (n,) = HEADER.unpack_from(data)
    if n > max_meta_bytes:
        raise ApiError(413, f"frame header of {n} bytes is over the limit of {max_meta_bytes}")
    if HEADER.size + n > len(data):
        raise ApiError(400, f"frame header length {n} runs past the end of the message ({len(data)} bytes)")
    try:
        meta = StreamFrameMeta.model_validate_json(data[HEADER.size:HEADER.size + n])
    except ValidationError as e:
        raise ApiError(422, describe_errors(e.errors(include_input=False), "header")) from None
    if isinstance(meta.frame_id, str) and len(meta.frame_id) > 128:
        raise ApiError(422, "header.frame_id: at most 128 characters")
    return meta, data[HEADER.size + n:]


class StreamSession:
    """One WebSocket session: a receive loop that queues frames, a process loop that answers them."""

    def __init__(self, ws: WebSocket, service: Service, map_id: str, token: str | None = None,
                 robot_id: str | None = None) -> None:
        self.ws, self.service, self.map_id, self.token = ws, service, map_id, token
        #: the robot's name on the live fleet: the header's ``robot_id`` once given, else this default
        self.robot_id = robot_id
        self.key_checked = time.monotonic()
        s = service.settings
        self.settings = s
        self.tracker = Tracker(s.stream_prior_sigma_m, s.stream_lost_after, s.stream_prior_max_gap_s)
        self.frames: deque[_Frame] = deque()
        self.wakeup = asyncio.Event()
        self.camera: CameraIn | None = None
        self.features: str | None = None
        self.version: str | None = None
        self.hard_cap = 16 * s.stream_max_pending + 64

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive_loop())
        processor = asyncio.create_task(self._process_loop())
        done, pending = await asyncio.wait({receiver, processor}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is not None and not isinstance(exc, (WebSocketDisconnect, ConnectionError, RuntimeError)):
                log.error("stream session failed", exc_info=exc)

    # receiving ---------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            frame = _Frame(None, time.monotonic(), time.time())
            data = msg.get("bytes")
            if data is None:
                frame.error = (400, "send frames as binary messages: [4-byte big-endian header length]"
                                    "[JSON header][JPEG/PNG bytes]")
            else:
                try:
                    frame.meta, frame.image = parse_frame(data, self.settings.max_meta_bytes)
                    frame.frame_id = frame.meta.frame_id
                except ApiError as e:
                    frame.error = (e.status, e.detail)
            self.frames.append(frame)
            self._shed_overflow()
            if len(self.frames) > self.hard_cap:
                await self.ws.close(code=1008, reason="too many unanswered frames: read the replies")
                return
            self.wakeup.set()

    def _shed_overflow(self) -> None:
        waiting = [f for f in self.frames if f.image is not None and f.drop is None and f.error is None]
        for f in waiting[:max(0, len(waiting) - self.settings.stream_max_pending)]:
            f.drop, f.image = "overflow", None

    # processing --------------------------------------------------------------------------------
    async def _process_loop(self) -> None:
        while True:
            while not self.frames:
                self.wakeup.clear()
                await self.wakeup.wait()
            if not await self._key_still_valid():
                return
            frame = self.frames.popleft()
            reply = await self._handle(frame)
            self.service.metrics.stream_frames.labels(
                "processed" if not reply["dropped"] else reply["reason"]).inc()
            await self.ws.send_text(json.dumps(reply))

    async def _key_still_valid(self) -> bool:
        """Re-authenticate at most every ``stream_key_recheck_s``; close the session when refused."""
        if time.monotonic() - self.key_checked < self.settings.stream_key_recheck_s:
            return True
        try:
            principal = await asyncio.to_thread(authenticate, self.token, self.service.registry)
            authorize_map(principal, self.map_id)
        except ApiError as e:
            log.info("closing a stream on map %s: %s", self.map_id, e.detail)
            await self.ws.close(code=4000 + e.status, reason=e.detail[:120])
            return False
        self.key_checked = time.monotonic()
        return True

    async def _handle(self, f: _Frame) -> dict:
        if f.error is not None:
            return self._error(f.frame_id, *f.error)
        if f.drop is not None:
            return {"frame_id": f.frame_id, "dropped": True, "reason": f.drop}
        meta = f.meta
        limits = FrameLimits.of(self.settings.max_frame_age_s, self.settings.max_queue_wait_s, f.received_wall,
                                meta.timestamp)
        late = limits.verdict(time.monotonic() - f.received_mono)
        if late is not None:
            return {"frame_id": f.frame_id, "dropped": True, **late}
        camera = meta.camera or self.camera
        if camera is None:
            return self._error(f.frame_id, 422, "header.camera: required on the first frame of a session")
        t = meta.timestamp if meta.timestamp is not None else f.received_wall
        prior = meta.prior or self.tracker.prior(t)
        tracking = "tracking" if prior is not None else ("lost" if self.tracker.state == "lost" else "global")
        robot_id = meta.robot_id or self.robot_id
        try:
            # the frame may also go stale while it waits for a worker: a second check there
            out = await self.service.localize(self.map_id, f.image, camera, prior, "stream",
                                              {"frame_id": f.frame_id, "timestamp": meta.timestamp,
                                               "robot_id": robot_id},
                                              deadline_mono=f.received_mono + limits.max_queue_s,
                                              features=meta.features or self.features, received_mono=f.received_mono)
        except StaleFrame:
            return {"frame_id": f.frame_id, "dropped": True,
                    **limits.verdict(time.monotonic() - f.received_mono, past_deadline=True)}
        except ApiError as e:
            return self._error(f.frame_id, e.status, e.detail)
        except Exception:  # a bug must not end the robot's session: answer like a 500, go on
            log.exception("frame %r of a stream on map %s failed", f.frame_id, self.map_id)
            return self._error(f.frame_id, 500, "internal server error")
        self.camera = camera
        self.features = meta.features or self.features
        self.robot_id = robot_id
        res = out.result
        if out.payload["map_version"] != self.version:  # a new version may have another frame
            self.tracker.reset()
            self.version = out.payload["map_version"]
        self.tracker.update(t, res.accepted, res.world_from_cam.translation if res.accepted else None)
        if isinstance(prior, PriorIn):
            prior_out = {"position": list(prior.position), "sigma": prior.sigma}
        else:
            prior_out = None if prior is None else {"position": prior.position.tolist(), "sigma": prior.sigma_m}
        return {"frame_id": f.frame_id, "dropped": False, **out.payload, "tracking": tracking, "prior": prior_out}

    @staticmethod
    def _error(frame_id, status: int, detail: str) -> dict:
        return {"frame_id": frame_id, "dropped": True, "reason": "error", "status": status, "detail": detail}


SUBPROTOCOL = "vloc"
KEY_PREFIX = "vloc.key."


def token_from_subprotocols(offered) -> str | None:
    """The key a browser offers as subprotocols ``["vloc", "vloc.key.<key>"]`` (None without both)."""
    offered = [str(p).strip() for p in offered]
    if SUBPROTOCOL not in offered:
        return None
    keys = [p[len(KEY_PREFIX):] for p in offered if p.startswith(KEY_PREFIX) and len(p) > len(KEY_PREFIX)]
    return keys[0] if len(keys) == 1 else None


async def _refuse(ws: WebSocket, e: ApiError) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"detail": e.detail}, e.status, headers=e.headers))
    else:
        await ws.close(code=4000 + e.status, reason=e.detail[:120])


@router.websocket("/v1/maps/{map_id}/stream")
async def stream(websocket: WebSocket, map_id: str) -> None:
    """Per-robot streaming localization (protocol: module docstring of ``api.stream``)."""
    service: Service = websocket.app.state.vloc
    token = token_from_headers(websocket.headers)
    subprotocol = None
    if token is None:
        token = token_from_subprotocols(websocket.scope.get("subprotocols") or ())
        subprotocol = SUBPROTOCOL if token is not None else None
    try:
        principal = await asyncio.to_thread(authenticate, token, service.registry)
        websocket.scope.setdefault("state", {})["key_id"] = principal.key_id
        authorize_map(principal, map_id)
        await asyncio.to_thread(service.active, map_id)
    except ApiError as e:
        await _refuse(websocket, e)
        return
    await websocket.accept(subprotocol=subprotocol)
    service.metrics.stream_sessions.inc()
    try:
        await StreamSession(websocket, service, map_id, token, principal.name or principal.key_id).run()
    finally:
        service.metrics.stream_sessions.dec()
        try:
            await websocket.close()
        except (RuntimeError, WebSocketDisconnect):
            pass  # already closed by the client or by the session
