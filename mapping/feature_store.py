"""The features of a build's images, by image index: in memory, or read back from the work directory.

A build with a work directory (a :class:`~mapping.stage_cache.StageCache`) keeps no image's
features after extracting them: every later stage (pair matching, the COLMAP database, the
retrieval index, the compact model and ``features.h5``) reads the images it needs from there,
one image at a time, so no stage holds every image's descriptors. A build without one (small
maps, ``add-features``) holds them in memory, as before; both give the same bundle.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from core.types import VlocError
from mapping.stage_cache import StageCache
from vision.features import Features


def load_features(cache: StageCache, key: str) -> Features | None:
    """One image's features from the stage cache (None when absent or damaged)."""
    hit = cache.get("features", key)
    return None if hit is None else Features(hit["keypoints"], hit["scales"], hit["orientations"],
                                             hit["descriptors"])


def store_features(cache: StageCache, key: str, f: Features) -> None:
    cache.put("features", key, keypoints=f.keypoints, scales=f.scales, orientations=f.orientations,
              descriptors=f.descriptors)


def load_feature_arrays(cache: StageCache, key: str, names: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Some arrays of one image's cached features (``what`` names the image in the error)."""
    hit = cache.get("features", key, names=names)
    if hit is None:
        raise VlocError(f"the features of {what} are missing from the work directory {cache.root} (deleted "
                        "during the build, or not on a filesystem this machine shares?); rerun to compute them again")
    return hit


@dataclass
class ImageKeypoints:
    """One image's keypoints ((n, 2) float32 COLMAP pixels): what the COLMAP database and the posed
    model are written from (they take the ``keypoints`` of a :class:`Features`)."""

    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


class FeatureStore(Sequence[Features]):
    """Features by image index, with every image's keypoint count known.

    :meth:`in_memory`: a list of Features. :meth:`from_cache`: each image read from the stage cache
    when asked (the last ``keep`` images read are kept; thread-safe), ``keypoints`` / ``descriptors``
    reading only that array. ``names``: the images' names, for errors.
    """

    def __init__(self, counts: Sequence[int], features: list[Features] | None = None,
                 cache: StageCache | None = None, keys: Sequence[str] | None = None,
                 names: Sequence[str] | None = None, keep: int = 32) -> None:
        if (features is None) == (cache is None):
            raise ValueError("a FeatureStore holds features or reads them from a cache")
        self.counts = np.asarray(counts, np.int64)
        self._features, self._cache, self._keys, self._names = features, cache, keys, names
        self._recent: OrderedDict[int, Features] = OrderedDict()
        self._keep, self._lock = max(0, keep), threading.Lock()

    @staticmethod
    def in_memory(features: list[Features]) -> FeatureStore:
        return FeatureStore([len(f) for f in features], features=features)

    @staticmethod
    def from_cache(cache: StageCache, keys: Sequence[str], counts: Sequence[int],
                   names: Sequence[str] | None = None, keep: int = 32) -> FeatureStore:
        return FeatureStore(counts, cache=cache, keys=list(keys), names=names, keep=keep)

    @property
    def streams(self) -> bool:
        """Whether features are read back from the work directory (not held in memory)."""
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, i: int) -> Features:  # type: ignore[override]
        if self._features is not None:
            return self._features[i]
        with self._lock:
            if (f := self._recent.get(i)) is not None:
                self._recent.move_to_end(i)
                return f
        a = self._arrays(i, ("keypoints", "scales", "orientations", "descriptors"))
        f = Features(a["keypoints"], a["scales"], a["orientations"], a["descriptors"])
        with self._lock:
            self._recent[i] = f
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return f

    def __iter__(self) -> Iterator[Features]:
        for i in range(len(self)):
            yield self[i]

    def keypoints(self, i: int) -> np.ndarray:
        """(n, 2) float32 keypoints of image i (only they are read)."""
        if self._features is not None:
            return self._features[i].keypoints
        return self._arrays(i, ("keypoints",))["keypoints"]

    def descriptors(self, i: int) -> np.ndarray:
        """(n, D) descriptors of image i (only they are read)."""
        if self._features is not None:
            return self._features[i].descriptors
        return self._arrays(i, ("descriptors",))["descriptors"]

    def keypoint_view(self) -> Sequence[ImageKeypoints]:
        """The images' keypoints as a sequence read one image at a time (for the COLMAP database and
        the posed model, which need nothing else)."""
        return _KeypointView(self)

    def cache_entry(self, i: int) -> tuple[StageCache, str]:
        """(stage cache, key) of image i's features (a store read from a cache)."""
        if self._cache is None:
            raise ValueError("an in-memory FeatureStore has no cache entries")
        return self._cache, self._keys[i]

    def _arrays(self, i: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        what = self._names[i] if self._names is not None else f"image {i}"
        return load_feature_arrays(self._cache, self._keys[i], names, what)


class _KeypointView(Sequence[ImageKeypoints]):
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> ImageKeypoints:  # type: ignore[override]
        return ImageKeypoints(self.store.keypoints(i))

    def __iter__(self) -> Iterator[ImageKeypoints]:
        for i in range(len(self)):
            yield self[i]


class ObservedDescriptors(Sequence[np.ndarray]):
    """Per registered image, the descriptors of the keypoints that observe a 3D point, read from the
    store when asked: what ``features.h5`` is written from, image by image.

    rows: per registered image, (feature index in the store, (n,) keypoint rows)."""

    def __init__(self, store: FeatureStore, rows: list[tuple[int, np.ndarray]]) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        i, idx = self.rows[k]
        return self.store.descriptors(i)[idx]

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]
