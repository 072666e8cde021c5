"""bundleio.features_h5: the descriptor table's compressed writer reads back exactly, in any shape."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from bundleio import write_compressed


@pytest.mark.parametrize("n, chunk_rows, dtype", [(0, 8, np.uint8), (5, 8, np.uint8), (8, 8, np.uint8),
                                                  (37, 8, np.uint8), (37, 8, np.float32)])
def test_write_compressed_round_trips(tmp_path, n, chunk_rows, dtype):
    rng = np.random.default_rng(n)
    data = (rng.integers(0, 40, (n, 128)) if dtype == np.uint8 else rng.random((n, 128))).astype(dtype)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_compressed(f, "d", data, chunk_rows=chunk_rows, workers=2)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        d = f["d"]
        assert d.shape == data.shape and d.dtype == data.dtype
        assert d.compression == ("gzip" if n else None)
        assert np.array_equal(d[()], data)
        assert np.array_equal(d[3:30], data[3:30])  # partial reads across chunk edges
