"""`vloc bench console`: the operator console in headless Chromium (bench.console). Registered
under `vloc bench` by the `vloc` shell."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.cli_util import user_errors
from core.types import VlocError


@user_errors
def console_bench_cmd(points: int = typer.Option(200_000, "--points", min=1000, help="points of the map drawn in 3D"),
                      repeats: int = typer.Option(5, "--repeats", min=2, help="navigations to the 3D view "
                                                                               "(the first is cold)"),
                      robots: int = typer.Option(20, "--robots", min=1, help="robots streaming for the fps run"),
                      seconds: float = typer.Option(15.0, "--seconds", min=2, help="length of the fps run"),
                      live_frames: int = typer.Option(20, "--live-frames", min=2,
                                                      help="frames of the live-delay robot"),
                      workdir: Optional[Path] = typer.Option(None, "--workdir", help="maps and server data "
                                                                                    "(default: a temp dir)"),
                      json_out: Optional[Path] = typer.Option(Path("bench-results/console.json"), "--json")) -> None:
    """First render of a large map, live pose delay and page fps with a fleet streaming, in headless
    Chromium against a server on loopback (JSON + Markdown)."""
    from bench.console import ConsoleBenchConfig, markdown_table, run_console_bench
    from bench.console_browser import chromium_missing
    from core.progress import Reporter
    missing = chromium_missing()
    if missing:
        raise VlocError(missing)
    cfg = ConsoleBenchConfig(points=points, repeats=repeats, live_frames=live_frames, robots=robots, seconds=seconds)
    res = run_console_bench(json_out, cfg, Reporter(), workdir)
    print(markdown_table(res))
    if json_out:
        print(f"\nJSON: {json_out} (Markdown: {json_out.with_suffix('.md')})")
