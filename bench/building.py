"""The generated building the map-scale benchmarks share (`vloc bench scale`, `vloc bench mapping-scale`):
rooms with exact truth, rendered once and cached on disk, and the queries measured against a map.

Data: a generated *building* of separate rooms.  Room ``i`` is ``generate_scene(seed=base_seed + i,
n_boxes=cfg.n_boxes)`` (6 x 5 x 2.6 m), rendered in its own frame and placed at a world offset on a
square grid ``spacing_m`` apart (default 12 m: more than the 8 m pair-candidate radius of the map
build, so no image pair crosses rooms; rooms see nothing of each other).  World poses are
``cam_from_world = cam_from_room * room_from_world`` with ``room_from_world`` the pure translation
``Rigid3(I, -offset)``.  Each room gives ``frames_per_room`` (25) map images, trajectory pass 0, so a
map of N images has ``ceil(N / 25)`` rooms (the first N images in room order).  The rooms are
shared between sizes (the 1,000-image building contains the 100-image one) and between benchmarks.

Queries: ``n_queries`` frames of trajectory pass 1 (another path: smaller loop, other height and
headings) of ``(room, frame)`` pairs drawn without replacement (``np.random.default_rng(query_seed)``)
among all rooms of that size; ground truth in world coordinates (exact, generated).
:func:`measure_queries` (run in a fresh interpreter, :func:`in_child`) loads the map and localizes them.

Rooms are cached under ``<workdir>/<W>x<H>-f<frames>-b<boxes>-g<spacing>-s<seed>/rooms/room-0007/...``
(``seq-01/frame-000000.color.png``, ``queries/pass1-frame-000012.color.png`` + its pose).
"""
from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.machine import peak_rss_bytes, rss_bytes
from core.camera import Camera
from core.geometry import Rigid3, pose_error
from core.progress import QUIET, Reporter
from core.stats import latency_stats
from core.types import ImageRecord, VlocError

#: an accepted query farther than this from the truth is a wrong answer (metres, degrees).
WRONG_T_M, WRONG_R_DEG = 0.25, 2.0


@dataclass(frozen=True)
class ScaleConfig:
    """What defines the generated building and the query set (recorded in the JSON)."""

    width: int = 640
    height: int = 480
    frames_per_room: int = 25
    n_boxes: int = 4
    room_size: tuple[float, float, float] = (6.0, 5.0, 2.6)
    spacing_m: float = 12.0
    base_seed: int = 1000
    query_seed: int = 0
    #: SIFT keypoints per map image for the build; None = BuildConfig's default.
    map_keypoints: int | None = None

    def cache_key(self) -> str:
        return (f"{self.width}x{self.height}-f{self.frames_per_room}-b{self.n_boxes}"
                f"-g{self.spacing_m:g}-s{self.base_seed}")


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------
def bench_camera(width: int = 640, height: int = 480) -> Camera:
    """PINHOLE camera of the robot case (525 px focal at 640x480) scaled to width x height."""
    return Camera("PINHOLE", int(width), int(height),
                  (525.0 * width / 640.0, 525.0 * height / 480.0, width / 2.0, height / 2.0))


def rooms_for_size(n_images: int, frames_per_room: int) -> int:
    """Rooms needed for a map of n_images (the last room may contribute only part of its frames)."""
    if n_images < 1 or frames_per_room < 1:
        raise ValueError("n_images and frames_per_room must be >= 1")
    return math.ceil(n_images / frames_per_room)


def room_offsets(n_rooms: int, spacing_m: float) -> np.ndarray:
    """(n_rooms, 3) world offsets of the room centres: a near-square grid, row-major, z = 0."""
    cols = max(1, math.ceil(math.sqrt(n_rooms)))
    i = np.arange(n_rooms)
    return np.stack([(i % cols) * spacing_m, (i // cols) * spacing_m, np.zeros(n_rooms)], 1).astype(np.float64)


def room_folder(room: int) -> str:
    return f"room-{room:04d}"


def room_from_world(offset: np.ndarray) -> Rigid3:
    """The pure translation taking world points into the frame of a room centred at ``offset``."""
    return Rigid3(np.eye(3), -np.asarray(offset, np.float64).reshape(3))


def to_world(cam_from_room: Rigid3, offset: np.ndarray) -> Rigid3:
    """``cam_from_world = cam_from_room * room_from_world``."""
    return cam_from_room * room_from_world(offset)


def offset_records(records: Sequence[ImageRecord], folder: str, offset: np.ndarray) -> list[ImageRecord]:
    """Room-local records -> building records: names prefixed with ``folder/``, poses in world."""
    return [replace(r, name=f"{folder}/{r.name}", cam_from_world=to_world(r.cam_from_world, offset))
            for r in records]


def choose_queries(n_rooms: int, frames_per_room: int, n_queries: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n_queries`` distinct (room, pass-1 frame index) pairs, sorted, drawn with ``default_rng(seed)``."""
    total = n_rooms * frames_per_room
    n = min(int(n_queries), total)
    flat = np.random.default_rng(seed).choice(total, n, replace=False)
    return sorted((int(k // frames_per_room), int(k % frames_per_room)) for k in flat)


def room_of(name: str) -> int | None:
    """Room index of a building image name ``room-0007/...`` (None if not such a name)."""
    head = name.split("/", 1)[0]
    return int(head[5:]) if head.startswith("room-") and head[5:].isdigit() else None


#: n, p50, p90, p95, p99, mean, max of a list of numbers (shared with the serve benchmark).
percentile_stats = latency_stats


def stage_medians(timings: Sequence[dict]) -> dict:
    """Per stage name, the median (ms) over the queries that reached that stage."""
    names = sorted({k for d in timings for k in d})
    return {k: float(statistics.median([d[k] for d in timings if k in d])) for k in names}


def accuracy_summary(t_err_m: Sequence[float], r_err_deg: Sequence[float], accepted: Sequence[bool],
                     room_hit: Sequence[bool]) -> dict:
    """Accuracy of n queries: errors of accepted ones (others are misses), wrong answers, retrieval."""
    t = np.asarray(t_err_m, np.float64)
    r = np.asarray(r_err_deg, np.float64)
    a = np.asarray(accepted, bool)
    n = len(a)
    ok_t, ok_r = t[a], r[a]
    wrong = int(np.count_nonzero((ok_t > WRONG_T_M) | (ok_r > WRONG_R_DEG)))
    return {
        "n_queries": n,
        "pct_accepted": 100.0 * a.sum() / n if n else None,
        "median_t_cm_accepted": float(np.median(ok_t) * 100) if len(ok_t) else None,
        "median_r_deg_accepted": float(np.median(ok_r)) if len(ok_r) else None,
        "p90_t_cm_accepted": float(np.percentile(ok_t, 90) * 100) if len(ok_t) else None,
        "pct_5cm_5deg": 100.0 * np.count_nonzero(a & (t <= 0.05) & (r <= 5.0)) / n if n else None,
        "wrong_accepted": wrong,
        "pct_top1_right_room": 100.0 * np.count_nonzero(room_hit) / n if n else None,
    }


# --------------------------------------------------------------------------------------------------
# data (cached on disk; nothing big is held in memory)
# --------------------------------------------------------------------------------------------------
def _room_scene(room: int, cfg: ScaleConfig):
    from datasets.synthetic import generate_scene
    return generate_scene(seed=cfg.base_seed + room, room_size=cfg.room_size, n_boxes=cfg.n_boxes)


def ensure_room(rooms_root: Path, room: int, cfg: ScaleConfig) -> list[ImageRecord]:
    """Render room ``room`` (pass 0, ``frames_per_room`` frames) under ``rooms_root/room-XXXX`` unless
    cached; returns the room-local records (names relative to the room folder)."""
    from datasets.sevenscenes import load_pgt
    from datasets.synthetic import write_dataset
    cam = bench_camera(cfg.width, cfg.height)
    folder = Path(rooms_root) / room_folder(room)
    pgt = folder / "pgt_sfm_seq01.txt"
    if not pgt.is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_dataset(_room_scene(room, cfg), tmp, cfg.frames_per_room, cam, pass_id=0, seq=1)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    records = [replace(r, camera=cam) for r in load_pgt(pgt, cam)]
    if len(records) != cfg.frames_per_room:
        raise VlocError(f"{pgt} has {len(records)} frames, expected {cfg.frames_per_room}; delete {folder}")
    return records


def building_records(rooms_root: Path, n_images: int, cfg: ScaleConfig, reporter: Reporter = QUIET
                     ) -> list[ImageRecord]:
    """The first n_images map records of the building (rendered on demand), world poses."""
    n_rooms = rooms_for_size(n_images, cfg.frames_per_room)
    offsets = room_offsets(n_rooms, cfg.spacing_m)
    out: list[ImageRecord] = []
    t0 = time.perf_counter()
    for i in range(n_rooms):
        out += offset_records(ensure_room(rooms_root, i, cfg), room_folder(i), offsets[i])
        if (i + 1) % 10 == 0 or i + 1 == n_rooms:
            reporter.log(f"  rooms ready: {i + 1}/{n_rooms} ({time.perf_counter() - t0:.0f} s)")
    return out[:n_images]


def ensure_queries(rooms_root: Path, picks: Sequence[tuple[int, int]], offsets: np.ndarray, cfg: ScaleConfig
                   ) -> list[tuple[Path, Rigid3]]:
    """Render (cached) the pass-1 query frames ``(room, frame)``; returns (image path, cam_from_world)."""
    import cv2
    cam = bench_camera(cfg.width, cfg.height)
    out = []
    by_room: dict[int, list[int]] = {}
    for room, frame in picks:
        by_room.setdefault(room, []).append(frame)
    paths: dict[tuple[int, int], tuple[Path, Rigid3]] = {}
    for room, frames in by_room.items():
        qdir = Path(rooms_root) / room_folder(room) / "queries"
        qdir.mkdir(parents=True, exist_ok=True)
        scene = traj = None
        for frame in frames:
            img = qdir / f"pass1-frame-{frame:06d}.color.png"
            pose_txt = qdir / f"pass1-frame-{frame:06d}.cam_from_room.txt"
            if not (img.is_file() and pose_txt.is_file()):
                if scene is None:
                    scene = _room_scene(room, cfg)
                    traj = scene.trajectory(cfg.frames_per_room, pass_id=1)
                rgb, _ = scene.render(traj[frame], cam)
                cv2.imwrite(str(img), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                np.savetxt(pose_txt, traj[frame].matrix4(), fmt="%.18e")
            cam_from_room = Rigid3.from_matrix4(np.loadtxt(pose_txt))
            paths[(room, frame)] = (img, to_world(cam_from_room, offsets[room]))
    for pick in picks:
        out.append(paths[pick])
    return out


# --------------------------------------------------------------------------------------------------
# queries against a built map, in a fresh interpreter
# --------------------------------------------------------------------------------------------------
def measure_queries(bundle: str, queries: list[tuple[str, Rigid3, int]], camera: Camera) -> dict:
    import cv2

    from localize import Localizer
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    loc = Localizer(Path(bundle))
    load_s = time.perf_counter() - t
    gc.collect()
    rss1 = rss_bytes()
    m = loc.map
    arrays = _array_bytes(vars(m))
    arrays["retrieval.descriptors"] = int(m.retrieval.descriptors.nbytes)
    images = [cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p, _, _ in queries]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if images:
        loc.localize(images[0], camera)  # warm-up, untimed
    lat, timings, t_err, r_err, acc, hit, reasons, attempts = [], [], [], [], [], [], [], {}
    for img, (_, gt, room) in zip(images, queries):
        t = time.perf_counter()
        res = loc.localize(img, camera)
        lat.append((time.perf_counter() - t) * 1000.0)
        timings.append(dict(res.timings_ms))
        # which setting answered; a fallback is "full" after a first attempt that was not kept
        kind = res.attempt if not any(k.endswith("_attempt") for k in res.timings_ms) else "full after fallback"
        attempts[kind] = attempts.get(kind, 0) + 1
        ok = bool(res.accepted and res.cam_from_world is not None)
        te, re_ = pose_error(res.cam_from_world, gt) if res.cam_from_world is not None else (math.inf, math.inf)
        t_err.append(te)
        r_err.append(re_)
        acc.append(ok)
        hit.append(bool(res.retrieved) and room_of(res.retrieved[0]) == room)
        if not ok:
            reasons.append(res.reason)
    return {
        "load_s": load_s, "rss_before_load_mb": rss0 / 2**20, "rss_after_load_mb": rss1 / 2**20,
        "rss_load_increase_mb": (rss1 - rss0) / 2**20, "peak_rss_mb": peak_rss_bytes() / 2**20,
        "map_arrays_mb": {k: v / 2**20 for k, v in arrays.items()},
        "n_map_images": m.n_images, "n_points3D": int(len(m.points_xyz)),
        "n_observations": int(len(m.obs_point)),
        "latency_ms": percentile_stats(lat), "stage_medians_ms": stage_medians(timings),
        "accuracy": accuracy_summary(t_err, r_err, acc, hit),
        "rejection_reasons": sorted(set(reasons)), "attempts": attempts,
        # 1-minute load average of the machine before / after the queries (other work inflates latency)
        "loadavg_1m": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    }


def _array_bytes(attrs: dict) -> dict:
    """nbytes of every numpy array / torch tensor among an object's attributes."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            out[k] = int(v.nbytes)
        elif hasattr(v, "element_size") and hasattr(v, "nelement"):
            out[k] = int(v.element_size() * v.nelement())
    return out


def code_state() -> dict:
    """git commit of the working tree and the tracked files that differ from it (None outside git)."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None}
    return {"git_commit": commit, "dirty": dirty}


def in_child(fn, *args):
    """``fn(*args)`` in a fresh spawned interpreter (its memory is its own); returns its result."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()
