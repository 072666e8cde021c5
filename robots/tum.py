"""TUM trajectory files: ``timestamp tx ty tz qx qy qz qw`` per line, ``#`` comments.

A TUM line is the pose of a moving frame in a fixed frame (``fixed_from_moving``: the position
of the moving frame's origin and its orientation), e.g. ``world_from_cam`` or ``map_from_base``.
The file does not say which; :func:`write_tum` puts it in a header comment and the caller names
it in the variable (``stamped_world_from_cam``). Quaternions are (x, y, z, w) on the line;
everything in memory is :class:`core.geometry.Rigid3`. Timestamps: seconds (float).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.geometry import Rigid3
from core.types import VlocError


@dataclass(frozen=True)
class StampedPose:
    """One TUM row: ``stamp`` seconds and the pose ``fixed_from_moving`` (frames named by the file)."""

    stamp: float
    pose: Rigid3


def format_tum_line(stamp: float, fixed_from_moving: Rigid3) -> str:
    """``timestamp tx ty tz qx qy qz qw`` (9 decimals for the stamp, full precision otherwise)."""
    w, x, y, z = fixed_from_moving.quat_wxyz
    t = fixed_from_moving.translation
    return " ".join([f"{stamp:.9f}"] + [repr(float(v)) for v in (*t, x, y, z, w)])


def write_tum(path: str | Path, rows: Iterable[StampedPose], frames: str) -> int:
    """Write rows to ``path`` with a header comment naming the pose (``frames``, e.g.
    ``"world_from_cam: camera pose in the map frame"``). Returns the number of rows."""
    lines = [f"# TUM trajectory: timestamp tx ty tz qx qy qz qw; pose = {frames}"]
    lines += [format_tum_line(r.stamp, r.pose) for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def read_tum(path: str | Path) -> list[StampedPose]:
    """Read a TUM file (blank lines and ``#`` comments skipped; fields separated by spaces or
    commas). Rows are sorted by stamp. A malformed line is a :class:`VlocError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise VlocError(f"cannot read trajectory file {path}: {e}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.replace(",", " ").split()
        if len(parts) != 8:
            raise VlocError(f"{path}:{lineno}: expected 'timestamp tx ty tz qx qy qz qw' (8 fields), "
                            f"got {len(parts)}: {s!r}")
        try:
            v = [float(p) for p in parts]
            pose = Rigid3.from_quat_wxyz([v[7], v[4], v[5], v[6]], v[1:4])
        except ValueError as e:
            raise VlocError(f"{path}:{lineno}: {e}: {s!r}") from None
        rows.append(StampedPose(v[0], pose))
    if not rows:
        raise VlocError(f"trajectory file {path} has no poses")
    rows.sort(key=lambda r: r.stamp)
    return rows


def associate(stamps: Sequence[float], rows: Sequence[StampedPose], max_dt: float) -> list[StampedPose | None]:
    """For each stamp, the row with the nearest stamp when within ``max_dt`` seconds, else None.
    ``rows`` must be sorted by stamp (as :func:`read_tum` returns them)."""
    if not rows:
        return [None] * len(stamps)
    ts = np.array([r.stamp for r in rows])
    out: list[StampedPose | None] = []
    for s in stamps:
        i = int(np.searchsorted(ts, s))
        best = min((j for j in (i - 1, i) if 0 <= j < len(ts)), key=lambda j: abs(ts[j] - s))
        out.append(rows[best] if abs(ts[best] - s) <= max_dt else None)
    return out
