"""The one error type the service raises for bad requests: an HTTP status and a clear reason."""
from __future__ import annotations


class ApiError(Exception):
    """Becomes ``{"detail": detail}`` with ``status`` (a 4xx for anything the client can fix)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def describe_errors(errors: list[dict], prefix: str = "") -> str:
    """Pydantic / FastAPI validation errors -> one readable line ('meta.camera.width: ...; ...')."""
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    if len(errors) > 10:
        parts.append(f"... and {len(errors) - 10} more")
    return "; ".join(parts) or "invalid request"
