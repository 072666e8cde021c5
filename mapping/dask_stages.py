"""Map build stages 1-2 as Dask tasks: features per batch of images, verified matches per batch of pairs.

Each task runs the same per-item code as the in-process build (:func:`mapping.extract.extract_batch`,
:class:`mapping.match.PairMatcher`, :mod:`mapping.retrieval_index`) and writes every result into the build's work directory
(a :class:`~mapping.stage_cache.StageCache` on a path all workers share) under the same keys, so a
build started in process resumes on a cluster and the other way round. A task returns only a
summary (keypoint or match counts): descriptors never travel through the scheduler, and the client
reads them back from the work directory, one image or pair at a time, when the next stage needs
them. The retrieval index is two rounds of tasks: the vocabulary's sample rows (a few per image),
then, after k-means here, each image's (K*D,) VLAD vector. Every task also reports the peak
resident memory of the worker process that ran it (``statistics.cluster.workers``). A task is idempotent: what
its keys already hold is skipped, so a task rerun after its worker died (Dask reschedules it)
redoes only the rest. Progress comes from task completions (``distributed.as_completed``).

:class:`DaskStages` is what :func:`mapping.build.reconstruct_set` calls instead of the in-process
stages; a later stage (triangulation per partition) can join it as one more task kind.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from distributed import Client, Future, KilledWorker, as_completed, get_worker

from core.memory import process_peak_rss_bytes
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError
from mapping.cluster import ClusterConfig, n_workers
from mapping.config import BuildConfig
from mapping.extract import extract_batch, feature_key, learned_backend, usable_or_fail
from mapping.feature_store import FeatureStore, load_feature_arrays, load_features
from mapping.match import (
    MatchStore,
    PairMatcher,
    int8_cache_images,
    match_key,
    match_pair_batch,
    pair_matcher,
)
from mapping.partition_build import PartJob, run_part
from mapping.retrieval_index import assemble_sample, take_rows, vlad_rows, vocabulary_sample
from mapping.stage_cache import StageCache, content_key
from vision.features import Features
from vision.retrieval import RetrievalIndex, train_vocabulary

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


def sample_task(cache_root: str, items: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """One task: the vocabulary's sample rows of a batch of images ((feature key, rows) each), stacked."""
    cache = StageCache(Path(cache_root))
    keys = [key for key, _ in items]
    return take_rows(lambda k: load_feature_arrays(cache, keys[k], ("descriptors",), keys[k])["descriptors"],
                     [(k, rows) for k, (_, rows) in enumerate(items)])


def vlad_task(cache_root: str, keys: list[str], centroids: np.ndarray) -> np.ndarray:
    """One task: (n, K*D) float16 VLAD vectors of a batch of images (by feature key)."""
    cache = StageCache(Path(cache_root))
    return vlad_rows(lambda k: load_feature_arrays(cache, keys[k], ("descriptors",), keys[k])["descriptors"],
                     range(len(keys)), centroids)


def measured(task: Callable, *args) -> tuple[Any, dict]:
    """Run a task; (its result, the worker that ran it and that process's peak resident memory so far)."""
    out = task(*args)
    try:
        worker = get_worker()
        who = {"worker": worker.address, "name": str(worker.name)}
    except ValueError:  # not on a Dask worker (called directly)
        who = {"worker": f"pid {os.getpid()}", "name": ""}
    return out, {**who, "pid": os.getpid(), "peak_rss_bytes": process_peak_rss_bytes()}


@dataclass
class DaskStages:
    """Features, pair matching and the retrieval index on a Dask cluster, results through the work
    directory.

    ``images_root`` and ``cache.root`` must be paths every worker sees (absolute).
    ``stats``: tasks run per stage and each worker's peak memory (:meth:`summary`, for the manifest)."""

    client: Client
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    stats: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def features(self, images_root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                 cache: StageCache | None, image_sha: dict[str, str]) -> FeatureStore:
        cache = self._need(cache)
        keys = [feature_key(r, image_sha[r.name], cfg) for r in records]
        todo = [k for k, key in enumerate(keys) if not cache.contains("features", key)]
        step = self.cluster.images_per_task
        root, cache_root = str(Path(images_root).absolute()), str(cache.root.absolute())
        futures, batches = {}, {}
        for b in range(0, len(todo), step):
            batch = todo[b:b + step]
            bkeys = [keys[k] for k in batch]
            fut = self.client.submit(measured, features_task, root, cache_root, [records[k] for k in batch], bkeys,
                                     cfg, key=f"vloc-features-{content_key(cache_root, bkeys)[:24]}")
            futures[fut], batches[fut] = len(batch), batch
        self.stats["feature_tasks"] = len(futures)
        counts: list[int | None] = [None] * len(records)
        for fut, n_keypoints in self._wait(futures, "features", reporter, "images").items():
            for k, n in zip(batches[fut], n_keypoints):
                counts[k] = n
        for k, (r, key) in enumerate(zip(records, keys)):
            # extracted now: their entries must be here too (a work directory every worker and this
            # machine share); extracted before: their keypoints say how many
            if counts[k] is not None and cache.contains("features", key):
                continue
            hit = cache.get("features", key, names=("keypoints",))
            if hit is None:
                raise VlocError(f"the features of {r.name} are missing from the work directory {cache.root} after "
                                "extraction (a shared filesystem that every worker and this machine see?); "
                                "rerun to compute them again")
            counts[k] = len(hit["keypoints"])
        usable_or_fail(counts)  # type: ignore[arg-type]
        return FeatureStore.from_cache(cache, keys, counts, [r.name for r in records])  # type: ignore[arg-type]

    def matches(self, records: list[ImageRecord], feats: FeatureStore, pairs: list[tuple[int, int]], posed: bool,
                cfg: BuildConfig, reporter: Reporter, cache: StageCache | None,
                feature_keys: list[str]) -> MatchStore:
        cache = self._need(cache)
        keys = {p: match_key(records[p[0]], records[p[1]], feature_keys[p[0]], feature_keys[p[1]], posed, cfg)
                for p in pairs}
        todo = [p for p in pairs if not cache.contains("matches", keys[p])]
        int8_images = int8_cache_images(float(np.mean(feats.counts)) if len(feats) else 1)
        step = self.cluster.pairs_per_task
        cache_root = str(cache.root.absolute())
        futures = {}
        for b in range(0, len(todo), step):
            batch = todo[b:b + step]
            idx = sorted({i for p in batch for i in p})
            fut = self.client.submit(measured, matches_task, cache_root, {i: records[i] for i in idx},
                                     {i: feature_keys[i] for i in idx}, batch, posed, cfg, int8_images,
                                     key=f"vloc-matches-{content_key(cache_root, [keys[p] for p in batch])[:24]}")
            futures[fut] = len(batch)
        self.stats["match_tasks"] = len(futures)
        n_matches = {(i, j): n for out in self._wait(futures, "matching", reporter, "pairs").values() for i, j, n in out}
        verified = []
        for p in pairs:
            n = n_matches.get(p)
            if n is None or not cache.contains("matches", keys[p]):  # matched before, or lost since
                hit = cache.get("matches", keys[p], names=("matches",))
                if hit is None:
                    raise VlocError(f"the matches of pair {records[p[0]].name} / {records[p[1]].name} are missing "
                                    f"from the work directory {cache.root} after matching; rerun to compute them "
                                    "again")
                n = len(hit["matches"])
            if n:
                verified.append(p)
        return MatchStore(cache, verified, [keys[p] for p in verified])

    def retrieval(self, names: list[str], feats: FeatureStore, cfg: BuildConfig, reporter: Reporter
                  ) -> RetrievalIndex:
        """The vocabulary's sample rows as tasks, k-means here, then the VLAD vectors as tasks: the
        same index as in process (:mod:`mapping.retrieval_index`)."""
        cache, _ = feats.cache_entry(0)
        cache_root = str(cache.root.absolute())
        keys = [feats.cache_entry(i)[1] for i in range(len(feats))]
        step = self.cluster.images_per_index_task
        tag = content_key(cache_root, keys, asdict(cfg.retrieval))[:16]
        plan = vocabulary_sample(feats.counts, cfg.retrieval)
        futures = {}
        for b, batch in enumerate(plan.batches(step)):
            fut = self.client.submit(measured, sample_task, cache_root, [(keys[i], rows) for i, rows in batch],
                                     key=f"vloc-sample-{tag}-{b}")
            futures[fut] = len(batch)
        self.stats["sample_tasks"] = len(futures)
        parts = self._wait(futures, "retrieval sample", QUIET)
        centroids = train_vocabulary([assemble_sample(plan, [parts[f] for f in futures])], cfg.retrieval)
        futures = {}
        for b in range(0, len(keys), step):
            fut = self.client.submit(measured, vlad_task, cache_root, keys[b:b + step], centroids,
                                     key=f"vloc-vlad-{tag}-{content_key(centroids)[:8]}-{b // step}")
            futures[fut] = len(keys[b:b + step])
        self.stats["vlad_tasks"] = len(futures)
        vectors = self._wait(futures, "retrieval", QUIET)
        g = np.concatenate([vectors[f] for f in futures]) if futures else np.zeros((0, centroids.size), np.float16)
        return RetrievalIndex(centroids, g, list(names))

    def parts(self, jobs: list[PartJob], cfg: BuildConfig, reporter: Reporter, keypoints=None,
              verified=None) -> list[dict]:
        """One task per partition (:func:`mapping.partition_build.run_part`, inputs from the work
        directory, model written there); summaries in job order. A part finished before (this run
        or an earlier one) is read back by its task, not reconstructed again."""
        if any(j.cache_root is None for j in jobs):
            raise VlocError("a build on a Dask cluster needs a work directory every worker shares")
        futures, order = {}, {}
        for k, job in enumerate(jobs):
            fut = self.client.submit(measured, run_part, job, key=f"vloc-part-{Path(job.folder).name}")
            futures[fut], order[fut] = 1, k
        self.stats["partition_tasks"] = len(futures)
        kind = jobs[0].kind if jobs else "parts"
        out: list[dict | None] = [None] * len(jobs)
        for fut, summary in self._wait(futures, f"reconstruction ({len(jobs)} {kind})", reporter,
                                       "partitions").items():
            out[order[fut]] = summary
        return out  # type: ignore[return-value]

    def summary(self) -> dict:
        """Tasks per stage and, per worker (address), its tasks and peak resident memory (overall and
        per stage); ``worker_peak_rss_bytes``: the largest."""
        with self._lock:
            workers = {w: {**v, "stage_peak_rss_bytes": dict(v["stage_peak_rss_bytes"])}
                       for w, v in sorted(self.workers.items())}
        peak = max((v["peak_rss_bytes"] for v in workers.values()), default=None)
        return {**self.stats, "worker_peak_rss_bytes": peak, "workers": workers}

    def _note(self, stage: str, report: dict) -> None:
        with self._lock:
            w = self.workers.setdefault(report["worker"], {"name": report["name"], "tasks": 0, "peak_rss_bytes": 0,
                                                          "stage_peak_rss_bytes": {}})
            w["tasks"] += 1
            w["peak_rss_bytes"] = max(w["peak_rss_bytes"], report["peak_rss_bytes"])
            per_stage = w["stage_peak_rss_bytes"]
            per_stage[stage] = max(per_stage.get(stage, 0), report["peak_rss_bytes"])

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _need(cache: StageCache | None) -> StageCache:
        if cache is None:
            raise VlocError("a build on a Dask cluster needs a work directory every worker shares")
        return cache

    def _wait(self, futures: dict[Future, int], stage: str, reporter: Reporter, unit: str = "") -> dict[Future, Any]:
        """Each task's result (tasks run through :func:`measured`: their memory reports are noted
        here), a progress bar advanced by the items each one finished; a task's error is raised here
        (the others are cancelled). Bounded: a cluster without any worker for
        ``no_worker_timeout_s`` ends the build with a VlocError."""
        total = sum(futures.values())
        results: dict[Future, Any] = {}
        if not futures:
            return results
        ac = as_completed(list(futures), loop=self.client.loop)
        alone_since, checked = None, time.monotonic()
        try:
            with reporter.stage(f"{stage} ({len(futures)} Dask task{'s' * (len(futures) != 1)})", total,
                                unit) as advance:
                while not ac.is_empty():
                    done = ac.next_batch(block=False)
                    for fut in done:
                        results[fut], report = self._result(fut, stage)
                        self._note(stage.split()[0], report)
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
        return results

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

