"""`vloc bench serve`: the localization service under load from simulated robots, over loopback.

One server (``vloc serve`` in a child process, so the robots' client work does not share its
interpreter) on 127.0.0.1; N robots in this process (asyncio, one :class:`api.client.AsyncVlocClient`
and connection each) replay real frames for a bounded time, and the run ends with a JSON file and
a Markdown table.

Workloads
---------
* default: a 7-Scenes-layout scene (``--root``, e.g. the shared redkitchen): the map is built from
  the ``revisit`` protocol's map frames (:func:`bench.sevenscenes.revisit_split`: even
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
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from bench.serve_config import (
    Query,
    QueryFrame,
    ServeBenchConfig,
    cache_figures,
    frame_offsets,
    map_ids,
    pose_errors,
    prometheus_values,
    schedule,
    summarize,
)
from bench.serve_workload import ServerProcess, prepare_7scenes, prepare_generated
from core.progress import QUIET, Reporter
from core.stats import latency_stats
from core.types import VlocError


# --------------------------------------------------------------------------------------------------
# robots
# --------------------------------------------------------------------------------------------------
def _fill(q: Query, reply: dict, truth) -> None:
    q.accepted = bool(reply.get("accepted"))
    q.t_err_m, q.r_err_deg = pose_errors(reply, truth)
    tm = reply.get("timings_ms") or {}
    q.server_wait_ms, q.server_total_ms = tm.get("wait"), tm.get("total")
    q.prior_used = reply.get("prior_used")
    q.batch_size = reply.get("batch_size")


async def _rest_robot(i: int, client, map_id: str, frames: Sequence[QueryFrame], offset: int,
                      times: Sequence[float], t0: float, out: list[Query], track: bool = False,
                      max_wait_ms: float | None = None) -> None:
    from api.client import VlocClientError, is_busy
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
    from api.client import AsyncVlocClient
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
    from api.client import VlocClient
    from api.registry import Registry
    from bench.machine import machine_info

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
                                      ("VLOC_MAX_QUEUE_WAIT_S", cfg.max_wait_s), ("VLOC_DEVICE", cfg.device),
                                      ("VLOC_LEARNED_MATCHER", cfg.matcher), ("VLOC_MAX_BATCH", cfg.max_batch),
                                      ("VLOC_MAX_BATCH_WAIT_MS", cfg.max_batch_wait_ms)) if v is not None}
        env["VLOC_IMPORT_ROOTS"] = json.dumps([str(Path(bundle).resolve().parent)])  # registered by path below
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
    from bench.machine import machine_line
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
