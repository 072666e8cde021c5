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
