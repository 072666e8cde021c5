"""Map build stage 1: local features of every image (SIFT on CPU threads, or a learned network in
device batches), each kept in the build's stage cache so an interrupted build resumes."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from core.imageio import read_image
from core.progress import Reporter
from core.threads import kernel_threads
from core.types import ImageRecord, VlocError
from mapping.config import BuildConfig
from mapping.feature_store import FeatureStore, store_features
from mapping.stage_cache import StageCache, content_key
from vision.backends import learned_kwargs, make_backend
from vision.features import FeatureBackend, Features


@contextmanager
def worker_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads whose OpenCV / torch kernels run single-threaded meanwhile
    (the workers already fill the cores; see :func:`core.threads.kernel_threads`)."""
    with kernel_threads(1) if workers > 1 else nullcontext(), ThreadPoolExecutor(workers) as ex:
        yield ex


def feature_key(r: ImageRecord, image_sha: str, cfg: BuildConfig) -> str:
    """Stage-cache key of one image's features: its content, camera and the feature settings."""
    return content_key("features", image_sha, str(r.camera), cfg.feature_config())


def learned_backend(cfg: BuildConfig) -> FeatureBackend:
    """The build's learned backend (one network, shared by every image)."""
    c = cfg.learned
    return make_backend(cfg.feature_type, **learned_kwargs(cfg.feature_type, c.max_keypoints, c.max_image_side,
                                                           c.device, c.fp16, c.keypoint_selection, c.batch_size))


def read_gray(root: Path, r: ImageRecord):
    """(H, W) uint8 image of a record, as every feature backend takes it."""
    return read_image(Path(root) / r.name, r.camera, gray=True)


def usable_or_fail(n_keypoints: list[int]) -> None:
    """The build's check that some image has features (blank or unreadable images otherwise)."""
    if all(n < 20 for n in n_keypoints):
        raise VlocError("no image has usable local features (blank or unreadable images?)")


def extract_batch(root: Path, records: list[ImageRecord], keys: list[str], cfg: BuildConfig, cache: StageCache,
                  backend: FeatureBackend | None = None) -> list[int]:
    """Features of a batch of images into ``cache`` (one process, e.g. a Dask task); an image whose
    key is there already is skipped, so a batch rerun after a lost worker redoes only the rest.
    Returns each image's keypoint count. SIFT runs image by image (the caller sets the kernel
    threads: one, as in the in-process pool, gives identical features); a learned ``backend``
    (default: a new one) takes the batch's images as one device batch."""
    counts: list[int | None] = [None] * len(records)
    for k, key in enumerate(keys):
        if (hit := cache.get("features", key, names=("keypoints",))) is not None:
            counts[k] = len(hit["keypoints"])
    todo = [k for k, n in enumerate(counts) if n is None]
    if not todo:
        return counts  # type: ignore[return-value]
    if not cfg.learned_features:
        sift = backend or make_backend("sift", **cfg.features.__dict__)
        for k in todo:
            f = sift.extract(read_gray(root, records[k]))
            store_features(cache, keys[k], f)
            counts[k] = len(f)
    else:
        net = backend or learned_backend(cfg)
        for k, f in zip(todo, net.extract_batch([read_gray(root, records[k]) for k in todo])):
            store_features(cache, keys[k], f)
            counts[k] = len(f)
    return counts  # type: ignore[return-value]


def extract_all(root: Path, records: list[ImageRecord], cfg: BuildConfig, reporter: Reporter,
                cache: StageCache | None = None, image_sha: dict[str, str] | None = None) -> FeatureStore:
    """Features of every record (from ``cache`` when an identical image was done before).

    With a ``cache`` each image's features go there and are not kept: the store reads them back
    when a later stage needs them. Without one they are held in memory."""
    keys = [feature_key(r, image_sha[r.name], cfg) for r in records] if cache is not None else [None] * len(records)
    feats: list[Features | None] = [None] * len(records)
    counts: list[int | None] = [None] * len(records)
    for k, key in enumerate(keys):
        if key is not None and (hit := cache.get("features", key, names=("keypoints",))) is not None:
            counts[k] = len(hit["keypoints"])
    todo = [k for k, n in enumerate(counts) if n is None]

    def store(k: int, f: Features) -> None:
        if keys[k] is not None:
            store_features(cache, keys[k], f)
        else:
            feats[k] = f
        counts[k] = len(f)

    def gray(k: int):
        return read_gray(root, records[k])

    if todo and not cfg.learned_features:
        local = threading.local()  # OpenCV releases the GIL; one detector per thread

        def one(k: int) -> None:
            if not hasattr(local, "backend"):
                local.backend = make_backend("sift", **cfg.features.__dict__)
            store(k, local.backend.extract(gray(k)))

        with worker_pool(cfg.workers) as ex:
            list(reporter.track(ex.map(one, todo), "features", total=len(todo), unit="images"))
    elif todo:
        backend = learned_backend(cfg)
        step = max(1, cfg.learned.batch_size)
        batches = [todo[i:i + step] for i in range(0, len(todo), step)]

        def run() -> Iterator[int]:
            with ThreadPoolExecutor(1) as io:  # decode the next batch while the network runs
                pending = io.submit(lambda b: [gray(k) for k in b], batches[0])
                for n, batch in enumerate(batches):
                    grays = pending.result()
                    if n + 1 < len(batches):
                        pending = io.submit(lambda b: [gray(k) for k in b], batches[n + 1])
                    for k, f in zip(batch, backend.extract_batch(grays)):
                        store(k, f)
                        yield k

        for _ in reporter.track(run(), "features", total=len(todo), unit="images"):
            pass
    usable_or_fail(counts)  # type: ignore[arg-type]
    if cache is None:
        return FeatureStore.in_memory(feats)  # type: ignore[arg-type]
    return FeatureStore.from_cache(cache, keys, counts, [r.name for r in records])  # type: ignore[arg-type]
