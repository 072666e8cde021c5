"""`vloc bench ...`: benchmarks write JSON + print a Markdown table (medians of repeats)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vloc.cli_util import user_errors

app = typer.Typer(help="Benchmarks (JSON + Markdown; state machine, data and ground truth).",
                  no_args_is_help=True)

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@app.command("mapping")
@user_errors
def mapping(root: Path = typer.Option(DEFAULT_SHARED, "--root", help="the shared datasets folder"),
            repeats: int = typer.Option(3, "--repeats", min=1),
            json_out: Optional[Path] = typer.Option(Path("bench-results/mapping.json"), "--json")) -> None:
    """Map build time and size (redkitchen) and SfM accuracy (Strecha)."""
    from mapping.bench import markdown_table, run_mapping_bench
    res = run_mapping_bench(root, repeats, json_out)
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
                                            help="query loops per run; latency = median over them")) -> None:
    """Localization on a 7-Scenes scene: revisit + dense protocols x {pgt_sfm, pgt_dslam}, degradations."""
    from localize.bench7scenes import cdf_path, markdown_table, run_7scenes_bench
    from vloc.progress import Reporter
    res = run_7scenes_bench(root, json_out, repeats, reporter=Reporter())
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
    from localize.bench_scale import ScaleConfig, markdown_table, run_scale_bench
    from vloc.progress import Reporter
    from vloc.types import VlocError
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise VlocError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    cfg = ScaleConfig(width=width, height=height, frames_per_room=frames_per_room, map_keypoints=map_keypoints)
    res = run_scale_bench(size_list, queries, workdir, json_out, cfg, reporter=Reporter(), force=force)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out}")


@app.command("sweep")
@user_errors
def sweep(root: Path = typer.Option(DEFAULT_SHARED / "7scenes-redkitchen", "--root", help="7-Scenes layout folder"),
          repeats: int = typer.Option(3, "--repeats", min=1),
          json_out: Optional[Path] = typer.Option(Path("bench-results/sweep.json"), "--json")) -> None:
    """Accuracy vs latency over working resolution, keypoint budget and k (revisit, pgt_sfm)."""
    from localize.bench_sweep import markdown_table, run_sweep
    print(markdown_table(run_sweep(root, repeats=repeats, out_json=json_out)))
