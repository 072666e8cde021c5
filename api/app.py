"""``create_app(settings)``: the FastAPI application of the localization service."""
from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema

import api.stream as stream_module
from api import routes_console, routes_keys, routes_live, routes_localize, routes_mapdata, routes_maps, routes_ops
from api.errors import ApiError, describe_errors
from api.limits import BodyLimitMiddleware
from api.logging import RequestContextMiddleware, request_id
from api.models import (
    CameraIn,
    LiveEvent,
    LocalizeMeta,
    PriorIn,
    RegisterPathRequest,
    RobotLive,
    StreamFrameMeta,
    StreamReply,
)
from api.service import Service
from api.settings import Settings
from localize import LocalizerConfig

log = logging.getLogger("vloc.api")

def _protocol_text() -> str:
    """The WS protocol section of api.stream's docstring, in Markdown."""
    text = stream_module.__doc__.split("Protocol", 1)[1].split("Each session has", 1)[0]
    return re.sub(r":(class|mod):`([^`]+)`", r"`\2`", text.replace("-" * 8, "").replace("``", "`"))


DESCRIPTION = f"""
Indoor visual localization for robot fleets: one camera frame in, a 6-DoF pose with covariance
(or an honest rejection) out. Poses: `cam_from_world` (x_cam = R x_world + t) and
`world_from_cam`; quaternions (w, x, y, z); metres.

**Auth.** `Authorization: Bearer <key>` or `X-API-Key: <key>` on everything but `/healthz`,
`/readyz` and `/metrics`. 401 without a valid key (checked before anything about the map),
403 for a map the key is not granted or an admin operation with a robot key.

**Errors** are `{{"detail": "<reason>"}}`: 400 malformed body, 404 unknown map or version,
409 conflict, 413 body over the upload limit or image with too many pixels (from its header,
before decoding), 415 unsupported content or image type (JPEG and PNG only), 422 invalid
fields, invalid map id, empty/truncated/corrupt image, camera that does not match the image or
has NaN/negative values, 503 a registered map that cannot be loaded. Each response carries
`X-Request-ID`.

**Streaming: `WS /v1/maps/{{map_id}}/stream`** (WebSocket, not listed as an operation).
{_protocol_text()}
Schemas: `StreamFrameMeta` (frame header) and `StreamReply` (replies).

**Live fleet: `GET /v1/maps/{{map_id}}/live`** (server-sent events, authenticated by header like
every route): a `snapshot` event, then `update` events (at least one a second) of `LiveEvent`:
each robot's last accepted pose in the floor plan's level frame, 1-sigma ellipse, accepted /
reason, latency and last seen. A robot appears with its stream session (`robot_id` in the frame
header, default the key's name) or a REST request with a `robot_id`.

**Map data** (for viewers): `/versions/{{version}}` (details), `/points` (binary, decimated to
`max_points`), `/cameras`, `/layers` and `/layers/{{name}}` (occupancy grids as PNG + metadata,
mesh, ...), each for the active version or `?version=`. **Console**: `/console/` (static files
served from the package, no CDN; a Content-Security-Policy on every file); `GET /v1/me` tells a
key what it may see.
"""


def _openapi(app: FastAPI):
    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in
                                      (LocalizeMeta, CameraIn, PriorIn, RegisterPathRequest, StreamFrameMeta,
                                       StreamReply, LiveEvent, RobotLive)], ref_template="#/components/schemas/{model}")
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, s in defs.get("$defs", {}).items():
            comps.setdefault(name, s)
        app.openapi_schema = schema
        return schema
    return build


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b[:64].decode("latin-1")})
    for e in errors:
        e.pop("input", None)
    return JSONResponse({"detail": describe_errors(errors), "errors": errors}, 422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    rid = request_id.get()
    return JSONResponse({"detail": "internal server error", "request_id": rid}, 500,
                        headers={"X-Request-ID": rid})


def create_app(settings: Settings, localizer_config: LocalizerConfig | None = None) -> FastAPI:
    """The service over ``settings.data_dir`` (created if missing). State: ``app.state.vloc``
    (:class:`api.service.Service`: registry, cache, metrics, worker pool)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    service = Service(settings, localizer_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s with %d workers", settings.data_dir, settings.workers)
        yield
        service.shutdown()

    from core import __version__
    app = FastAPI(title="vloc localization service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, redirect_slashes=False)
    app.state.vloc = service
    for r in (routes_localize.router, routes_maps.router, routes_mapdata.router, routes_live.router,
              routes_keys.me_router, routes_keys.router, routes_ops.router, stream_module.router):
        app.include_router(r)
    if settings.console:
        app.include_router(routes_console.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes,
                       bundle_limit=settings.max_bundle_upload_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics)  # added last = outermost
    app.openapi = _openapi(app)
    return app
