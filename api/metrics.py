"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from localize import LocalizationResult

#: seconds; localization stages run from ~1 ms to a few seconds on CPU.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "features", "retrieval", "matching", "pose", "total")


class Metrics:
    """Every metric the service exports at ``/metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.http_seconds = Histogram("vloc_http_request_duration_seconds", "HTTP request latency per endpoint",
                                      ["method", "endpoint", "status"], buckets=STAGE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("vloc_localize_stage_seconds", "localization latency per stage "
                                       "(decode: image decoding; others: the core's timings)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.localizations = Counter("vloc_localizations_total", "localization results (outcome accepted | "
                                     "rejected; busy: a REST frame past its meta.max_wait_ms, not localized)",
                                     ["source", "outcome"], registry=r)
        self.stream_sessions = Gauge("vloc_stream_sessions_active", "open streaming sessions", registry=r)
        self.stream_frames = Counter("vloc_stream_frames_total", "frames received on streams, by fate",
                                     ["fate"], registry=r)
        self.map_load_seconds = Histogram("vloc_map_load_seconds", "time to load a map version",
                                          buckets=LOAD_BUCKETS, registry=r)
        self.map_loads = Counter("vloc_map_loads_total", "map loads", ["outcome"], registry=r)
        self.map_evictions = Counter("vloc_map_evictions_total", "maps evicted to fit the budget", registry=r)
        self.maps_resident = Gauge("vloc_maps_resident", "map versions loaded in memory", registry=r)
        self.maps_resident_bytes = Gauge("vloc_maps_resident_bytes", "estimated bytes of loaded maps", registry=r)
        self.cache_budget_bytes = Gauge("vloc_maps_budget_bytes", "memory budget of the map cache", registry=r)
        self.maps_device_bytes = Gauge("vloc_maps_resident_device_bytes", "bytes of loaded maps resident on the "
                                       "device (learned feature sets on CUDA)", registry=r)
        self.batch_size = Histogram("vloc_batch_size", "frames per micro-batch (learned feature sets)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_queue_wait = Histogram("vloc_batch_queue_wait_seconds", "time a frame waited for its micro-batch "
                                          "to close", buckets=STAGE_BUCKETS, registry=r)
        self.device_memory = Gauge("vloc_device_memory_bytes", "device memory held by torch (allocated | reserved; "
                                   "0 without CUDA)", ["kind"], registry=r)

    def observe_result(self, result: LocalizationResult, source: str, decode_s: float) -> None:
        self.localizations.labels(source, "accepted" if result.accepted else "rejected").inc()
        self.stage_seconds.labels("decode").observe(decode_s)
        for stage in STAGES[1:]:
            if stage in result.timings_ms:
                self.stage_seconds.labels(stage).observe(result.timings_ms[stage] / 1000)

    def on_load(self, seconds: float, ok: bool) -> None:
        self.map_loads.labels("ok" if ok else "error").inc()
        if ok:
            self.map_load_seconds.observe(seconds)

    def on_cache_change(self, count: int, nbytes: int, device_bytes: int = 0) -> None:
        self.maps_resident.set(count)
        self.maps_resident_bytes.set(nbytes)
        self.maps_device_bytes.set(device_bytes)

    def on_batch(self, size: int, waits_s: list[float]) -> None:
        self.batch_size.observe(size)
        for w in waits_s:
            self.batch_queue_wait.observe(w)

    def render(self) -> tuple[bytes, str]:
        import sys
        torch = sys.modules.get("torch")  # only when a learned map loaded it: /metrics imports nothing
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.device_memory.labels("allocated").set(torch.cuda.memory_allocated())
            self.device_memory.labels("reserved").set(torch.cuda.memory_reserved())
        else:
            self.device_memory.labels("allocated").set(0)
            self.device_memory.labels("reserved").set(0)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
