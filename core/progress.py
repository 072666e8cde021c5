"""Progress bars (rich) for long stages; quiet when disabled or not on a terminal."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True)


class Reporter:
    """Stage progress: ``for x in reporter.track(items, "matching", unit="pairs"): ...``,
    ``with reporter.stage(...)`` and ``reporter.log(msg)``. One bar per stage; ``unit`` names what
    the bar counts (images, pairs, partitions)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def track(self, items: Iterable[T], description: str, total: int | None = None, unit: str = "") -> Iterator[T]:
        if not self.enabled:
            yield from items
            return
        total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        with self._progress() as prog:
            task = prog.add_task(description, total=total, unit=unit)
            for x in items:
                yield x
                prog.advance(task)

    @contextmanager
    def stage(self, description: str, total: int | None, unit: str = "") -> Iterator[Callable[[int], None]]:
        """A bar the caller advances, for work that completes out of order in units of several
        items (e.g. Dask tasks): ``with reporter.stage("features", n, "images") as advance: ... advance(k)``."""
        if not self.enabled:
            yield lambda n=1: None
            return
        with self._progress() as prog:
            task = prog.add_task(description, total=total, unit=unit)
            yield lambda n=1: prog.advance(task, n)

    def log(self, message: str) -> None:
        if self.enabled:
            console.print(message)

    @staticmethod
    def _progress() -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), console=console, transient=False)


QUIET = Reporter(enabled=False)
