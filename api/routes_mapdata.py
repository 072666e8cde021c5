"""What a map looks like, for the console and other viewers: a version's details, its points
(decimated, binary), its cameras and its HD layers. Same auth as localization: a robot key on the
maps it is granted, an admin key on every map; 401 / 403 / 404 / 422 as everywhere. ``version``
(query) picks a registered version; default the active one.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api.auth import VersionId, map_for_robot
from api.errors import ApiError
from api.mapdata import (
    decimate,
    encode_points,
    extent,
    georeference_summary,
    layer_files,
    layers_info,
    occupancy_png,
    read_points,
)
from api.models import ID_PATTERN, CamerasOut, ErrorResponse, LayersOut, VersionDetails
from api.routes_maps import version_info
from api.service import Service
from core.types import VlocError

router = APIRouter(tags=["map data"])
ERRORS = {s: {"model": ErrorResponse} for s in (401, 403, 404, 422, 503)}
VersionQuery = Query(None, pattern=ID_PATTERN, max_length=64, description="a registered version (default: the active one)")
#: bundles never change once registered: a client may keep what it read for a while
CACHE = {"Cache-Control": "private, max-age=3600"}

_POINTS_DOC = {200: {"description": "little-endian: b'VLP1', uint32 n, uint32 total, uint32 0, then n x 3 float32 "
                                    "x, y, z (map frame, m), n x 3 uint8 r, g, b, zero-padded to a multiple of 4 "
                                    "bytes. Headers X-Points-Total / X-Points-Returned.",
                     "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_FILE_DOC = {200: {"description": "the file's bytes (occupancy_floorK.png: the grid as a greyscale PNG, its "
                                  "resolution and origin in X-Occupancy-Resolution / X-Occupancy-Origin and in "
                                  "GET .../layers)",
                   "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                               "image/png": {"schema": {"type": "string", "format": "binary"}}}}}
_MEDIA = {"ply": "application/octet-stream", "las": "application/octet-stream", "tif": "image/tiff",
          "json": "application/json", "geojson": "application/geo+json", "yaml": "text/yaml; charset=utf-8",
          "pgm": "image/x-portable-graymap"}


def _service(request: Request) -> Service:
    return request.app.state.vloc


def resolve_version(service: Service, map_id: str, version: str | None) -> str:
    """The requested version, or the active one; ApiError 404 when the map or version is unknown."""
    if version is None:
        return service.active(map_id).version
    m = service.registry.get_map(map_id)
    if m is None:
        raise ApiError(404, f"no map {map_id!r}")
    if all(v.version != version for v in m.versions):
        raise ApiError(404, f"map {map_id!r} has no version {version!r}")
    return version


def _points(service: Service, map_id: str, version: str):
    def read():
        try:
            return read_points(service.registry.version_dir(map_id, version))
        except Exception as e:  # a broken model: the bundle, not the request
            raise ApiError(503, f"map {map_id!r} version {version!r}: cannot read its points: {e}") from None
    return service.mapdata.get((map_id, version, "points"), read)


@router.get("/v1/maps/{map_id}/versions/{version}", response_model=VersionDetails, responses=ERRORS,
            summary="One version: statistics, georeference, feature sets, layers, extent, history")
def version_details(request: Request, map_id: str = Depends(map_for_robot), version: str = VersionId) -> VersionDetails:
    service = _service(request)
    m = service.registry.get_map(map_id)
    if m is None:
        raise ApiError(404, f"no map {map_id!r}")
    rec = next((v for v in m.versions if v.version == version), None)
    if rec is None:
        raise ApiError(404, f"map {map_id!r} has no version {version!r}")
    manifest = service.manifest(map_id, version)
    info = version_info(rec, m.active_version).model_dump()
    sets = manifest.get("feature_sets")
    return VersionDetails(
        **info, world_frame=manifest.get("world_frame"), statistics=manifest.get("statistics") or {},
        georeference=georeference_summary(manifest),
        feature_sets=list(sets) if isinstance(sets, dict) else [(manifest.get("features") or {}).get("type", "sift")],
        layers=sorted(layer_files(manifest)), extent=extent(_points(service, map_id, version)),
        revision=manifest.get("revision"), history=manifest.get("history") or [])


@router.get("/v1/maps/{map_id}/points", response_class=Response, responses={**_POINTS_DOC, **ERRORS},
            summary="The map's coloured 3D points, decimated to max_points (binary)")
def points(request: Request, map_id: str = Depends(map_for_robot), version: str | None = VersionQuery,
           max_points: int = Query(200_000, ge=1, description="at most this many points: a uniform random subset "
                                                              "(the same on every call) when the map has more; "
                                                              "over the server's max_points_limit -> 422")) -> Response:
    service = _service(request)
    limit = service.settings.max_points_limit
    if max_points > limit:
        raise ApiError(422, f"max_points {max_points} is over this server's limit of {limit}")
    version = resolve_version(service, map_id, version)

    def body() -> bytes:
        pts = _points(service, map_id, version)
        keep = decimate(len(pts), max_points)
        if keep is None:
            return encode_points(pts.xyz, pts.rgb, len(pts))
        return encode_points(pts.xyz[keep], pts.rgb[keep], len(pts))
    data = service.mapdata.get((map_id, version, "points-body", max_points), body)
    n = int.from_bytes(data[4:8], "little")
    total = int.from_bytes(data[8:12], "little")
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Points-Total": str(total), "X-Points-Returned": str(n), "X-Map-Version": version,
                             **CACHE})


@router.get("/v1/maps/{map_id}/cameras", response_model=CamerasOut, responses=ERRORS,
            summary="The map's cameras (intrinsics) and its images' poses")
def cameras(request: Request, map_id: str = Depends(map_for_robot), version: str | None = VersionQuery) -> CamerasOut:
    """``cameras``: each intrinsics once (usable as a localize ``camera``); ``images``: name,
    camera id and ``world_from_cam`` (translation = camera centre, quaternion w, x, y, z)."""
    service = _service(request)
    version = resolve_version(service, map_id, version)
    cams = service.cameras(map_id, version)
    images = [{"name": name, "camera_id": cid,
               "world_from_cam": {"translation": [round(float(v), 5) for v in T.translation],
                                  "quaternion_wxyz": [round(float(v), 7) for v in T.quat_wxyz]}}
              for name, cid, T in cams.images]
    return CamerasOut(map_id=map_id, version=version, cameras=list(cams.cameras.values()), images=images)


@router.get("/v1/maps/{map_id}/layers", response_model=LayersOut, responses=ERRORS,
            summary="The map's HD layers: floors, occupancy grids (metadata), mesh, files")
def layers(request: Request, map_id: str = Depends(map_for_robot), version: str | None = VersionQuery) -> LayersOut:
    """Without layers (``vloc map layers`` not run): ``has_layers`` false, and ``level_from_map``
    the frame a floor plan would use (from the cameras' up)."""
    service = _service(request)
    version = resolve_version(service, map_id, version)
    level, source = service.level(map_id, version)
    return LayersOut(map_id=map_id, version=version, **layers_info(service.manifest(map_id, version), level, source))


@router.get("/v1/maps/{map_id}/layers/{name}", response_class=Response, responses={**_FILE_DOC, **ERRORS},
            summary="One layer file (mesh.ply, floors.json, occupancy_floorK.png / .pgm / .yaml, ...)")
async def layer_file(request: Request, name: str, map_id: str = Depends(map_for_robot),
                     version: str | None = VersionQuery) -> Response:
    """A file the version's manifest lists under ``layers/``, or ``occupancy_floorK.png``: the
    floor's occupancy grid converted to PNG. 404 for any other name."""
    service = _service(request)
    version = await run_in_threadpool(resolve_version, service, map_id, version)
    manifest = await run_in_threadpool(service.manifest, map_id, version)
    files = layer_files(manifest)
    root = service.registry.version_dir(map_id, version)
    if name.endswith(".png") and name.startswith("occupancy_floor"):
        pgm = name[:-4] + ".pgm"
        entry = files.get(pgm)
        if entry is None:
            raise ApiError(404, f"map {map_id!r} version {version!r} has no layer {name[:80]!r}")
        pgm_path = (root / entry["path"]).resolve()
        if not pgm_path.is_relative_to(root.resolve()):
            raise ApiError(503, f"map {map_id!r} version {version!r}: layer {pgm!r} is not in the bundle")

        def png() -> bytes:
            try:
                return occupancy_png(pgm_path)
            except VlocError as e:
                raise ApiError(503, f"map {map_id!r} version {version!r}: {e}") from None
        data = await run_in_threadpool(service.mapdata.get, (map_id, version, "png", pgm), png)
        return Response(data, media_type="image/png", headers={
            "X-Occupancy-Resolution": repr(float(entry["resolution"])),
            "X-Occupancy-Origin": ",".join(repr(float(v)) for v in entry["origin"]), **CACHE})
    entry = files.get(name)
    if entry is None:
        listed = ", ".join(sorted(files)) or "none: run 'vloc map layers'"
        raise ApiError(404, f"map {map_id!r} version {version!r} has no layer {name[:80]!r} (it has: {listed})")
    path = (root / entry["path"]).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise ApiError(503, f"map {map_id!r} version {version!r}: layer {name!r} is not in the bundle")
    media = _MEDIA.get(name.rsplit(".", 1)[-1], "application/octet-stream")
    return FileResponse(path, media_type=media, headers=CACHE)
