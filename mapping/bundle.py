"""The map bundle: one directory, written atomically, read by localize/, api/ and robots/.

Layout (format version 1)::

    BUNDLE/
      manifest.json     format, version, units, frame conventions, cameras, feature type,
                        statistics, checksums of the source data and of every file below
      model/            COLMAP binary model (cameras.bin, images.bin, points3D.bin, rigs.bin,
                        frames.bin); images keep only the 2D points that observe a 3D point
      features.h5       HDF5, flat arrays over all map observations, image by image, in the
                        order of each image's 2D points in model/ (their pixels live there):
                          descriptors (T, D) uint8 | float32 (gzip, + shuffle for float32; chunked)
                          point3D_ids (T,) int32 (ids in model/)
                          points3D_id (P,) int32, points3D_xyz (P, 3) float64: every model point,
                            sorted by id (a copy of model/ for loading without parsing it)
                          image_centres (N, 3) float64: camera centres in the world frame
                          image_offsets (N+1,) int64: image k owns rows offsets[k]:offsets[k+1]
                          image_names (N,) utf-8, in model image order
      retrieval.npz     VLAD index (see mapping.retrieval)

Writes go to a hidden sibling temp directory that is renamed into place, so a
reader sees either the old bundle or the new one, never a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from vloc.types import VlocError

FORMAT_NAME = "vloc-map-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

CONVENTIONS = {
    "units": "metres",
    "pose": "cam_from_world: x_cam = R @ x_world + t (COLMAP image pose)",
    "quaternion": "w, x, y, z (Hamilton, unit)",
    "camera_frame": "x right, y down, z forward",
    "pixel": "COLMAP: centre of the top-left pixel is (0.5, 0.5)",
}


#: stage name -> key of a batch stage now running (see :func:`recording_stage`).
_PENDING_STAGES: ContextVar[dict[str, str]] = ContextVar("vloc_pending_stages", default={})


@contextmanager
def recording_stage(stage: str, key: str) -> Iterator[None]:
    """While active, the bundle write of ``stage`` also records ``manifest["stages"][stage]``
    = ``{key, utc}`` in the same atomic write, so a batch knows which stages are done."""
    token = _PENDING_STAGES.set({**_PENDING_STAGES.get(), stage: key})
    try:
        yield
    finally:
        _PENDING_STAGES.reset(token)


def record_pending_stage(manifest: dict, stage: str) -> None:
    """Add the running batch stage's record to a manifest about to be written (no-op outside a batch)."""
    import time

    key = _PENDING_STAGES.get().get(stage)
    if key is not None:
        manifest.setdefault("stages", {})[stage] = {
            "key": key, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success rename it to ``final`` (replacing it).

    On any exception the temp directory is removed and ``final`` is untouched.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def update_bundle(bundle: Path, stage: str) -> Iterator[tuple[Path, dict]]:
    """Change an existing bundle atomically: yield ``(tmp, manifest)``, a full copy and its manifest.

    The caller writes new or replaced files under ``tmp`` (always as new files: write to a new
    name or unlink first) and edits ``manifest`` in place. On success the manifest's ``revision``
    is incremented, ``history`` gains ``{stage, utc}``, checksums are recomputed and the copy
    replaces the bundle in one rename; on any exception the bundle is untouched.
    """
    import time

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    with atomic_directory(bundle) as tmp:
        for p in bundle.iterdir():
            if p.name == MANIFEST:
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        manifest = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")}
        yield tmp, manifest
        manifest["revision"] = int(manifest.get("revision", 0)) + 1
        manifest.setdefault("history", []).append(
            {"stage": stage, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        record_pending_stage(manifest, stage)
        stats = manifest.get("statistics")
        if isinstance(stats, dict) and "bytes_on_disk" in stats:
            stats["bytes_on_disk"] = dir_size(tmp)
        write_manifest(tmp, manifest)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_features_h5(path: Path, names: list[str], descriptors: list[np.ndarray],
                      point3d_ids: list[np.ndarray], points_id: np.ndarray, points_xyz: np.ndarray,
                      image_centres: np.ndarray) -> None:
    """Write the flat observation arrays (see module docstring). Lists are per image, same order as names."""
    offsets = np.zeros(len(names) + 1, np.int64)
    offsets[1:] = np.cumsum([len(d) for d in descriptors])
    desc = np.concatenate(descriptors) if descriptors else np.zeros((0, 128), np.uint8)
    ids = np.concatenate(point3d_ids) if point3d_ids else np.zeros(0, np.int64)
    if len(ids) and ids.max() >= 2 ** 31:
        raise ValueError("3D point ids beyond int32")
    with h5py.File(path, "w") as f:
        f.attrs["layout"] = "flat-observations-v1"
        write_compressed(f, "descriptors", desc)
        f.create_dataset("point3D_ids", data=ids.astype(np.int32))
        f.create_dataset("image_offsets", data=offsets)
        f.create_dataset("image_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        order = np.argsort(points_id)
        f.create_dataset("points3D_id", data=np.asarray(points_id)[order].astype(np.int32))
        f.create_dataset("points3D_xyz", data=np.asarray(points_xyz, np.float64)[order])
        f.create_dataset("image_centres", data=np.asarray(image_centres, np.float64).reshape(-1, 3))


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
    if len(data) == 0:  # HDF5 cannot chunk an empty dataset
        f.create_dataset(name, data=data)
        return
    rows = min(len(data), chunk_rows)
    if data.dtype != np.uint8 or len(data) <= rows:
        f.create_dataset(name, data=data, compression="gzip", compression_opts=level, shuffle=data.dtype != np.uint8,
                         chunks=(rows, data.shape[1]))
        return
    ds = f.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=(rows, data.shape[1]),
                          compression="gzip", compression_opts=level)
    starts = range(0, len(data), rows)

    def deflate(start: int) -> bytes:
        chunk = data[start:start + rows]
        if len(chunk) < rows:  # HDF5 stores edge chunks at full size
            chunk = np.concatenate([chunk, np.zeros((rows - len(chunk), data.shape[1]), data.dtype)])
        return zlib.compress(np.ascontiguousarray(chunk).tobytes(), level)

    with ThreadPoolExecutor(workers) as ex:
        for start, blob in zip(starts, ex.map(deflate, starts)):
            ds.id.write_direct_chunk((start, 0), blob)


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

    def rows(self, image_index: int) -> slice:
        return slice(int(self.image_offsets[image_index]), int(self.image_offsets[image_index + 1]))


def read_features_h5(path: Path, descriptors: bool = True) -> FeatureTable:
    """The whole table; ``descriptors=False`` leaves them out (an empty (0, D) array) for callers
    that memory-map them from elsewhere."""
    with h5py.File(path, "r") as f:
        extra = {k: f[name][()] for k, name in (("points_id", "points3D_id"), ("points_xyz", "points3D_xyz"),
                                                 ("image_centres", "image_centres")) if name in f}
        d = f["descriptors"]
        return FeatureTable(d[()] if descriptors else np.zeros((0, d.shape[1]), d.dtype),
                            f["point3D_ids"][()].astype(np.int64),
                            f["image_offsets"][()], [n.decode() if isinstance(n, bytes) else str(n)
                                                     for n in f["image_names"][()]], **extra)


def write_manifest(root: Path, manifest: dict) -> None:
    files = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(bundle: Path) -> dict:
    """Read and check a bundle's manifest; refuses unknown formats and newer versions."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise VlocError(f"{bundle} is not a map bundle directory")
    if not path.is_file():
        raise VlocError(f"{bundle} has no {MANIFEST}: not a vloc map bundle (or an unfinished one)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlocError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise VlocError(f"{path}: unknown bundle format {m.get('format') if isinstance(m, dict) else m!r}"
                        f" (expected {FORMAT_NAME!r})")
    v = m.get("format_version")
    if not isinstance(v, int):
        raise VlocError(f"{path}: format_version missing or not an integer")
    if v > FORMAT_VERSION:
        raise VlocError(f"{bundle}: bundle format version {v} is newer than this vloc supports "
                        f"({FORMAT_VERSION}); upgrade vloc to read it")
    if v < 1:
        raise VlocError(f"{bundle}: unknown bundle format version {v}")
    return m


def verify_files(bundle: Path, manifest: dict) -> list[str]:
    """Names of files whose size or checksum differs from the manifest (empty when intact)."""
    bad = []
    for rel, info in manifest.get("files", {}).items():
        p = Path(bundle) / rel
        if not p.is_file() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad
