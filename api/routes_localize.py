"""``POST /v1/maps/{map_id}/localize``: one frame in, the core's result out."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import map_for_robot
from api.errors import ApiError, describe_errors
from api.forms import file_field, read_form, require_content_type, text_field
from api.models import ErrorResponse, LocalizeMeta, LocalizeResponse
from api.service import StaleFrame

router = APIRouter(tags=["localize"])

_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["image", "meta"], "additionalProperties": False, "properties": {
        "image": {"type": "string", "format": "binary", "description": "the frame, JPEG or PNG"},
        "meta": {"$ref": "#/components/schemas/LocalizeMeta"}}},
    "encoding": {"meta": {"contentType": "application/json"}}}}}}

ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 422, 429, 503)}


@router.post("/v1/maps/{map_id}/localize", response_model=LocalizeResponse, response_model_exclude_unset=True,
             responses=ERRORS, openapi_extra=_BODY, summary="Localize one frame in a map")
async def localize(request: Request, map_id: str = Depends(map_for_robot)) -> LocalizeResponse:
    """Multipart: ``image`` (JPEG/PNG file) and ``meta`` (JSON :class:`LocalizeMeta`: camera,
    optional prior {position, sigma}, robot_id, timestamp, track: the server remembers the robot's
    last pose as the next prior, inliers: return the inlier keypoints). Returns the pose both ways
    (cam_from_world, world_from_cam), covariance, inliers, accepted/reason and timings, and
    latitude/longitude/altitude/heading when the map is georeferenced. With a ``robot_id`` the
    answer also appears on the map's live fleet (``GET /v1/maps/{map_id}/live``)."""
    received = time.monotonic()
    service = request.app.state.vloc
    s = service.settings
    await run_in_threadpool(service.active, map_id)  # 404 before reading the body
    require_content_type(request, "multipart/form-data")
    form = await read_form(request, ("image", "meta"), max_files=2)
    try:
        raw_meta = await text_field(form, "meta", s.max_meta_bytes)
        image = await file_field(form, "image", "the frame, JPEG or PNG").read()
    finally:
        await form.close()
    try:
        meta = LocalizeMeta.model_validate_json(raw_meta)
    except ValidationError as e:
        raise ApiError(422, describe_errors(e.errors(include_input=False), "meta")) from None
    key = (map_id, meta.robot_id) if meta.track and meta.robot_id else None
    t = meta.timestamp if meta.timestamp is not None else time.time()
    prior = meta.prior
    if prior is None and key is not None:
        prior = service.robot_tracks.prior(key, t)
    deadline = None if meta.max_wait_ms is None else received + meta.max_wait_ms / 1000
    try:
        out = await service.localize(map_id, image, meta.camera, prior, "rest",
                                     {"robot_id": meta.robot_id, "timestamp": meta.timestamp}, deadline_mono=deadline,
                                     features=meta.features, inliers=meta.inliers, received_mono=received)
    except StaleFrame:
        service.metrics.localizations.labels("rest", "busy").inc()
        waited = (time.monotonic() - received) * 1000
        raise ApiError(429, f"busy: the frame waited {waited:.0f} ms on the server, over meta.max_wait_ms="
                            f"{meta.max_wait_ms:g}; send a newer frame", headers={"Retry-After": "0"}) from None
    if key is not None:
        res = out.result
        service.robot_tracks.update(key, t, out.payload["map_version"], res.accepted,
                                    res.world_from_cam.translation if res.accepted and res.cam_from_world else None)
    return LocalizeResponse.model_validate(out.payload)
