"""``vloc serve`` and ``vloc keys create|list|revoke`` (keys act on DATA/registry.sqlite directly)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from core.cli_util import user_errors
from core.types import VlocError

keys_app = typer.Typer(help="API keys of a server's data directory (stored hashed; a key is shown once).",
                       no_args_is_help=True)


def _registry(data: Path, create: bool = False):
    from api.registry import Registry
    if create:
        data.mkdir(parents=True, exist_ok=True)
    elif not data.is_dir():
        raise VlocError(f"{data} is not a directory (the server's --data)")
    return Registry(data)


def _api_errors(fn):
    """ApiError from the registry -> VlocError, so user_errors prints it and exits 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        from api.errors import ApiError
        try:
            return fn(*a, **k)
        except ApiError as e:
            raise VlocError(e.detail) from None
    return wrapper


@keys_app.command("create")
@user_errors
@_api_errors
def keys_create(data: Path = typer.Option(..., "--data", help="the server's data directory"),
                role: str = typer.Option(..., "--role", help="robot | admin"),
                maps: str = typer.Option("", "--maps", help="comma-separated map ids a robot key may use ('*' = all)"),
                name: str = typer.Option("", "--name", help="a label for the key"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Create a key and print it once (only its sha256 is stored)."""
    rec, token = _registry(data, create=True).create_key(role, [m.strip() for m in maps.split(",") if m.strip()], name)
    if as_json:
        print(json.dumps({"key_id": rec.key_id, "role": rec.role, "maps": list(rec.maps), "name": rec.name,
                          "key": token}))
    else:
        print(f"key_id: {rec.key_id}\nrole:   {rec.role}\nmaps:   {','.join(rec.maps) or '-'}\nkey:    {token}\n"
              "(store the key now: it is not shown again)")


@keys_app.command("list")
@user_errors
def keys_list(data: Path = typer.Option(..., "--data", help="the server's data directory"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (ids, roles, grants; never the secrets)."""
    keys = _registry(data).list_keys()
    if as_json:
        print(json.dumps([k.__dict__ | {"maps": list(k.maps)} for k in keys]))
        return
    for k in keys:
        state = f"revoked {k.revoked_utc}" if k.revoked_utc else "live"
        print(f"{k.key_id}  {k.role:<5}  {state:<28}  maps={','.join(k.maps) or '-'}  name={k.name or '-'}")


@keys_app.command("revoke")
@user_errors
def keys_revoke(key_id: str = typer.Argument(..., help="KEY_ID from 'vloc keys list'"),
                data: Path = typer.Option(..., "--data", help="the server's data directory")) -> None:
    """Revoke a key (effective on the next request)."""
    if not _registry(data).revoke_key(key_id):
        raise VlocError(f"no live key {key_id!r}")
    print(f"revoked {key_id}")


@user_errors
def serve_cmd(data: Path = typer.Option(..., "--data", help="data directory (registry.sqlite, maps/)"),
              host: str = typer.Option("127.0.0.1", "--host"),
              port: int = typer.Option(8080, "--port"),
              workers: int = typer.Option(2, "--workers", min=1, help="localization threads"),
              cache_mb: Optional[float] = typer.Option(None, "--cache-mb", help="memory budget of loaded maps"),
              log_level: str = typer.Option("info", "--log-level"),
              device: Optional[str] = typer.Option(None, "--device", help="learned feature sets: auto | cpu | cuda "
                                                   "(default: the VLOC_DEVICE setting, auto)"),
              max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1,
                                                      help="frames per micro-batch on learned sets (1: none)"),
              max_batch_wait_ms: Optional[float] = typer.Option(None, "--max-batch-wait-ms", min=0,
                                                                help="how long a micro-batch collects frames"),
              import_root: Optional[list[Path]] = typer.Option(
                  None, "--import-root", help="a server directory admins may register bundles from by path "
                                              "(repeatable; default: none, registration by path is off)")
              ) -> None:
    """Serve the localization API (REST + WebSocket) and the operator console (/console/) over the
    maps registered in DATA."""
    import uvicorn
    from pydantic import ValidationError

    from api.app import create_app
    from api.logging import configure_logging
    from api.settings import Settings

    overrides = {"data_dir": data, "host": host, "port": port, "workers": workers, "log_level": log_level}
    if cache_mb is not None:
        overrides["cache_budget_bytes"] = int(cache_mb * 1e6)
    for name, value in (("device", device), ("max_batch", max_batch), ("max_batch_wait_ms", max_batch_wait_ms)):
        if value is not None:
            overrides[name] = value
    if import_root:
        overrides["import_roots"] = list(import_root)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise VlocError(f"invalid settings: {e}") from None
    configure_logging(settings.log_level)
    # one core per localization worker: the workers run frames in parallel, so library threads
    # inside each frame (torch, OpenCV's SIFT) would only oversubscribe the cores
    import cv2
    import torch
    per_worker = max(1, (os.cpu_count() or 1) // settings.workers)
    torch.set_num_threads(per_worker)
    cv2.setNumThreads(per_worker)
    app = create_app(settings)
    service = app.state.vloc

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            service.begin_shutdown()  # live fleet streams end instead of holding the shutdown
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            ws_max_size=settings.max_upload_bytes, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=10)
    if settings.console:
        print(f"console: http://{settings.host}:{settings.port}/console/ (sign in with an API key)", flush=True)
    Server(config).run()
