"""`vloc bench serve`: the localization service under load from simulated robots, over loopback.

One server (``vloc serve`` in a child process, so the robots' client work does not share its
interpreter) on 127.0.0.1; N robots in this process (asyncio, one :class:`vloc.client.AsyncVlocClient`
and connection each) replay real frames for a bounded time, and the run ends with a JSON file and
a Markdown table.

Workloads
---------
* default: a 7-Scenes-layout scene (``--root``, e.g. the shared redkitchen): the map is built from
  the ``revisit`` protocol's map frames (:func:`localize.bench7scenes.revisit_split`: even
  100-frame blocks, ``n % 5 == 0``) with ``pgt_sfm_seq01.txt`` poses and cached in the work dir;
  the robots replay **every** frame of the odd blocks (the places the map saw only from another
  pass), in capture order, each robot starting at a different offset; truth: pgt_sfm.
* ``--maps M``: ONE small generated room is mapped (cached) and registered under M map ids
  (``room-00`` ...); robot i uses map ``i % M``; frames: renders of another pass through the room
  (exact truth). With ``--cache-mb`` below M maps' size, requests hit maps that were evicted:
  the cold-load path (single-flight load, LRU eviction) runs under load.

Robots (schedule: :func:`schedule`; robot i is phase-shifted by ``i / (N R)`` s so the robots do
not fire together)
* REST: a robot's camera ticks at R Hz; at each tick it sends the current frame unless its
  previous request is still unanswered (then that tick's frame is skipped: ``skipped_busy``), so
  each robot has at most one request in flight, like a robot that waits for its pose. With
  ``--max-wait S`` a robot sends ``meta.max_wait_ms``, and a frame the server drops for waiting
  longer counts as ``dropped: busy`` (429 "busy"), not as an error.
* ``--stream``: one WS session per robot; frames go out at every tick without waiting
  (timestamped), replies are read as they come; the server's motion prior narrows retrieval
  after the first accepted frame and the server drops frames that went stale (older than its
  ``max_frame_age_s``), waited longer than its ``max_queue_wait_s`` (busy) or overflowed the
  session's queue.

Metrics (:func:`summarize`): latency = client round trip of the answered (2xx / processed)
queries, p50 / p95 / p99; throughput = answered queries / (last answer - first send);
errors = non-2xx answers + exceptions (timeouts, connection errors) + stream error replies;
accuracy vs the truth: a rejected answer is a miss (error +inf) as in ``vloc bench 7scenes``,
medians over the answered queries, % within 5 cm / 5 deg; server breakdown: medians of the
answers' ``timings_ms`` ``wait`` (queue for a worker) and ``total`` (the core). ``--maps``:
map loads, mean load time, evictions (from the server's ``/metrics`` before and after the run)
and resident maps (``vloc_maps_resident``, polled every 0.5 s).
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vloc.progress import QUIET, Reporter
from vloc.stats import latency_stats
from vloc.types import VlocError

#: within this translation (m) and rotation (deg) error a pose counts as right.
GOOD_T_M, GOOD_R_DEG = 0.05, 5.0


@dataclass(frozen=True)
class ServeBenchConfig:
    robots: int = 20
    hz: float = 2.0
    seconds: float = 30.0
    stream: bool = False
    #: 0: the 7-Scenes scene at ``root``; M >= 1: M copies of one generated map.
    maps: int = 0
    #: server map-cache budget (MB; None: the server's default).
    cache_mb: float | None = None
    #: server localization threads.
    workers: int = 2
    #: server's max_frame_age_s (None: its default): frames waiting longer are dropped as stale,
    #: which bounds the latency of answered frames when more frames arrive than the CPU can take.
    max_age_s: float | None = None
    #: server's stream_max_pending (None: its default): waiting frames per stream session.
    max_pending: int | None = None
    #: longest wait for a worker, s: the server's max_queue_wait_s for streams (None: its default;
    #: 0: no limit), and REST robots send it as ``meta.max_wait_ms`` (None / 0: they do not).
    max_wait_s: float | None = None
    #: REST robots ask the server to track them (``meta.track``): motion priors without a stream.
    track: bool = False
    #: client timeout per request / stream reply, seconds.
    timeout_s: float = 30.0
    #: after the send window, how long to wait for the last answers, seconds.
    drain_s: float = 30.0
    # 7-Scenes workload
    block: int = 100
    stride: int = 5
    # generated workload
    gen_seed: int = 0
    gen_map_frames: int = 16
    gen_query_frames: int = 24

    def check(self) -> None:
        if not 1 <= self.robots <= 1000:
            raise VlocError("--robots must be 1..1000")
        if not 0 < self.hz <= 60:
            raise VlocError("--hz must be in (0, 60]")
        if not 0 < self.seconds <= 3600:
            raise VlocError("--seconds must be in (0, 3600]")
        if self.maps < 0 or self.maps > 1000:
            raise VlocError("--maps must be 0..1000")
        if self.cache_mb is not None and self.cache_mb < 0:
            raise VlocError("--cache-mb must be >= 0")


@dataclass
class QueryFrame:
    """One frame a robot can send: encoded bytes, camera, truth (cam_from_world)."""

    name: str
    data: bytes
    camera: object
    truth: object


@dataclass
class Query:
    """One sent frame and its outcome."""

    robot: int
    map_id: str
    tick: int
    frame: str
    sent_s: float                  # relative to the start of the window
    latency_s: float | None = None
    outcome: str = "pending"       # ok | http_<status> | exception:<type> | dropped:<reason> | lost
    accepted: bool | None = None
    t_err_m: float | None = None
    r_err_deg: float | None = None
    server_wait_ms: float | None = None
    server_total_ms: float | None = None
    prior_used: bool | None = None
    done_s: float | None = None


# --------------------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------------------
def schedule(robots: int, hz: float, seconds: float) -> list[list[float]]:
    """Send times (s from the start) of each robot: R Hz for S seconds, robot i shifted by i/(N R)."""
    period = 1.0 / hz
    n = max(1, int(math.floor(seconds * hz + 1e-9)))
    return [[i * period / robots + k * period for k in range(n)] for i in range(robots)]


def frame_offsets(robots: int, n_frames: int) -> list[int]:
    """Where in the frame list robot i starts: spread evenly over the list."""
    return [(i * n_frames) // robots for i in range(robots)]


def map_ids(m: int) -> list[str]:
    return [f"room-{i:02d}" for i in range(m)]


def query_frame_numbers(frames: Sequence[int], block: int = 100) -> list[int]:
    """Frames the robots replay on a 7-Scenes scene: every frame of the odd blocks, in order."""
    return sorted(n for n in set(int(f) for f in frames) if (n // block) % 2 == 1)


def pose_errors(reply: dict, truth) -> tuple[float, float]:
    """(t m, r deg) of an answer vs the truth cam_from_world; +inf when rejected or poseless."""
    from vloc.geometry import Rigid3, pose_error
    pose = reply.get("cam_from_world")
    if not reply.get("accepted") or not pose:
        return math.inf, math.inf
    return pose_error(Rigid3.from_quat_wxyz(pose["quaternion_wxyz"], pose["translation"]), truth)


def prometheus_values(text: str) -> dict[str, float]:
    """Flat ``{name{labels}: value}`` of a Prometheus text exposition (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def cache_figures(before: dict[str, float], after: dict[str, float]) -> dict:
    """Map loads, mean load time, evictions between two /metrics snapshots; resident at the end."""
    def d(k):
        return after.get(k, 0.0) - before.get(k, 0.0)
    n = d("vloc_map_load_seconds_count")
    return {"loads": int(n), "load_mean_s": d("vloc_map_load_seconds_sum") / n if n else None,
            "load_errors": int(d('vloc_map_loads_total{outcome="error"}')),
            "evictions": int(d("vloc_map_evictions_total")),
            "resident_end": int(after.get("vloc_maps_resident", 0)),
            "resident_bytes_end": int(after.get("vloc_maps_resident_bytes", 0)),
            "budget_bytes": int(after.get("vloc_maps_budget_bytes", 0))}


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarize(queries: Sequence[Query], cfg: ServeBenchConfig) -> dict:
    """Throughput, latency, errors, drops and accuracy of a run (see the module docstring)."""
    from localize.bench7scenes import accuracy_metrics
    done = [q for q in queries if q.outcome == "ok"]
    outcomes: dict[str, int] = {}
    for q in queries:
        outcomes[q.outcome] = outcomes.get(q.outcome, 0) + 1
    errors = sum(v for k, v in outcomes.items() if k.startswith(("http_", "exception:", "dropped:error", "lost")))
    dropped = {k.split(":", 1)[1]: v for k, v in outcomes.items()
               if k.startswith("dropped:") and k != "dropped:error"}
    first = min((q.sent_s for q in queries), default=0.0)
    last = max((q.done_s for q in done if q.done_s is not None), default=first)
    window = max(last - first, 1e-9)
    t = [q.t_err_m if q.t_err_m is not None else math.inf for q in done]
    r = [q.r_err_deg if q.r_err_deg is not None else math.inf for q in done]
    acc = accuracy_metrics(t, r)
    scheduled = cfg.robots * len(schedule(1, cfg.hz, cfg.seconds)[0])
    return {
        "offered_qps": cfg.robots * cfg.hz,
        "scheduled": scheduled,
        "sent": len(queries),
        "skipped_busy": 0 if cfg.stream else max(0, scheduled - len(queries)),
        "answered": len(done),
        "throughput_qps": len(done) / window if done else 0.0,
        "window_s": window,
        "latency_ms": latency_stats([q.latency_s * 1000 for q in done if q.latency_s is not None]),
        "errors": errors,
        "dropped": dropped,
        "outcomes": dict(sorted(outcomes.items())),
        "accepted_pct": 100.0 * sum(bool(q.accepted) for q in done) / len(done) if done else None,
        "accuracy": {"median_t_cm": acc["median_t_cm"], "median_r_deg": acc["median_r_deg"],
                     "pct_5cm_5deg": acc["pct_5cm_5deg"], "pct_2cm_1deg": acc["pct_2cm_1deg"],
                     "n": acc["n_queries"]},
        "server_ms": {"wait_median": _median(q.server_wait_ms for q in done),
                      "core_total_median": _median(q.server_total_ms for q in done)},
        "prior_used_pct": 100.0 * sum(bool(q.prior_used) for q in done) / len(done) if done else None,
    }


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

    from datasets.sevenscenes import frame_number
    from localize.bench7scenes import load_ground_truth, pose_file, revisit_split
    from mapping.build import BuildConfig, build_map

    root = Path(root)
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
                                   [r.name for r in map_recs], repr(BuildConfig())]).encode()).hexdigest()[:12]
    bundle = Path(workdir) / f"{root.name}-{key}" / "map"
    t0 = time.perf_counter()
    if not (bundle / "manifest.json").is_file():
        reporter.log(f"building the map of {len(map_recs)} frames (revisit map frames) -> {bundle}")
        bundle.parent.mkdir(parents=True, exist_ok=True)
        build_map(root, map_recs, bundle, BuildConfig(), pose_file=pf, pose_format="pgt", reporter=reporter)
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
    from datasets.synthetic import generate_scene, write_dataset
    from datasets.sevenscenes import load_pgt

    t0 = time.perf_counter()
    base = Path(workdir) / f"generated-s{cfg.gen_seed}-m{cfg.gen_map_frames}"
    if scene is None:
        scene = generate_scene(seed=cfg.gen_seed)
    if bundle is None:
        bundle = base / "map"
        if not (bundle / "manifest.json").is_file():
            from mapping.build import BuildConfig, build_map
            reporter.log(f"building a generated room map ({cfg.gen_map_frames} frames) -> {bundle}")
            records = write_dataset(scene, base / "images", cfg.gen_map_frames)
            build_map(base / "images", records, bundle, BuildConfig(), reporter=reporter)
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


# --------------------------------------------------------------------------------------------------
# robots
# --------------------------------------------------------------------------------------------------
def _fill(q: Query, reply: dict, truth) -> None:
    q.accepted = bool(reply.get("accepted"))
    q.t_err_m, q.r_err_deg = pose_errors(reply, truth)
    tm = reply.get("timings_ms") or {}
    q.server_wait_ms, q.server_total_ms = tm.get("wait"), tm.get("total")
    q.prior_used = reply.get("prior_used")


async def _rest_robot(i: int, client, map_id: str, frames: Sequence[QueryFrame], offset: int,
                      times: Sequence[float], t0: float, out: list[Query], track: bool = False,
                      max_wait_ms: float | None = None) -> None:
    from vloc.client import VlocClientError, is_busy
    loop = asyncio.get_running_loop()
    k = 0
    while k < len(times):
        now = loop.time() - t0
        if now < times[k]:
            await asyncio.sleep(times[k] - now)
        elif k + 1 < len(times) and now >= times[k + 1]:  # busy past the next tick: this frame is gone
            k += 1
            continue
        f = frames[(offset + k) % len(frames)]
        q = Query(i, map_id, k, f.name, loop.time() - t0)
        out.append(q)
        start = time.perf_counter()
        try:
            reply = await client.localize(map_id, f.data, f.camera, robot_id=f"robot-{i}", timestamp=time.time(),
                                          track=track, max_wait_ms=max_wait_ms)
            q.outcome = "ok"
            _fill(q, reply, f.truth)
        except VlocClientError as e:
            q.outcome = "dropped:busy" if is_busy(e) else f"http_{e.status}" if e.status is not None else \
                f"exception:{'timeout' if 'no answer' in e.detail else 'connection'}"
        except Exception as e:  # noqa: BLE001 - a robot counts its failures, the run goes on
            q.outcome = f"exception:{type(e).__name__}"
        q.latency_s = time.perf_counter() - start
        q.done_s = loop.time() - t0
        k += 1


async def _stream_robot(i: int, client, map_id: str, frames: Sequence[QueryFrame], offset: int,
                        times: Sequence[float], t0: float, out: list[Query], drain_s: float) -> None:
    loop = asyncio.get_running_loop()
    pending: dict[int, tuple[Query, float, QueryFrame]] = {}
    try:
        async with client.stream(map_id) as s:
            async def send(k: int) -> None:
                f = frames[(offset + k) % len(frames)]
                q = Query(i, map_id, k, f.name, loop.time() - t0)
                out.append(q)
                pending[k] = (q, time.perf_counter(), f)
                await s.send(f.data, f.camera, frame_id=k, timestamp=time.time())

            def on_reply(k: int, reply: dict) -> None:
                q, start, f = pending[k]
                q.latency_s, q.done_s = time.perf_counter() - start, loop.time() - t0
                if reply.get("dropped"):
                    q.outcome = f"dropped:{reply.get('reason')}"
                else:
                    q.outcome = "ok"
                    _fill(q, reply, f.truth)

            await s.paced(times, t0, send, on_reply, pending, drain_s)
    except Exception as e:  # noqa: BLE001 - a robot counts its failures, the run goes on
        for q, _, _ in pending.values():
            q.outcome = f"exception:{type(e).__name__}"
        if not pending:
            out.append(Query(i, map_id, -1, "-", 0.0, outcome=f"exception:{type(e).__name__}"))
        return
    for q, _, _ in pending.values():  # never answered
        q.outcome = "lost"


async def _poll_resident(client, stop: asyncio.Event, samples: list[int]) -> None:
    while not stop.is_set():
        try:
            samples.append(int(prometheus_values(await client.metrics()).get("vloc_maps_resident", 0)))
        except Exception:  # noqa: BLE001 - a missed sample is fine
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except (asyncio.TimeoutError, TimeoutError):
            pass


async def _run_robots(url: str, key: str, ids: list[str], frames: list[QueryFrame], cfg: ServeBenchConfig,
                      poll: bool) -> tuple[list[Query], dict]:
    from vloc.client import AsyncVlocClient
    clients = [AsyncVlocClient(url, key, timeout=cfg.timeout_s) for _ in range(cfg.robots)]
    times = schedule(cfg.robots, cfg.hz, cfg.seconds)
    offsets = frame_offsets(cfg.robots, len(frames))
    out: list[Query] = []
    samples: list[int] = []
    stop = asyncio.Event()
    async with AsyncVlocClient(url, None, timeout=10) as probe:
        poller = asyncio.create_task(_poll_resident(probe, stop, samples)) if poll else None
        t0 = asyncio.get_running_loop().time() + 0.2
        if cfg.stream:
            tasks = [_stream_robot(i, c, ids[i % len(ids)], frames, offsets[i], times[i], t0, out, cfg.drain_s)
                     for i, c in enumerate(clients)]
        else:
            wait_ms = cfg.max_wait_s * 1000 if cfg.max_wait_s else None
            tasks = [_rest_robot(i, c, ids[i % len(ids)], frames, offsets[i], times[i], t0, out, cfg.track, wait_ms)
                     for i, c in enumerate(clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), cfg.seconds + cfg.drain_s + cfg.timeout_s + 10)
        except (asyncio.TimeoutError, TimeoutError):
            pass  # unanswered queries stay 'pending' and count as errors
        finally:
            stop.set()
            if poller is not None:
                await poller
            for c in clients:
                await c.aclose()
    for q in out:
        if q.outcome == "pending":
            q.outcome = "lost"
    resident = {"min": min(samples), "max": max(samples), "samples": len(samples)} if samples else None
    return out, {"resident_maps": resident}


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def run_serve_bench(cfg: ServeBenchConfig, root: Path | None = None, workdir: Path = Path("bench-results/serve-cache"),
                    out_json: Path | None = None, reporter: Reporter = QUIET, bundle: Path | None = None,
                    scene=None) -> dict:
    """Run one load test (see the module docstring); returns the result dict (also written to out_json)."""
    from api.registry import Registry
    from mapping.bench import machine_info
    from vloc.client import VlocClient

    cfg.check()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.maps >= 1:
        bundle, frames, info = prepare_generated(workdir, cfg, reporter, bundle, scene)
        ids = map_ids(cfg.maps)
    else:
        if root is None:
            raise VlocError("pass --root (a 7-Scenes-layout folder) or --maps M (generated maps)")
        bundle, frames, info = prepare_7scenes(Path(root), workdir, cfg, reporter)
        ids = [re.sub(r"[^A-Za-z0-9_.-]", "-", Path(root).resolve().name).lstrip("-._")[:64] or "scene"]
    data = Path(tempfile.mkdtemp(prefix="vloc-bench-serve-"))
    server = None
    try:
        reg = Registry(data)
        admin_key = reg.create_key("admin", name="bench-admin")[1]
        robot_key = reg.create_key("robot", ids, name="bench-robots")[1]
        del reg
        reporter.log(f"starting vloc serve ({cfg.workers} workers"
                     + (f", cache {cfg.cache_mb} MB" if cfg.cache_mb is not None else "") + ")")
        env = {k: str(v) for k, v in (("VLOC_MAX_FRAME_AGE_S", cfg.max_age_s),
                                      ("VLOC_STREAM_MAX_PENDING", cfg.max_pending),
                                      ("VLOC_MAX_QUEUE_WAIT_S", cfg.max_wait_s)) if v is not None}
        server = ServerProcess(data, cfg.workers, cfg.cache_mb, env=env)
        server.wait_ready()
        t0 = time.perf_counter()
        with VlocClient(server.url, admin_key, timeout=300) as admin:
            for m in ids:
                admin.register_map_path(m, bundle)
            reporter.log(f"registered {len(ids)} map(s) in {time.perf_counter() - t0:.1f} s")
            with VlocClient(server.url, robot_key, timeout=300) as robot:  # warm-up (lazy init), untimed
                f = frames[0]
                robot.localize(ids[0], f.data, f.camera)
            before = prometheus_values(admin.metrics())
        reporter.log(f"{cfg.robots} robots x {cfg.hz:g} Hz x {cfg.seconds:g} s "
                     f"({'stream' if cfg.stream else 'REST'}) on {len(ids)} map(s)")
        load_before = os.getloadavg()
        queries, extra = asyncio.run(_run_robots(server.url, robot_key, ids, frames, cfg, poll=cfg.maps >= 1))
        load_after = os.getloadavg()
        with VlocClient(server.url, None, timeout=30) as probe:
            after = prometheus_values(probe.metrics())
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data, ignore_errors=True)
    result = {
        "benchmark": "serve",
        "machine": machine_info(),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": asdict(cfg),
        "server_settings": shedding_settings(cfg),
        "mode": "stream" if cfg.stream else "rest",
        "workload": info,
        "n_maps": len(ids),
        "maps": ids if len(ids) <= 20 else ids[:20] + ["..."],
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        **summarize(queries, cfg),
        "cache": {**cache_figures(before, after), **extra} if cfg.maps >= 1 else None,
        "first_answer_ms_per_map": _first_answers(queries) if cfg.maps >= 1 else None,
        "per_robot": _per_robot(queries, cfg.robots),
    }
    if out_json:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def shedding_settings(cfg: ServeBenchConfig) -> dict:
    """The server's effective frame limits in a run (its defaults, the environment, the flags)."""
    from api.settings import Settings
    flags = {k: v for k, v in (("max_frame_age_s", cfg.max_age_s), ("stream_max_pending", cfg.max_pending),
                               ("max_queue_wait_s", cfg.max_wait_s)) if v is not None}
    s = Settings(data_dir=Path("."), **flags)  # nothing is created: only the limits are read
    return {"max_frame_age_s": s.max_frame_age_s, "max_queue_wait_s": s.max_queue_wait_s,
            "stream_max_pending": s.stream_max_pending,
            "rest_max_wait_ms": cfg.max_wait_s * 1000 if cfg.max_wait_s and not cfg.stream else None}


def _first_answers(queries: Sequence[Query]) -> dict:
    """Latency stats of each map's first answered query (a cold load when the map was evicted)."""
    first: dict[str, Query] = {}
    for q in sorted((q for q in queries if q.outcome == "ok"), key=lambda q: q.sent_s):
        first.setdefault(q.map_id, q)
    return latency_stats([q.latency_s * 1000 for q in first.values()])


def _per_robot(queries: Sequence[Query], robots: int) -> list[dict]:
    out = []
    for i in range(robots):
        qs = [q for q in queries if q.robot == i]
        ok = [q for q in qs if q.outcome == "ok"]
        out.append({"robot": i, "sent": len(qs), "answered": len(ok),
                    "p50_ms": latency_stats([q.latency_s * 1000 for q in ok])["p50"],
                    "accepted": sum(bool(q.accepted) for q in ok)})
    return out


def _limits_text(ss: dict | None, mode: str) -> str:
    if not ss:
        return ""
    if mode == "stream":
        wait = f"{ss['max_queue_wait_s']:g} s" if ss["max_queue_wait_s"] else "none"
        return (f"; frames dropped past age {ss['max_frame_age_s']:g} s / wait {wait} / "
                f"{ss['stream_max_pending']} waiting per session")
    return f"; robots' max_wait_ms {ss['rest_max_wait_ms']:g}" if ss.get("rest_max_wait_ms") else ""


def markdown_table(res: dict) -> str:
    from mapping.bench import machine_line
    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    c, lat, acc = res["config"], res["latency_ms"], res["accuracy"]
    w = res["workload"]
    rows = [f"vloc bench serve: {c['robots']} robots x {c['hz']:g} Hz x {c['seconds']:g} s, "
            f"{res['mode'].upper()}, {res['n_maps']} map(s), "
            f"{c['workers']} server workers"
            + _limits_text(res.get("server_settings"), res["mode"])
            + (", REST with server-side tracking" if c.get("track") and not c["stream"] else ""),
            "",
            "| metric | value |", "|---|---|",
            f"| offered load | {res['offered_qps']:.1f} q/s |",
            f"| sent / answered | {res['sent']} / {res['answered']} |",
            f"| throughput (answered) | {res['throughput_qps']:.2f} q/s |",
            f"| latency p50 / p95 / p99 (max) | {f(lat['p50'])} / {f(lat['p95'])} / {f(lat['p99'])} "
            f"({f(lat['max'])}) ms |",
            f"| server: worker-queue wait / core, medians | {f(res['server_ms']['wait_median'])} / "
            f"{f(res['server_ms']['core_total_median'])} ms |",
            f"| errors (non-2xx, exceptions, error replies) | {res['errors']} |",
            "| dropped frames | " + (", ".join(f"{k}: {v}" for k, v in res["dropped"].items()) or "0") + " |"]
    if not c["stream"]:
        rows.append(f"| ticks skipped (robot still waiting for its last pose) | {res['skipped_busy']} "
                    f"of {res['scheduled']} |")
    else:
        rows.append(f"| answers that used a motion prior | {f(res['prior_used_pct'], '{:.0f}')} % |")
    rows += [f"| accepted | {f(res['accepted_pct'], '{:.1f}')} % |",
             f"| pose error median (answered; rejected = miss) | {f(acc['median_t_cm'], '{:.2f}')} cm / "
             f"{f(acc['median_r_deg'], '{:.2f}')} deg |",
             f"| within 5 cm / 5 deg | {f(acc['pct_5cm_5deg'], '{:.1f}')} % |"]
    cache = res.get("cache")
    if cache:
        rm = cache.get("resident_maps") or {}
        rows += [f"| map cache budget | {cache['budget_bytes'] / 1e6:.1f} MB |",
                 f"| map loads during the run (errors) / mean load time | {cache['loads']} ({cache['load_errors']}) / "
                 f"{f(cache['load_mean_s'] and cache['load_mean_s'] * 1000)} ms |",
                 f"| evictions during the run | {cache['evictions']} |",
                 f"| resident maps min / max / end | {rm.get('min', '-')} / {rm.get('max', '-')} / "
                 f"{cache['resident_end']} ({cache['resident_bytes_end'] / 1e6:.1f} MB) |",
                 f"| first answer per map p50 / max | {f(res['first_answer_ms_per_map']['p50'])} / "
                 f"{f(res['first_answer_ms_per_map']['max'])} ms |"]
    lb, la = res["loadavg_before"], res["loadavg_after"]
    m = res["machine"]
    rows += ["", f"frames: {w['frames']}",
             machine_line(m),
             f"load average (1/5/15 min) before: {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}, "
             f"after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (robots + server share these cores)"]
    return "\n".join(rows)
