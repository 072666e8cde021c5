"""Server settings: a pydantic Settings object, also read from ``VLOC_*`` environment variables."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20
GiB = 1 << 30


class Settings(BaseSettings):
    """Everything a running service is configured with (``VLOC_DATA_DIR``, ``VLOC_WORKERS``, ...).

    data_dir holds ``registry.sqlite`` and the bundles (``maps/<map_id>/<version>/``).
    """

    model_config = SettingsConfigDict(env_prefix="VLOC_", extra="ignore")

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: threads that run localizations (the core releases the GIL in OpenCV / torch / pycolmap).
    workers: int = Field(2, ge=1, le=256)
    log_level: str = "info"

    # request limits --------------------------------------------------------------------------
    #: largest localize request body (image + meta), bytes -> 413.
    max_upload_bytes: int = Field(16 * MiB, ge=1024)
    #: largest image in pixels (read from the header before decoding) -> 413.
    max_pixels: int = Field(16_000_000, ge=1)
    #: largest ``meta`` JSON, bytes -> 413.
    max_meta_bytes: int = Field(64 * 1024, ge=256)

    # bundle registration ---------------------------------------------------------------------
    #: largest bundle upload request (tar / tar.gz), bytes -> 413.
    max_bundle_upload_bytes: int = Field(4 * GiB, ge=1024)
    #: largest extracted bundle (sum of the archive's file sizes), bytes -> 413.
    max_bundle_bytes: int = Field(8 * GiB, ge=1024)
    #: most members in a bundle archive -> 413.
    max_bundle_members: int = Field(100_000, ge=1)
    #: server-side directories bundles may be registered from by path (``{"path": ...}``); empty (the
    #: default): registration by path is off and only tar uploads are accepted. From the environment
    #: as JSON: ``VLOC_IMPORT_ROOTS='["/srv/bundles"]'``; ``vloc serve --import-root DIR``.
    import_roots: list[Path] = Field(default_factory=list)

    # serving ---------------------------------------------------------------------------------
    #: memory budget of the loaded-map cache (estimated from the maps' arrays), bytes.
    cache_budget_bytes: int = Field(2 * GiB, ge=0)
    #: where learned feature networks run and learned maps' descriptors stay resident: "auto" (CUDA
    #: when there is one), "cpu" or "cuda" (falls back to the CPU with one log line). SIFT maps
    #: always localize on the CPU.
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    #: budget of map descriptors resident on the device (learned sets on CUDA), bytes; maps are
    #: evicted (least recently used first) to fit it as they are for ``cache_budget_bytes``.
    device_cache_budget_bytes: int = Field(16 * GiB, ge=0)
    #: micro-batching of frames on learned feature sets (any robots, REST and streams): at most
    #: this many frames per device batch (1 = no batching) ...
    max_batch: int = Field(32, ge=1, le=1024)
    #: ... collected for at most this long after a batch's first frame, milliseconds.
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    #: learned feature sets: "lightglue" (the query against each retrieved map image) or "nn"
    #: (mutual nearest neighbours 2D-3D on the device: the fleet-throughput option).
    learned_matcher: str = Field("lightglue", pattern="^(lightglue|nn)$")
    #: CPU threads that run matching and PnP for the frames of a micro-batch.
    pose_workers: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=1, le=256)

    # streaming -------------------------------------------------------------------------------
    #: a frame older than this (receive time minus its timestamp, plus its wait here) is dropped
    #: as "stale", seconds (see api.frame_limits).
    max_frame_age_s: float = Field(1.0, gt=0)
    #: a streamed frame that waited here (receipt to a worker) longer than this is dropped as
    #: "busy", seconds; 0 = no limit. REST requests opt in per request (``meta.max_wait_ms``).
    #: Measured (`vloc bench serve --stream`, 20 robots x 2 Hz on 2 cores, 40 frames/s offered,
    #: ~36/s served): 0.2 s -> p50 / p99 234 / 355 ms; 0.15 -> 184 / 303; 0.1 -> 133 / 237, the
    #: same throughput and ~11 % of frames shed each time (under overload frames wait ~ the limit).
    max_queue_wait_s: float = Field(0.1, ge=0)
    #: frames a session may have waiting; beyond it the oldest waiting one is dropped ("overflow").
    stream_max_pending: int = Field(4, ge=1)
    #: consecutive rejections after which a session is lost and searches the whole map again.
    stream_lost_after: int = Field(3, ge=1)
    #: 1-sigma radius (m) of the motion prior right after an accepted pose.
    stream_prior_sigma_m: float = Field(0.3, gt=0)
    #: no motion prior when the last accepted pose is older than this, seconds.
    stream_prior_max_gap_s: float = Field(5.0, gt=0)
    #: an open session re-checks its API key (revoked? map still granted?) this often, seconds;
    #: a session whose key no longer allows the map is closed with code 4401 / 4403.
    stream_key_recheck_s: float = Field(1.0, gt=0)

    # console and map data --------------------------------------------------------------------
    #: serve the operator console (static files) at ``/console/``.
    console: bool = True
    #: most points one ``GET /v1/maps/{id}/points`` may ask for (``max_points`` above it -> 422).
    max_points_limit: int = Field(2_000_000, ge=1)
    #: the live fleet endpoint sends a robot's update at most this often per connection, seconds
    #: (updates in between are merged), and a heartbeat at least once a second.
    live_min_interval_s: float = Field(0.1, ge=0.0, le=1.0)
    #: accepted positions kept per robot for the tracks on the floor plan.
    fleet_track_points: int = Field(300, ge=0, le=100_000)
    #: a robot not heard from for this long leaves the live fleet, seconds.
    fleet_forget_s: float = Field(600.0, gt=0)
    #: most robots kept per map on the live board (the least recently seen go first).
    fleet_max_robots: int = Field(1000, ge=1)

    #: memory-map map descriptors from uncompressed sidecars in ``DATA/mmap`` (shared page cache
    #: across worker processes, near-free reloads); off = decompress them into each process.
    mmap_descriptors: bool = True

    @property
    def mmap_dir(self) -> Path | None:
        return self.data_dir / "mmap" if self.mmap_descriptors else None

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite"
