"""The service state and the one localization path shared by the REST route and the stream.

``Service.localize`` resolves the map's active version, then in the worker pool (never on the
event loop): decodes the image within the limits, checks the camera against it, takes the
loaded map from the cache (loading it once if cold), runs ``Localizer.localize`` and turns the
result into the wire dict (plus geodetic fields for georeferenced maps).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from api.batcher import MicroBatcher
from api.cache import LoadedMap, MapCache, load_map, prune_sidecars
from api.errors import ApiError
from api.limits import decode_image
from api.metrics import Metrics
from api.models import CameraIn, PriorIn
from api.registry import Registry, VersionRecord
from api.robot_tracks import RobotTracks
from api.settings import Settings
from bundleio import FeatureSet, read_manifest, resolve_feature_set
from core.camera import Camera, CameraError
from core.types import VlocError
from localize import LocalizationResult, LocalizerConfig, PosePrior

log = logging.getLogger("vloc.api.service")


def finite_or_none(x):
    """JSON has no NaN/inf: replace them by None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x


def make_camera(cam: CameraIn) -> Camera:
    try:
        return Camera(cam.model, cam.width, cam.height, tuple(cam.params))
    except CameraError as e:
        raise ApiError(422, f"invalid camera: {e}") from None


class StaleFrame(Exception):
    """A frame waited for a worker past its deadline (stream limits, REST ``meta.max_wait_ms``);
    it is dropped, not localized."""

    def __init__(self, age_s: float) -> None:
        super().__init__(f"stale after {age_s:.3f} s")
        self.age_s = age_s


@dataclass
class Outcome:
    """One localization: the core result and the JSON-ready response dict."""

    result: LocalizationResult
    payload: dict


class Service:
    """Registry, cache, metrics and worker pool of one app; created by ``create_app``."""

    def __init__(self, settings: Settings, localizer_config: LocalizerConfig | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.data_dir)
        self.registry.clean_staging()
        prune_sidecars(settings.mmap_dir, self.registry.maps_dir)
        self.metrics = Metrics()
        cfg = replace(localizer_config or LocalizerConfig(), device=settings.device,
                      learned_matcher=settings.learned_matcher)
        self.cache = MapCache(settings.cache_budget_bytes,
                              lambda m, v, p, f: load_map(m, v, p, replace(cfg, features=f), settings.mmap_dir),
                              device_budget_bytes=settings.device_cache_budget_bytes,
                              on_load=self.metrics.on_load, on_change=self.metrics.on_cache_change,
                              on_evict=self.metrics.map_evictions.inc)
        self.metrics.cache_budget_bytes.set(settings.cache_budget_bytes)
        self.localizer_config = cfg
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="vloc-worker")
        #: PnP and matching of a micro-batch's frames run on these CPU threads
        self.pose_pool = ThreadPoolExecutor(settings.pose_workers, thread_name_prefix="vloc-pose")
        self.batcher = MicroBatcher(self._run_batch, settings.max_batch, settings.max_batch_wait_ms / 1000,
                                    on_batch=self.metrics.on_batch)
        self._manifests: dict[tuple[str, str], dict] = {}
        self.robot_tracks = RobotTracks(settings.stream_prior_sigma_m, settings.stream_lost_after,
                                        settings.stream_prior_max_gap_s)
        self._valid_bundles: set[tuple[str, str]] = set()

    async def run(self, fn, *args):
        """Run a blocking call in the worker pool, keeping the request's context (request id)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(ctx.run, fn, *args))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.pose_pool.shutdown(wait=False, cancel_futures=True)

    # maps --------------------------------------------------------------------------------------
    def active(self, map_id: str) -> VersionRecord:
        rec = self.registry.active_version(map_id)
        if rec is None:
            if self.registry.get_map(map_id) is None:
                raise ApiError(404, f"no map {map_id!r}")
            raise ApiError(404, f"map {map_id!r} has no active version")
        return rec

    def loaded(self, map_id: str, version: str, features: str | None = None) -> LoadedMap:
        """The loaded map version and feature set (blocking; None: its first set). 404 when it was
        deleted meanwhile, 503 when it is broken."""
        if features is None:
            features = self.feature_set(map_id, version, None).name
        try:
            return self.cache.get(map_id, version, self.registry.version_dir(map_id, version), features)
        except Exception as e:  # VlocError, h5py's OSError, pycolmap's RuntimeError, ...: the bundle, not the request
            m = self.registry.get_map(map_id)
            if m is None or all(v.version != version for v in m.versions):
                raise ApiError(404, f"map {map_id!r} version {version!r} was deleted") from None
            log.error("map %s/%s cannot be loaded: %s", map_id, version, e)
            raise ApiError(503, f"map {map_id!r} version {version!r} cannot be loaded: {e}") from None

    def readiness(self) -> tuple[int, int, list[str]]:
        """(maps, active, problems): every active version must have a valid bundle on disk.
        Bundles are immutable once registered, so each is checked once."""
        maps = self.registry.count_maps()
        active = self.registry.active_versions()
        problems = []
        for map_id, version in active:
            if (map_id, version) in self._valid_bundles:
                continue
            try:
                read_manifest(self.registry.version_dir(map_id, version))
                self._valid_bundles.add((map_id, version))
            except (VlocError, OSError, ValueError) as e:
                problems.append(f"{map_id}/{version}: {e}")
        return maps, len(active), problems

    # feature sets ------------------------------------------------------------------------------
    def feature_set(self, map_id: str, version: str, requested: str | None) -> FeatureSet:
        """The map version's feature set a request asks for (None: its first set); 422 naming the
        sets it has when it lacks the one asked for. Manifests are read once per version."""
        key = (map_id, version)
        manifest = self._manifests.get(key)
        if manifest is None:
            try:
                manifest = read_manifest(self.registry.version_dir(map_id, version))
            except VlocError as e:
                raise ApiError(503, f"map {map_id!r} version {version!r} cannot be read: {e}") from None
            self._manifests[key] = manifest
        try:
            return resolve_feature_set(manifest, requested, f"map {map_id!r} version {version!r}")
        except VlocError as e:
            raise ApiError(422, str(e)) from None

    # localization ------------------------------------------------------------------------------
    async def localize(self, map_id: str, image: bytes, camera: CameraIn, prior: PriorIn | PosePrior | None,
                       source: str, extra: dict | None = None, deadline_mono: float | None = None,
                       features: str | None = None) -> Outcome:
        """Localize one frame on the map's active version (see module docstring).

        deadline_mono: time.monotonic() after which a frame still waiting for a worker is dropped
        (raises StaleFrame) instead of being localized late. features: the feature set to use.
        Frames on learned feature sets go through the micro-batcher (``max_batch`` > 1).
        """
        rec = await asyncio.to_thread(self.active, map_id)
        fs = await asyncio.to_thread(self.feature_set, map_id, rec.version, features)
        if isinstance(prior, PriorIn):
            prior = PosePrior(np.asarray(prior.position, np.float64), float(prior.sigma))
        job = _Job(image, camera, prior, source, extra or {}, deadline_mono)
        if fs.learned and self.settings.max_batch > 1:
            return await self.batcher.submit((map_id, rec.version, fs.name), job)
        submitted = time.perf_counter()
        return await self.run(self._localize_blocking, map_id, rec.version, fs.name, job, submitted)

    async def _run_batch(self, key: tuple[str, str, str], jobs: list["_Job"], waits: list[float]) -> list:
        return await self.run(self._localize_batch_blocking, key, jobs, waits)

    def _prepare(self, job: "_Job", wait_s: float) -> tuple[np.ndarray, Camera, float]:
        """Decode and check one frame (4xx for bad input, StaleFrame when past its deadline)."""
        late = job.deadline_mono is not None and time.monotonic() > job.deadline_mono
        # bad input is refused (4xx) before a late frame is dropped: a drop is only for usable frames
        t0 = time.perf_counter()
        rgb = decode_image(job.image, self.settings.max_pixels)
        decode_s = time.perf_counter() - t0
        cam = make_camera(job.camera)
        if (rgb.shape[1], rgb.shape[0]) != (cam.width, cam.height):
            raise ApiError(422, f"the camera is {cam.width}x{cam.height} but the image is "
                                f"{rgb.shape[1]}x{rgb.shape[0]}")
        if late:
            raise StaleFrame(time.monotonic() - job.deadline_mono)
        return rgb, cam, decode_s

    def _loaded_active(self, map_id: str, version: str, features: str) -> LoadedMap:
        try:
            return self.loaded(map_id, version, features)
        except ApiError as e:
            if e.status != 404:
                raise
            # deleted between resolution and load (e.g. a version switch then delete): use the active one
            rec = self.active(map_id)
            return self.loaded(map_id, rec.version, self.feature_set(map_id, rec.version, features).name)

    def _outcome(self, result: LocalizationResult, loaded: LoadedMap, map_id: str, job: "_Job", wait_ms: float,
                 decode_s: float, batch_size: int = 1) -> Outcome:
        self.metrics.observe_result(result, job.source, decode_s)
        payload = finite_or_none(result.to_dict())
        payload["timings_ms"] = {"wait": wait_ms, "decode": decode_s * 1000, **payload["timings_ms"]}
        payload.update(map_id=map_id, map_version=loaded.version, features=loaded.features,
                       prior_used=job.prior is not None, batch_size=batch_size, **job.extra)
        if loaded.georef is not None and result.cam_from_world is not None:
            payload.update(finite_or_none(loaded.georef.locate(result.world_from_cam)))
        return Outcome(result, payload)

    def _localize_blocking(self, map_id: str, version: str, features: str, job: "_Job",
                           submitted: float) -> Outcome:
        wait_ms = (time.perf_counter() - submitted) * 1000
        rgb, cam, decode_s = self._prepare(job, wait_ms / 1000)
        loaded = self._loaded_active(map_id, version, features)
        try:
            result = loaded.localizer.localize(rgb, cam, job.prior)
        except (VlocError, CameraError) as e:
            raise ApiError(422, str(e)) from None
        return self._outcome(result, loaded, map_id, job, wait_ms, decode_s)

    def _localize_batch_blocking(self, key: tuple[str, str, str], jobs: list["_Job"], waits: list[float]) -> list:
        """One micro-batch: per frame its Outcome or its exception, in order."""
        out: list = [None] * len(jobs)
        ready = []
        for k, job in enumerate(jobs):
            try:
                ready.append((k, *self._prepare(job, waits[k])))
            except Exception as e:  # noqa: BLE001  (bad input or stale: that frame's answer)
                out[k] = e
        if not ready:
            return out
        map_id, version, features = key
        try:
            loaded = self._loaded_active(map_id, version, features)
            results = loaded.localizer.localize_batch([(rgb, cam, jobs[k].prior) for k, rgb, cam, _ in ready],
                                                      pool=self.pose_pool)
        except (VlocError, CameraError) as e:
            return [ApiError(422, str(e)) if o is None else o for o in out]
        for (k, _, _, decode_s), result in zip(ready, results):
            out[k] = self._outcome(result, loaded, map_id, jobs[k], waits[k] * 1000, decode_s,
                                   len(ready))
        return out


@dataclass
class _Job:
    """One frame on its way to a worker (or into a micro-batch)."""

    image: bytes
    camera: CameraIn
    prior: PosePrior | None
    source: str
    extra: dict
    deadline_mono: float | None
