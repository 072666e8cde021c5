"""`vloc bench serve`: the maps and frames the robots replay (a 7-Scenes scene or a generated room,
cached in the work dir) and the server in a child process on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.serve_config import QueryFrame, ServeBenchConfig, query_frame_numbers
from core.progress import QUIET, Reporter
from core.types import VlocError


# --------------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------------
def _jpeg_bytes(path: Path) -> bytes:
    """The frame as JPEG bytes: JPEG files as they are, others re-encoded (quality 95)."""
    data = path.read_bytes()
    if data.startswith(b"\xff\xd8"):
        return data
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise VlocError(f"cannot re-encode {path} as JPEG")
    return buf.tobytes()


def prepare_7scenes(root: Path, workdir: Path, cfg: ServeBenchConfig, reporter: Reporter = QUIET
                    ) -> tuple[Path, list[QueryFrame], dict]:
    """(bundle, robot frames, info) of a 7-Scenes-layout scene; the map is cached under workdir."""
    import hashlib

    from bench.sevenscenes import load_ground_truth, pose_file, revisit_split
    from datasets.sevenscenes import frame_number
    from mapping.build import build_map
    from mapping.cli import build_config

    root = Path(root)
    build_cfg = build_config(cfg.features, None, cfg.device)
    if not root.is_dir():
        raise VlocError(f"7-Scenes folder {root} not found (pass --root)")
    recs = load_ground_truth(root, "sfm", "01", reporter)
    by_n = {frame_number(r.name): r for r in recs}
    split = revisit_split(by_n, cfg.block, cfg.stride)
    map_recs = [by_n[n] for n in split.map]
    query_recs = [by_n[n] for n in query_frame_numbers(by_n, cfg.block)]
    if len(map_recs) < 2 or not query_recs:
        raise VlocError(f"{root}: {len(map_recs)} map frames and {len(query_recs)} query frames "
                        f"with blocks of {cfg.block}: not enough frames")
    pf = pose_file(root, "sfm")
    key = hashlib.sha1(json.dumps([str(root.resolve()), pf.stat().st_size, pf.stat().st_mtime_ns,
                                   [r.name for r in map_recs], repr(build_cfg.feature_config()),
                                   repr(build_cfg)]).encode()).hexdigest()[:12]
    bundle = Path(workdir) / f"{root.name}-{key}" / "map"
    t0 = time.perf_counter()
    if not (bundle / "manifest.json").is_file():
        reporter.log(f"building the map of {len(map_recs)} frames (revisit map frames) -> {bundle}")
        bundle.parent.mkdir(parents=True, exist_ok=True)
        build_map(root, map_recs, bundle, build_cfg, pose_file=pf, pose_format="pgt", reporter=reporter)
    else:
        reporter.log(f"using the cached map {bundle}")
    frames = [QueryFrame(r.name, _jpeg_bytes(root / r.name), r.camera, r.cam_from_world) for r in query_recs]
    info = {"kind": "7scenes", "root": str(root.resolve()), "map_frames": len(map_recs),
            "robot_frames": len(frames), "map_prepare_s": time.perf_counter() - t0,
            "frames": f"{len(frames)} frames: every frame of the odd {cfg.block}-blocks (n = "
                      f"{frame_number(query_recs[0].name)}..{frame_number(query_recs[-1].name)}), in order; "
                      f"map: the {len(map_recs)} revisit map frames (even blocks, n % {cfg.stride} == 0), "
                      f"pgt_sfm poses and truth"}
    return bundle, frames, info


def prepare_generated(workdir: Path, cfg: ServeBenchConfig, reporter: Reporter = QUIET, bundle: Path | None = None,
                      scene=None) -> tuple[Path, list[QueryFrame], dict]:
    """(bundle, robot frames, info) of a generated room (cached under workdir). ``bundle`` + ``scene``:
    use that map of that scene instead of building one (tests)."""
    from datasets.sevenscenes import load_pgt
    from datasets.synthetic import generate_scene, write_dataset

    t0 = time.perf_counter()
    base = Path(workdir) / (f"generated-s{cfg.gen_seed}-m{cfg.gen_map_frames}"
                            + ("" if cfg.features == "sift" else f"-{cfg.features}"))
    if scene is None:
        scene = generate_scene(seed=cfg.gen_seed)
    if bundle is None:
        bundle = base / "map"
        if not (bundle / "manifest.json").is_file():
            from mapping.build import build_map
            from mapping.cli import build_config
            reporter.log(f"building a generated room map ({cfg.gen_map_frames} frames) -> {bundle}")
            records = write_dataset(scene, base / "images", cfg.gen_map_frames)
            build_map(base / "images", records, bundle, build_config(cfg.features, None, cfg.device),
                      reporter=reporter)
    qdir = Path(workdir) / f"queries-s{scene.seed}-p1-{cfg.gen_query_frames}"
    if not (qdir / "pgt_sfm_seq01.txt").is_file():
        write_dataset(scene, qdir, cfg.gen_query_frames, pass_id=1)
    recs = load_pgt(qdir / "pgt_sfm_seq01.txt")
    frames = [QueryFrame(r.name, _jpeg_bytes(qdir / r.name), r.camera, r.cam_from_world) for r in recs]
    info = {"kind": "generated", "seed": int(scene.seed), "bundle": str(bundle), "robot_frames": len(frames),
            "map_prepare_s": time.perf_counter() - t0,
            "frames": f"{len(frames)} renders of pass 1 through the room (JPEG 95), exact truth"}
    return bundle, frames, info


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``vloc serve`` in a child process on 127.0.0.1 (log in DATA/server.log)."""

    def __init__(self, data: Path, workers: int, cache_mb: float | None = None, env: dict | None = None) -> None:
        self.data, self.port = Path(data), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "vloc.cli", "serve", "--data", str(data), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(workers), "--log-level", "warning"]
        if cache_mb is not None:
            cmd += ["--cache-mb", str(cache_mb)]
        self.log = open(self.data / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "NO_PROXY": "*", **(env or {})},
                                     cwd=str(Path(__file__).resolve().parents[1]))

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise VlocError(f"the server exited ({self.proc.returncode}): "
                                f"{(self.data / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise VlocError(f"the server did not answer within {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
