"""What every bridge process does around its transport: logging, the config file, the backend,
SIGINT / SIGTERM -> a clean stop, and the ``python -m`` entry (exit 2 with a message on a bad
config)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from core.types import VlocError
from robots.backend import make_backend
from robots.config import BridgeConfig, load_bridge_config


def run_bridge(config_path: str | Path, log_level: str, make_bridge: Callable) -> dict[str, int]:
    """Load the config, build the backend, run ``make_bridge(cfg, backend).run(stop)`` until
    SIGINT / SIGTERM; returns the counters. Configuration problems raise VlocError."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg: BridgeConfig = load_bridge_config(config_path)
    backend = make_backend(cfg.backend)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return make_bridge(cfg, backend).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        backend.close()


def bridge_main(prog: str, description: str, run: Callable[..., dict], argv: list[str] | None,
                node_name: bool = False) -> int:
    """``python -m PROG --config FILE [--log-level info] [--node-name N]`` -> exit status."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", required=True)
    ap.add_argument("--log-level", default="info")
    if node_name:
        ap.add_argument("--node-name", default="vloc_bridge")
    a = ap.parse_args(argv)
    try:
        run(a.config, a.log_level, *([a.node_name] if node_name else []))
    except (VlocError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
