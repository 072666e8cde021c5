"""A build that streams its features and matches from the work directory writes the same bundle data,
byte for byte, as one that holds them in memory; the pieces it streams through (features.h5 writer,
retrieval index from a sample) equal their one-shot references; and a build on a LocalCluster reports
each worker's peak memory."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from bundleio import read_manifest
from bundleio.features_h5 import write_compressed_rows
from core.camera import Camera
from datasets.posefile import load_poses
from datasets.synthetic import generate_scene, write_dataset
from mapping.build import BuildConfig, build_map, reconstruct_set
from mapping.feature_store import FeatureStore, ObservedDescriptors
from mapping.retrieval_index import build_retrieval_index, vocabulary_sample
from mapping.stage_cache import StageCache
from vision.features import SiftConfig
from vision.retrieval import RetrievalConfig, RetrievalIndex

N_FRAMES = 12
CFG = BuildConfig(features=SiftConfig(max_keypoints=1500))


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-frames")
    write_dataset(generate_scene(seed=5), root, N_FRAMES)
    records = load_poses(root / "pgt_sfm_seq01.txt", "pgt",
                         camera=Camera.parse((root / "camera.txt").read_text().strip()))
    return root, records


@pytest.fixture(scope="module")
def in_memory(frames, tmp_path_factory):
    """The map built without a work directory: every image's features held in memory (as before)."""
    root, records = frames
    out = tmp_path_factory.mktemp("stream-ref") / "memory"
    build_map(root, records, out, CFG)
    return out


def data_files(bundle) -> dict[str, str]:
    return {k: v["sha256"] for k, v in read_manifest(bundle)["files"].items()}


def test_streaming_build_writes_the_same_bundle_data(frames, in_memory, tmp_path):
    root, records = frames
    out = tmp_path / "stream"
    build_map(root, records, out, CFG, work_dir=tmp_path / "work")
    files = data_files(out)
    assert {"features.h5", "retrieval.npz", "model/points3D.bin", "model/images.bin"} <= set(files)
    assert files == data_files(in_memory)  # model, features.h5 and retrieval.npz byte for byte
    # a rerun from the filled work directory (nothing computed again) streams the same bundle
    build_map(root, records, tmp_path / "again", CFG, work_dir=tmp_path / "work")
    assert data_files(tmp_path / "again") == files


def test_streaming_set_reads_features_back_one_image_at_a_time(frames, tmp_path):
    root, records = frames
    from bundleio import sha256_file
    sha = {r.name: sha256_file(root / r.name) for r in records}
    s = reconstruct_set(root, records, CFG, cache=StageCache(tmp_path / "work"), image_sha=sha)
    assert isinstance(s.descriptors, ObservedDescriptors)  # not held: read when the bundle is written
    store = s.descriptors.store
    assert store.streams and len(store._recent) <= store._keep
    # the observing rows of each registered image, straight from the cache
    i, idx = s.descriptors.rows[0]
    assert np.array_equal(s.descriptors[0], store[i].descriptors[idx]) and len(idx) == len(s.point3d_ids[0])


@pytest.mark.parametrize("dtype, counts, chunk_rows", [(np.uint8, [3000, 0, 9000, 5000, 17], 4096),
                                                       (np.uint8, [10, 20], 4096),
                                                       (np.float32, [700, 1300, 50], 512),
                                                       (np.uint8, [0, 0], 64)])
def test_descriptor_rows_stream_into_the_bytes_hdf5_writes(tmp_path, dtype, counts, chunk_rows):
    """Blocks of any size, streamed: the same file as HDF5's own gzip filter on their concatenation."""
    rng = np.random.default_rng(len(counts))
    blocks = [(rng.integers(0, 60, (n, 128)) if dtype == np.uint8 else rng.random((n, 128))).astype(dtype)
              for n in counts]
    data = np.concatenate(blocks)
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        if len(data):
            f.create_dataset("d", data=data, compression="gzip", compression_opts=4, shuffle=dtype != np.uint8,
                             chunks=(min(len(data), chunk_rows), 128))
        else:
            f.create_dataset("d", data=data)
    with h5py.File(tmp_path / "stream.h5", "w") as f:
        write_compressed_rows(f, "d", iter(blocks), len(data), 128, dtype, chunk_rows=chunk_rows, workers=2)
    assert (tmp_path / "stream.h5").read_bytes() == (tmp_path / "ref.h5").read_bytes()
    with h5py.File(tmp_path / "bad.h5", "w") as f, pytest.raises(ValueError, match="rows"):
        write_compressed_rows(f, "d", iter(blocks), len(data) + 1, 128, dtype, chunk_rows=chunk_rows)


@pytest.mark.parametrize("train_samples", [500, 10**6])
def test_index_from_a_sample_read_image_by_image_equals_the_one_shot_index(train_samples):
    rng = np.random.default_rng(1)
    sets = [rng.integers(0, 120, (n, 128)).astype(np.uint8) for n in (300, 0, 450, 90, 700)]
    names = [f"im{k}" for k in range(len(sets))]
    cfg = RetrievalConfig(n_clusters=8, train_samples=train_samples)
    store = FeatureStore([len(d) for d in sets], features=[_features(d) for d in sets])
    plan = vocabulary_sample(store.counts, cfg)
    assert len(plan.order) == min(train_samples, sum(len(d) for d in sets))
    ref = RetrievalIndex.build(names, sets, cfg)
    got = build_retrieval_index(names, store.descriptors, store.counts, cfg)
    assert np.array_equal(got.centroids, ref.centroids) and np.array_equal(got.descriptors, ref.descriptors)
    assert got.descriptors.dtype == np.float16 and got.names == names


def _features(d: np.ndarray):
    from vision.features import Features
    n = len(d)
    return Features(np.zeros((n, 2), np.float32), np.ones(n, np.float32), np.zeros(n, np.float32), d)


def test_local_cluster_build_reports_each_workers_peak_memory(frames, in_memory, tmp_path):
    from mapping.cluster import ClusterConfig
    root, records = frames
    out = tmp_path / "dask"
    build_map(root, records, out, CFG, work_dir=tmp_path / "work", cluster=ClusterConfig("local", workers=2))
    cluster = read_manifest(out)["statistics"]["cluster"]
    workers = cluster["workers"]
    assert len(workers) == 2, workers
    for address, w in workers.items():
        assert address.startswith("tcp://127.0.0.1:") and w["tasks"] >= 1
        assert 50 * 2**20 < w["peak_rss_bytes"] < 64 * 2**30
        assert max(w["stage_peak_rss_bytes"].values()) == w["peak_rss_bytes"]
    assert cluster["worker_peak_rss_bytes"] == max(w["peak_rss_bytes"] for w in workers.values())
    assert cluster["client_peak_rss_bytes"] > 50 * 2**20
    assert cluster["feature_tasks"] >= 2 and cluster["sample_tasks"] >= 1 and cluster["vlad_tasks"] >= 1
    assert cluster["partition_tasks"] == 1  # the posed map triangulated on a worker, not on the client
    assert sum(w["tasks"] for w in workers.values()) == sum(
        cluster[k] for k in ("feature_tasks", "match_tasks", "sample_tasks", "vlad_tasks", "partition_tasks"))
    assert data_files(out) == data_files(in_memory)  # the index as tasks: the same retrieval.npz too
