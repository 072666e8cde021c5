"""`vloc bench 7scenes`: localization accuracy, robustness and latency on a 7-Scenes-layout scene.

Input: a folder with ``pgt_sfm_seq01.txt`` and ``pgt_dslam_seq01.txt`` (``name qw qx qy qz tx ty tz f``,
cam_from_world; PINHOLE 640x480, principal point (320, 240), focal from the file) and the images
``seq-01/frame-N.color.*`` (named ``.png``; another extension with the same stem is used too).

Protocols (frame number n from each name; both run, each against both ground truths, where the map
poses and the reference poses always come from the SAME file):

* ``revisit``: blocks of 100 frames (``n // 100``); map = even blocks with ``n % 5 == 0``,
  queries = odd blocks with ``n % 5 == 0``.  Queries are at places the map saw only from
  another pass of the trajectory (seconds earlier / later), not next to a map frame.
* ``dense`` (sanity): map ``n % 15 == 0``, queries ``n % 15 in {5, 10}``.
* ``degraded``: the ``revisit`` queries again (pgt_sfm map and reference) under each of
  :data:`DEGRADATIONS` (deterministic, see the functions).

Metrics (:func:`accuracy_metrics`): a rejected query is a miss in every percentage and an infinite
error in the medians (``null`` when more than half are rejected); errors: camera-centre distance and
relative rotation angle (:func:`core.geometry.pose_error`); within ``(X cm, Y deg)``: ``t <= X and r
<= Y``; ``accepted_beyond_3sigma_pct``: accepted poses off by more than 3 reported sigmas.

Latency: wall time of ``Localizer.localize`` per query, in-process (image decoding and the degradation
outside), after one untimed warm-up query per map; ``repeats > 1``: p50 / p90 / stage medians are
medians over the runs (accuracy from the first run; RANSAC is seeded).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import cv2
import numpy as np

from bench.splits import Split
from core.accuracy import THRESHOLDS, accuracy_metrics, query_errors  # noqa: F401  (part of this bench's API)
from core.camera import Camera
from core.imageio import read_image
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError

if TYPE_CHECKING:  # heavy imports (torch, pycolmap) stay lazy for the pure parts
    from localize.config import LocalizerConfig
    from mapping.build import BuildConfig

GROUND_TRUTHS = ("sfm", "dslam")
PROTOCOLS = ("revisit", "dense")

# --------------------------------------------------------------------------------------------------
# protocol splits (pure)
# --------------------------------------------------------------------------------------------------
def revisit_split(frames: Iterable[int], block: int = 100, stride: int = 5) -> Split:
    """Map: frames in even blocks (``n // block``) with ``n % stride == 0``; queries: odd blocks, same stride."""
    fs = sorted(set(int(n) for n in frames))
    kept = [n for n in fs if n % stride == 0]
    return Split(map=[n for n in kept if (n // block) % 2 == 0], queries=[n for n in kept if (n // block) % 2 == 1])


def dense_split(frames: Iterable[int], step: int = 15, query_offsets: Sequence[int] = (5, 10)) -> Split:
    """Map: ``n % step == 0``; queries: ``n % step in query_offsets``."""
    fs = sorted(set(int(n) for n in frames))
    offs = {int(o) % step for o in query_offsets}
    if 0 in offs:
        raise ValueError("dense query offsets must not include 0 (those frames are the map)")
    return Split(map=[n for n in fs if n % step == 0], queries=[n for n in fs if n % step in offs])


# --------------------------------------------------------------------------------------------------
# degradations (pure, deterministic; uint8 RGB in, uint8 RGB out)
# --------------------------------------------------------------------------------------------------
def darken(image: np.ndarray, gain: float = 0.35, gamma: float = 1.8) -> np.ndarray:
    """Dim light: ``out = round(255 * gain * (in / 255) ** gamma)`` (gamma first, then gain), uint8."""
    x = np.asarray(image, np.float32) / 255.0
    return np.clip(np.round(255.0 * gain * np.power(x, gamma)), 0, 255).astype(np.uint8)


def motion_blur(image: np.ndarray, length: int = 9) -> np.ndarray:
    """Horizontal motion blur: ``cv2.filter2D`` with a 1 x length box kernel (sum 1), reflected borders."""
    kernel = np.full((1, int(length)), 1.0 / int(length), np.float32)
    return cv2.filter2D(np.ascontiguousarray(image), -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def sensor_noise(image: np.ndarray, sigma: float = 8.0, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Additive Gaussian noise (std ``sigma`` grey levels, ``np.random.default_rng(seed)``), rounded and clipped."""
    rng = np.random.default_rng(seed)
    noisy = np.asarray(image, np.float32) + rng.normal(0.0, sigma, np.shape(image)).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 15) -> np.ndarray:
    """JPEG round trip at ``quality`` (cv2.imencode / imdecode; RGB is encoded as BGR like a camera file)."""
    img = np.ascontiguousarray(image)
    colour = img.ndim == 3
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if colour else img,
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if colour else out


def half_resolution(image: np.ndarray, camera: Camera) -> tuple[np.ndarray, Camera]:
    """Half-size image (``cv2.INTER_AREA``) and the matching camera ``camera.scaled(0.5)``."""
    cam = camera.scaled(0.5)
    return cv2.resize(np.ascontiguousarray(image), (cam.width, cam.height), interpolation=cv2.INTER_AREA), cam


#: name -> f(image, camera, seed) -> (image, camera).  seed: per-query seed (only noise uses it).
Degradation = Callable[[np.ndarray, Camera, Sequence[int]], tuple[np.ndarray, Camera]]
DEGRADATIONS: dict[str, Degradation] = {
    "dark": lambda im, cam, seed: (darken(im), cam),
    "motion_blur": lambda im, cam, seed: (motion_blur(im), cam),
    "noise": lambda im, cam, seed: (sensor_noise(im, 8.0, seed), cam),
    "jpeg15": lambda im, cam, seed: (jpeg(im, 15), cam),
    "half_res": lambda im, cam, seed: half_resolution(im, cam),
}
DEGRADATION_NOTES = {
    "dark": "out = round(255 * 0.35 * (in/255)**1.8) (gamma 1.8, then gain 0.35)",
    "motion_blur": "cv2.filter2D, 1x9 horizontal box kernel (sum 1), BORDER_REFLECT_101",
    "noise": "additive Gaussian sigma 8 grey levels, rng seed [noise_seed, frame number], rounded, clipped",
    "jpeg15": "cv2.imencode/imdecode JPEG quality 15",
    "half_res": "cv2.resize to 320x240 INTER_AREA, camera Camera.scaled(0.5)",
}


# --------------------------------------------------------------------------------------------------
# metrics (pure)
# --------------------------------------------------------------------------------------------------
def latency_metrics(runs: Sequence[Sequence[float]], stage_runs: Sequence[Sequence[dict]] = ()) -> dict:
    """Latency from repeated query loops.

    runs: per run, the per-query wall times (ms).  stage_runs: per run, the per-query
    ``timings_ms`` dicts.  p50 / p90 are computed per run, then the median over runs is reported;
    stages: per stage name, the median over the queries that reached it, then over runs.
    """
    p50 = [float(np.percentile(r, 50)) for r in runs if len(r)]
    p90 = [float(np.percentile(r, 90)) for r in runs if len(r)]
    stages: dict[str, list[float]] = {}
    for run in stage_runs:
        names = sorted({k for d in run for k in d})
        for name in names:
            vals = [d[name] for d in run if name in d]
            stages.setdefault(name, []).append(float(np.median(vals)))
    return {"p50": statistics.median(p50) if p50 else None, "p90": statistics.median(p90) if p90 else None,
            "stages": {k: statistics.median(v) for k, v in stages.items()}, "repeats": len(runs)}


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench7ScenesConfig:
    """Protocol parameters (defaults = the documented protocol) and the configs under test."""

    block: int = 100
    revisit_stride: int = 5
    dense_step: int = 15
    dense_query_offsets: tuple[int, ...] = (5, 10)
    noise_seed: int = 0
    seq: str = "01"
    build: BuildConfig | None = None            # None = BuildConfig()
    localizer: LocalizerConfig | None = None    # None = LocalizerConfig() (read at run time)
    degradations: tuple[str, ...] = tuple(DEGRADATIONS)
    #: which protocols run: "revisit" (with the degradations), "dense", "cv" (cross-validated folds).
    protocols: tuple[str, ...] = ("revisit", "dense")

    def split(self, protocol: str, frames: Iterable[int]) -> Split:
        if protocol == "revisit":
            return revisit_split(frames, self.block, self.revisit_stride)
        if protocol == "dense":
            return dense_split(frames, self.dense_step, self.dense_query_offsets)
        raise ValueError(f"unknown protocol {protocol!r}")


@dataclass
class QueryRun:
    """Per-query outcome of one query loop (errors in m / deg, inf = miss) and its latencies."""

    names: list[str]
    t_err_m: np.ndarray
    r_err_deg: np.ndarray
    accepted: list[bool]
    reasons: list[str]
    latency_runs: list[list[float]] = field(default_factory=list)
    stage_runs: list[list[dict]] = field(default_factory=list)
    sigma_t_m: list[float | None] = field(default_factory=list)  # per query, reported 1-sigma (m, deg)
    sigma_r_deg: list[float | None] = field(default_factory=list)
    pose_t_err_m: np.ndarray | None = None  # per query, error of the pose accepted or not (inf: none)
    pose_r_err_deg: np.ndarray | None = None

    def metrics(self) -> dict:
        m = accuracy_metrics(self.t_err_m, self.r_err_deg, rejected=sum(not a for a in self.accepted))
        m["latency_ms"] = latency_metrics(self.latency_runs, self.stage_runs)
        from bench.sevenscenes_cv import beyond_3sigma_pct
        m["accepted_beyond_3sigma_pct"] = beyond_3sigma_pct(self)
        return m



def read_rgb(path: Path, camera: Camera | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; checks the size against camera when given."""
    return read_image(path, camera)


def run_queries(localizer, images: Sequence[np.ndarray], records: Sequence[ImageRecord],
                degradation: Degradation | None = None, repeats: int = 1, noise_seed: int = 0,
                reporter: Reporter = QUIET, label: str = "queries") -> QueryRun:
    """Localize every (image, record) pair ``repeats`` times; errors against ``record.cam_from_world``.

    The degradation (if any) is applied before the timing, with seed ``[noise_seed, frame number]``.
    """
    from datasets.sevenscenes import frame_number
    inputs = []
    for img, rec in zip(images, records):
        if degradation is None:
            inputs.append((img, rec.camera))
        else:
            inputs.append(degradation(img, rec.camera, [int(noise_seed), frame_number(rec.name)]))
    if inputs:  # warm-up (lazy initialisation in torch / pycolmap / OpenCV), untimed
        localizer.localize(*inputs[0])
    first = None
    latency_runs, stage_runs = [], []
    for rep in range(max(1, int(repeats))):
        results, lat = [], []
        for img, cam in reporter.track(inputs, f"{label} ({rep + 1}/{repeats})", total=len(inputs)):
            t0 = time.perf_counter()
            res = localizer.localize(img, cam)
            lat.append((time.perf_counter() - t0) * 1000.0)
            results.append(res)
        latency_runs.append(lat)
        stage_runs.append([dict(r.timings_ms) for r in results])
        if first is None:
            first = results
    accepted = [bool(r.accepted and r.cam_from_world is not None) for r in first]
    poses, gts = [x.cam_from_world for x in first], [rec.cam_from_world for rec in records]
    t, r = query_errors(poses, accepted, gts)
    return QueryRun([rec.name for rec in records], t, r, accepted, [x.reason for x in first], latency_runs,
                    stage_runs, [x.position_sigma_m for x in first], [x.rotation_sigma_deg for x in first],
                    *query_errors(poses, [True] * len(poses), gts))


def _map_stats(manifest: dict, build_s: float) -> dict:
    s = manifest["statistics"]
    return {"build_s": build_s, "bytes_per_image": s["bytes_per_image"], "n_points": s["n_points3D"],
            "n_images": s["n_images"]}


def pose_file(root: Path, gt: str, seq: str = "01") -> Path:
    return Path(root) / f"pgt_{gt}_seq{seq}.txt"


def load_ground_truth(root: Path, gt: str, seq: str = "01", reporter: Reporter = QUIET) -> list[ImageRecord]:
    """Records of one pgt file with image names resolved by stem under root."""
    from datasets.sevenscenes import load_pgt
    from mapping.build import resolve_images
    path = pose_file(root, gt, seq)
    if not path.is_file():
        raise VlocError(f"{path} not found: a 7-Scenes bench folder needs pgt_sfm_seq{seq}.txt and "
                        f"pgt_dslam_seq{seq}.txt next to seq-{seq}/")
    return resolve_images(Path(root), load_pgt(path), reporter)


def run_7scenes_bench(root: Path, out_json: Path | None = Path("bench-results/7scenes.json"), repeats: int = 1,
                      cfg: Bench7ScenesConfig = Bench7ScenesConfig(), reporter: Reporter = QUIET,
                      workdir: Path | None = None, maps_dir: Path | None = None) -> dict:
    """Run the protocols against both ground truths, plus the degradations; write JSON + CDF plot.
    Returns the result dict (the JSON); :func:`run_7scenes_bench_full` also the per-query errors."""
    return run_7scenes_bench_full(root, out_json, repeats, cfg, reporter, workdir, maps_dir)[0]


def run_7scenes_bench_full(root: Path, out_json: Path | None = Path("bench-results/7scenes.json"),
                           repeats: int = 1, cfg: Bench7ScenesConfig = Bench7ScenesConfig(),
                           reporter: Reporter = QUIET, workdir: Path | None = None, maps_dir: Path | None = None
                           ) -> tuple[dict, dict[str, QueryRun]]:
    """As :func:`run_7scenes_bench`, also returning the per-query runs (``protocol/gt``, ``degraded/name``)."""
    from bench.machine import machine_info
    from datasets.sevenscenes import frame_number
    from localize.config import LocalizerConfig
    from localize.localizer import Localizer
    from mapping.build import BuildConfig

    root = Path(root)
    if not root.is_dir():
        raise VlocError(f"7-Scenes folder {root} not found (pass --root)")
    if not cfg.protocols or any(p not in ("revisit", "dense", "cv") for p in cfg.protocols):
        raise VlocError(f"protocols must be among revisit, dense, cv; got {list(cfg.protocols)}")
    unknown = [d for d in cfg.degradations if d not in DEGRADATIONS]
    if unknown:
        raise VlocError(f"unknown degradation(s) {unknown}; known: {list(DEGRADATIONS)}")
    build_cfg = cfg.build if cfg.build is not None else BuildConfig()
    loc_cfg = cfg.localizer if cfg.localizer is not None else LocalizerConfig()
    t_start = time.perf_counter()
    gts = {gt: load_ground_truth(root, gt, cfg.seq, reporter) for gt in GROUND_TRUTHS}
    runs: dict[str, QueryRun] = {}
    result: dict = {
        "benchmark": "7scenes-localization",
        "machine": machine_info(),
        "data": str(root.resolve()),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repeats": int(repeats),
        "protocol": {
            "revisit": f"map: (n // {cfg.block}) even and n % {cfg.revisit_stride} == 0; "
                       f"queries: (n // {cfg.block}) odd and n % {cfg.revisit_stride} == 0",
            "dense": f"map: n % {cfg.dense_step} == 0; queries: n % {cfg.dense_step} in "
                     f"{sorted(cfg.dense_query_offsets)}",
            "degraded": "revisit queries, pgt_sfm map and reference, each degradation",
            "ground_truth": "map poses and reference poses from the same pgt file (sfm or dslam)",
            "metrics": "rejected = miss (error +inf); medians over all queries (null when > half missed); "
                       "within (X cm, Y deg) means t <= X and r <= Y; latency = wall time of "
                       "Localizer.localize in-process after one untimed warm-up, p50/p90 median over repeats",
        },
        "degradation_params": {k: DEGRADATION_NOTES[k] for k in cfg.degradations},
        "localizer_config": asdict(loc_cfg),
        "features": build_cfg.feature_type,
        "build_config": {"feature_type": build_cfg.feature_type, "features": build_cfg.feature_config(),
                         "learned": asdict(build_cfg.learned) if build_cfg.learned_features else None},
    }
    with tempfile.TemporaryDirectory(prefix="vloc-bench7-", dir=workdir) as tmp:
        if "cv" in cfg.protocols:
            from bench.sevenscenes_cv import run_cv
            result["protocol"]["cv"] = (f"blocks of {cfg.block} frames; each block alone and each block left out "
                                        f"is one fold's map (n % {cfg.revisit_stride} == 0), queries: the "
                                        f"other blocks' n % {cfg.revisit_stride} == 0 frames; pgt_sfm; mean over "
                                        "folds, worst = the fold with the lowest 2 cm / 1 deg share")
            by_n = {frame_number(r.name): r for r in gts["sfm"]}

            def run_fold(name: str, map_ns: list[int], query_ns: list[int]) -> QueryRun:
                bundle, _ = _map(Path(maps_dir or tmp), f"{name}_sfm", root, [by_n[n] for n in map_ns], build_cfg,
                                 pose_file(root, "sfm", cfg.seq), reporter)
                query_recs = [by_n[n] for n in query_ns]
                images = [read_rgb(root / r.name, r.camera) for r in query_recs]
                return run_queries(Localizer(bundle, loc_cfg), images, query_recs, None, repeats, cfg.noise_seed,
                                   reporter, name)

            result["cv"] = run_cv(by_n, cfg.block, cfg.revisit_stride, run_fold, reporter)
        for protocol in [p for p in PROTOCOLS if p in cfg.protocols]:
            P: dict = {"gt": {}}
            for gt in GROUND_TRUTHS:
                recs = gts[gt]
                by_n = {frame_number(r.name): r for r in recs}
                split = cfg.split(protocol, by_n)
                map_recs = [by_n[n] for n in split.map]
                query_recs = [by_n[n] for n in split.queries]
                reporter.log(f"{protocol}/{gt}: building a map of {len(map_recs)} images, "
                             f"{len(query_recs)} queries")
                t0 = time.perf_counter()
                bundle, manifest = _map(Path(maps_dir or tmp), f"{protocol}_{gt}", root, map_recs, build_cfg,
                                        pose_file(root, gt, cfg.seq), reporter)
                stats = _map_stats(manifest, time.perf_counter() - t0)
                P["map" if gt == "sfm" else f"map_{gt}"] = stats
                localizer = Localizer(bundle, loc_cfg)
                images = [read_rgb(root / r.name, r.camera) for r in query_recs]
                run = run_queries(localizer, images, query_recs, None, repeats, cfg.noise_seed, reporter,
                                  f"{protocol}/{gt}")
                runs[f"{protocol}/{gt}"] = run
                P["gt"][gt] = run.metrics()
                _log_metrics(reporter, f"{protocol}/{gt}", P["gt"][gt])
                if protocol == "revisit" and gt == "sfm":
                    deg: dict = {}
                    for name in cfg.degradations:
                        run = run_queries(localizer, images, query_recs, DEGRADATIONS[name], repeats,
                                          cfg.noise_seed, reporter, f"degraded/{name}")
                        runs[f"degraded/{name}"] = run
                        deg[name] = run.metrics()
                        _log_metrics(reporter, f"degraded/{name}", deg[name])
                    result["degraded"] = deg
                del localizer
            result[protocol] = P
    result["bench_s"] = time.perf_counter() - t_start
    # key order: machine, revisit, dense, degraded first, then the notes
    ordered = {k: result[k] for k in ("machine", "revisit", "dense", "degraded", "cv") if k in result}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    if out_json:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(ordered, indent=2, allow_nan=False) + "\n")
        plot_cdf(runs, cdf_path(out_json))
    return ordered, runs


def _map(folder: Path, name: str, root: Path, records: list[ImageRecord], build_cfg, pgt: Path,
         reporter: Reporter) -> tuple[Path, dict]:
    """The bundle of one protocol / ground truth: built into ``folder``, or the one a previous run
    left there with the same images, poses and build settings (``--maps-dir``)."""
    import hashlib

    from bundleio import read_manifest
    from mapping.build import build_map
    key = hashlib.sha1(json.dumps([[r.name for r in records], pgt.stat().st_size, repr(build_cfg)]).encode())
    bundle = Path(folder) / f"{name}_{build_cfg.feature_type}_{key.hexdigest()[:10]}"
    if (bundle / "manifest.json").is_file():
        reporter.log(f"  using the map built before: {bundle}")
        return bundle, read_manifest(bundle)
    return bundle, build_map(root, records, bundle, build_cfg, pose_file=pgt, pose_format="pgt")


def cdf_path(out_json: Path) -> Path:
    """``bench-results/7scenes.json`` -> ``bench-results/7scenes_cdf.png``."""
    out_json = Path(out_json)
    return out_json.with_name(out_json.stem + "_cdf.png")


def _log_metrics(reporter: Reporter, label: str, m: dict) -> None:
    lat = m["latency_ms"]
    reporter.log(f"  {label}: {m['n_queries']} queries, {m['rejected']} rejected, "
                 f"median {_fmt(m['median_t_cm'], 1)} cm / {_fmt(m['median_r_deg'], 2)} deg, "
                 f"5cm/5deg {_fmt(m['pct_5cm_5deg'], 1)} %, p50 {_fmt(lat['p50'], 0)} ms")


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------
CDF_CURVES = ("revisit/sfm", "revisit/dslam", "dense/sfm")


def plot_cdf(runs: dict[str, QueryRun], path: Path) -> Path:
    """Translation-error CDF (cm, log x; y = % of ALL queries, rejected ones never reached)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CDF_CURVES if k in runs] + sorted(k for k in runs if k.startswith("degraded/"))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    lo, hi = 0.01, 1000.0
    for k in keys:
        run = runs[k]
        n = len(run.t_err_m)
        if n == 0:
            continue
        e = np.sort(np.clip(run.t_err_m[np.isfinite(run.t_err_m)] * 100.0, lo, hi))
        x = np.r_[lo, e, hi]
        y = np.r_[0.0, np.arange(1, len(e) + 1) / n * 100.0, len(e) / n * 100.0]
        ax.step(x, y, where="post", label=f"{k} ({n - sum(run.accepted)}/{n} rej.)",
                linestyle="--" if k.startswith("degraded/") else "-")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 100)
    ax.set_xlabel("camera centre error (cm, log)")
    ax.set_ylabel("queries within error (%)")
    ax.set_title("7-Scenes localization: translation error CDF (rejected = never)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x: float | None, digits: int) -> str:
    return "inf" if x is None else f"{x:.{digits}f}"


def markdown_table(result: dict) -> str:
    """One row per protocol/ground truth and per degradation; then the maps and the machine."""
    from bench.machine import machine_line
    head = ("| run | gt | queries | rejected | median t (cm) | median r (deg) | 2cm/1deg % | 5cm/5deg % "
            "| 10cm/1deg % | 25cm/2deg % | 1m/5deg % | p50 ms | p90 ms | accepted beyond 3 sigma % |")
    rows = [head, "|---" * (head.count("|") - 1) + "|"]

    def row(name: str, gt: str, m: dict) -> str:
        lat, cal = m["latency_ms"], m.get("accepted_beyond_3sigma_pct")
        cal = "-" if cal is None else f"{cal:.1f}"
        return (f"| {name} | {gt} | {m['n_queries']} | {m['rejected']} | {_fmt(m['median_t_cm'], 1)} "
                f"| {_fmt(m['median_r_deg'], 2)} | {_fmt(m['pct_2cm_1deg'], 1)} | {_fmt(m['pct_5cm_5deg'], 1)} "
                f"| {_fmt(m['pct_10cm_1deg'], 1)} | {_fmt(m['pct_25cm_2deg'], 1)} | {_fmt(m['pct_1m_5deg'], 1)} "
                f"| {_fmt(lat['p50'], 0)} | {_fmt(lat['p90'], 0)} | {cal} |")

    for protocol in PROTOCOLS:
        for gt, m in result.get(protocol, {}).get("gt", {}).items():
            rows.append(row(protocol, gt, m))
    for name, m in result.get("degraded", {}).items():
        rows.append(row(f"revisit + {name}", "sfm", m))
    cv = result.get("cv") or {}
    for f in cv.get("folds", []):
        kept = f.get("accepted_of_within_15cm_5deg_pct")
        rows.append(row(f"cv map {f['map_blocks']} -> {f['query_blocks']} ({f['accepted_beyond_15cm_5deg']} accepted "
                        f"beyond 15 cm / 5 deg, {'-' if kept is None else f'{kept:.0f}'} % of those within accepted)",
                        "sfm", f["metrics"]))
    if cv.get("mean"):
        rows.append(row("**cv mean**", "sfm", cv["mean"]))
        rows.append(row("cv worst fold", "sfm", cv["worst"]))
    lines = ["\n".join(rows), ""]
    for protocol in PROTOCOLS:
        mp = result.get(protocol, {}).get("map")
        if mp:
            lines.append(f"{protocol} map (pgt_sfm): {mp['n_images']} images, {mp['n_points']} points, "
                         f"{mp['bytes_per_image'] / 1e3:.0f} kB/image, built in {mp['build_s']:.1f} s")
    m = result["machine"]
    lc = result.get("localizer_config", {})
    feats = result.get("features", "sift")
    how = f"features {feats}" + (f", matcher {lc.get('learned_matcher')}, device {lc.get('device')}"
                                 if feats != "sift" else "")
    lines.append(f"{machine_line(m)}; {how}; repeats={result.get('repeats', 1)}")
    return "\n".join(lines)
