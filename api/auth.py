"""API-key authentication and map authorization (FastAPI dependencies).

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Order of checks on
every map route: the key (401) before anything about the map, so an unauthenticated caller
learns nothing about which maps exist; then the map id's syntax (422); then the grant (403:
robot keys use only the maps they are granted, admin keys every map); existence (404) last.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.models import ID_PATTERN
from api.registry import ALL_MAPS, Registry, check_id

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vloc"'}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: key id, role, the maps a robot key is granted, the key's label."""

    key_id: str
    role: str
    maps: frozenset[str]
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, map_id: str) -> bool:
        return self.is_admin or ALL_MAPS in self.maps or map_id in self.maps


def token_from_headers(headers) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key`` (None when neither is present)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def authenticate(token: str | None, registry: Registry) -> Principal:
    """The principal of a live key; ApiError 401 otherwise."""
    if not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", _CHALLENGE)
    if len(token) > 256 or not token.isascii():
        raise ApiError(401, "invalid or revoked API key", _CHALLENGE)
    rec = registry.key_for_token(token)
    if rec is None:
        raise ApiError(401, "invalid or revoked API key", _CHALLENGE)
    return Principal(rec.key_id, rec.role, frozenset(rec.maps), rec.name)


def authorize_map(principal: Principal, map_id: str) -> str:
    """Syntax (422) then grant (403) of a map id for this principal."""
    check_id(map_id)
    if not principal.may_use(map_id):
        raise ApiError(403, f"this key is not granted map {map_id!r}")
    return map_id


# FastAPI dependencies -------------------------------------------------------------------------
def get_principal(request: Request,
                  bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
                  api_key: str | None = Security(_api_key)) -> Principal:
    token = bearer.credentials if bearer is not None else api_key
    principal = authenticate(token if token else token_from_headers(request.headers),
                             request.app.state.vloc.registry)
    request.state.key_id = principal.key_id
    return principal


def require_admin(principal: Principal = Depends(get_principal)) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "this operation needs an admin key")
    return principal


MapId = Path(pattern=ID_PATTERN, max_length=64, description="map id: 1-64 letters, digits, '_', '.', '-'")
VersionId = Path(pattern=ID_PATTERN, max_length=64, description="version id: 1-64 letters, digits, '_', '.', '-'")


def map_for_robot(map_id: str = MapId, principal: Principal = Depends(get_principal)) -> str:
    """A map id the caller (robot or admin) may localize on."""
    return authorize_map(principal, map_id)


def map_for_admin(map_id: str = MapId, principal: Principal = Depends(require_admin)) -> str:
    """A map id an admin manages."""
    return check_id(map_id)
