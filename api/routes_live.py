"""``GET /v1/maps/{map_id}/live``: the robots localizing on a map, as server-sent events.

Authenticated like every map route, by header (401 / 403 / 404 before the stream starts), so a
browser reads it with ``fetch`` and an ``Authorization`` header: the key never appears in a URL
or an access log. The body is ``text/event-stream``; each event's ``data`` is one JSON
:class:`api.models.LiveEvent`:

* ``event: snapshot`` first: every robot on the map, with its recent ``track``;
* ``event: update`` then: the robots that changed since the previous event and the ids that left
  (``gone``), at most every ``live_min_interval_s`` (updates in between are merged) and at
  least once a second (an empty update is the heartbeat: the client's "last seen" ages move);
* ``event: error`` (``{"status", "detail"}``) and the end of the stream when the key is revoked
  or loses the map (checked every ``stream_key_recheck_s``).

A robot appears after its first answer: stream sessions (``robot_id`` in the frame header,
default the key's name) and REST requests that carry a ``robot_id``.
"""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.auth import authenticate, authorize_map, map_for_robot, token_from_headers
from api.errors import ApiError
from api.models import ErrorResponse
from api.service import Service

router = APIRouter(tags=["live"])
_DOC = {200: {"description": "text/event-stream of LiveEvent (module api.routes_live): event snapshot, then "
                             "update events (at least one a second)",
              "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/LiveEvent"}}}},
        **{s: {"model": ErrorResponse} for s in (401, 403, 404, 422)}}


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/v1/maps/{map_id}/live", response_class=StreamingResponse, responses=_DOC,
            summary="Live fleet: the robots on a map (pose, 1-sigma ellipse, accepted, latency), server-sent events")
async def live(request: Request, map_id: str = Depends(map_for_robot)) -> StreamingResponse:
    """Server-sent events (see the module docstring of ``api.routes_live``)."""
    service: Service = request.app.state.vloc
    await run_in_threadpool(service.active, map_id)  # 404 before the stream starts
    token = token_from_headers(request.headers)
    return StreamingResponse(_events(service, map_id, token), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(service: Service, map_id: str, token: str | None):
    s = service.settings
    board = service.fleet
    sub = board.subscribe(map_id)
    checked = time.monotonic()
    try:
        first = True
        while not service.closing.is_set():
            sub.event.clear()  # before reading: a change from now on wakes the next wait
            robots, gone = board.changes(sub, with_track=first)
            yield _event("snapshot" if first else "update",
                         {"map_id": map_id, "server_time": time.time(), "robots": robots, "gone": gone})
            first = False
            if s.live_min_interval_s:
                await asyncio.sleep(s.live_min_interval_s)
            try:
                await asyncio.wait_for(sub.event.wait(), timeout=max(0.0, 1.0 - s.live_min_interval_s))
            except TimeoutError:
                pass  # the heartbeat
            if time.monotonic() - checked >= s.stream_key_recheck_s:
                try:
                    principal = await asyncio.to_thread(authenticate, token, service.registry)
                    authorize_map(principal, map_id)
                except ApiError as e:
                    yield _event("error", {"status": e.status, "detail": e.detail})
                    return
                checked = time.monotonic()
    finally:
        board.unsubscribe(sub)
