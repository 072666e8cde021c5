"""The service state and the one localization path shared by the REST route and the stream.

``Service.localize`` resolves the map's active version, then in the worker pool (never on the
event loop): decodes the image within the limits, checks the camera against it, takes the
loaded map from the cache (loading it once if cold), runs ``Localizer.localize`` and turns the
result into the wire dict (plus geodetic fields for georeferenced maps). An answer for a named
robot (REST ``robot_id``, stream sessions) also goes on the live fleet board (:mod:`api.fleet`).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from api.batcher import MicroBatcher
from api.cache import LoadedMap, MapCache, load_map, prune_sidecars
from api.errors import ApiError
from api.fleet import FleetBoard
from api.limits import decode_image
from api.mapdata import MapCameras, MapDataCache, centre_ellipse, level_frame, read_cameras
from api.metrics import Metrics
from api.models import CameraIn, PriorIn
from api.registry import Registry, VersionRecord
from api.robot_tracks import RobotTracks
from api.settings import Settings
from bundleio import FeatureSet, read_manifest, resolve_feature_set
from core.camera import Camera, CameraError
from core.types import VlocError
from localize import LocalizationResult, LocalizerConfig, PosePrior
from localize.localizer import centre_covariance

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
        self.fleet = FleetBoard(settings.fleet_track_points, settings.fleet_forget_s, settings.fleet_max_robots)
        self.mapdata = MapDataCache()
        #: set when the server is stopping: live connections end instead of holding the shutdown
        self.closing = threading.Event()

    async def run(self, fn, *args):
        """Run a blocking call in the worker pool, keeping the request's context (request id)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(ctx.run, fn, *args))

    def begin_shutdown(self) -> None:
        """Tell long-lived responses (the live fleet) to end: call before the server stops."""
        self.closing.set()
        self.fleet.wake_all()

    def shutdown(self) -> None:
        self.closing.set()
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

    def forget(self, map_id: str, version: str | None = None) -> None:
        """Drop what is kept of a deleted version (or of every version of a deleted map, and its
        live fleet): a map id and version reused later must not find the old bundle's data."""
        self.cache.evict(map_id, version)
        self.mapdata.evict(map_id, version)
        for key in [k for k in list(self._manifests) if k[0] == map_id and version in (None, k[1])]:
            self._manifests.pop(key, None)
            self._valid_bundles.discard(key)
        if version is None:
            self.fleet.forget_map(map_id)

    def manifest(self, map_id: str, version: str) -> dict:
        """The version's manifest, read once (503 when it cannot be read)."""
        key = (map_id, version)
        manifest = self._manifests.get(key)
        if manifest is None:
            try:
                manifest = read_manifest(self.registry.version_dir(map_id, version))
            except VlocError as e:
                raise ApiError(503, f"map {map_id!r} version {version!r} cannot be read: {e}") from None
            self._manifests[key] = manifest
        return manifest

    def cameras(self, map_id: str, version: str) -> MapCameras:
        """The version's map cameras and image poses (cached; 503 when the model cannot be read)."""
        def read() -> MapCameras:
            try:
                return read_cameras(self.registry.version_dir(map_id, version))
            except Exception as e:  # pycolmap raises its own types on a broken model
                raise ApiError(503, f"map {map_id!r} version {version!r}: cannot read its model: {e}") from None
        return self.mapdata.get((map_id, version, "cameras"), read)

    def level(self, map_id: str, version: str) -> tuple[np.ndarray, str]:
        """(level_from_map (3, 3), source) of a version: the frame of its floor plans (cached)."""
        return self.mapdata.get((map_id, version, "level"),
                                lambda: level_frame(self.manifest(map_id, version), self.cameras(map_id, version)))

    # feature sets ------------------------------------------------------------------------------
    def feature_set(self, map_id: str, version: str, requested: str | None) -> FeatureSet:
        """The map version's feature set a request asks for (None: its first set); 422 naming the
        sets it has when it lacks the one asked for. Manifests are read once per version."""
        manifest = self.manifest(map_id, version)
        try:
            return resolve_feature_set(manifest, requested, f"map {map_id!r} version {version!r}")
        except VlocError as e:
            raise ApiError(422, str(e)) from None

    # localization ------------------------------------------------------------------------------
    async def localize(self, map_id: str, image: bytes, camera: CameraIn, prior: PriorIn | PosePrior | None,
                       source: str, extra: dict | None = None, deadline_mono: float | None = None,
                       features: str | None = None, inliers: bool = False,
                       received_mono: float | None = None) -> Outcome:
        """Localize one frame on the map's active version (see module docstring).

        deadline_mono: time.monotonic() after which a frame still waiting for a worker is dropped
        (raises StaleFrame) instead of being localized late. features: the feature set to use.
        Frames on learned feature sets go through the micro-batcher (``max_batch`` > 1).
        inliers: add the PnP inliers to the payload. received_mono: when the frame arrived (the
        live fleet's latency; default now). ``extra["robot_id"]`` puts the answer on the fleet board.
        """
        rec = await asyncio.to_thread(self.active, map_id)
        fs = await asyncio.to_thread(self.feature_set, map_id, rec.version, features)
        if isinstance(prior, PriorIn):
            prior = PosePrior(np.asarray(prior.position, np.float64), float(prior.sigma))
        job = _Job(image, camera, prior, source, extra or {}, deadline_mono, inliers,
                   time.monotonic() if received_mono is None else received_mono)
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
        if job.inliers:
            kp, xyz = result.inlier_keypoints, result.inlier_points3D
            payload["inliers"] = {"keypoints": [] if kp is None else np.round(kp, 2).tolist(),
                                  "points3D": [] if xyz is None else np.round(xyz, 4).tolist()}
        if job.extra.get("robot_id"):
            try:
                self._on_fleet(map_id, loaded.version, job, result, payload)
            except Exception:  # noqa: BLE001  (the live view must never cost a robot its answer)
                log.exception("live fleet update of robot %r failed", job.extra.get("robot_id"))
        return Outcome(result, payload)

    def _on_fleet(self, map_id: str, version: str, job: "_Job", result: LocalizationResult, payload: dict) -> None:
        """Put one answer on the live board: the pose in the level frame of the floor plans."""
        answer = {"map_version": version, "source": job.source, "accepted": bool(result.accepted),
                  "reason": result.reason, "num_inliers": int(result.num_inliers),
                  "latency_ms": round((time.monotonic() - job.received_mono) * 1000, 1), "last_seen": time.time()}
        pose = None
        if result.accepted and result.cam_from_world is not None:
            level, _ = self.level(map_id, version)
            world_from_cam = result.world_from_cam
            c = world_from_cam.translation
            cl = level @ c
            axis = level @ world_from_cam.rotation[:, 2]
            ellipse = None
            if result.covariance is not None and np.all(np.isfinite(result.covariance)):
                cov = level @ centre_covariance(result.cam_from_world, result.covariance) @ level.T
                ellipse = centre_ellipse(cov[:2, :2])
            pose = finite_or_none({
                "position": [float(v) for v in c], "xy": [float(cl[0]), float(cl[1])], "z": float(cl[2]),
                "heading_deg": math.degrees(math.atan2(axis[1], axis[0])), "ellipse": ellipse,
                "position_sigma_m": result.position_sigma_m, "rotation_sigma_deg": result.rotation_sigma_deg,
                "last_accepted": answer["last_seen"]})
        self.fleet.record(map_id, str(job.extra["robot_id"]), answer, pose)

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
    inliers: bool = False
    received_mono: float = 0.0
