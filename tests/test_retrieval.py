"""Global retrieval: the inverted file finds what exhaustive search finds while scoring a fraction."""
from __future__ import annotations

import numpy as np

from vision.retrieval import InvertedFile


def clustered_unit_vectors(n: int, dim: int, n_places: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors around n_places random 'places' (like views of the same spot)."""
    places = rng.normal(size=(n_places, dim))
    which = rng.integers(0, n_places, n)
    g = places[which] + 0.6 * rng.normal(size=(n, dim))
    return (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32), which


def test_inverted_file_matches_exhaustive_top1_on_a_fraction_of_the_map():
    rng = np.random.default_rng(0)
    g, which = clustered_unit_vectors(5000, 256, 400, rng)
    ivf = InvertedFile.build(g)
    assert ivf.n_lists == 71 and sorted(ivf.order.tolist()) == list(range(5000))
    assert ivf.offsets[0] == 0 and ivf.offsets[-1] == 5000 and np.all(np.diff(ivf.offsets) >= 0)
    hits, scanned = 0, []
    for i in rng.choice(5000, 200, replace=False):
        q = g[i] + 0.5 / np.sqrt(256) * rng.normal(size=256).astype(np.float32)  # ~27 deg off
        q /= np.linalg.norm(q)
        exhaustive = int(np.argmax(g @ q))
        cand = ivf.candidates(q, nprobe=12)
        scanned.append(len(cand))
        hits += exhaustive == int(cand[np.argmax(g[cand] @ q)])
    assert hits >= 0.95 * 200, hits
    assert np.median(scanned) < 0.3 * 5000  # sublinear: a fraction of the map is scored


def test_inverted_file_degenerate_sizes():
    rng = np.random.default_rng(1)
    g, _ = clustered_unit_vectors(3, 16, 2, rng)
    ivf = InvertedFile.build(g, n_lists=10)
    assert ivf.n_lists == 3
    assert sorted(ivf.candidates(g[0], nprobe=50).tolist()) == [0, 1, 2]
