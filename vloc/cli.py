"""The `vloc` command: one CLI over the stages (map, bench, demo)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mapping.cli import app as map_app
from localize.cli import localize_cmd
from api.cli import keys_app, serve_cmd
from vloc.bench_cli import app as bench_app
from robots.cli import app as robots_app
from vloc.cli_util import user_errors

app = typer.Typer(help="vloc: indoor visual localization and HD maps for delivery robots.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(map_app, name="map")
app.add_typer(bench_app, name="bench")
app.add_typer(robots_app, name="robots")
app.command("localize")(localize_cmd)
app.add_typer(keys_app, name="keys")
app.command("serve")(serve_cmd)


@app.command("version")
def version() -> None:
    """Print the vloc version."""
    from vloc import __version__
    print(__version__)


@app.command("demo")
@user_errors
def demo(workdir: Optional[Path] = typer.Option(None, "--workdir", help="where to write (default: a temp dir)"),
         frames: int = typer.Option(24, "--frames", min=4), seed: int = typer.Option(0, "--seed"),
         robot_frames: int = typer.Option(12, "--robot-frames", min=0,
                                          help="frames the simulated robot localizes through the API (0: skip)")
         ) -> None:
    """Run the main job on the embedded default: generated room -> map bundle -> accuracy vs truth ->
    service on loopback -> a robot localizing through REST and a stream."""
    from rich.console import Console
    from rich.table import Table

    from vloc.demo import print_service_demo, run_demo
    summary = run_demo(workdir, frames, seed, robot_frames)
    service = summary.pop("service", None)
    console = Console()
    t = Table(title="vloc demo: map of a generated room, checked against its exact truth")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        t.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    console.print(t)
    if service is not None:
        print_service_demo(service, console)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
