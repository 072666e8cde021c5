"""Map registry routes: list, register a version (tar upload or server path), activate, delete."""
from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, VersionId, get_principal, map_for_admin, map_for_robot
from api.bundles import copy_from_path, dir_bytes, extract_archive, summarize, validate_bundle
from api.cache import load_map
from api.errors import ApiError, describe_errors
from api.forms import file_field, read_form, require_content_type, text_field
from api.models import Activation, Deleted, ErrorResponse, MapInfo, MapList, RegisterPathRequest, VersionInfo
from api.registry import ALL_MAPS, ActivationRecord, MapRecord, VersionRecord, check_id

router = APIRouter(tags=["maps"])
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 415, 422)}

_REGISTER_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["bundle"], "additionalProperties": False,
                                       "properties": {
        "bundle": {"type": "string", "format": "binary",
                   "description": "the bundle as a tar archive (optionally gzip-compressed)"},
        "version": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "activate": {"type": "boolean"}}}},
    "application/json": {"schema": {"$ref": "#/components/schemas/RegisterPathRequest"}}}}}


def version_info(v: VersionRecord, active: str | None) -> VersionInfo:
    return VersionInfo(map_id=v.map_id, version=v.version, active=v.version == active, bytes=v.bytes,
                       registered_utc=v.registered_utc, summary=v.summary)


def map_info(m: MapRecord, activations: list[ActivationRecord] = ()) -> MapInfo:
    return MapInfo(map_id=m.map_id, active_version=m.active_version, created_utc=m.created_utc,
                   versions=[version_info(v, m.active_version) for v in m.versions],
                   activations=[Activation(version=a.version, activated_utc=a.activated_utc, key_id=a.key_id)
                                for a in activations])


@router.get("/v1/maps", response_model=MapList, responses=ERRORS, summary="List maps, versions and active versions")
def list_maps(request: Request, principal: Principal = Depends(get_principal)) -> MapList:
    """Admin keys see every map; robot keys see the maps they are granted."""
    only = None if principal.is_admin or ALL_MAPS in principal.maps else set(principal.maps)
    registry = request.app.state.vloc.registry
    return MapList(maps=[map_info(m, registry.activations(m.map_id)) for m in registry.list_maps(only)])


@router.get("/v1/maps/{map_id}", response_model=MapInfo, responses=ERRORS, summary="One map and its versions")
def get_map(request: Request, map_id: str = Depends(map_for_robot)) -> MapInfo:
    registry = request.app.state.vloc.registry
    m = registry.get_map(map_id)
    if m is None:
        raise ApiError(404, f"no map {map_id!r}")
    return map_info(m, registry.activations(map_id))


@router.post("/v1/maps/{map_id}/versions", response_model=VersionInfo, status_code=201, responses=ERRORS,
             openapi_extra=_REGISTER_BODY, summary="Register a bundle as a new version of a map")
async def register_version(request: Request, map_id: str = Depends(map_for_admin),
                           principal: Principal = Depends(get_principal)) -> VersionInfo:
    """Upload a tar (or tar.gz) in the multipart field ``bundle`` (optional fields ``version``,
    ``activate``), or send JSON ``{"path": "/server/side/bundle"}``. The bundle is extracted
    safely, validated (manifest, format version, checksums) and loaded once before it is
    recorded. The map is created on its first version; the first version is activated unless
    ``activate`` is false. Registration by server path is off unless the server names
    ``import_roots`` (403 otherwise, and for a path outside them)."""
    service = request.app.state.vloc
    s = service.settings
    media = require_content_type(request, "multipart/form-data", "application/json")
    staging = await run_in_threadpool(service.registry.staging_dir)
    try:
        if media == "application/json":
            try:
                req = RegisterPathRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise ApiError(422, describe_errors(e.errors(include_input=False))) from None
            version, activate = req.version, req.activate
            root = await run_in_threadpool(copy_from_path, req.path, staging, s.import_roots,
                                           s.max_bundle_bytes, s.max_bundle_members)
        else:
            form = await read_form(request, ("bundle", "version", "activate"), max_files=1)
            try:
                upload = file_field(form, "bundle", "a tar or tar.gz of the bundle")
                version = (await text_field(form, "version", 64, False, 422) or b"").decode() or None
                act = (await text_field(form, "activate", 8, False, 422) or b"").decode().lower() or None
                if act not in (None, "true", "false", "1", "0"):
                    raise ApiError(422, "field 'activate' must be true or false")
                activate = None if act is None else act in ("true", "1")
                if version is not None:
                    check_id(version, "version")
                root = await run_in_threadpool(extract_archive, upload.file, staging, s.max_bundle_bytes,
                                               s.max_bundle_members)
            finally:
                await form.close()
        manifest = await run_in_threadpool(validate_bundle, root)
        try:
            loaded = await run_in_threadpool(load_map, map_id, "staged", root, service.localizer_config)
        except Exception as e:  # the core raises VlocError, pycolmap/h5py their own types
            service.metrics.on_load(0.0, False)
            raise ApiError(422, f"the bundle does not load: {e}") from None
        service.metrics.on_load(loaded.load_seconds, True)
        nbytes = await run_in_threadpool(dir_bytes, root)
        rec, activated = await run_in_threadpool(service.registry.add_version, map_id, root, summarize(manifest),
                                                 nbytes, version, activate, principal.key_id)
        if activated:
            loaded.version = rec.version
            service.cache.put(map_id, rec.version, loaded)
        return version_info(rec, rec.version if activated else None)
    finally:
        await run_in_threadpool(shutil.rmtree, staging, True)


@router.post("/v1/maps/{map_id}/versions/{version}/activate", response_model=MapInfo, responses=ERRORS,
             summary="Make a version the active one (atomic hot swap)")
async def activate_version(request: Request, map_id: str = Depends(map_for_admin), version: str = VersionId,
                           principal: Principal = Depends(get_principal)) -> MapInfo:
    """The version is loaded first (an error leaves the active version as it was), then the
    registry switches: requests already running finish on the version they hold, new ones
    use this one."""
    service = request.app.state.vloc
    check_id(version, "version")
    m = await run_in_threadpool(service.registry.get_map, map_id)
    if m is None:
        raise ApiError(404, f"no map {map_id!r}")
    if all(v.version != version for v in m.versions):
        raise ApiError(404, f"map {map_id!r} has no version {version!r}")
    await run_in_threadpool(service.loaded, map_id, version)
    await run_in_threadpool(service.registry.set_active, map_id, version, principal.key_id)
    return map_info(await run_in_threadpool(service.registry.get_map, map_id),
                    await run_in_threadpool(service.registry.activations, map_id))


@router.delete("/v1/maps/{map_id}/versions/{version}", response_model=Deleted, responses=ERRORS,
               summary="Delete a version that is not active")
def delete_version(request: Request, map_id: str = Depends(map_for_admin), version: str = VersionId) -> Deleted:
    service = request.app.state.vloc
    check_id(version, "version")
    path = service.registry.remove_version(map_id, version)
    service.forget(map_id, version)
    service.registry.discard(path)
    return Deleted(map_id=map_id, version=version)


@router.delete("/v1/maps/{map_id}", response_model=Deleted, responses=ERRORS,
               summary="Delete a map and all its versions")
def delete_map(request: Request, map_id: str = Depends(map_for_admin)) -> Deleted:
    service = request.app.state.vloc
    path = service.registry.remove_map(map_id)
    service.forget(map_id)
    service.registry.discard(path)
    return Deleted(map_id=map_id)
