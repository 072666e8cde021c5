"""`vloc bench scale`: localization cost as the map grows (100 / 1,000 / 5,000 images).

Data and queries: the generated building of :mod:`bench.building` (rooms with exact truth; queries
are pass-1 frames of random rooms).

Per size, each in a fresh spawned interpreter so that memory is attributable:

* build: ``mapping.build.build_map`` with :class:`mapping.build.BuildConfig` (``map_keypoints``
  overrides the SIFT cap if given); wall time and the child's peak RSS (VmHWM).  Skipped when the map
  is already cached (``manifest.json`` exists), then the build time is the manifest's.
* load: wall time of ``Localizer(bundle)`` and the RSS increase it causes (psutil, else
  ``/proc/self/status``), the map's array sizes, and bundle bytes on disk.
* queries: one untimed warm-up, then each query once: wall time of ``Localizer.localize``
  (p50 / p90 / mean) and per-stage medians of ``timings_ms``; accuracy: % accepted, median centre /
  rotation error of the accepted queries, % within 5 cm / 5 deg of all queries, accepted queries with
  an error above 25 cm or 2 deg (``wrong_accepted``: speed bought with wrong answers), and % of
  queries whose top-1 retrieved image is in the right room.

Cache layout under ``workdir`` (``bench-results/scale-cache``, git-ignored)::

    <W>x<H>-f<frames>-b<boxes>-g<spacing>-s<seed>/rooms/room-0007/seq-01/frame-000000.color.png
                                                  /rooms/room-0007/queries/pass1-frame-000012.color.png (+ .pose.txt)
                                                  /maps/n01000-kp4000/manifest.json ...

Cached maps are keyed by the config, not by the code: the git commit at build time is kept next
to each bundle (``<bundle>.code.json``) and reported with the commit at measurement; delete
``maps/`` to rebuild after mapping changes.  The JSON is rewritten after every size; results of
other sizes already in it (same config) are kept.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from bench.building import (  # noqa: F401  (the helpers below are imported from here too)
    WRONG_R_DEG,
    WRONG_T_M,
    ScaleConfig,
    accuracy_summary,
    bench_camera,
    building_records,
    choose_queries,
    code_state,
    ensure_queries,
    in_child,
    offset_records,
    percentile_stats,
    room_folder,
    room_of,
    room_offsets,
    rooms_for_size,
    stage_medians,
    to_world,
)
from bench.building import measure_queries as _measure_worker  # noqa: F401  (its name in tests)
from bench.machine import available_memory_bytes, peak_rss_bytes
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError

DEFAULT_SIZES = (100, 1000, 5000)
DEFAULT_WORKDIR = Path("bench-results/scale-cache")
STAGES = ("features", "retrieval", "matching", "pose", "total")


def estimate_build_peak_bytes(n_images: int, max_keypoints: int) -> float:
    """Rough peak memory of ``build_map``: per keypoint the uint8 descriptor plus two float32 RootSIFT
    copies (vocabulary training normalises all of them; matching keeps one), plus 0.5 GB.
    Measured at 640x480 (commit 2063873): 4000 keypoints (~3,800 found): 1.3 GB for 100 images, 5.4 GB
    for 1,000 (this gives 1.0 and 5.1); 1500 keypoints: 0.66 and 2.1 GB (this gives 0.67 and 2.2);
    5,000 images at 1500 keypoints (commit ef4451e, RootSIFT per matched pair): 8.7 GB (this gives 9.1)."""
    return n_images * max_keypoints * 128 * (1 + 2 * 4) + 0.5e9


# --------------------------------------------------------------------------------------------------
# per-size work, each in a fresh interpreter
# --------------------------------------------------------------------------------------------------
def _build_worker(images_root: str, records: list[ImageRecord], out: str, map_keypoints: int | None,
                  verbose: bool) -> dict:
    from mapping.build import BuildConfig, build_map
    cfg = BuildConfig()
    if map_keypoints:
        cfg = replace(cfg, features=replace(cfg.features, max_keypoints=int(map_keypoints)))
    t = time.perf_counter()
    build_map(Path(images_root), records, Path(out), cfg, reporter=Reporter(enabled=verbose))
    return {"build_s": time.perf_counter() - t, "build_peak_rss_bytes": peak_rss_bytes()}


def run_size(n_images: int, n_queries: int, base: Path, cfg: ScaleConfig, reporter: Reporter = QUIET,
             force: bool = False) -> dict:
    """Data, map (cached), load + queries for one size; returns its JSON entry."""
    from bundleio import dir_size, read_manifest
    from vision.features import SiftConfig
    rooms_root = base / "rooms"
    kp = cfg.map_keypoints or SiftConfig().max_keypoints
    bundle = base / "maps" / f"n{n_images:05d}-kp{kp}"
    n_rooms = rooms_for_size(n_images, cfg.frames_per_room)
    entry: dict = {"n_images": n_images, "n_rooms": n_rooms, "map_keypoints": kp, "bundle": str(bundle)}
    t0 = time.perf_counter()
    reporter.log(f"[{time.strftime('%H:%M:%S')}] size {n_images}: {n_rooms} rooms")
    cached = (bundle / "manifest.json").is_file()
    need, avail = estimate_build_peak_bytes(n_images, kp), available_memory_bytes()
    if not cached and avail is not None and need > 0.8 * avail and not force:
        entry["skipped"] = (f"estimated build peak {need / 2**30:.1f} GB > 80% of available memory "
                            f"{avail / 2**30:.1f} GB (lower --map-keypoints or pass --force)")
        reporter.log("  skipped: " + entry["skipped"])
        return entry
    records = building_records(rooms_root, n_images, cfg, reporter)
    entry["data_s"] = time.perf_counter() - t0
    if cached:
        reporter.log(f"  map cached: {bundle}")
        entry["build_cached"] = True
    else:
        reporter.log(f"[{time.strftime('%H:%M:%S')}]  building map of {len(records)} images -> {bundle}")
        bundle.parent.mkdir(parents=True, exist_ok=True)
        code = code_state()  # the code the build child imports
        entry.update(in_child(_build_worker, str(rooms_root), records, str(bundle), cfg.map_keypoints,
                               reporter.enabled))
        entry["build_cached"] = False
        bundle.with_name(bundle.name + ".code.json").write_text(json.dumps(code))
    code_file = bundle.with_name(bundle.name + ".code.json")
    entry["code_at_build"] = json.loads(code_file.read_text()) if code_file.is_file() else None
    entry["code_at_measure"] = code_state()
    manifest = read_manifest(bundle)
    entry["map_created_utc"] = manifest.get("created_utc")
    stats = manifest["statistics"]
    entry["map"] = {"n_images": stats["n_images"], "n_points3D": stats["n_points3D"],
                    "n_observations": stats["n_observations"], "build_seconds": stats["build_seconds"],
                    "build_timings_s": stats["timings"], "n_verified_pairs": stats["n_verified_pairs"],
                    "mean_keypoints_per_image": stats["mean_keypoints_per_image"],
                    "bundle_bytes": dir_size(bundle)}
    del records
    picks = choose_queries(n_rooms, cfg.frames_per_room, n_queries, cfg.query_seed)
    offsets = room_offsets(n_rooms, cfg.spacing_m)
    q = ensure_queries(rooms_root, picks, offsets, cfg)
    reporter.log(f"[{time.strftime('%H:%M:%S')}]  loading map and running {len(q)} queries")
    entry["queries"] = [f"{room_folder(r)}/pass1/{f}" for r, f in picks]
    entry.update(in_child(_measure_worker, str(bundle), [(str(p), gt, r) for (p, gt), (r, _) in zip(q, picks)],
                           bench_camera(cfg.width, cfg.height)))
    entry["wall_s"] = time.perf_counter() - t0
    reporter.log(f"[{time.strftime('%H:%M:%S')}]  size {n_images} done: p50 {entry['latency_ms']['p50']:.0f} ms, "
                 f"accepted {entry['accuracy']['pct_accepted']:.0f} %")
    return entry


def run_scale_bench(sizes: Sequence[int] = DEFAULT_SIZES, n_queries: int = 30, workdir: Path = DEFAULT_WORKDIR,
                    out_json: Path | None = Path("bench-results/scale.json"), cfg: ScaleConfig = ScaleConfig(),
                    reporter: Reporter = QUIET, force: bool = False) -> dict:
    """Run the sizes in increasing order; the JSON is rewritten after each size."""
    from bench.machine import machine_info
    from localize.config import LocalizerConfig
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2:
        raise VlocError("sizes must be >= 2 images")
    base = Path(workdir) / cfg.cache_key()
    result = {
        "benchmark": "scale", "machine": machine_info(),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": (f"generated building: rooms of {cfg.room_size[0]:g}x{cfg.room_size[1]:g}x{cfg.room_size[2]:g} m "
                 f"(generate_scene seed {cfg.base_seed}+i, {cfg.n_boxes} boxes) on a {cfg.spacing_m:g} m grid, "
                 f"{cfg.frames_per_room} map images per room (pass 0), {cfg.width}x{cfg.height}; queries: "
                 f"pass-1 frames of random rooms (seed {cfg.query_seed}); exact generated ground truth"),
        "protocol": ("each size in fresh processes: build (cached), Localizer load (RSS increase), one warm-up "
                     "query, then each query once; accuracy over accepted queries, wrong = accepted with "
                     f"> {WRONG_T_M * 100:g} cm or > {WRONG_R_DEG:g} deg"),
        "config": {**asdict(cfg), "n_queries": n_queries}, "localizer_config": asdict(LocalizerConfig()),
        "sizes": {},
    }
    if out_json and Path(out_json).is_file():
        try:
            old = json.loads(Path(out_json).read_text())
            if old.get("config") == json.loads(json.dumps(result["config"])):
                result["sizes"] = old.get("sizes", {})
        except (ValueError, OSError):
            pass
    for n in sizes:
        old = result["sizes"].get(str(n), {})
        entry = run_size(n, n_queries, base, cfg, reporter, force)
        if entry.get("build_cached"):  # keep what the run that built the map measured
            for k in ("build_s", "build_peak_rss_bytes"):
                if k in old and k not in entry:
                    entry[k] = old[k]
        result["sizes"][str(n)] = entry
        result["sizes"] = dict(sorted(result["sizes"].items(), key=lambda kv: int(kv[0])))
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(out_json) + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(out_json)
    return result


def markdown_table(result: dict) -> str:
    from bench.machine import machine_line
    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    rows = ["| map images (rooms) | 3D points | bundle MB | build s (peak RSS) | load s | RSS +MB (load) | "
            "p50 / p90 ms | features / retrieval / matching / pose ms | accepted % | median t cm / r deg | "
            "wrong | top-1 room % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, e in result["sizes"].items():
        if "skipped" in e:
            rows.append(f"| {key} ({e['n_rooms']}) | skipped: {e['skipped']} |" + " |" * 10)
            continue
        s, a, lat = e["stage_medians_ms"], e["accuracy"], e["latency_ms"]
        build = f"{e.get('build_s', e['map']['build_seconds']):.0f}"
        if e.get("build_peak_rss_bytes"):
            build += f" ({e['build_peak_rss_bytes'] / 2**30:.1f} GB)"
        rows.append(
            f"| {e['map']['n_images']} ({e['n_rooms']}) | {e['map']['n_points3D']:,} | "
            f"{e['map']['bundle_bytes'] / 2**20:.0f} | {build} | {e['load_s']:.1f} | "
            f"{e['rss_load_increase_mb']:.0f} | {f(lat['p50'])} / {f(lat['p90'])} | "
            f"{' / '.join(f(s.get(k)) for k in ('features', 'retrieval', 'matching', 'pose'))} | "
            f"{f(a['pct_accepted'])} | {f(a['median_t_cm_accepted'], '{:.2f}')} / "
            f"{f(a['median_r_deg_accepted'], '{:.3f}')} | {a['wrong_accepted']} | {f(a['pct_top1_right_room'])} |")
    m = result["machine"]
    rows.append("\n" + machine_line(m))
    loads = [f"{k}: {e['loadavg_1m'][0]:.1f} -> {e['loadavg_1m'][1]:.1f}" for k, e in result["sizes"].items()
             if e.get("loadavg_1m") and None not in e["loadavg_1m"]]
    if loads:
        rows.append("1-min load average before -> after the queries (other processes inflate latency): "
                    + ", ".join(loads))
    rows.append(f"data: {result['data']}")
    return "\n".join(rows)
