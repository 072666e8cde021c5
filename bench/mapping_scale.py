"""`vloc bench mapping-scale`: building maps of 1,000 / 5,000 / 20,000 images on a local Dask cluster.

Data: the generated building of :mod:`bench.building` (rooms of exact truth, 25 map images each,
rendered once and cached), ``map_keypoints`` SIFT keypoints per image (default 1,500, as the
5,000-image build of `vloc bench scale` that took 488 s at 8.6 GB peak before the build streamed
its features from the work directory).

Per size and worker count, each build in a fresh spawned interpreter (the client) with a fresh work
directory (every image extracted, every pair matched): ``build_map(cluster=ClusterConfig("local",
workers=W))``, a ``LocalCluster`` of W one-thread worker processes on this machine. Measured:

* wall time of the build and of each stage (the manifest's ``timings``: cluster start, features,
  matching, reconstruction (COLMAP database + triangulation + colours), retrieval (beside the
  triangulation: it overlaps it), compaction, bundle write);
* peak resident memory (VmHWM) of each worker process (reported by its tasks) and of the client;
* bundle bytes per image;
* then ``n_queries`` pass-1 frames localized against the map in another fresh interpreter
  (:func:`bench.building.measure_queries`: accuracy against the exact truth, latency).

Derived: time and memory per 1,000 images at each size, the marginal cost between sizes (how the
cost grows), the speed-up of 2 workers over 1 on extraction + matching, and the targets (20,000
images within 3 GB per worker, 2 workers >= 1.7x on extraction + matching, 5,000 images faster than
488 s). Maps and work directories live under ``<workdir>/<building>/mapping-scale/``; the work
directory is removed after each build (``keep_work`` keeps it).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from bench.building import (
    WRONG_R_DEG,
    WRONG_T_M,
    ScaleConfig,
    bench_camera,
    building_records,
    choose_queries,
    code_state,
    ensure_queries,
    in_child,
    measure_queries,
    room_folder,
    room_offsets,
    rooms_for_size,
)
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError

DEFAULT_SIZES = (1000, 5000, 20000)
DEFAULT_WORKERS = (1, 2)
DEFAULT_WORKDIR = Path("bench-results/scale-cache")
#: the manifest's stage timings, in build order (retrieval runs beside the reconstruction).
STAGES = ("cluster_start", "features", "matching", "reconstruction", "retrieval", "compaction", "write")
#: the issue's targets: peak memory per worker at 20,000 images, speed-up of 2 workers over 1 on
#: extraction + matching, and the 5,000-image build time before (in process, `vloc bench scale`).
TARGET_WORKER_PEAK_GB, TARGET_SPEEDUP, BEFORE_5000_S = 3.0, 1.7, 488.0
GB = 2 ** 30


@dataclass(frozen=True)
class MappingScaleConfig:
    """What the benchmark builds (recorded in the JSON)."""

    #: the generated building (its ``map_keypoints``: SIFT keypoints per map image).
    building: ScaleConfig = field(default_factory=lambda: ScaleConfig(map_keypoints=1500))
    #: queries localized against each map.
    n_queries: int = 30
    #: keep each build's work directory (features and matches; ~0.3 GB per 1,000 images).
    keep_work: bool = False


# --------------------------------------------------------------------------------------------------
# pure parts: per-1,000 figures, growth, speed-up, tables
# --------------------------------------------------------------------------------------------------
def run_key(n_images: int, workers: int) -> str:
    return f"{n_images}x{workers}"


def per_thousand(entry: dict) -> dict:
    """Time (s) and memory (GB) per 1,000 map images of one run: the build and each stage, the
    largest worker's peak, the client's peak, and the bundle (MB)."""
    k = entry["n_images"] / 1000.0
    out = {"build_s": entry["build_s"] / k}
    out.update({f"{s}_s": entry["stage_s"][s] / k for s in STAGES if entry["stage_s"].get(s) is not None})
    for name in ("worker_peak_rss_bytes", "client_peak_rss_bytes"):
        if entry.get(name) is not None:
            out[name.replace("_bytes", "_gb")] = entry[name] / GB / k
    out["bundle_mb"] = entry["bundle_bytes"] / 2 ** 20 / k
    return out


def growth(entries: Sequence[dict]) -> list[dict]:
    """Marginal cost between consecutive sizes of the same worker count: extra seconds and extra GB
    (largest worker, client) per 1,000 more images."""
    out = []
    by_workers: dict[int, list[dict]] = {}
    for e in entries:
        by_workers.setdefault(e["workers"], []).append(e)
    for w, runs in sorted(by_workers.items()):
        runs = sorted(runs, key=lambda e: e["n_images"])
        for a, b in zip(runs, runs[1:]):
            k = (b["n_images"] - a["n_images"]) / 1000.0
            row = {"workers": w, "from": a["n_images"], "to": b["n_images"],
                   "build_s_per_1000": (b["build_s"] - a["build_s"]) / k}
            for name in ("worker_peak_rss_bytes", "client_peak_rss_bytes"):
                if a.get(name) is not None and b.get(name) is not None:
                    row[name.replace("_bytes", "_gb_per_1000")] = (b[name] - a[name]) / GB / k
            out.append(row)
    return out


def speedups(entries: Sequence[dict], stages: Sequence[str] = ("features", "matching")) -> dict[int, float]:
    """Per size: time of ``stages`` with the fewest workers / with the most (same size)."""
    out = {}
    sizes = sorted({e["n_images"] for e in entries})
    for n in sizes:
        runs = sorted((e for e in entries if e["n_images"] == n), key=lambda e: e["workers"])
        if len(runs) < 2:
            continue
        t = [sum(r["stage_s"].get(s) or 0.0 for s in stages) for r in (runs[0], runs[-1])]
        if t[1] > 0:
            out[n] = t[0] / t[1]
    return out


def extrapolate(entries: Sequence[dict], n_images: int, workers: int) -> dict | None:
    """Build time and peaks at ``n_images`` from the two largest measured sizes of that worker count
    (linear in the images: their marginal cost); None with fewer than two sizes."""
    runs = sorted((e for e in entries if e["workers"] == workers), key=lambda e: e["n_images"])
    if len(runs) < 2:
        return None
    a, b = runs[-2], runs[-1]
    f = (n_images - b["n_images"]) / (b["n_images"] - a["n_images"])
    out = {"n_images": n_images, "workers": workers, "from_sizes": [a["n_images"], b["n_images"]],
           "build_s": b["build_s"] + f * (b["build_s"] - a["build_s"])}
    for name in ("worker_peak_rss_bytes", "client_peak_rss_bytes"):
        if a.get(name) is not None and b.get(name) is not None:
            out[name] = b[name] + f * (b[name] - a[name])
    return out


def targets(entries: Sequence[dict]) -> list[str]:
    """One line per target of the issue: met, missed, or not measured."""
    lines = []
    big = [e for e in entries if e["n_images"] >= 20000]
    if big:
        peak = max(e["worker_peak_rss_bytes"] or 0 for e in big) / GB
        lines.append(f"20,000 images, peak RSS per worker <= {TARGET_WORKER_PEAK_GB:g} GB: {peak:.2f} GB "
                     f"({'met' if peak <= TARGET_WORKER_PEAK_GB else 'missed'})")
    else:
        lines.append("20,000 images: not run (see the extrapolation)")
    for n, s in sorted(speedups(entries).items()):
        lines.append(f"{n} images, most / fewest workers on extraction + matching: {s:.2f}x "
                     f"({'met' if s >= TARGET_SPEEDUP else 'missed'}: >= {TARGET_SPEEDUP:g}x)")
    for e in entries:
        if e["n_images"] == 5000:
            lines.append(f"5,000 images with {e['workers']} worker(s): {e['build_s']:.0f} s "
                         f"({'met' if e['build_s'] < BEFORE_5000_S else 'missed'}: < {BEFORE_5000_S:.0f} s before)")
    return lines


def markdown_table(result: dict) -> str:
    from bench.machine import machine_line

    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    entries = list(result["runs"].values())
    rows = ["| images | workers | build s | " + " / ".join(STAGES) + " s | peak RSS per worker GB | client GB | "
            "kB / image | accepted % / median cm / wrong | p50 / p90 ms | s per 1,000 | worker / client GB per 1,000 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        s, a, lat, k = e["stage_s"], e["accuracy"], e["latency_ms"], per_thousand(e)
        workers = " + ".join(f"{w['peak_rss_bytes'] / GB:.2f}" for w in e["workers_peak"]) or "-"
        rows.append(
            f"| {e['n_images']:,} | {e['workers']} | {e['build_s']:.0f} | "
            f"{' / '.join(f(s.get(x), '{:.1f}') for x in STAGES)} | {workers} | "
            f"{f(e['client_peak_rss_bytes'] and e['client_peak_rss_bytes'] / GB, '{:.2f}')} | "
            f"{e['bundle_bytes'] / e['n_registered'] / 1e3:.0f} | {f(a['pct_accepted'])} / "
            f"{f(a['median_t_cm_accepted'], '{:.2f}')} / {a['wrong_accepted']} | {f(lat['p50'])} / {f(lat['p90'])} | "
            f"{k['build_s']:.0f} | {f(k.get('worker_peak_rss_gb'), '{:.2f}')} / "
            f"{f(k.get('client_peak_rss_gb'), '{:.2f}')} |")
    lines = ["\n".join(rows), ""]
    for g in growth(entries):
        lines.append(f"growth {g['from']:,} -> {g['to']:,} images, {g['workers']} worker(s): "
                     f"+{g['build_s_per_1000']:.0f} s, +{g.get('worker_peak_rss_gb_per_1000', 0):.2f} GB per worker, "
                     f"+{g.get('client_peak_rss_gb_per_1000', 0):.2f} GB client per 1,000 more images")
    for x in result.get("extrapolated", []):
        lines.append(f"extrapolated to {x['n_images']:,} images, {x['workers']} worker(s) (from {x['from_sizes']}): "
                     f"build ~{x['build_s'] / 60:.0f} min, peak per worker ~{x['worker_peak_rss_bytes'] / GB:.1f} GB, "
                     f"client ~{x['client_peak_rss_bytes'] / GB:.1f} GB")
    lines += ["targets: " + "; ".join(targets(entries))]
    lines.append(machine_line(result["machine"]))
    probes = [f"{run_key(e['n_images'], e['workers'])}: {e['speed_probe_ms']:.0f} ms" for e in entries
              if e.get("speed_probe_ms")]
    if probes:
        lines.append("speed probe before each build (SIFT 640x480): " + ", ".join(probes))
    lines.append(f"data: {result['data']}")
    lines.append(f"ground truth: {result['ground_truth']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# one build + its queries, each in a fresh interpreter
# --------------------------------------------------------------------------------------------------
def _build_child(images_root: str, records: list[ImageRecord], out: str, work_dir: str, map_keypoints: int,
                 workers: int, verbose: bool) -> dict:
    from mapping.build import BuildConfig, build_map
    from mapping.cluster import ClusterConfig
    cfg = BuildConfig()
    cfg = replace(cfg, features=replace(cfg.features, max_keypoints=int(map_keypoints)))
    t = time.perf_counter()
    manifest = build_map(Path(images_root), records, Path(out), cfg, reporter=Reporter(enabled=verbose),
                         work_dir=Path(work_dir), cluster=ClusterConfig("local", workers=workers))
    return {"build_s": time.perf_counter() - t, "statistics": manifest["statistics"]}


def run_one(n_images: int, workers: int, base: Path, cfg: MappingScaleConfig, reporter: Reporter = QUIET) -> dict:
    """Build (fresh work directory) and query one map; its JSON entry."""
    from bench.machine import speed_probe
    from bundleio import dir_size
    b = cfg.building
    rooms_root = base / "rooms"
    name = f"n{n_images:05d}-kp{b.map_keypoints}-w{workers}"
    bundle, work = base / "mapping-scale" / name, base / "mapping-scale" / f".{name}.work"
    t0 = time.perf_counter()
    records = building_records(rooms_root, n_images, b, reporter)
    entry: dict = {"n_images": n_images, "workers": workers, "n_rooms": rooms_for_size(n_images, b.frames_per_room),
                   "map_keypoints": b.map_keypoints, "bundle": str(bundle), "data_s": time.perf_counter() - t0}
    for p in (bundle, work):
        shutil.rmtree(p, ignore_errors=True)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    entry["speed_probe_ms"] = speed_probe()["sift_640x480_ms"]
    entry["loadavg_1m_before"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    entry["code"] = code_state()
    reporter.log(f"[{time.strftime('%H:%M:%S')}] building {n_images} images on {workers} worker(s) -> {bundle}")
    built = in_child(_build_child, str(rooms_root), records, str(bundle), str(work), b.map_keypoints, workers,
                     reporter.enabled)
    del records
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    st = built["statistics"]
    cluster = st.get("cluster", {})
    entry.update({
        "build_s": built["build_s"],
        "stage_s": {s: st["timings"].get(f"{s}_s") for s in STAGES},
        "workers_peak": [{"worker": w, "name": v.get("name"), "tasks": v["tasks"], "peak_rss_bytes": v["peak_rss_bytes"],
                          "stage_peak_rss_bytes": v.get("stage_peak_rss_bytes", {})}
                         for w, v in cluster.get("workers", {}).items()],
        "worker_peak_rss_bytes": cluster.get("worker_peak_rss_bytes"),
        "client_peak_rss_bytes": cluster.get("client_peak_rss_bytes"),
        "tasks": {k: cluster.get(k) for k in ("feature_tasks", "match_tasks", "sample_tasks", "vlad_tasks")},
        "bundle_bytes": dir_size(bundle), "n_registered": st["n_images"], "n_points3D": st["n_points3D"],
        "n_observations": st["n_observations"], "n_pairs": st["n_pairs"], "n_verified_pairs": st["n_verified_pairs"],
        "mean_keypoints_per_image": st["mean_keypoints_per_image"],
    })
    reporter.log(f"[{time.strftime('%H:%M:%S')}]  built in {entry['build_s']:.0f} s; {cfg.n_queries} queries")
    n_rooms = entry["n_rooms"]
    picks = choose_queries(n_rooms, b.frames_per_room, cfg.n_queries, b.query_seed)
    q = ensure_queries(rooms_root, picks, room_offsets(n_rooms, b.spacing_m), b)
    entry["queries"] = [f"{room_folder(r)}/pass1/{f}" for r, f in picks]
    measured = in_child(measure_queries, str(bundle), [(str(p), gt, r) for (p, gt), (r, _) in zip(q, picks)],
                        bench_camera(b.width, b.height))
    entry.update({k: measured[k] for k in ("load_s", "latency_ms", "stage_medians_ms", "accuracy", "attempts",
                                           "rejection_reasons")})
    entry["wall_s"] = time.perf_counter() - t0
    return entry


def run_mapping_scale_bench(sizes: Sequence[int] = DEFAULT_SIZES, workers: Sequence[int] = DEFAULT_WORKERS,
                            workdir: Path = DEFAULT_WORKDIR, out_json: Path | None = Path(
                                "bench-results/mapping_scale.json"),
                            cfg: MappingScaleConfig = MappingScaleConfig(), reporter: Reporter = QUIET) -> dict:
    """Every size (increasing) x every worker count, back to back per size; the JSON is rewritten after
    each run, keeping the other runs of the same config already in it."""
    from bench.machine import machine_info
    sizes, workers = sorted({int(s) for s in sizes}), sorted({int(w) for w in workers})
    if not sizes or sizes[0] < 2 or not workers or workers[0] < 1:
        raise VlocError("sizes must be >= 2 images and worker counts >= 1")
    b = cfg.building
    base = Path(workdir) / b.cache_key()
    result = {
        "benchmark": "mapping-scale", "machine": machine_info(),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": (f"generated building (bench.building): rooms of {b.room_size[0]:g}x{b.room_size[1]:g}x"
                 f"{b.room_size[2]:g} m on a {b.spacing_m:g} m grid, {b.frames_per_room} posed map images per room "
                 f"(pass 0), {b.width}x{b.height}, SIFT {b.map_keypoints} keypoints per image; queries: "
                 f"{cfg.n_queries} pass-1 frames of random rooms (seed {b.query_seed})"),
        "ground_truth": ("exact generated poses: the map is triangulated with them and each query's pose is "
                         f"compared with its rendered pose (wrong = accepted with > {WRONG_T_M * 100:g} cm or "
                         f"> {WRONG_R_DEG:g} deg)"),
        "protocol": ("per size, each worker count back to back: a LocalCluster of W one-thread worker processes on "
                     "this machine, a fresh work directory (all features and matches computed), the client in a "
                     "fresh interpreter; then the queries in another (one warm-up, each query once)"),
        "config": {**asdict(cfg), "sizes": sizes, "workers": workers}, "runs": {},
    }
    same = {k: v for k, v in result["config"].items() if k not in ("sizes", "workers")}
    if out_json and Path(out_json).is_file():
        try:
            old = json.loads(Path(out_json).read_text())
            if {k: v for k, v in old.get("config", {}).items() if k not in ("sizes", "workers")} == \
                    json.loads(json.dumps(same)):
                result["runs"] = old.get("runs", {})
        except (ValueError, OSError):
            pass
    for n in sizes:
        for w in workers:
            result["runs"][run_key(n, w)] = run_one(n, w, base, cfg, reporter)
            result["runs"] = dict(sorted(result["runs"].items(),
                                         key=lambda kv: (kv[1]["n_images"], kv[1]["workers"])))
            entries = list(result["runs"].values())
            result["per_1000_images"] = {k: per_thousand(e) for k, e in result["runs"].items()}
            result["growth"] = growth(entries)
            result["speedup_features_matching"] = {str(k): v for k, v in speedups(entries).items()}
            measured = {e["n_images"] for e in entries}
            result["extrapolated"] = [x for x in (extrapolate(entries, 20000, ww) for ww in workers)
                                      if x is not None and 20000 not in measured]
            result["targets"] = targets(entries)
            if out_json:
                Path(out_json).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(str(out_json) + ".tmp")
                tmp.write_text(json.dumps(result, indent=2))
                tmp.replace(out_json)
    return result
