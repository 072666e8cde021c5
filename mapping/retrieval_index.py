"""The map's retrieval index built image batch by image batch, from features read back one image at a time.

:func:`vision.retrieval.RetrievalIndex.build` takes every image's descriptors at once. A build
reads them instead from its :class:`~mapping.feature_store.FeatureStore`, in three steps that a
process or a Dask task can each run on a batch of images:

1. :func:`vocabulary_sample`: which descriptor rows the vocabulary is trained on: the rows
   ``RetrievalIndex.build`` would sample from the concatenation of all images' descriptors (the same
   ``default_rng(seed).choice``, at most ``train_samples``); :func:`take_rows` reads them, image by image.
2. :func:`vision.retrieval.train_vocabulary` on that sample (bounded: ``train_samples`` rows).
3. :func:`vlad_rows`: the (K*D,) VLAD vector of each image of a batch, float16 as the index keeps them.

Same index, bit for bit, as ``RetrievalIndex.build`` on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from vision.retrieval import RetrievalConfig, RetrievalIndex, train_vocabulary, vlad


@dataclass(frozen=True)
class SamplePlan:
    """Rows of the vocabulary's training sample.

    images: (M,) image indices with sampled rows, ascending; rows[m]: (n_m,) their rows, ascending.
    order: (S,) where each row read in (image, row) order goes in the sample (the sampler's order).
    """

    images: np.ndarray
    rows: list[np.ndarray]
    order: np.ndarray

    def batches(self, images_per_batch: int) -> list[list[tuple[int, np.ndarray]]]:
        """(image, rows) in batches of ``images_per_batch`` images, in order."""
        items = list(zip(self.images.tolist(), self.rows))
        return [items[b:b + images_per_batch] for b in range(0, len(items), max(1, images_per_batch))]


def vocabulary_sample(counts: Sequence[int], cfg: RetrievalConfig) -> SamplePlan:
    """The rows ``RetrievalIndex.build`` trains on when the images have ``counts`` descriptors: all of
    them, or ``train_samples`` drawn without replacement (``default_rng(cfg.seed)``) from their
    concatenation, in the sampler's order."""
    counts = np.asarray(counts, np.int64)
    offsets = np.r_[0, np.cumsum(counts)]
    total = int(offsets[-1])
    if total > cfg.train_samples:
        flat = np.random.default_rng(cfg.seed).choice(total, cfg.train_samples, replace=False)
    else:
        flat = np.arange(total)
    order = np.argsort(flat, kind="stable")
    sorted_flat = flat[order]
    image_of = np.searchsorted(offsets, sorted_flat, side="right") - 1
    images, starts = np.unique(image_of, return_index=True)
    bounds = np.r_[starts, len(sorted_flat)]
    rows = [sorted_flat[bounds[m]:bounds[m + 1]] - offsets[i] for m, i in enumerate(images.tolist())]
    return SamplePlan(images.astype(np.int64), rows, order)


def take_rows(descriptors: Callable[[int], np.ndarray], items: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The given rows of each (image, rows) item, read one image at a time, stacked in item order."""
    parts = [descriptors(i)[rows] for i, rows in items]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.uint8)


def assemble_sample(plan: SamplePlan, parts: list[np.ndarray]) -> np.ndarray:
    """The sample in the sampler's order from :func:`take_rows` of the plan's batches, in order."""
    parts = [p for p in parts if len(p)]
    read = np.concatenate(parts)
    sample = np.empty_like(read)
    sample[plan.order] = read
    return sample


def vlad_rows(descriptors: Callable[[int], np.ndarray], images: Sequence[int], centroids: np.ndarray) -> np.ndarray:
    """(n, K*D) float16 VLAD vectors of the given images, read one image at a time."""
    K, D = centroids.shape
    out = np.zeros((len(images), K * D), np.float16)
    for k, i in enumerate(images):
        out[k] = vlad(descriptors(i), centroids)
    return out


def build_retrieval_index(names: list[str], descriptors: Callable[[int], np.ndarray], counts: Sequence[int],
                cfg: RetrievalConfig) -> RetrievalIndex:
    """:meth:`RetrievalIndex.build` in this process, reading each image's descriptors when needed
    (twice: the sample, then its VLAD vector)."""
    plan = vocabulary_sample(counts, cfg)
    centroids = train_vocabulary([assemble_sample(plan, [take_rows(descriptors, b) for b in plan.batches(256)])],
                                 cfg)
    return RetrievalIndex(centroids, vlad_rows(descriptors, range(len(names)), centroids), list(names))
