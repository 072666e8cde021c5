"""`vloc bench ...`: benchmarks write JSON + print a Markdown table (medians of repeats)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.cli_util import user_errors
from core.types import VlocError

app = typer.Typer(help="Benchmarks (JSON + Markdown; state machine, data and ground truth).",
                  no_args_is_help=True)

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@app.command("mapping")
@user_errors
def mapping(root: Path = typer.Option(DEFAULT_SHARED, "--root", help="the shared datasets folder"),
            repeats: int = typer.Option(3, "--repeats", min=1),
            json_out: Optional[Path] = typer.Option(Path("bench-results/mapping.json"), "--json")) -> None:
    """Map build time and size (redkitchen) and SfM accuracy (Strecha)."""
    from bench.mapping import markdown_table, run_mapping_bench
    res = run_mapping_bench(root, repeats, json_out)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}")


@app.command("hdmap")
@user_errors
def hdmap(root: Path = typer.Option(DEFAULT_SHARED / "7scenes-redkitchen", "--root",
                                    help="7-Scenes redkitchen folder (pgt_sfm_seq01.txt, seq-01/ with depth)"),
          depth_stride: int = typer.Option(5, "--depth-stride", min=1, help="every N-th depth frame for the mesh"),
          world: bool = typer.Option(True, "--world/--no-world", help="also the georeference error on the "
                                                                      "generated world (GPS, GPS + aerial)"),
          json_out: Optional[Path] = typer.Option(Path("bench-results/hdmap.json"), "--json")) -> None:
    """HD layers of the redkitchen map: time and memory per stage, LAS / PLY / GeoTIFF / mesh sizes;
    georeference error on the generated world."""
    from bench.hdmap import markdown_table, run_layers_bench
    from core.progress import Reporter
    res = run_layers_bench(root, json_out, depth_stride=depth_stride, reporter=Reporter(), world=world)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}")


@app.command("7scenes")
@user_errors
def sevenscenes(root: Path = typer.Option(DEFAULT_SHARED / "7scenes-redkitchen", "--root",
                                          help="a 7-Scenes scene folder with pgt_sfm_seq01.txt, "
                                               "pgt_dslam_seq01.txt and seq-01/"),
                json_out: Optional[Path] = typer.Option(Path("bench-results/7scenes.json"), "--json",
                                                        help="JSON output; the error CDF goes next to it "
                                                             "(<stem>_cdf.png)"),
                repeats: int = typer.Option(1, "--repeats", min=1,
                                            help="query loops per run; latency = median over them"),
                features: str = typer.Option("sift", "--features", help="sift | aliked | aliked-n32 | disk: the "
                                             "maps' features and the queries'"),
                device: str = typer.Option("auto", "--device", help="learned features: auto | cpu | cuda"),
                matcher: str = typer.Option("lightglue", "--matcher", help="learned features at query time: "
                                            "lightglue | nn (mutual nearest neighbours 2D-3D)"),
                maps_dir: Optional[Path] = typer.Option(None, "--maps-dir", help="keep the built maps here and "
                                                        "reuse them on the next run (same images and settings)"),
                protocol: list[str] = typer.Option(["revisit", "dense"], "--protocol",
                                                   help="revisit | dense | cv (repeat or comma-separate): cv = "
                                                        "folds of 100-frame blocks, mean and worst fold"),
                degradations: Optional[str] = typer.Option(None, "--degradations",
                                                           help="comma-separated subset of the revisit degradations "
                                                                "('' for none; default all)"),
                ) -> None:
    """Localization on a 7-Scenes scene: revisit + dense protocols x {pgt_sfm, pgt_dslam}, degradations;
    `--protocol cv` adds cross-validated folds."""
    from bench.sevenscenes import Bench7ScenesConfig, cdf_path, markdown_table, run_7scenes_bench
    from core.progress import Reporter
    from localize.config import LocalizerConfig
    from mapping.cli import build_config
    if matcher not in ("lightglue", "nn"):
        raise VlocError(f"--matcher must be lightglue or nn, got {matcher!r}")
    protocols = tuple(p.strip() for item in protocol for p in item.split(",") if p.strip())
    extra = {} if degradations is None else {
        "degradations": tuple(d.strip() for d in degradations.split(",") if d.strip())}
    cfg = Bench7ScenesConfig(build=build_config(features, None, device),
                             localizer=LocalizerConfig(device=device, learned_matcher=matcher),
                             protocols=protocols, **extra)
    res = run_7scenes_bench(root, json_out, repeats, cfg, reporter=Reporter(), maps_dir=maps_dir)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}\nCDF: {cdf_path(json_out)}")


@app.command("scale")
@user_errors
def scale(sizes: str = typer.Option("100,1000,5000", "--sizes", help="map sizes in images, comma-separated"),
          queries: int = typer.Option(30, "--queries", min=1, help="query frames per size"),
          workdir: Path = typer.Option(Path("bench-results/scale-cache"), "--workdir",
                                       help="cache of rendered rooms and built maps (reruns skip them)"),
          json_out: Optional[Path] = typer.Option(Path("bench-results/scale.json"), "--json"),
          width: int = typer.Option(640, "--width", min=64), height: int = typer.Option(480, "--height", min=48),
          frames_per_room: int = typer.Option(25, "--frames-per-room", min=4),
          map_keypoints: Optional[int] = typer.Option(None, "--map-keypoints", min=100,
                                                      help="SIFT keypoints per map image (default: the build's)"),
          force: bool = typer.Option(False, "--force", help="build even when the memory estimate says it "
                                                            "will not fit")) -> None:
    """Query latency, load time, memory and accuracy vs map size on a generated building of rooms."""
    from bench.scale import ScaleConfig, markdown_table, run_scale_bench
    from core.progress import Reporter
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise VlocError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    cfg = ScaleConfig(width=width, height=height, frames_per_room=frames_per_room, map_keypoints=map_keypoints)
    res = run_scale_bench(size_list, queries, workdir, json_out, cfg, reporter=Reporter(), force=force)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}")


@app.command("mapping-scale")
@user_errors
def mapping_scale(images: str = typer.Option("1000,5000,20000", "--images",
                                             help="map sizes in images, comma-separated"),
                  workers: str = typer.Option("1,2", "--workers", help="Dask worker processes, comma-separated "
                                              "(a LocalCluster on this machine per build)"),
                  queries: int = typer.Option(30, "--queries", min=1, help="query frames localized per map"),
                  workdir: Path = typer.Option(Path("bench-results/scale-cache"), "--workdir",
                                               help="rendered rooms (shared with `bench scale`), maps, work dirs"),
                  json_out: Optional[Path] = typer.Option(Path("bench-results/mapping_scale.json"), "--json"),
                  map_keypoints: int = typer.Option(1500, "--map-keypoints", min=100,
                                                    help="SIFT keypoints per map image"),
                  keep_work: bool = typer.Option(False, "--keep-work", help="keep each build's work directory")
                  ) -> None:
    """Map building at building scale on a local Dask cluster: time per stage, peak memory per worker
    and client, bundle size, queries against each map; per 1,000 images and growth."""
    from bench.building import ScaleConfig
    from bench.mapping_scale import MappingScaleConfig, markdown_table, run_mapping_scale_bench
    from core.progress import Reporter
    try:
        sizes = [int(s) for s in images.split(",") if s.strip()]
        worker_counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        raise VlocError(f"--images and --workers take comma-separated integers, got {images!r} / {workers!r}") \
            from None
    cfg = MappingScaleConfig(building=ScaleConfig(map_keypoints=map_keypoints), n_queries=queries,
                             keep_work=keep_work)
    res = run_mapping_scale_bench(sizes, worker_counts, workdir, json_out, cfg, reporter=Reporter())
    print(markdown_table(res))
    if json_out:
        Path(json_out).with_suffix(".md").write_text(markdown_table(res) + "\n")
        print(f"\nJSON: {json_out} (table: {Path(json_out).with_suffix('.md')})")


@app.command("sweep")
@user_errors
def sweep(root: Path = typer.Option(DEFAULT_SHARED / "7scenes-redkitchen", "--root", help="7-Scenes layout folder"),
          repeats: int = typer.Option(3, "--repeats", min=1),
          json_out: Optional[Path] = typer.Option(Path("bench-results/sweep.json"), "--json")) -> None:
    """Accuracy vs latency over working resolution, keypoint budget and k (revisit, pgt_sfm)."""
    from bench.sweep import markdown_table, run_sweep
    print(markdown_table(run_sweep(root, repeats=repeats, out_json=json_out)))


@app.command("serve")
@user_errors
def serve(root: Path = typer.Option(DEFAULT_SHARED / "7scenes-redkitchen", "--root",
                                    help="7-Scenes-layout folder (pgt_sfm_seq01.txt, seq-01/); not used with --maps"),
          robots: int = typer.Option(20, "--robots", min=1, max=1000, help="concurrent simulated robots"),
          hz: float = typer.Option(2.0, "--hz", min=0.01, max=60, help="frames per second per robot"),
          seconds: float = typer.Option(30.0, "--seconds", min=0.5, max=3600, help="length of the send window"),
          stream: bool = typer.Option(False, "--stream", help="WebSocket sessions (motion priors) instead of REST"),
          maps: int = typer.Option(0, "--maps", min=0, max=1000,
                                   help="M >= 1: robots spread over M copies of one generated map (cache path)"),
          cache_mb: Optional[float] = typer.Option(None, "--cache-mb", min=0,
                                                   help="server map-cache budget, MB (default: the server's)"),
          workers: int = typer.Option(2, "--workers", min=1, help="server localization threads"),
          max_age: Optional[float] = typer.Option(None, "--max-age", min=0.01,
                                                  help="server max frame age, s (stale frames are dropped)"),
          max_pending: Optional[int] = typer.Option(None, "--max-pending", min=1,
                                                    help="server's waiting frames per stream session"),
          max_wait: Optional[float] = typer.Option(
              None, "--max-wait", min=0, help="longest wait for a worker, s: the server's max_queue_wait_s for "
                                              "streams; REST robots send it as meta.max_wait_ms (0: no limit)"),
          track: bool = typer.Option(False, "--track", help="REST robots ask for server-side tracking"),
          workdir: Path = typer.Option(Path("bench-results/serve-cache"), "--workdir",
                                       help="cache of built maps and rendered frames (reruns skip them)"),
          json_out: Optional[Path] = typer.Option(Path("bench-results/serve.json"), "--json"),
          features: str = typer.Option("sift", "--features", help="the map's features: sift | aliked | disk ..."),
          device: str = typer.Option("auto", "--device", help="learned features: auto | cpu | cuda"),
          matcher: Optional[str] = typer.Option(None, "--matcher", help="learned features: lightglue | nn "
                                                "(default: the server's, lightglue)"),
          max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="server micro-batch size"),
          max_batch_wait_ms: Optional[float] = typer.Option(None, "--max-batch-wait-ms", min=0)) -> None:
    """Load test over loopback: N robots x R Hz x S s against one `vloc serve` (REST or --stream)."""
    from bench.serve import markdown_table, run_serve_bench
    from bench.serve_config import ServeBenchConfig
    from core.progress import Reporter
    cfg = ServeBenchConfig(features=features, device=device, matcher=matcher, max_batch=max_batch,
                           max_batch_wait_ms=max_batch_wait_ms,
                           robots=robots, hz=hz, seconds=seconds, stream=stream, maps=maps, cache_mb=cache_mb,
                           workers=workers, max_age_s=max_age, max_pending=max_pending,
                           max_wait_s=max_wait, track=track)
    res = run_serve_bench(cfg, None if maps else root, workdir, json_out, reporter=Reporter())
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}")
