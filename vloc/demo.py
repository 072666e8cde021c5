"""`vloc demo`: the main job on the embedded default — a generated room -> a map bundle -> its
summary -> the localization service on loopback -> a simulated robot localizing through the API.

Service part (:func:`run_service_demo`): a server (``create_app`` in a :class:`api.testing.LiveServer`
on 127.0.0.1, data dir in the work dir) with an admin key and a robot key granted map ``room``
(created with the registry, as ``vloc keys create`` does); the admin registers the bundle
(tar.gz upload by :class:`api.client.VlocClient`); the robot then drives another pass through the
room and localizes each frame first by REST (stateless, no prior), then over one streaming
session (the server's motion prior from the previous poses narrows retrieval); errors against the
renderer's exact poses, latencies = client round trips.

Then the operator console: the map gets its HD layers (TSDF mesh, floors, occupancy grid from the
rendered depth), the console's URL and the admin key are printed, and the robot keeps driving
its pass over a stream session (so it moves on the console's live fleet) until Enter is pressed;
``wait=False`` (``vloc demo --no-wait``, CI) or a closed stdin stops the server at once.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import threading
import time
from pathlib import Path

from core.progress import Reporter


def run_demo(workdir: Path | None = None, n_frames: int = 24, seed: int = 0, robot_frames: int = 12,
             wait: bool = False) -> dict:
    """Generate a textured room (exact truth), render a camera loop, build its map, check it; then
    (robot_frames > 0) serve it and localize a robot's pass through the API: ``summary["service"]``;
    ``wait``: keep serving the console (a robot moving) until Enter (module docstring)."""
    import numpy as np
    import pycolmap

    from datasets.synthetic import generate_scene, write_dataset
    from mapping.build import BuildConfig, build_map

    reporter = Reporter()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vloc-demo-"))
    t = time.perf_counter()
    scene = generate_scene(seed=seed)
    records = write_dataset(scene, workdir / "images", n_frames)
    reporter.log(f"generated room (seed {seed}) and rendered {len(records)} RGB-D frames "
                 f"in {time.perf_counter() - t:.1f} s -> {workdir / 'images'}")
    manifest = build_map(workdir / "images", records, workdir / "map", BuildConfig(),
                         pose_file=workdir / "images" / "pgt_sfm_seq01.txt", pose_format="pgt", reporter=reporter)
    rec = pycolmap.Reconstruction(str(workdir / "map" / "model"))
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    d = scene.distance_to_surfaces(xyz)
    s = manifest["statistics"]
    summary = {"bundle": str(workdir / "map"), "images": s["n_images"], "points3D": s["n_points3D"],
               "reprojection_median_px": s["reprojection_error_px"]["median"],
               "point_to_true_surface_median_mm": float(np.median(d) * 1000),
               "points_within_1cm_pct": float(np.mean(d <= 0.01) * 100),
               "build_s": s["build_seconds"], "kB_per_image": s["bytes_per_image"] / 1e3}
    if robot_frames > 0:
        _add_layers(workdir / "map", workdir / "images", reporter)
        summary["service"] = run_service_demo(scene, workdir / "map", workdir, robot_frames, reporter=reporter,
                                              wait=wait)
    return summary


def _add_layers(bundle: Path, images: Path, reporter: Reporter) -> None:
    """HD layers for the console's mesh and floor plan, from the rendered depth (every 2nd frame)."""
    from datasets.synthetic import DEFAULT_CAMERA
    from hdmap.layers.build import LayersConfig, build_layers
    from hdmap.layers.depth import load_depth_folder
    from hdmap.layers.mesh import TsdfConfig
    from hdmap.layers.ortho import OrthoConfig
    t = time.perf_counter()
    depth = load_depth_folder(images, DEFAULT_CAMERA, registered_colour=True, stride=2)
    build_layers(bundle, LayersConfig(tsdf=TsdfConfig(voxel=0.05), ortho=OrthoConfig(resolution=0.05)), depth,
                 reporter=reporter)
    reporter.log(f"HD layers (mesh, floors, occupancy grid) for the console in {time.perf_counter() - t:.1f} s")


def _pose_row(reply: dict, truth, latency_s: float) -> dict:
    from bench.serve_config import pose_errors
    t, r = pose_errors(reply, truth)
    tm = reply.get("timings_ms") or {}
    return {"accepted": bool(reply.get("accepted")), "reason": reply.get("reason"),
            "t_cm": t * 100 if math.isfinite(t) else None, "r_deg": r if math.isfinite(r) else None,
            "latency_ms": latency_s * 1000, "server_ms": tm.get("total"), "inliers": reply.get("num_inliers"),
            "prior_used": bool(reply.get("prior_used")), "tracking": reply.get("tracking")}


def _mode_summary(rows: list[dict]) -> dict:
    from core.stats import latency_stats
    ok = [r for r in rows if r["accepted"]]
    lat = latency_stats([r["latency_ms"] for r in rows])
    med = (lambda xs: float(statistics.median(xs)) if xs else None)
    return {"frames": len(rows), "accepted_pct": 100.0 * len(ok) / len(rows) if rows else None,
            "median_t_cm": med([r["t_cm"] for r in ok]), "median_r_deg": med([r["r_deg"] for r in ok]),
            "p50_ms": lat["p50"], "p90_ms": lat["p90"], "server_p50_ms": med([r["server_ms"] for r in rows
                                                                              if r["server_ms"] is not None]),
            "prior_used": sum(r["prior_used"] for r in rows)}


def run_service_demo(scene, bundle: Path, workdir: Path, n_frames: int = 12, pass_id: int = 1, workers: int = 2,
                     reporter: Reporter | None = None, wait: bool = False) -> dict:
    """Serve ``bundle`` on loopback and localize ``scene.trajectory(n_frames, pass_id)`` through the
    API, REST then stream (module docstring). Returns per-frame rows and a summary per mode."""
    from api.app import create_app
    from api.client import VlocClient
    from api.registry import Registry
    from api.settings import Settings
    from api.testing import LiveServer
    from datasets.synthetic import DEFAULT_CAMERA

    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    poses = scene.trajectory(n_frames, pass_id)
    frames = [scene.render(T, DEFAULT_CAMERA)[0] for T in poses]
    data = Path(workdir) / "server"
    data.mkdir(parents=True, exist_ok=True)
    reg = Registry(data)
    admin_key = reg.create_key("admin", name="demo-admin")[1]
    robot_key = reg.create_key("robot", ["room"], name="demo-robot")[1]
    app = create_app(Settings(data_dir=data, workers=workers, log_level="warning"))
    rest, stream = [], []
    with LiveServer(app) as srv:
        reporter.log(f"server on {srv.url} (data {data}); admin + robot keys created")
        with VlocClient(srv.url, admin_key, timeout=300) as admin:
            t = time.perf_counter()
            info = admin.register_map("room", bundle)
            reporter.log(f"registered map 'room' version {info['version']} (tar.gz upload, validated, loaded) "
                         f"in {time.perf_counter() - t:.1f} s")
        with VlocClient(srv.url, robot_key, timeout=300) as robot:
            robot.localize("room", frames[0], DEFAULT_CAMERA)  # warm-up: lazy initialisation, untimed
            reporter.log(f"robot: {n_frames} frames of pass {pass_id}, REST (one request per frame, no prior)")
            for i, (rgb, truth) in enumerate(zip(frames, poses)):
                t = time.perf_counter()
                reply = robot.localize("room", rgb, DEFAULT_CAMERA, robot_id="demo-robot", timestamp=time.time())
                rest.append(_pose_row(reply, truth, time.perf_counter() - t))
            reporter.log("robot: the same frames over one WebSocket session (server-side motion prior)")
            with robot.stream("room") as session:
                for i, (rgb, truth) in enumerate(zip(frames, poses)):
                    t = time.perf_counter()
                    session.send(rgb, DEFAULT_CAMERA, frame_id=i, timestamp=time.time())
                    reply = session.recv()
                    if reply.get("dropped"):
                        row = {"accepted": False, "reason": f"dropped: {reply.get('reason')}", "t_cm": None,
                               "r_deg": None, "latency_ms": (time.perf_counter() - t) * 1000, "server_ms": None,
                               "inliers": None, "prior_used": False, "tracking": None}
                    else:
                        row = _pose_row(reply, truth, time.perf_counter() - t)
                    stream.append(row)
        # plain prints on stdout (not the reporter's wrapped stderr): a user copies them as they are
        print(f"operator console: {srv.url}/console/#/map/room/fleet", flush=True)
        print(f"admin key (paste it there): {admin_key}", flush=True)
        print(f"robot key (map 'room' only): {robot_key}", flush=True)
        if wait:
            with _robot_loop(srv.url, robot_key, frames, reporter):
                _wait_for_enter("the robot keeps driving its pass; press Enter to stop the server")
    reporter.log("server stopped")
    return {"frames": n_frames, "pass_id": pass_id, "workers": workers, "rest": rest,
            "stream": stream, "summary": {"rest": _mode_summary(rest), "stream": _mode_summary(stream)},
            "seconds": time.perf_counter() - t_start}


@contextlib.contextmanager
def _robot_loop(url: str, robot_key: str, frames: list, reporter: Reporter):
    """A thread that streams ``frames`` round and round (one stream session, robot 'demo-robot':
    the key's name) at about 2 frames a second, until the context exits."""
    from api.client import VlocClient
    from datasets.synthetic import DEFAULT_CAMERA
    stop = threading.Event()

    def drive() -> None:
        try:
            with VlocClient(url, robot_key, timeout=120) as robot, robot.stream("room") as session:
                i = 0
                while not stop.is_set():
                    t = time.monotonic()
                    session.localize(frames[i % len(frames)], DEFAULT_CAMERA if i == 0 else None, frame_id=i,
                                     timestamp=time.time())
                    i += 1
                    stop.wait(max(0.0, 0.5 - (time.monotonic() - t)))
        except Exception as e:  # noqa: BLE001  (the demo goes on; the server's stop ends the stream)
            if not stop.is_set():
                reporter.log(f"demo robot stopped: {e}")

    thread = threading.Thread(target=drive, name="demo-robot", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def _wait_for_enter(prompt: str) -> None:
    """Block until Enter; return at once when stdin is closed (``< /dev/null``)."""
    try:
        input(f"{prompt} ... ")
    except (EOFError, KeyboardInterrupt):
        pass


def print_service_demo(service: dict, console=None) -> None:
    """The per-frame table (errors, latencies) and the REST-vs-stream summary, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    t = Table(title=f"robot, pass {service['pass_id']} through the room: error vs exact truth, round trip")
    for col in ("frame", "REST cm", "deg", "ms", "stream cm", "deg", "ms", "prior"):
        t.add_column(col, justify="right")
    for i, (a, b) in enumerate(zip(service["rest"], service["stream"])):
        t.add_row(str(i), f(a["t_cm"]) if a["accepted"] else "rejected", f(a["r_deg"]), f(a["latency_ms"], "{:.0f}"),
                  f(b["t_cm"]) if b["accepted"] else "rejected", f(b["r_deg"]), f(b["latency_ms"], "{:.0f}"),
                  "yes" if b["prior_used"] else "no")
    console.print(t)
    s = Table(title="summary (errors: median over accepted frames; latency: client round trip)")
    for col in ("mode", "accepted", "error cm", "deg", "p50 ms", "p90 ms", "core p50 ms", "prior"):
        s.add_column(col, justify="right")
    for mode in ("rest", "stream"):
        m = service["summary"][mode]
        s.add_row(mode.upper(), f"{m['accepted_pct']:.0f} %" if m["accepted_pct"] is not None else "-",
                  f(m["median_t_cm"]), f(m["median_r_deg"]), f(m["p50_ms"], "{:.0f}"), f(m["p90_ms"], "{:.0f}"),
                  f(m["server_p50_ms"], "{:.0f}"), f"{m['prior_used']}/{m['frames']}")
    console.print(s)
