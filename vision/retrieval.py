"""Image retrieval that needs no downloaded weights: VLAD over the map's own RootSIFT descriptors.

The vocabulary (k-means centroids) is trained on the map images' descriptors,
so every bundle carries its own index. Stored as ``retrieval.npz``:
``centroids`` (K, D) float32, ``descriptors`` (N, K*D) float16 (unit-norm VLAD),
``names`` (N,) image names. Similarity is the dot product.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vision.matching import normalise_descriptors


@dataclass(frozen=True)
class RetrievalConfig:
    """VLAD settings."""

    #: vocabulary size (clusters).
    n_clusters: int = 32
    #: descriptors sampled for k-means training.
    train_samples: int = 40_000
    seed: int = 0


def train_vocabulary(descriptor_sets: list[np.ndarray], cfg: RetrievalConfig) -> np.ndarray:
    """k-means (OpenCV) over RootSIFT descriptors of all map images -> (K, D) float32 centroids."""
    rng = np.random.default_rng(cfg.seed)
    allx = np.concatenate([d for d in descriptor_sets if len(d)])
    if len(allx) > cfg.train_samples:  # sample first: normalising every descriptor of a big map is slow
        allx = allx[rng.choice(len(allx), cfg.train_samples, replace=False)]
    allx = normalise_descriptors(allx)
    k = int(min(cfg.n_clusters, max(1, len(allx) // 20)))
    cv2.setRNGSeed(cfg.seed)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-4)
    _, _, centroids = cv2.kmeans(allx.astype(np.float32), k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    return centroids.astype(np.float32)


def vlad(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, D) local descriptors -> (K*D,) float32 VLAD: residual sums, intra- and power-normalised, unit L2."""
    K, D = centroids.shape
    out = np.zeros((K, D), np.float32)
    if len(descriptors):
        x = normalise_descriptors(descriptors)
        assign = np.argmax(x @ centroids.T - 0.5 * np.sum(centroids ** 2, axis=1), axis=1)
        onehot = np.zeros((len(x), K), np.float32)
        onehot[np.arange(len(x)), assign] = 1.0
        # residual sums per cluster as one GEMM: sum_i [a_i = k] (x_i - c_k)
        out = onehot.T @ x - onehot.sum(axis=0)[:, None] * centroids
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    v = out.ravel()
    v = np.sign(v) * np.sqrt(np.abs(v))
    return v / max(float(np.linalg.norm(v)), 1e-12)


@dataclass
class RetrievalIndex:
    """Global descriptors of the map images and the vocabulary that made them."""

    centroids: np.ndarray
    descriptors: np.ndarray
    names: list[str]

    @staticmethod
    def build(names: list[str], descriptor_sets: list[np.ndarray], cfg: RetrievalConfig = RetrievalConfig()
              ) -> "RetrievalIndex":
        centroids = train_vocabulary(descriptor_sets, cfg)
        g = np.stack([vlad(d, centroids) for d in descriptor_sets]).astype(np.float16)
        return RetrievalIndex(centroids, g, list(names))

    def describe(self, descriptors: np.ndarray) -> np.ndarray:
        return vlad(descriptors, self.centroids)

    def similarity_matrix(self) -> np.ndarray:
        g = self.descriptors.astype(np.float32)
        return g @ g.T

    def query(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Local descriptors of a query -> (indices (k,), scores (k,)) best first."""
        q = self.describe(descriptors)
        s = self.descriptors.astype(np.float32) @ q
        k = min(k, len(s))
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top])]
        return top, s[top]

    def save(self, path: Path) -> None:
        np.savez(path, centroids=self.centroids, descriptors=self.descriptors, names=np.array(self.names))

    @staticmethod
    def load(path: Path) -> "RetrievalIndex":
        with np.load(path, allow_pickle=False) as z:
            return RetrievalIndex(z["centroids"], z["descriptors"], [str(n) for n in z["names"]])


@dataclass(frozen=True)
class InvertedFile:
    """A coarse quantiser over unit global descriptors, so a query scores ~``nprobe / n_lists``
    of the map plus the list centroids instead of every image (sublinear in the map size).

    centroids: (L, G) float32 unit vectors.  order: (N,) int64 descriptor rows grouped by list.
    offsets: (L+1,) int64: list l owns ``order[offsets[l]:offsets[l+1]]``.
    """

    centroids: np.ndarray
    order: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def build(g: np.ndarray, n_lists: int | None = None, iterations: int = 10, seed: int = 0) -> "InvertedFile":
        """Spherical k-means of (N, G) unit rows into ``n_lists`` (default ~sqrt(N)) lists."""
        g = np.ascontiguousarray(g, dtype=np.float32)
        n = len(g)
        L = int(min(n, n_lists or max(1, round(np.sqrt(n)))))
        rng = np.random.default_rng(seed)
        c = g[rng.choice(n, L, replace=False)].copy()
        for _ in range(iterations):
            assign = np.argmax(g @ c.T, axis=1)
            sums = np.zeros_like(c)
            np.add.at(sums, assign, g)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            empty = norms[:, 0] < 1e-12
            c = np.where(empty[:, None], c, sums / np.maximum(norms, 1e-12))  # an empty list keeps its seed
        assign = np.argmax(g @ c.T, axis=1)
        order = np.argsort(assign, kind="stable").astype(np.int64)
        offsets = np.searchsorted(assign[order], np.arange(L + 1)).astype(np.int64)
        return InvertedFile(c.astype(np.float32), order, offsets)

    @property
    def n_lists(self) -> int:
        return len(self.centroids)

    def candidates(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        """(M,) descriptor rows in the ``nprobe`` lists whose centroids are closest to query (G,)."""
        nprobe = int(min(max(1, nprobe), self.n_lists))
        s = self.centroids @ np.asarray(q, np.float32)
        lists = np.argpartition(-s, nprobe - 1)[:nprobe]
        return np.concatenate([self.order[self.offsets[l]:self.offsets[l + 1]] for l in lists])
