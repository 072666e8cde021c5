"""`vloc robots ...` commands: thin adapters that connect robots (ROS 2, ROS 1, bags, a simulated
fleet) to the localization core or the service. Each command lives beside the bridge it runs."""
from __future__ import annotations

import typer

app = typer.Typer(help="Robot bridges: ROS 2 (DDS), ROS 1, bag replay, fleet simulation.", no_args_is_help=True)
