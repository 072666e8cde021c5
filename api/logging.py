"""Structured JSON logs with a request id, returned to the client as ``X-Request-ID``.

Every log line is one JSON object: ts, level, logger, msg, request_id, and the record's
``fields`` (``log.info("...", extra={"fields": {...}})``). The request id is the client's
``X-Request-ID`` when it is a short safe token, otherwise a new uuid4 hex; it is set in a
context variable for the whole request (worker threads included, see ``api.service``).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str] = ContextVar("vloc_request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
access_log = logging.getLogger("vloc.api.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
               "request_id": getattr(record, "request_id", None) or request_id.get()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for vloc's and uvicorn's loggers (the server process only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("vloc", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Request id in, ``X-Request-ID`` out, one access-log line and one latency sample per request."""

    def __init__(self, app: ASGIApp, metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        request_id.set(rid)  # each request runs in its own task: no reset needed
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start", "websocket.accept"):
                status = message.get("status", 101)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            dt = time.perf_counter() - t0
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            if scope["type"] == "http":
                self.metrics.http_seconds.labels(scope["method"], endpoint, str(status)).observe(dt)
            state = scope.get("state", {})
            access_log.info("%s %s %s", scope.get("method", "WS"), endpoint, status, extra={"fields": {
                "method": scope.get("method", "WEBSOCKET"), "path": scope.get("path"), "endpoint": endpoint,
                "status": status, "duration_ms": round(dt * 1000, 2), "key_id": state.get("key_id"),
                "client": (scope.get("client") or ("?",))[0]}})
