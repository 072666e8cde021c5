"""The `vloc` command: one CLI over the stages (map, bench, demo)."""
from __future__ import annotations

import typer

from mapping.cli import app as map_app
from vloc.bench_cli import app as bench_app

app = typer.Typer(help="vloc: indoor visual localization and HD maps for delivery robots.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(map_app, name="map")
app.add_typer(bench_app, name="bench")


@app.command("version")
def version() -> None:
    """Print the vloc version."""
    from vloc import __version__
    print(__version__)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
