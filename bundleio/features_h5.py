"""features.h5: the flat observation table (descriptors and 3D point ids, image by image).
See :mod:`bundleio` for the shapes. Learned feature sets also store each observation's keypoint
(``keypoints (T, 2) float32``, COLMAP pixels) and each image's size (``image_sizes (N, 2)`` width,
height), which LightGlue needs to match a query against map images; SIFT sets leave them out
(their pixels are in ``model/``)."""
from __future__ import annotations

import collections
import itertools
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np


def write_features_h5(path: Path, names: list[str], descriptors: Iterable[np.ndarray],
                      point3d_ids: list[np.ndarray], points_id: np.ndarray, points_xyz: np.ndarray,
                      image_centres: np.ndarray, keypoints: list[np.ndarray] | None = None,
                      image_sizes: np.ndarray | None = None, point_quality=None) -> None:
    """Write the flat observation arrays (see module docstring). Lists are per image, same order as names;
    ``keypoints`` (per image (n, 2)) and ``image_sizes`` ((N, 2) width, height) are optional.
    ``point_quality``: a :class:`mapping.point_quality.PointQuality` of the points ``points_id``
    (any object with its fields), stored as the ``points3D_*`` quality datasets (see
    :data:`POINT_QUALITY_FIELDS`), rows in the order of ``points3D_id``.

    ``descriptors``: per image (n_k, D), any iterable (e.g. read back from disk one image at a time):
    its rows stream into the table a few chunks at a time, never all in memory; image k has
    ``len(point3d_ids[k])`` rows."""
    counts = [len(p) for p in point3d_ids]
    if len(counts) != len(names):
        raise ValueError(f"{len(counts)} point-id arrays for {len(names)} images")
    offsets = np.zeros(len(names) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    ids = np.concatenate(point3d_ids) if point3d_ids else np.zeros(0, np.int64)
    if len(ids) and ids.max() >= 2 ** 31:
        raise ValueError("3D point ids beyond int32")
    blocks = iter(descriptors)
    first = next(blocks, None)
    dim, dtype = (128, np.uint8) if first is None else (first.shape[1], first.dtype)

    def rows_of_each_image() -> Iterator[np.ndarray]:
        for k, block in enumerate(itertools.chain([] if first is None else [first], blocks)):
            if k >= len(counts) or len(block) != counts[k]:
                raise ValueError(f"descriptors of image {k}: {len(block)} rows, {counts[k] if k < len(counts) else 0} "
                                 "point ids")
            yield block

    with h5py.File(path, "w") as f:
        f.attrs["layout"] = "flat-observations-v1"
        write_compressed_rows(f, "descriptors", rows_of_each_image(), int(offsets[-1]), dim, dtype)
        f.create_dataset("point3D_ids", data=ids.astype(np.int32))
        f.create_dataset("image_offsets", data=offsets)
        f.create_dataset("image_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        order = np.argsort(points_id)
        f.create_dataset("points3D_id", data=np.asarray(points_id)[order].astype(np.int32))
        f.create_dataset("points3D_xyz", data=np.asarray(points_xyz, np.float64)[order])
        f.create_dataset("image_centres", data=np.asarray(image_centres, np.float64).reshape(-1, 3))
        if keypoints is not None:
            kp = np.concatenate(keypoints) if keypoints else np.zeros((0, 2), np.float32)
            if len(kp) != len(ids):
                raise ValueError(f"{len(kp)} keypoints for {len(ids)} observations")
            f.create_dataset("keypoints", data=kp.astype(np.float32))
        if image_sizes is not None:
            f.create_dataset("image_sizes", data=np.asarray(image_sizes, np.int32).reshape(-1, 2))
        if point_quality is not None:
            write_point_quality(f, np.asarray(points_id)[order], point_quality)


#: per-point quality datasets (rows = ``points3D_id``): name -> (attribute, dtype). Bundles written
#: before them lack these; readers then get None (see :func:`read_point_quality`).
POINT_QUALITY_FIELDS = {"points3D_track_length": ("track_length", np.int32),
                        "points3D_tri_angle_deg": ("tri_angle_deg", np.float32),
                        "points3D_reproj_error_px": ("reproj_error_px", np.float32),
                        "points3D_covariance": ("covariance", np.float32)}


def write_point_quality(f: h5py.File, sorted_ids: np.ndarray, q) -> None:
    """Store ``q``'s per-point fields in the row order of ``sorted_ids``; covariance (P, 3, 3) m^2
    is stored as its upper triangle (P, 6): xx, xy, xz, yy, yz, zz."""
    pos = {int(i): k for k, i in enumerate(np.asarray(q.ids))}
    if len(pos) != len(sorted_ids) or any(int(i) not in pos for i in sorted_ids):
        raise ValueError("point quality rows do not match the points of features.h5")
    take = np.array([pos[int(i)] for i in sorted_ids], np.int64)
    iu = np.triu_indices(3)
    for name, (attr, dtype) in POINT_QUALITY_FIELDS.items():
        value = np.asarray(getattr(q, attr))[take]
        if attr == "covariance":
            value = value[:, iu[0], iu[1]]
        f.create_dataset(name, data=value.astype(dtype))


def read_point_quality(path: Path) -> dict[str, np.ndarray] | None:
    """The stored per-point quality of a features.h5 (rows = its ``points3D_id``): track_length,
    tri_angle_deg, reproj_error_px, covariance (P, 3, 3) float64; None for bundles written before it."""
    with h5py.File(path, "r") as f:
        if any(name not in f for name in POINT_QUALITY_FIELDS):
            return None
        out = {attr: f[name][()] for name, (attr, _) in POINT_QUALITY_FIELDS.items()}
    tri = out["covariance"].astype(np.float64)
    cov = np.zeros((len(tri), 3, 3))
    iu = np.triu_indices(3)
    cov[:, iu[0], iu[1]] = tri
    cov[:, iu[1], iu[0]] = tri
    out["covariance"] = cov
    return out


#: gzip level and rows per chunk of the descriptor table.
DESCRIPTOR_GZIP_LEVEL = 4
DESCRIPTOR_CHUNK_ROWS = 8192


def write_compressed(f: h5py.File, name: str, data: np.ndarray, chunk_rows: int = DESCRIPTOR_CHUNK_ROWS,
                     level: int = DESCRIPTOR_GZIP_LEVEL, workers: int = max(1, os.cpu_count() or 1)) -> None:
    """A chunked, gzip-compressed (N, D) dataset; any reader decompresses it as usual.

    uint8 tables are deflated chunk by chunk on ``workers`` threads (zlib releases the GIL; HDF5's
    own filter runs on one core) and stored with ``write_direct_chunk``: the same bytes HDF5's
    deflate filter writes. Shuffle is left out there: it does nothing to one-byte elements.
    Other dtypes (float descriptors) go through HDF5's gzip + shuffle filters.
    """
    write_compressed_rows(f, name, [data], len(data), data.shape[1], data.dtype, chunk_rows, level, workers)


def write_compressed_rows(f: h5py.File, name: str, blocks: Iterable[np.ndarray], n_rows: int, dim: int, dtype,
                          chunk_rows: int = DESCRIPTOR_CHUNK_ROWS, level: int = DESCRIPTOR_GZIP_LEVEL,
                          workers: int = max(1, os.cpu_count() or 1)) -> None:
    """:func:`write_compressed` of the rows of ``blocks`` ((n_k, dim) arrays, ``n_rows`` in all), taken
    one block at a time: the dataset's bytes are those of the blocks' concatenation, and only the
    chunks being deflated (a few per worker) are in memory."""
    dtype = np.dtype(dtype)
    chunks = _full_chunks(blocks, n_rows, min(max(1, n_rows), chunk_rows), dim, dtype)
    if n_rows == 0:  # HDF5 cannot chunk an empty dataset
        for _ in chunks:  # (checks that the blocks are empty)
            pass
        f.create_dataset(name, data=np.zeros((0, dim), dtype))
        return
    rows = min(n_rows, chunk_rows)
    if dtype != np.uint8 or n_rows <= rows:
        ds = f.create_dataset(name, shape=(n_rows, dim), dtype=dtype, compression="gzip", compression_opts=level,
                              shuffle=dtype != np.uint8, chunks=(rows, dim))
        for start, chunk in chunks:  # whole chunks in order: each is filtered and stored once
            ds[start:start + len(chunk)] = chunk
        return
    ds = f.create_dataset(name, shape=(n_rows, dim), dtype=dtype, chunks=(rows, dim),
                          compression="gzip", compression_opts=level)

    def deflate(chunk: np.ndarray) -> bytes:
        if len(chunk) < rows:  # HDF5 stores edge chunks at full size
            chunk = np.concatenate([chunk, np.zeros((rows - len(chunk), dim), dtype)])
        return zlib.compress(np.ascontiguousarray(chunk).tobytes(), level)

    with ThreadPoolExecutor(workers) as ex:
        pending: collections.deque = collections.deque()  # deflating while the next chunks are gathered
        for start, chunk in chunks:
            pending.append((start, ex.submit(deflate, chunk)))
            while len(pending) > 2 * workers:
                start0, blob = pending.popleft()
                ds.id.write_direct_chunk((start0, 0), blob.result())
        for start0, blob in pending:
            ds.id.write_direct_chunk((start0, 0), blob.result())


def _full_chunks(blocks: Iterable[np.ndarray], n_rows: int, rows: int, dim: int, dtype: np.dtype
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, chunk) of ``rows`` rows each (the last one shorter) from blocks of any length."""
    buf, fill, start = np.empty((rows, dim), dtype), 0, 0
    for block in blocks:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(f"a block of shape {block.shape} in a table of {dim} columns")
        pos = 0
        while pos < len(block):
            take = min(rows - fill, len(block) - pos)
            buf[fill:fill + take] = block[pos:pos + take]
            fill, pos = fill + take, pos + take
            if fill == rows:
                yield start, buf.copy()
                start, fill = start + rows, 0
    if fill:
        yield start, buf[:fill].copy()
    if start + fill != n_rows:
        raise ValueError(f"{start + fill} rows given for a table of {n_rows}")


@dataclass
class FeatureTable:
    """The bundle's observation table, loaded into memory (see module docstring for shapes)."""

    descriptors: np.ndarray
    point3d_ids: np.ndarray
    image_offsets: np.ndarray
    image_names: list[str]
    points_id: np.ndarray | None = None
    points_xyz: np.ndarray | None = None
    image_centres: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    image_sizes: np.ndarray | None = None

    def rows(self, image_index: int) -> slice:
        return slice(int(self.image_offsets[image_index]), int(self.image_offsets[image_index + 1]))


def read_features_h5(path: Path, descriptors: bool = True) -> FeatureTable:
    """The whole table; ``descriptors=False`` leaves them out (an empty (0, D) array) for callers
    that memory-map them from elsewhere."""
    with h5py.File(path, "r") as f:
        extra = {k: f[name][()] for k, name in (("points_id", "points3D_id"), ("points_xyz", "points3D_xyz"),
                                                 ("image_centres", "image_centres"),
                                                 ("keypoints", "keypoints"), ("image_sizes", "image_sizes"))
                 if name in f}
        d = f["descriptors"]
        return FeatureTable(d[()] if descriptors else np.zeros((0, d.shape[1]), d.dtype),
                            f["point3D_ids"][()].astype(np.int64),
                            f["image_offsets"][()], [n.decode() if isinstance(n, bytes) else str(n)
                                                     for n in f["image_names"][()]], **extra)

