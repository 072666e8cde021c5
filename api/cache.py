"""Loaded maps: an LRU of Localizers within a memory budget, loaded on demand, single-flight.

A map version is loaded the first time a request needs it (in the calling worker thread),
once even when many requests ask for it at the same time; the others wait for that load.
After each load the least recently used maps are evicted until the estimated resident bytes
fit the budget (the map just loaded always stays, even when it alone exceeds the budget).
Eviction only drops the cache's reference: a request that holds a :class:`LoadedMap` finishes
on it, and Python frees it afterwards; this is what makes activation a hot swap.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.geo import Georeference
from localize import Localizer, LocalizerConfig

log = logging.getLogger("vloc.api.cache")

Key = tuple[str, str, str]  # (map_id, version, feature set)


def estimate_bytes(loc: Localizer) -> int:
    """Resident bytes of a loaded map: the nbytes of its arrays and tensors (Python objects aside)."""
    m = loc.map
    arrays = [m.points_xyz, m.obs_descriptors, m.obs_point, m.image_offsets, m.image_centres,
              m.retrieval_matrix, m.retrieval_rows, m.retrieval.centroids, m.retrieval.descriptors]
    # memory-mapped arrays are file-backed pages shared by every process serving the map: the
    # kernel may drop them under pressure, so they do not count against the budget
    total = sum(int(a.nbytes) for a in arrays if isinstance(a, np.ndarray) and not isinstance(a, np.memmap))
    for a in (m.obs_keypoints, m.image_sizes):
        if isinstance(a, np.ndarray) and not isinstance(a, np.memmap):
            total += int(a.nbytes)
    cache = getattr(m, "_rootsift_cache", None)
    if cache is not None:
        total += int(cache.numel() * cache.element_size())
    total += sum(len(n) + 50 for n in m.image_names)
    return total


def prune_sidecars(mmap_dir: Path | None, maps_dir: Path) -> int:
    """Delete descriptor sidecars no stored bundle refers to (call at startup); returns how many."""
    if mmap_dir is None or not Path(mmap_dir).is_dir():
        return 0
    live = set()
    for m in Path(maps_dir).glob("*/*/manifest.json"):
        try:
            files = json.loads(m.read_text())["files"]
            live.update(v["sha256"] for k, v in files.items() if k.endswith("features.h5"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    gone = 0
    for side in Path(mmap_dir).iterdir():
        if side.name.startswith("."):  # a temp file: only when old (another process may be writing it)
            stale = time.time() - side.stat().st_mtime > 600
        else:
            stale = side.name.split(".")[0] not in live
        if stale:
            side.unlink(missing_ok=True)
            gone += 1
    return gone


@dataclass
class LoadedMap:
    """One resident map version and feature set: the Localizer, its georeference (or None), its
    host size estimate and the bytes it keeps on the device (learned sets on CUDA)."""

    map_id: str
    version: str
    localizer: Localizer
    georef: Georeference | None
    nbytes: int
    load_seconds: float
    features: str = "sift"
    device_bytes: int = 0


def load_map(map_id: str, version: str, path: Path, cfg: LocalizerConfig,
             mmap_dir: Path | None = None) -> LoadedMap:
    """Load a bundle directory (VlocError for a broken bundle); descriptors memory-mapped from
    sidecars in ``mmap_dir`` when given."""
    t0 = time.perf_counter()
    loc = Localizer(path, cfg, mmap_dir=mmap_dir)
    try:
        geo = Georeference.from_manifest(loc.map.manifest)
    except ValueError as e:
        log.warning("map %s/%s: %s; geodetic fields are left out", map_id, version, e)
        geo = None
    fs = loc.map.feature_set
    return LoadedMap(map_id, version, loc, geo, estimate_bytes(loc), time.perf_counter() - t0,
                     fs.name if fs is not None else "sift", loc.device_bytes)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    value: LoadedMap | None = None
    error: BaseException | None = None


class MapCache:
    """LRU of :class:`LoadedMap` keyed by (map_id, version, feature set), within ``budget_bytes``
    of host memory and ``device_budget_bytes`` of device memory.

    loader(map_id, version, path, features) -> LoadedMap. on_change(resident_count, resident_bytes,
    device_bytes) and on_load(seconds, ok) feed the metrics.
    """

    def __init__(self, budget_bytes: int, loader: Callable[[str, str, Path, str], LoadedMap],
                 on_load: Callable[[float, bool], None] = lambda s, ok: None,
                 on_change: Callable[[int, int, int], None] = lambda n, b, d: None,
                 on_evict: Callable[[], None] = lambda: None, device_budget_bytes: int = 1 << 62) -> None:
        self.budget = int(budget_bytes)
        self.device_budget = int(device_budget_bytes)
        self._loader = loader
        self._on_load, self._on_change, self._on_evict = on_load, on_change, on_evict
        self._lock = threading.Lock()
        self._maps: OrderedDict[Key, LoadedMap] = OrderedDict()
        self._pending: dict[Key, _Pending] = {}
        self._discard: set[Key] = set()   # evicted while loading: serve the waiters, do not keep

    def get(self, map_id: str, version: str, path: Path, features: str = "sift") -> LoadedMap:
        """The loaded map version's feature set, loading it (once) if needed. Blocking: call from a
        worker thread."""
        key = (map_id, version, features)
        with self._lock:
            hit = self._maps.get(key)
            if hit is not None:
                self._maps.move_to_end(key)
                return hit
            pending = self._pending.get(key)
            leader = pending is None
            if leader:
                pending = self._pending[key] = _Pending()
        if not leader:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        t0 = time.perf_counter()
        try:
            value = self._loader(map_id, version, path, features)
        except BaseException as e:
            self._on_load(time.perf_counter() - t0, False)
            with self._lock:
                pending.error = e
                del self._pending[key]
                self._discard.discard(key)
            pending.done.set()
            raise
        self._on_load(time.perf_counter() - t0, True)
        with self._lock:
            del self._pending[key]
            if key in self._discard:
                self._discard.discard(key)
            else:
                self._maps[key] = value
            self._evict_over_budget(keep=key)
            stats = self._stats()
        pending.value = value
        pending.done.set()
        self._on_change(*stats)
        log.info("loaded map %s/%s (%s) in %.2f s (%.1f MB, %.1f MB on the device)", map_id, version, features,
                 value.load_seconds, value.nbytes / 1e6, value.device_bytes / 1e6)
        return value

    def put(self, map_id: str, version: str, value: LoadedMap) -> None:
        """Insert a map loaded elsewhere (registration loads a bundle once to validate it)."""
        key = (map_id, version, value.features)
        with self._lock:
            self._maps[key] = value
            self._maps.move_to_end(key)
            self._evict_over_budget(keep=key)
            stats = self._stats()
        self._on_change(*stats)

    def _evict_over_budget(self, keep: Key) -> None:
        total = sum(m.nbytes for m in self._maps.values())
        device = sum(m.device_bytes for m in self._maps.values())
        for key in list(self._maps):
            if total <= self.budget and device <= self.device_budget:
                break
            if key == keep:
                continue
            gone = self._maps.pop(key)
            total -= gone.nbytes
            device -= gone.device_bytes
            self._on_evict()
            log.info("evicted map %s/%s (%s) (budget %.1f MB, device %.1f MB)", key[0], key[1], key[2],
                     self.budget / 1e6, self.device_budget / 1e6)

    def _stats(self) -> tuple[int, int, int]:
        return (len(self._maps), sum(m.nbytes for m in self._maps.values()),
                sum(m.device_bytes for m in self._maps.values()))

    def evict(self, map_id: str, version: str | None = None) -> None:
        """Drop a map version (or every version of a map) from the cache."""
        with self._lock:
            def hit(k: Key) -> bool:
                return k[0] == map_id and (version is None or k[1] == version)
            for key in [k for k in self._maps if hit(k)]:
                del self._maps[key]
            self._discard.update(k for k in self._pending if hit(k))
            stats = self._stats()
        self._on_change(*stats)

    def is_resident(self, map_id: str, version: str) -> bool:
        """Whether any feature set of the map version is loaded."""
        with self._lock:
            return any(k[:2] == (map_id, version) for k in self._maps)

    def resident(self) -> list[tuple[Key, int]]:
        """[((map_id, version, feature set), bytes)] from least to most recently used."""
        with self._lock:
            return [(k, m.nbytes) for k, m in self._maps.items()]
