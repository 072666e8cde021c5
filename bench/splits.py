"""Benchmark splits: which frames build the map and which are queried (pure data)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Frame numbers of the map images and of the queries (sorted, disjoint)."""

    map: list[int]
    queries: list[int]
