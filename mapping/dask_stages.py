"""Map build stages 1-2 as Dask tasks: features per batch of images, verified matches per batch of pairs.

Each task runs the same per-item code as the in-process build (:func:`mapping.extract.extract_batch`,
:class:`mapping.match.PairMatcher`) and writes every result into the build's work directory
(a :class:`~mapping.stage_cache.StageCache` on a path all workers share) under the same keys, so a
build started in process resumes on a cluster and the other way round. A task returns only a
summary (keypoint or match counts): descriptors never travel through the scheduler, and the client
reads them back from the work directory when the next stage needs them. A task is idempotent: what
its keys already hold is skipped, so a task rerun after its worker died (Dask reschedules it)
redoes only the rest. Progress comes from task completions (``distributed.as_completed``).

:class:`DaskStages` is what :func:`mapping.build.reconstruct_set` calls instead of the in-process
stages; a later stage (triangulation per partition) can join it as one more task kind.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distributed import Client, Future, KilledWorker, as_completed

from core.progress import Reporter
from core.types import ImageRecord, VlocError
from mapping.cluster import ClusterConfig, n_workers
from mapping.config import BuildConfig
from mapping.extract import extract_batch, feature_key, learned_backend, load_features, usable_or_fail
from mapping.match import PairMatcher, int8_cache_images, load_matches, match_key, match_pair_batch, pair_matcher
from mapping.stage_cache import StageCache, content_key
from vision.features import Features
from vision.matching import VerifiedPair

_local = threading.local()  # per worker thread: kernel threads set, learned networks loaded once


def _worker_thread_setup() -> None:
    """On a worker: OpenCV's and torch's kernels on one thread (each task fills one worker thread,
    as each thread of the in-process pool does; SIFT then gives the same features)."""
    if getattr(_local, "ready", False):
        return
    import cv2
    import torch
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _local.ready = True


def _cached(kind: str, cfg: BuildConfig, make: Callable):
    """One learned network / LightGlue matcher per worker thread and config (weights load once)."""
    store = _local.__dict__.setdefault("models", {})
    if (kind, cfg) not in store:
        store[(kind, cfg)] = make(cfg)
    return store[(kind, cfg)]


def features_task(images_root: str, cache_root: str, records: list[ImageRecord], keys: list[str],
                  cfg: BuildConfig) -> list[int]:
    """One task: features of a batch of images into the work directory; their keypoint counts."""
    _worker_thread_setup()
    backend = _cached("features", cfg, learned_backend) if cfg.learned_features else None
    return extract_batch(Path(images_root), records, keys, cfg, StageCache(Path(cache_root)), backend)


def matches_task(cache_root: str, records: dict[int, ImageRecord], feature_keys: dict[int, str],
                 pairs: list[tuple[int, int]], posed: bool, cfg: BuildConfig,
                 int8_images: int) -> list[tuple[int, int, int]]:
    """One task: verified matches of a batch of pairs into the work directory, reading the images'
    features from there (each once per task); (i, j, verified matches) per pair."""
    _worker_thread_setup()
    cache = StageCache(Path(cache_root))
    loaded: dict[int, Features] = {}

    def features(i: int) -> Features:
        if i not in loaded:
            f = load_features(cache, feature_keys[i])
            if f is None:
                raise VlocError(f"the features of {records[i].name} are not in the work directory {cache_root} "
                                "(is it on a filesystem every worker shares?)")
            loaded[i] = f
        return loaded[i]

    lightglue = _cached("lightglue", cfg, pair_matcher) if cfg.learned_features else None
    matcher = PairMatcher(records, features, posed, cfg, cache, feature_keys, int8_images, lightglue=lightglue)
    return match_pair_batch(matcher, pairs)


@dataclass
class DaskStages:
    """Features and pair matching on a Dask cluster, results through the work directory.

    ``images_root`` and ``cache.root`` must be paths every worker sees (absolute).
    ``stats``: tasks run per stage (for the manifest)."""

    client: Client
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    stats: dict = field(default_factory=dict)

    def features(self, images_root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                 cache: StageCache | None, image_sha: dict[str, str]) -> list[Features]:
        cache = self._need(cache)
        keys = [feature_key(r, image_sha[r.name], cfg) for r in records]
        todo = [k for k, key in enumerate(keys) if not cache.contains("features", key)]
        step = self.cluster.images_per_task
        root, cache_root = str(Path(images_root).absolute()), str(cache.root.absolute())
        futures = {}
        for b in range(0, len(todo), step):
            batch = todo[b:b + step]
            bkeys = [keys[k] for k in batch]
            fut = self.client.submit(features_task, root, cache_root, [records[k] for k in batch], bkeys, cfg,
                                     key=f"vloc-features-{content_key(cache_root, bkeys)[:24]}")
            futures[fut] = len(batch)
        self.stats["feature_tasks"] = len(futures)
        self._wait(futures, "features", reporter)
        feats = []
        for r, key in zip(records, keys):
            f = load_features(cache, key)
            if f is None:
                raise VlocError(f"the features of {r.name} are missing from the work directory {cache.root} after "
                                "extraction (a shared filesystem that every worker and this machine see?); "
                                "rerun to compute them again")
            feats.append(f)
        usable_or_fail([len(f) for f in feats])
        return feats

    def matches(self, records: list[ImageRecord], feats: list[Features], pairs: list[tuple[int, int]], posed: bool,
                cfg: BuildConfig, reporter: Reporter, cache: StageCache | None,
                feature_keys: list[str]) -> dict[tuple[int, int], VerifiedPair]:
        cache = self._need(cache)
        keys = {p: match_key(records[p[0]], records[p[1]], feature_keys[p[0]], feature_keys[p[1]], posed, cfg)
                for p in pairs}
        todo = [p for p in pairs if not cache.contains("matches", keys[p])]
        mean_kp = sum(len(f) for f in feats) / max(1, len(feats))
        int8_images = int8_cache_images(mean_kp)
        step = self.cluster.pairs_per_task
        cache_root = str(cache.root.absolute())
        futures = {}
        for b in range(0, len(todo), step):
            batch = todo[b:b + step]
            idx = sorted({i for p in batch for i in p})
            fut = self.client.submit(matches_task, cache_root, {i: records[i] for i in idx},
                                     {i: feature_keys[i] for i in idx}, batch, posed, cfg, int8_images,
                                     key=f"vloc-matches-{content_key(cache_root, [keys[p] for p in batch])[:24]}")
            futures[fut] = len(batch)
        self.stats["match_tasks"] = len(futures)
        self._wait(futures, "matching", reporter)
        verified = {}
        for p in pairs:
            found, vp = load_matches(cache, keys[p])
            if not found:
                raise VlocError(f"the matches of pair {records[p[0]].name} / {records[p[1]].name} are missing from "
                                f"the work directory {cache.root} after matching; rerun to compute them again")
            if vp is not None:
                verified[p] = vp
        return verified

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _need(cache: StageCache | None) -> StageCache:
        if cache is None:
            raise VlocError("a build on a Dask cluster needs a work directory every worker shares")
        return cache

    def _wait(self, futures: dict[Future, int], stage: str, reporter: Reporter) -> None:
        """Wait for every task, a progress bar advanced by the items each one finished; a task's error
        is raised here (the others are cancelled). Bounded: a cluster without any worker for
        ``no_worker_timeout_s`` ends the build with a VlocError."""
        total = sum(futures.values())
        if not futures:
            return
        ac = as_completed(list(futures), loop=self.client.loop)
        alone_since, checked = None, time.monotonic()
        try:
            with reporter.stage(f"{stage} ({len(futures)} Dask task{'s' * (len(futures) != 1)})", total) as advance:
                while not ac.is_empty():
                    done = ac.next_batch(block=False)
                    for fut in done:
                        self._result(fut, stage)
                        advance(futures[fut])
                    if done:
                        continue
                    time.sleep(0.1)
                    if time.monotonic() - checked < 1.0:  # the cluster is asked at most once a second
                        continue
                    checked = time.monotonic()
                    problem = self._alone()
                    alone_since = None if problem is None else alone_since or checked
                    if problem and checked - alone_since > self.cluster.no_worker_timeout_s:
                        raise VlocError(f"the build {problem} for {self.cluster.no_worker_timeout_s:.0f} s during "
                                        f"{stage}; rerun to resume from the work directory")
        finally:
            if self.client.status == "running":  # nothing to cancel on a lost connection
                self.client.cancel([f for f in futures if not f.done()])

    def _alone(self) -> str | None:
        """What keeps the tasks from running (no connection, no worker), or None."""
        lost = "lost its connection to the Dask scheduler"
        if self.client.status not in ("running", "connecting"):
            return lost
        try:
            return "has no Dask worker left" if n_workers(self.client) == 0 else None
        except (OSError, TimeoutError):
            return lost

    @staticmethod
    def _result(fut: Future, stage: str):
        try:
            return fut.result()
        except KilledWorker as e:
            raise VlocError(f"Dask gave up a {stage} task: the workers running it died ({e}); out of memory? "
                            "rerun to resume from the work directory") from None
        except CancelledError:
            raise VlocError(f"a {stage} task was cancelled (the scheduler restarted or the connection to it was "
                            "lost); rerun to resume from the work directory") from None

