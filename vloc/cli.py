"""The `vloc` command: one CLI over the stages (map, bench, demo)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from api.cli import keys_app, serve_cmd
from bench.cli import app as bench_app
from bench.console_cli import console_bench_cmd
from bench.fleet_cli import fleet_cmd
from core.cli_util import user_errors
from hdmap.aerial_cli import fuse_aerial_cmd
from hdmap.cli import build as map_build_cmd
from hdmap.georef_cli import georef as georef_cmd
from hdmap.layers_cli import layers as layers_cmd
from localize.cli import localize_cmd
from mapping.cli import add_features_cmd
from mapping.cli import info as map_info_cmd
from robots.cli import replay_cmd, ros1_cmd
from robots.cli import ros2 as ros2_cmd

# The stages define plain command functions; the shell (this module, the top floor) groups them.
map_app = typer.Typer(help="Build and inspect map bundles.", no_args_is_help=True)
map_app.command("build")(map_build_cmd)
map_app.command("info")(map_info_cmd)
map_app.command("add-features")(add_features_cmd)
map_app.command("georef")(georef_cmd)
map_app.command("fuse-aerial")(fuse_aerial_cmd)
map_app.command("layers")(layers_cmd)

robots_app = typer.Typer(help="Robot bridges: ROS 2 (DDS), ROS 1, bag replay, fleet simulation.",
                         no_args_is_help=True)
robots_app.command("fleet")(fleet_cmd)
robots_app.command("ros2")(ros2_cmd)
robots_app.command("replay")(replay_cmd)
robots_app.command("ros1")(ros1_cmd)

app = typer.Typer(help="vloc: indoor visual localization and HD maps for delivery robots.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(map_app, name="map")
bench_app.command("console")(console_bench_cmd)
app.add_typer(bench_app, name="bench")
app.add_typer(robots_app, name="robots")
app.command("localize")(localize_cmd)
app.add_typer(keys_app, name="keys")
app.command("serve")(serve_cmd)


@app.command("version")
def version() -> None:
    """Print the vloc version."""
    from core import __version__
    print(__version__)


@app.command("demo")
@user_errors
def demo(workdir: Optional[Path] = typer.Option(None, "--workdir", help="where to write (default: a temp dir)"),
         frames: int = typer.Option(24, "--frames", min=4), seed: int = typer.Option(0, "--seed"),
         robot_frames: int = typer.Option(12, "--robot-frames", min=0,
                                          help="frames the simulated robot localizes through the API (0: skip)"),
         no_wait: bool = typer.Option(False, "--no-wait", help="stop the server at the end instead of serving "
                                                               "the console until Enter (CI)")
         ) -> None:
    """Run the main job on the embedded default: generated room -> map bundle -> accuracy vs truth ->
    service on loopback -> a robot localizing through REST and a stream -> the operator console's
    URL, served (the robot moving on it) until Enter unless --no-wait."""
    from rich.console import Console
    from rich.table import Table

    from vloc.demo import print_service_demo, run_demo
    summary = run_demo(workdir, frames, seed, robot_frames, wait=not no_wait)
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
