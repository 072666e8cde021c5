"""A work directory that lets an interrupted map build resume where it stopped.

Each finished unit of work (one image's features, one pair's verified matches) is stored
as one ``.npz`` file named by a content key: the SHA-256 of everything that determines
it (the image bytes, the camera, the poses, the stage's config). A rerun with the same
inputs finds the file and skips the work; a changed input or config gives another key, so
stale results are never reused. Files are written to a temp name and renamed, so a
killed process leaves either a complete entry or none.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

import numpy as np


def content_key(*parts) -> str:
    """SHA-256 hex of JSON-serialisable parts (dicts with sorted keys, arrays by their bytes)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


#: npz headers are parsed with ``ast.literal_eval``, which CPython 3.11.7 (this project's
#: interpreter) failed with "SystemError: AST constructor recursion depth mismatch" when threads
#: parsed at once (a build's parts read their cached features on a thread pool; seen once in
#: `make test`): entries are read one at a time.
_READ_LOCK = threading.Lock()


class StageCache:
    """``get(stage, key)`` -> dict of arrays or None; ``put(stage, key, **arrays)``.

    Several processes (Dask workers) may share one: writes are atomic renames and an entry's
    content depends only on its key, so concurrent writers of the same key agree."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / f"{key}.npz"

    def contains(self, stage: str, key: str) -> bool:
        """Whether an entry exists (not read: :meth:`get` still checks it)."""
        return self._path(stage, key).is_file()

    def get(self, stage: str, key: str, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray] | None:
        """The entry's arrays (only ``names`` when given: the others are not read), or None."""
        p = self._path(stage, key)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            with _READ_LOCK, np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in (z.files if names is None else names)}
        except (OSError, ValueError, EOFError, KeyError):  # a damaged entry is recomputed, never trusted
            p.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, stage: str, key: str, **arrays: np.ndarray) -> None:
        p = self._path(stage, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
