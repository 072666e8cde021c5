"""`vloc robots fleet`: N simulated delivery robots localizing through the service on loopback.

Each robot replays its own slice of real frames (by default the shared 7-Scenes redkitchen: the
frames of the odd 100-blocks, which the map saw only from another pass; the map is built from the
``revisit`` map frames and cached, as ``vloc bench serve`` does) at ``hz`` frames per second for
``seconds``; at tick k a robot sends ``slice[(k * stride) % len(slice)]``.

Odometry: each robot integrates its true frame-to-frame motion with noise (:class:`OdomNoise`:
per step, Gaussian noise proportional to the step's length and angle plus a floor, composed on
the right of the true step), so ``odom_from_base`` drifts from the truth like wheel odometry. The
robot's base frame is its camera frame here (``base_from_camera`` = identity). After each
accepted pose the robot re-anchors ``map_from_odom = map_from_base * inverse(odom_from_base)``
(REP-105) and sends every later frame with a position prior ``map_from_odom * odom_from_base``
whose sigma grows with the odometry travelled since that fix (:func:`prior_sigma`).

Modes: ``rest`` (one request per tick; a tick that comes while the robot still waits for its last
pose is skipped and counted as dropped ``skipped``) and ``stream`` (one WebSocket session per robot,
frames sent at every tick without waiting; the server drops frames that went ``stale``, waited
too long for a worker (``busy``) or ``overflow`` its queue). Errors: non-2xx answers, exceptions, stream error replies, frames never
answered. Per robot: frames sent, answered, accepted, median pose error of the accepted frames vs
the truth (pgt_sfm for 7-Scenes), % within 5 cm / 5 deg of the answered frames (rejected = miss),
median distance of the odometry prior from the truth, client round-trip latency p50 / p95,
dropped and errors.
"""
from __future__ import annotations

import asyncio
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from bench.serve_config import GOOD_R_DEG, GOOD_T_M  # one definition of a "right" pose
from core.geometry import Rigid3, pose_error
from core.progress import QUIET, Reporter
from core.stats import latency_stats
from core.types import VlocError

#: default real-data scene (relative to the repository's parent, like tests' shared datasets).
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "7scenes-redkitchen"


@dataclass(frozen=True)
class OdomNoise:
    """Wheel-odometry error model, per step (1 sigma, independent per axis)."""

    #: translation noise as a fraction of the step length.
    trans_frac: float = 0.05
    #: rotation noise as a fraction of the step's rotation angle.
    rot_frac: float = 0.05
    #: translation noise floor per step, metres.
    trans_floor_m: float = 0.002
    #: rotation noise floor per step, degrees.
    rot_floor_deg: float = 0.2

    def check(self) -> None:
        if min(self.trans_frac, self.rot_frac, self.trans_floor_m, self.rot_floor_deg) < 0:
            raise VlocError("odometry noise parameters must be >= 0")


@dataclass(frozen=True)
class FleetConfig:
    """One fleet run."""

    #: simulated robots (one client connection each).
    robots: int = 3
    #: "rest" (request per frame) or "stream" (one WebSocket session per robot).
    mode: str = "stream"
    #: frames per second each robot sends.
    hz: float = 1.0
    #: how long the robots drive, seconds.
    seconds: float = 10.0
    #: frames a robot advances per tick (1: every frame, i.e. a 30 fps capture replayed in slow motion;
    #: 30 / hz: real speed, but each robot's slice wraps sooner).
    stride: int = 1
    #: odometry error model.
    odom: OdomNoise = field(default_factory=OdomNoise)
    #: prior sigma right after a fix, metres.
    prior_sigma_m: float = 0.3
    #: prior sigma growth per metre of odometry travelled since the last fix.
    prior_sigma_per_m: float = 0.2
    #: seed of the odometry noise (robot i uses [seed, i]).
    seed: int = 0
    #: client timeout per request / stream reply, seconds.
    timeout_s: float = 60.0
    #: after the last tick, how long to wait for the last stream replies, seconds.
    drain_s: float = 30.0

    def check(self) -> None:
        if not 1 <= self.robots <= 200:
            raise VlocError("--robots must be 1..200")
        if self.mode not in ("rest", "stream"):
            raise VlocError(f"--mode must be 'rest' or 'stream', not {self.mode!r}")
        if not 0 < self.hz <= 30:
            raise VlocError("--hz must be in (0, 30]")
        if not 0 < self.seconds <= 3600:
            raise VlocError("--seconds must be in (0, 3600]")
        if self.stride < 1:
            raise VlocError("--stride must be >= 1")
        if self.prior_sigma_m <= 0 or self.prior_sigma_per_m < 0:
            raise VlocError("prior sigma must be > 0 and its growth >= 0")
        self.odom.check()


# --------------------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------------------
def _exp_noise(rng: np.random.Generator, sigma_t: float, sigma_r_rad: float) -> Rigid3:
    return Rigid3(Rotation.from_rotvec(rng.normal(0.0, sigma_r_rad, 3)).as_matrix(), rng.normal(0.0, sigma_t, 3))


def simulate_odometry(world_from_base: Sequence[Rigid3], noise: OdomNoise, rng: np.random.Generator
                      ) -> list[Rigid3]:
    """Noisy integrated odometry along a true trajectory.

    world_from_base: (K,) true poses of the base in the world, in driving order.
    Returns (K,) ``odom_from_base``: identity at k = 0, then ``odom_from_base[k-1] * step_k * noise_k``
    with ``step_k = inverse(world_from_base[k-1]) * world_from_base[k]`` (``base_{k-1}_from_base_k``)
    and ``noise_k`` of :class:`OdomNoise`. Zero noise gives ``odom_from_base = inverse(world_from_base[0])
    * world_from_base`` exactly.
    """
    out = [Rigid3.identity()] if len(world_from_base) else []
    for k in range(1, len(world_from_base)):
        step = world_from_base[k - 1].inverse() * world_from_base[k]
        length = float(np.linalg.norm(step.translation))
        angle = float(Rotation.from_matrix(step.rotation).magnitude())
        n = _exp_noise(rng, noise.trans_frac * length + noise.trans_floor_m,
                       noise.rot_frac * angle + math.radians(noise.rot_floor_deg))
        out.append(out[-1] * step * n)
    return out


def prior_sigma(cfg: FleetConfig, odom_at_fix: Rigid3, odom_now: Rigid3) -> float:
    """Sigma (m) of the odometry prior: ``prior_sigma_m`` + growth x distance travelled since the fix."""
    return cfg.prior_sigma_m + cfg.prior_sigma_per_m * float(np.linalg.norm(odom_now.translation -
                                                                             odom_at_fix.translation))


def robot_slices(n_frames: int, robots: int) -> list[range]:
    """Contiguous, disjoint slices of the frame list, one per robot (shared when frames < robots)."""
    if n_frames < 1:
        raise VlocError("no frames to replay")
    if n_frames < robots:
        return [range(i % n_frames, i % n_frames + 1) for i in range(robots)]
    size = n_frames // robots
    return [range(i * size, (i + 1) * size) for i in range(robots)]


@dataclass
class Shot:
    """One tick of a robot: the frame it sent and what came back."""

    robot: int
    tick: int
    frame: str
    outcome: str = "pending"    # ok | dropped:<reason> | http_<status> | exception:<type> | lost
    latency_ms: float | None = None
    accepted: bool | None = None
    t_err_m: float | None = None
    r_err_deg: float | None = None
    prior_err_m: float | None = None
    prior_used: bool | None = None


def _errors(reply: dict, truth: Rigid3) -> tuple[float, float] | None:
    pose = reply.get("cam_from_world")
    if not reply.get("accepted") or not pose:
        return None
    return pose_error(Rigid3.from_quat_wxyz(pose["quaternion_wxyz"], pose["translation"]), truth)


def summarize_robot(i: int, shots: Sequence[Shot]) -> dict:
    """Per-robot row of the report (see the module docstring)."""
    done = [s for s in shots if s.outcome == "ok"]
    acc = [s for s in done if s.accepted and s.t_err_m is not None]
    good = sum(1 for s in acc if s.t_err_m <= GOOD_T_M and s.r_err_deg <= GOOD_R_DEG)
    med = (lambda xs: float(statistics.median(xs)) if xs else None)
    lat = latency_stats([s.latency_ms for s in done])
    dropped: dict[str, int] = {}
    for s in shots:
        if s.outcome.startswith("dropped:") and s.outcome != "dropped:error":
            k = s.outcome.split(":", 1)[1]
            dropped[k] = dropped.get(k, 0) + 1
    errors = sum(1 for s in shots if s.outcome.startswith(("http_", "exception:", "lost", "dropped:error")))
    return {"robot": i, "ticks": len(shots), "sent": sum(1 for s in shots if s.outcome != "dropped:skipped"),
            "answered": len(done), "accepted": len(acc),
            "median_t_cm": None if not acc else med([s.t_err_m * 100 for s in acc]),
            "median_r_deg": med([s.r_err_deg for s in acc]),
            "pct_5cm_5deg": 100.0 * good / len(done) if done else None,
            "prior_used": sum(1 for s in done if s.prior_used),
            "median_prior_err_cm": None if not any(s.prior_err_m is not None for s in shots)
            else med([s.prior_err_m * 100 for s in shots if s.prior_err_m is not None]),
            "p50_ms": lat["p50"], "p95_ms": lat["p95"],
            "dropped": sum(dropped.values()), "dropped_by_reason": dropped, "errors": errors}


# --------------------------------------------------------------------------------------------------
# one robot
# --------------------------------------------------------------------------------------------------
class _Robot:
    """A robot's odometry and its map_from_odom anchor (REP-105; base = camera)."""

    def __init__(self, i: int, frames: Sequence, idx: range, ticks: int, cfg: FleetConfig) -> None:
        self.i, self.cfg = i, cfg
        self.frames = [frames[idx[(k * cfg.stride) % len(idx)]] for k in range(ticks)]
        world_from_base = [f.truth.inverse() for f in self.frames]
        self.odom = simulate_odometry(world_from_base, cfg.odom, np.random.default_rng([cfg.seed, i]))
        self.map_from_odom: Rigid3 | None = None
        self.odom_at_fix: Rigid3 | None = None

    def prior(self, k: int, shot: Shot) -> tuple[np.ndarray, float] | None:
        if self.map_from_odom is None:
            return None
        centre = (self.map_from_odom * self.odom[k]).translation
        shot.prior_err_m = float(np.linalg.norm(centre - self.frames[k].truth.centre))
        return centre, prior_sigma(self.cfg, self.odom_at_fix, self.odom[k])

    def fill(self, k: int, shot: Shot, reply: dict) -> None:
        shot.outcome = "ok"
        shot.accepted = bool(reply.get("accepted"))
        shot.prior_used = bool(reply.get("prior_used"))
        err = _errors(reply, self.frames[k].truth)
        if err is not None:
            shot.t_err_m, shot.r_err_deg = err
            pose = reply["world_from_cam"]
            map_from_base = Rigid3.from_quat_wxyz(pose["quaternion_wxyz"], pose["translation"])
            self.map_from_odom = map_from_base * self.odom[k].inverse()
            self.odom_at_fix = self.odom[k]


async def _rest_robot(robot: _Robot, client, map_id: str, times: Sequence[float], t0: float,
                      out: list[Shot]) -> None:
    from api.client import VlocClientError
    loop = asyncio.get_running_loop()
    k = 0
    while k < len(times):
        now = loop.time() - t0
        if now < times[k]:
            await asyncio.sleep(times[k] - now)
        elif k + 1 < len(times) and now >= times[k + 1]:  # still busy at the next tick: frame dropped
            out.append(Shot(robot.i, k, robot.frames[k].name, outcome="dropped:skipped"))
            k += 1
            continue
        f = robot.frames[k]
        shot = Shot(robot.i, k, f.name)
        out.append(shot)
        start = time.perf_counter()
        try:
            reply = await client.localize(map_id, f.data, f.camera, prior=robot.prior(k, shot),
                                          robot_id=f"fleet-{robot.i}", timestamp=time.time())
            robot.fill(k, shot, reply)
        except VlocClientError as e:
            shot.outcome = f"http_{e.status}" if e.status is not None else "exception:connection"
        except Exception as e:  # noqa: BLE001 - a robot counts its failures, the fleet goes on
            shot.outcome = f"exception:{type(e).__name__}"
        shot.latency_ms = (time.perf_counter() - start) * 1000
        k += 1


async def _stream_robot(robot: _Robot, client, map_id: str, times: Sequence[float], t0: float,
                        out: list[Shot], drain_s: float) -> None:
    pending: dict[int, tuple[Shot, float]] = {}
    try:
        async with client.stream(map_id) as s:
            async def send(k: int) -> None:
                f = robot.frames[k]
                shot = Shot(robot.i, k, f.name)
                out.append(shot)
                pending[k] = (shot, time.perf_counter())
                await s.send(f.data, f.camera, frame_id=k, timestamp=time.time(), prior=robot.prior(k, shot))

            def on_reply(k: int, reply: dict) -> None:
                shot, start = pending[k]
                shot.latency_ms = (time.perf_counter() - start) * 1000
                if reply.get("dropped"):
                    shot.outcome = f"dropped:{reply.get('reason')}"
                else:
                    robot.fill(k, shot, reply)

            await s.paced(times, t0, send, on_reply, pending, drain_s)
    except Exception as e:  # noqa: BLE001 - a robot counts its failures, the fleet goes on
        for shot, _ in pending.values():
            shot.outcome = f"exception:{type(e).__name__}"
        if not pending:
            out.append(Shot(robot.i, -1, "-", outcome=f"exception:{type(e).__name__}"))
        return
    for shot, _ in pending.values():
        shot.outcome = "lost"


async def _run(url: str, key: str | None, map_id: str, frames: Sequence, cfg: FleetConfig) -> list[Shot]:
    from api.client import AsyncVlocClient
    n_ticks = max(1, int(math.floor(cfg.seconds * cfg.hz + 1e-9)))
    slices = robot_slices(len(frames), cfg.robots)
    robots = [_Robot(i, frames, slices[i], n_ticks, cfg) for i in range(cfg.robots)]
    period = 1.0 / cfg.hz
    out: list[Shot] = []
    clients = [AsyncVlocClient(url, key, timeout=cfg.timeout_s) for _ in range(cfg.robots)]
    t0 = asyncio.get_running_loop().time() + 0.2
    tasks = []
    for r, c in zip(robots, clients):
        times = [r.i * period / cfg.robots + k * period for k in range(n_ticks)]  # robots phase-shifted
        tasks.append(_stream_robot(r, c, map_id, times, t0, out, cfg.drain_s) if cfg.mode == "stream"
                     else _rest_robot(r, c, map_id, times, t0, out))
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), cfg.seconds + cfg.drain_s + cfg.timeout_s + 10)
    except (asyncio.TimeoutError, TimeoutError):
        pass
    finally:
        for c in clients:
            await c.aclose()
    for s in out:
        if s.outcome == "pending":
            s.outcome = "lost"
    return out


def run_fleet(url: str, api_key: str | None, map_id: str, frames: Sequence, cfg: FleetConfig) -> dict:
    """Drive ``cfg.robots`` robots against the service at ``url`` (map ``map_id``).

    frames: the replayable frames in capture order, each with ``name``, ``data`` (JPEG / PNG bytes),
    ``camera`` and ``truth`` (cam_from_world in the map frame), e.g.
    :class:`bench.serve.QueryFrame`. Returns ``{"config", "per_robot": [...], "total"}``.
    """
    cfg.check()
    t = time.perf_counter()
    shots = asyncio.run(_run(url, api_key, map_id, frames, cfg))
    per_robot = [summarize_robot(i, [s for s in shots if s.robot == i]) for i in range(cfg.robots)]
    total = summarize_robot(-1, shots)
    total.pop("robot")
    return {"config": asdict(cfg), "url": url, "map_id": map_id, "frames": len(frames),
            "per_robot": per_robot, "total": total, "seconds": time.perf_counter() - t}


def run_local_fleet(cfg: FleetConfig, root: Path = DEFAULT_ROOT, workdir: Path = Path("bench-results/serve-cache"),
                    workers: int = 2, reporter: Reporter = QUIET) -> dict:
    """Build (or reuse) the map of the 7-Scenes scene at ``root``, start ``vloc serve`` on 127.0.0.1 in
    a child process, register it, run the fleet on the odd-block frames, stop the server."""
    from api.client import VlocClient
    from api.registry import Registry
    from bench.serve_config import ServeBenchConfig
    from bench.serve_workload import ServerProcess, prepare_7scenes

    cfg.check()
    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"7-Scenes folder {root} not found: pass --root, or --url/--map-id/--api-key of a "
                        f"running service")
    bundle, frames, info = prepare_7scenes(root, Path(workdir), ServeBenchConfig(), reporter)
    map_id = "fleet-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in root.resolve().name)[:50]
    data = Path(tempfile.mkdtemp(prefix="vloc-fleet-"))
    server = None
    try:
        reg = Registry(data)
        admin_key = reg.create_key("admin", name="fleet-admin")[1]
        robot_key = reg.create_key("robot", [map_id], name="fleet-robots")[1]
        del reg
        reporter.log(f"starting vloc serve on 127.0.0.1 ({workers} workers)")
        # the bundle is registered by its server path: the server may read bundles from its folder
        server = ServerProcess(data, workers, env={"VLOC_IMPORT_ROOTS": json.dumps([str(Path(bundle).resolve().parent)])})
        server.wait_ready()
        with VlocClient(server.url, admin_key, timeout=300) as admin:
            admin.register_map_path(map_id, bundle)
        with VlocClient(server.url, robot_key, timeout=300) as robot:  # warm-up (lazy init), untimed
            robot.localize(map_id, frames[0].data, frames[0].camera)
        reporter.log(f"{cfg.robots} robots x {cfg.hz:g} Hz x {cfg.seconds:g} s ({cfg.mode}) on {info['frames']}")
        res = run_fleet(server.url, robot_key, map_id, frames, cfg)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data, ignore_errors=True)
    res["workload"] = info
    return res


def print_fleet(res: dict, console=None) -> None:
    """The per-robot table and the fleet total, with rich."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped / captured: do not squeeze the table into 80 columns
            console = Console(width=140)

    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    c = res["config"]
    t = Table(title=f"fleet: {c['robots']} robots x {c['hz']:g} Hz x {c['seconds']:g} s, {c['mode'].upper()}, "
                    f"map {res['map_id']} (errors of accepted frames vs truth; latency = client round trip)")
    # compact headers: robot, frames sent, answered, accepted, median error of the accepted (cm, deg), % of
    # the answered within 5 cm / 5 deg, median odometry-prior error (cm), latency p50 / p95 (ms), drops, errors
    for col in ("robot", "n", "ans", "acc", "cm", "deg", "5cm5d", "prior", "p50ms", "p95ms", "drop", "err"):
        t.add_column(col, justify="right")
    rows = [*res["per_robot"], {**res["total"], "robot": "all"}]
    for r in rows:
        t.add_row(str(r["robot"]), str(r["ticks"]), str(r["answered"]), str(r["accepted"]), f(r["median_t_cm"], "{:.2f}"),
                  f(r["median_r_deg"], "{:.2f}"), f(r["pct_5cm_5deg"], "{:.0f}%"), f(r["median_prior_err_cm"]),
                  f(r["p50_ms"], "{:.0f}"), f(r["p95_ms"], "{:.0f}"),
                  str(r["dropped"]) + (f" ({', '.join(f'{k} {v}' for k, v in r['dropped_by_reason'].items())})"
                                       if r["dropped"] else ""), str(r["errors"]))
    console.print(t)
