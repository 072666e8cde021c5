"""Helpers for tests, demos and benchmarks of the service: a live server on loopback, a
generated map built once per process, and frame encoding for the REST and WS protocols."""
from __future__ import annotations

import atexit
import io
import json
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from api.stream import HEADER


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread on 127.0.0.1 (a free port, or ``port``).

    ``with LiveServer(app) as srv: httpx.get(srv.url + "/healthz")``; ``srv.ws_url`` for WS.
    """

    def __init__(self, app, ws_max_size: int = 32 << 20, port: int = 0) -> None:
        self.app = app
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says so (with proto 0, every response waits ~40 ms for a delayed ACK)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, ws_max_size=ws_max_size,
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"uvicorn-{self.port}")

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        service = getattr(getattr(self.app, "state", None), "vloc", None)
        if service is not None:
            service.begin_shutdown()  # live fleet streams end instead of holding the shutdown
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def http_client(base_url: str, timeout: float = 120) -> httpx.Client:
    """An httpx client for a loopback server: no proxies from the environment, and TCP_NODELAY
    (without it, a small body written after the headers waits ~40 ms for a delayed ACK)."""
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False, transport=transport)


def encode_image(rgb: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """(H, W, 3) / (H, W) uint8 -> PNG or JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt.upper() == "JPEG" else {}))
    return buf.getvalue()


def stream_frame(meta: dict, image: bytes) -> bytes:
    """One binary WS frame: [4-byte big-endian header length][JSON header][image bytes]."""
    header = json.dumps(meta).encode()
    return HEADER.pack(len(header)) + header + image


@dataclass
class TestMap:
    """A generated room, its map bundle and the map images' poses (cam_from_world by name)."""

    __test__ = False  # not a pytest test class

    scene: object
    bundle: Path
    poses: dict


_LOCK = threading.Lock()
_SHARED: dict[str, TestMap] = {}


def shared_test_map(seed: int = 5, frames: int = 24) -> TestMap:
    """Build (once per process) a map of ``generate_scene(seed)`` from ``frames`` rendered views
    (~15 s on 2 cores) in a temporary directory removed at exit."""
    key = f"{seed}-{frames}"
    with _LOCK:
        if key not in _SHARED:
            from datasets.synthetic import generate_scene, write_dataset
            from mapping.build import build_map
            root = Path(tempfile.mkdtemp(prefix="vloc-api-map-"))
            atexit.register(shutil.rmtree, root, True)
            scene = generate_scene(seed=seed)
            records = write_dataset(scene, root, frames)
            build_map(root, records, root / "map")
            _SHARED[key] = TestMap(scene, root / "map", {r.name: r.cam_from_world for r in records})
        return _SHARED[key]


def layered_test_map(seed: int = 5, frames: int = 24) -> TestMap:
    """:func:`shared_test_map` with HD layers (once per process, ~2 s more): a copy of its bundle with
    a TSDF mesh of every other RGB-D frame, floors and an occupancy grid (``BUNDLE/layers/``)."""
    key = f"layers-{seed}-{frames}"
    base = shared_test_map(seed, frames)
    with _LOCK:
        if key not in _SHARED:
            from datasets.synthetic import DEFAULT_CAMERA
            from hdmap.layers.build import LayersConfig, build_layers
            from hdmap.layers.depth import load_depth_folder
            from hdmap.layers.mesh import TsdfConfig
            from hdmap.layers.ortho import OrthoConfig
            out = base.bundle.parent / "map-layers"
            if not out.exists():
                tmp = base.bundle.parent / ".map-layers"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(base.bundle, tmp)
                depth = load_depth_folder(base.bundle.parent, DEFAULT_CAMERA, registered_colour=True, stride=2)
                build_layers(tmp, LayersConfig(tsdf=TsdfConfig(voxel=0.05), ortho=OrthoConfig(resolution=0.05)), depth)
                tmp.rename(out)
            _SHARED[key] = TestMap(base.scene, out, base.poses)
        return _SHARED[key]
