"""Admin routes for API keys (the same operations as ``vloc keys``)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import Principal, get_principal, require_admin
from api.errors import ApiError
from api.models import ErrorResponse, KeyCreated, KeyCreateRequest, KeyInfo, KeyList, Me
from api.registry import KeyRecord

router = APIRouter(tags=["keys"], dependencies=[Depends(require_admin)])
#: what any key may ask about itself
me_router = APIRouter(tags=["keys"])
ERRORS = {s: {"model": ErrorResponse} for s in (401, 403, 404, 422)}


@me_router.get("/v1/me", response_model=Me, responses={401: {"model": ErrorResponse}},
               summary="The caller's key: id, label, role and granted maps (what a console may show)")
def me(principal: Principal = Depends(get_principal)) -> Me:
    return Me(key_id=principal.key_id, name=principal.name, role=principal.role, maps=sorted(principal.maps))


def key_info(k: KeyRecord) -> KeyInfo:
    return KeyInfo(key_id=k.key_id, name=k.name, role=k.role, maps=list(k.maps), created_utc=k.created_utc,
                   revoked_utc=k.revoked_utc)


@router.get("/v1/keys", response_model=KeyList, responses=ERRORS, summary="List API keys (never their secrets)")
def list_keys(request: Request) -> KeyList:
    return KeyList(keys=[key_info(k) for k in request.app.state.vloc.registry.list_keys()])


@router.post("/v1/keys", response_model=KeyCreated, status_code=201, responses=ERRORS,
             summary="Create an API key; the secret is in this response only")
def create_key(request: Request, body: KeyCreateRequest) -> KeyCreated:
    rec, token = request.app.state.vloc.registry.create_key(body.role, body.maps, body.name)
    return KeyCreated(**key_info(rec).model_dump(), key=token)


@router.delete("/v1/keys/{key_id}", response_model=KeyInfo, responses=ERRORS, summary="Revoke an API key")
def revoke_key(request: Request, key_id: str) -> KeyInfo:
    registry = request.app.state.vloc.registry
    if not registry.revoke_key(key_id):
        raise ApiError(404, f"no live key {key_id[:64]!r}")
    return key_info(next(k for k in registry.list_keys() if k.key_id == key_id))
