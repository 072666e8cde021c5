"""The operator console: static files from ``api/console/`` (inside the package: no CDN, works
offline) at ``/console/``, each answer with a Content-Security-Policy that allows only this
server's own scripts, styles and connections (no inline script, no eval, no other origin).

The console itself holds no secret: the user pastes an API key, kept in the tab's
sessionStorage and sent as a header on every call; it shows what that key may see.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
         ".md": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/", 307)


@router.get("/console")
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", 308, headers=HEADERS)


@router.get("/console/{path:path}")
def console_file(path: str):
    """A file of the console (``index.html`` for the folder itself); 404 for anything else."""
    target = (CONSOLE_DIR / (path or "index.html")).resolve()
    media = MEDIA.get(target.suffix) if target.suffix or target.name == "LICENSE" else None
    if media is None or not target.is_relative_to(CONSOLE_DIR) or not target.is_file():
        return PlainTextResponse("not found", 404, headers=HEADERS)
    return FileResponse(target, media_type=media, headers=HEADERS)
