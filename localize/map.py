"""A map bundle loaded once for localization: arrays laid out for per-query work bounded by k."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import torch

from bundleio import FeatureSet, read_features_h5, read_manifest, read_point_quality, resolve_feature_set
from core.geometry import Rigid3
from core.types import VlocError
from vision.features import Features, root_sift
from vision.matching import sift_int8
from vision.retrieval import RetrievalIndex


def points_from_model(path: Path, image_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (P,), xyz (P, 3), camera centres (N, 3) of image_names) parsed from the COLMAP model."""
    rec = pycolmap.Reconstruction(str(path / "model"))
    ids = np.array(sorted(rec.points3D), np.int64)
    xyz = np.array([rec.points3D[int(i)].xyz for i in ids]).reshape(-1, 3)
    centres = []
    for name in image_names:
        im = rec.find_image_with_name(name)
        if im is None:
            raise VlocError(f"{path}: image {name} of features.h5 is not in the model")
        centres.append(Rigid3.from_pycolmap(im.cam_from_world()).centre)
    return ids, xyz, np.array(centres).reshape(-1, 3)


def load_point_quality(base: Path, image_names: list[str], ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per-point quality of the feature set in ``base``, rows in the order of ``ids`` (sorted point
    ids): from features.h5, or (bundles written before it was stored) computed from ``model/``
    with :func:`mapping.point_quality.from_reconstruction`; None when there is no model either."""
    stored = read_point_quality(base / "features.h5")
    if stored is None:
        if not (base / "model").is_dir():
            return None
        from mapping.point_quality import from_reconstruction
        q = from_reconstruction(pycolmap.Reconstruction(str(base / "model")), image_names)
        if not np.array_equal(q.ids, ids):
            raise VlocError(f"{base}: model/ and features.h5 list different 3D points")
        stored = {"track_length": q.track_length, "tri_angle_deg": q.tri_angle_deg,
                  "reproj_error_px": q.reproj_error_px, "covariance": q.covariance}
    stored["covariance"] = stored["covariance"].astype(np.float32)  # 36 bytes per point in memory
    return stored


def mapped_descriptors(bundle: Path, manifest: dict, mmap_dir: Path, rel: str = "features.h5") -> np.ndarray:
    """(T, D) read-only memory map of a bundle's observation descriptors (``rel``: the feature
    set's features.h5 relative to the bundle).

    The sidecar ``mmap_dir/<sha256 of features.h5>.npy`` is written (temp + rename) the first
    time and reused by every later load and process; it is derived data, outside the bundle.
    """
    sha = manifest.get("files", {}).get(rel, {}).get("sha256")
    if not sha:
        raise VlocError(f"{bundle}: the manifest has no checksum for {rel}")
    side = Path(mmap_dir) / f"{sha}.npy"
    if not side.is_file():
        side.parent.mkdir(parents=True, exist_ok=True)
        desc = read_features_h5(Path(bundle) / rel).descriptors
        tmp = side.with_name(f".{side.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(desc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, side)
    return np.load(side, mmap_mode="r")


@dataclass
class LocalizationMap:
    """Everything a query needs, loaded from one feature set of a bundle.

    points_xyz: (P, 3) float64 world points; observation rows refer to them by ``obs_point``.
    obs_descriptors: (T, D) observation descriptors (uint8 SIFT, or float32 unit-norm learned),
    grouped image by image.  obs_point: (T,) int64 row into points_xyz.  image_offsets: (N+1,) int64.
    image_names: (N,), image_centres: (N, 3) camera centres in the world frame.
    obs_keypoints: (T, 2) float32 COLMAP pixels and image_sizes: (N, 2) width, height (learned
    sets; LightGlue needs them), else None. feature_set: which set of the bundle this is.
    point_quality: per point row, ``track_length``, ``tri_angle_deg``, ``reproj_error_px`` and
    ``covariance`` (P, 3, 3) float32 m^2 world frame (:mod:`mapping.point_quality`): stored in features.h5
    by builds since 2026-12; for older bundles derived from ``model/`` at load (same numbers);
    None when neither is there (pixel noise alone) and for learned sets (not used for them yet).
    """

    path: Path
    manifest: dict
    points_xyz: np.ndarray
    obs_descriptors: np.ndarray
    obs_point: np.ndarray
    image_offsets: np.ndarray
    image_names: list[str]
    image_centres: np.ndarray
    retrieval: RetrievalIndex
    retrieval_rows: np.ndarray
    #: (N_retrieval, K*D) float32 copy of the global descriptors (no per-query conversion).
    retrieval_matrix: np.ndarray = None
    feature_set: FeatureSet | None = None
    obs_keypoints: np.ndarray | None = None
    image_sizes: np.ndarray | None = None
    #: learned sets on a device: (T, D) descriptors resident there (see :meth:`to_device`).
    device_descriptors: torch.Tensor | None = None
    point_quality: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.retrieval_matrix is None:
            self.retrieval_matrix = np.ascontiguousarray(self.retrieval.descriptors, dtype=np.float32)

    @staticmethod
    def load(path: Path, mmap_dir: Path | None = None, features: str | None = None,
             point_quality: bool = True, learned_point_quality: bool = False) -> "LocalizationMap":
        """Load a bundle's feature set ``features`` (None: its root set; a set it lacks is a
        VlocError naming those it has). With ``mmap_dir``, the observation descriptors are
        memory-mapped from an uncompressed copy there (made once per features.h5 content, see
        :func:`mapped_descriptors`): processes serving the same map share its pages and a load
        reads no descriptor bytes. ``point_quality=False`` skips the points' uncertainty; learned sets
        (ALIKED, DISK) load it only with ``learned_point_quality``."""
        path = Path(path)
        manifest = read_manifest(path)
        fs = resolve_feature_set(manifest, features, path)
        base = fs.dir(path)
        rel = (Path(fs.path) / "features.h5").as_posix()
        table = read_features_h5(base / "features.h5", descriptors=mmap_dir is None)
        if mmap_dir is not None:
            table.descriptors = mapped_descriptors(path, manifest, Path(mmap_dir), rel)
        if table.points_xyz is not None and table.image_centres is not None:
            ids, xyz, centres = table.points_id.astype(np.int64), table.points_xyz, table.image_centres
        else:  # bundles written before features.h5 carried the point table: parse the model
            ids, xyz, centres = points_from_model(base, table.image_names)
        if len(ids) == 0:
            raise VlocError(f"{path}: the map has no 3D points")
        row_of = np.full(int(ids.max()) + 1, -1, np.int64)
        row_of[ids] = np.arange(len(ids))
        obs_point = row_of[np.clip(table.point3d_ids, 0, len(row_of) - 1)]
        if (obs_point < 0).any() or (table.point3d_ids >= len(row_of)).any():
            raise VlocError(f"{path}: features.h5 refers to 3D points missing from the model")
        retrieval = RetrievalIndex.load(base / "retrieval.npz")
        pos = {n: k for k, n in enumerate(table.image_names)}
        rows = np.array([pos.get(n, -1) for n in retrieval.names], np.int64)
        quality = load_point_quality(base, table.image_names, ids) \
            if point_quality and (learned_point_quality or not fs.learned) else None
        return LocalizationMap(path, manifest, xyz, table.descriptors, obs_point, table.image_offsets,
                               table.image_names, np.asarray(centres), retrieval, rows, feature_set=fs,
                               obs_keypoints=table.keypoints, image_sizes=table.image_sizes,
                               point_quality=quality)

    @property
    def learned(self) -> bool:
        return self.feature_set is not None and self.feature_set.learned

    def to_device(self, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
        """Keep a learned set's descriptors resident on ``device`` (a CUDA device: per-query
        gathers then read no host memory). Returns the bytes placed there (0 on the CPU, where
        queries gather rows of the host array)."""
        if not self.learned or device.type == "cpu":
            return 0
        self.device_descriptors = torch.from_numpy(np.ascontiguousarray(self.obs_descriptors)).to(device, dtype)
        return int(self.device_descriptors.numel() * self.device_descriptors.element_size())

    def learned_descriptors(self, obs: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(M, D) descriptors of observation rows ``obs`` on ``device`` (a learned set)."""
        if self.device_descriptors is not None:
            return self.device_descriptors.index_select(0, torch.from_numpy(obs).to(self.device_descriptors.device))
        return torch.from_numpy(np.take(self.obs_descriptors, obs, axis=0)).to(device, dtype)

    def image_features(self, row: int) -> tuple[Features, tuple[int, int], np.ndarray]:
        """One map image's observations as Features (COLMAP pixels), its size (W, H) and their point
        rows: what LightGlue matches a query against (learned sets only)."""
        if self.obs_keypoints is None or self.image_sizes is None:
            raise VlocError(f"{self.path}: feature set {self.feature_set.name if self.feature_set else '?'} "
                            "stores no keypoints; use the nearest-neighbour matcher")
        sl = slice(int(self.image_offsets[row]), int(self.image_offsets[row + 1]))
        kp = self.obs_keypoints[sl]
        n = len(kp)
        f = Features(kp, np.ones(n, np.float32), np.zeros(n, np.float32), np.asarray(self.obs_descriptors[sl]))
        w, h = (int(x) for x in self.image_sizes[row])
        return f, (w, h), self.obs_point[sl]

    def cache_rootsift(self, max_bytes: int) -> bool:
        """Precompute the int8 RootSIFT (:func:`vision.matching.sift_int8`, 1 byte per entry)
        of every observation when it fits in max_bytes."""
        if len(self.obs_descriptors) * self.obs_descriptors.shape[1] <= max_bytes:
            self._rootsift_cache = sift_int8(self.obs_descriptors)
        return getattr(self, "_rootsift_cache", None) is not None

    def rootsift_int8(self, obs: np.ndarray) -> torch.Tensor:
        """(M, 128) int8 RootSIFT of the given observation rows, for the candidate search (an int8
        GEMM runs ~2x a bf16 one on AVX512-VNNI CPUs; exact scores come from :meth:`rootsift`).
        From the cache when :meth:`cache_rootsift` made one, else computed for these rows only."""
        cache = getattr(self, "_rootsift_cache", None)
        if cache is not None:  # np.take gathers rows ~7x faster than torch indexing
            return torch.from_numpy(np.take(cache.numpy(), obs, axis=0))
        return sift_int8(self.obs_descriptors[obs])

    def rootsift(self, obs: np.ndarray) -> torch.Tensor:
        """(M, 128) float32 RootSIFT of the given observation rows (exact scores)."""
        return torch.from_numpy(root_sift(self.obs_descriptors[obs]))

    @property
    def n_images(self) -> int:
        return len(self.image_names)

    def observations(self, image_rows: np.ndarray) -> np.ndarray:
        """Observation row indices (M,) of the given map images."""
        return np.concatenate([np.arange(self.image_offsets[i], self.image_offsets[i + 1]) for i in image_rows]) \
            if len(image_rows) else np.zeros(0, np.int64)
