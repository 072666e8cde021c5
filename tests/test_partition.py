"""Partitioned reconstruction (mapping.partition, partition_merge, partition_sfm) on a generated loop with
exact truth: posed tiles merged without duplicate points, unposed view-graph clusters aligned,
merged and adjusted; plus the partitioning itself and the refusals.

The loop: ``generate_scene(seed=3)`` (a 6 x 5 x 2.6 m textured room) seen from its closed camera
loop (``scene.trajectory``: an ellipse of 2.7 x 2.25 m around the room centre, cameras looking out
and ahead at the walls 1-3 m away), 40 frames of 320 x 240. Features and matches are made here
with vision's functions (SIFT, 2,000 keypoints), so the test does not depend on the build's stages.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from core.accuracy import aligned_centre_errors
from core.camera import Camera
from core.geometry import Rigid3
from core.imageio import read_image
from core.types import ImageRecord, VlocError
from datasets.synthetic import generate_scene, write_dataset
from mapping.pairs import PosePairConfig, pairs_from_poses
from mapping.partition import (
    PartitionConfig,
    assign_pairs,
    cluster_overlaps,
    kd_split,
    partition_balanced,
    partition_posed,
    partition_view_graph,
)
from mapping.partition_merge import merge_tracks, partitioned_triangulation
from mapping.partition_sfm import align_models, align_pair, partitioned_sfm, reconstruct_clusters
from mapping.reconstruct import (
    ReconstructionConfig,
    filter_points,
    images_cam_from_world,
    posed_reconstruction,
    structure_from_motion,
    triangulate_known_poses,
)
from vision.backends import make_backend
from vision.features import Features
from vision.matching import (
    MatchConfig,
    VerifiedPair,
    match_sift_int8,
    sift_int8,
    verify_unknown_pose,
    verify_with_poses,
)

N_FRAMES = 40
CAMERA = Camera("PINHOLE", 320, 240, (262.5, 262.5, 160.0, 120.0))


# ---- the generated loop, its features and matches ----------------------------------------------

def extract(root: Path, records: list[ImageRecord], max_keypoints: int = 2000) -> list[Features]:
    sift = make_backend("sift", max_keypoints=max_keypoints)
    return [sift.extract(read_image(root / r.name, r.camera, gray=True)) for r in records]


def match(records: list[ImageRecord], feats: list[Features], pairs: list[tuple[int, int]], posed: bool,
          cfg: MatchConfig = MatchConfig()) -> dict[tuple[int, int], VerifiedPair]:
    """Verified matches of pairs (known poses: epipolar check; unknown: RANSAC on E), 2 threads."""
    q = [sift_int8(f.descriptors) for f in feats]

    def one(p):
        i, j = p
        m = match_sift_int8(q[i], q[j], feats[i].descriptors, feats[j].descriptors, cfg.ratio, cfg.mutual)
        if len(m) < cfg.min_inliers:
            return p, None
        a, b = records[i], records[j]
        if posed:
            vp = verify_with_poses(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                   a.cam_from_world, b.cam_from_world, cfg.max_epipolar_error_px)
        else:
            vp = verify_unknown_pose(feats[i].keypoints, feats[j].keypoints, m, a.camera, b.camera,
                                     cfg.max_epipolar_error_px, cfg.ransac_confidence)
        return p, vp if vp is not None and len(vp.matches) >= cfg.min_inliers else None

    with ThreadPoolExecutor(2) as ex:
        return {p: vp for p, vp in ex.map(one, pairs) if vp is not None}


def loop_pairs(n: int, window: int) -> list[tuple[int, int]]:
    """Sequential pairs of a closed capture loop: each image with the next ``window`` (wrapping)."""
    return sorted({(min(i, (i + k) % n), max(i, (i + k) % n)) for i in range(n) for k in range(1, window + 1)})


def centre_errors(rec: pycolmap.Reconstruction, records: list[ImageRecord]) -> np.ndarray:
    """(registered,) camera-centre errors (m) after one similarity onto the true centres."""
    return aligned_centre_errors({n: T.centre for n, T in images_cam_from_world(rec).items()},
                                 {r.name: r.cam_from_world.centre for r in records})


def shared_observations(rec: pycolmap.Reconstruction) -> int:
    """How many (image, keypoint) observations belong to more than one 3D point."""
    seen: set[tuple[int, int]] = set()
    dup = 0
    for p in rec.points3D.values():
        for e in p.track.elements:
            key = (e.image_id, e.point2D_idx)
            dup += key in seen
            seen.add(key)
    return dup


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    scene = generate_scene(seed=3)
    root = tmp_path_factory.mktemp("loop")
    records = write_dataset(scene, root, N_FRAMES, camera=CAMERA)
    return scene, root, records, extract(root, records)


# ---- partitioning (pure) ------------------------------------------------------------------------

def ring_graph(n: int, window: int) -> dict[tuple[int, int], int]:
    return {(i, j): int(1000 / min(j - i, n - (j - i))) for i, j in loop_pairs(n, window)}


def test_view_graph_of_a_loop_splits_into_overlapping_arcs():
    n, overlap = 200, 4
    clusters = partition_view_graph(n, ring_graph(n, 8), max_size=50, overlap=overlap)
    assert len(clusters) >= 4
    assert set(np.concatenate(clusters).tolist()) == set(range(n))
    shared = cluster_overlaps(clusters)
    for k, c in enumerate(clusters):
        # an arc of the loop (one run of consecutive frames, wrapping) ...
        gaps = np.diff(np.sort(c))
        assert np.sum(gaps > 1) <= 1, f"cluster {k} is not one arc: {c}"
        # ... sharing 2 x overlap images with exactly its two neighbours along the loop
        neighbours = [j for j in range(len(clusters)) if j != k and shared[k, j] > 0]
        assert len(neighbours) == 2 and all(shared[k, j] == 2 * overlap for j in neighbours), shared


def test_view_graph_with_positions_and_disconnected_parts():
    n = 60
    th = 2 * np.pi * np.arange(n) / n
    positions = np.c_[20 * np.cos(th), 12 * np.sin(th), np.zeros(n)]
    positions[5] = np.nan                                      # an image without GPS
    clusters = partition_view_graph(n, ring_graph(n, 4), max_size=16, overlap=2, positions=positions)
    assert set(np.concatenate(clusters).tolist()) == set(range(n))
    assert all(len(c) <= 16 + 2 * 2 * 2 for c in clusters)
    # two separate loops: no cluster spans both
    g = ring_graph(30, 3)
    g.update({(i + 30, j + 30): w for (i, j), w in ring_graph(30, 3).items()})
    clusters = partition_view_graph(60, g, max_size=20, overlap=2)
    assert all(np.all(c < 30) or np.all(c >= 30) for c in clusters)


def test_posed_tiles_cover_every_image_with_overlap():
    rng = np.random.default_rng(0)
    centres = np.c_[rng.uniform(0, 30, 400), rng.uniform(0, 18, 400), rng.uniform(0, 2, 400)]
    tiles = partition_posed(centres, tile_m=10.0, overlap_m=1.0)
    assert len(tiles) == 6
    count = np.bincount(np.concatenate(tiles), minlength=400)
    assert count.min() >= 1
    near_border = (np.abs(centres[:, 0] - 10) < 0.9) | (np.abs(centres[:, 0] - 20) < 0.9)
    assert np.all(count[near_border] >= 2)
    balanced = partition_balanced(centres, max_images=100, overlap_m=1.0)
    assert len(balanced) == 4 and np.bincount(np.concatenate(balanced), minlength=400).min() >= 1
    assert [len(x) for x in kd_split(centres[:, :2], 100)] == [100] * 4
    # a pair of images in no common tile pulls one of them into a tile of the other
    far = (int(np.argmin(centres[:, 0])), int(np.argmax(centres[:, 0])))
    grown, per_tile = assign_pairs(tiles, [tuple(sorted(far))])
    assert sum(tuple(sorted(far)) in p for p in per_tile) == 1
    assert sum(len(g) for g in grown) == sum(len(t) for t in tiles) + 1


# ---- track merging (hand-made models) ------------------------------------------------------------

def test_merge_tracks_unifies_points_that_share_an_observation():
    cam = Camera("PINHOLE", 100, 100, (100.0, 100.0, 50.0, 50.0))
    poses = [Rigid3(np.eye(3), np.array([-x, 0.0, 0.0])) for x in (0.0, 0.5, 1.0, 1.5)]
    X = np.array([[0.7, 0.1, 4.0], [0.2, -0.3, 5.0]])
    kps = [cam.project(T.transform(X)) for T in poses]                      # keypoint k observes X[k]
    records = [ImageRecord(f"im{i}.png", cam, T) for i, T in enumerate(poses)]
    feats = [Features(k.astype(np.float32), np.ones(2, np.float32), np.zeros(2, np.float32),
                      np.zeros((2, 128), np.uint8)) for k in kps]

    def model(images: list[int], tracks: list[tuple[np.ndarray, list[tuple[int, int]]]]):
        sub = posed_reconstruction([records[i] for i in images], [feats[i] for i in images])
        for xyz, obs in tracks:
            t = pycolmap.Track()
            t.add_elements([pycolmap.TrackElement(images.index(i) + 1, k) for i, k in obs])
            sub.add_point3D(xyz, t)
        return sub

    # tile A sees X0 in images 0-2, tile B in images 2-3 (shared: image 2, keypoint 0), slightly off;
    # X1 only in tile B, and a bad point in tile A whose observation (image 1, kp 1) is far off
    a = model([0, 1, 2], [(X[0], [(0, 0), (1, 0), (2, 0)]), (X[1] + [0, 0.5, 0], [(0, 1), (1, 1)])])
    b = model([2, 3], [(X[0] + 0.01, [(2, 0), (3, 0)]), (X[1], [(2, 1), (3, 1)])])
    base = posed_reconstruction(records, feats)
    stats = merge_tracks([a, b], base, max_reproj_error_px=2.0)
    assert base.num_points3D() == 2 and stats["n_tracks_unified"] == 1
    tracks = {tuple(sorted((e.image_id - 1, e.point2D_idx) for e in p.track.elements)): p.xyz
              for p in base.points3D.values()}
    assert set(tracks) == {((0, 0), (1, 0), (2, 0), (3, 0)), ((2, 1), (3, 1))}
    assert np.allclose(tracks[((0, 0), (1, 0), (2, 0), (3, 0))], X[0])  # the candidate with more inliers
    assert shared_observations(base) == 0


# ---- posed: tiles triangulated with the same poses, merged ---------------------------------------

@pytest.fixture(scope="module")
def posed(loop, tmp_path_factory):
    scene, root, records, feats = loop
    pairs = pairs_from_poses([r.camera for r in records], [r.cam_from_world for r in records], PosePairConfig())
    verified = match(records, feats, pairs, posed=True)
    cfg = ReconstructionConfig()
    t = time.perf_counter()
    whole = triangulate_known_poses(records, feats, verified, tmp_path_factory.mktemp("whole"), cfg)
    filter_points(whole, cfg)
    t_whole = time.perf_counter() - t
    centres = np.array([r.cam_from_world.centre for r in records])
    tiles = partition_posed(centres, tile_m=1.5, overlap_m=0.4)
    t = time.perf_counter()
    merged, stats = partitioned_triangulation(records, feats, verified, tmp_path_factory.mktemp("tiles"), cfg,
                                              PartitionConfig(), tiles=tiles)
    t_merged = time.perf_counter() - t
    return whole, merged, stats, tiles, (t_whole, t_merged)


def test_posed_tiles_merge_without_duplicate_points(posed, loop):
    records = loop[2]
    whole, merged, stats, tiles, (t_whole, t_merged) = posed
    print(f"\nposed: {len(tiles)} tiles {[len(t) for t in tiles]}, points whole {whole.num_points3D()} / merged "
          f"{merged.num_points3D()} (tiles held {stats['n_points_in']}), {t_whole:.1f} s / {t_merged:.1f} s")
    assert len(tiles) >= 2 and stats["n_parts"] >= 2
    assert stats["n_points_in"] > 1.2 * merged.num_points3D(), "the tiles did not overlap"
    assert shared_observations(merged) == 0
    assert abs(merged.num_points3D() - whole.num_points3D()) <= 0.05 * whole.num_points3D()
    # the poses are the known ones
    est = images_cam_from_world(merged)
    assert len(est) == N_FRAMES
    for r in records:
        assert np.allclose(est[r.name].matrix3x4(), r.cam_from_world.matrix3x4(), atol=1e-9)


def test_compact_model_from_a_point_table_equals_the_one_from_the_model(posed, loop, tmp_path):
    """A posed tile hands back a PointTable (no pycolmap objects); the bundle's compact model built
    from it is the one :func:`compact_model` builds from the whole model: same images, keypoints,
    point ids, positions and tracks."""
    from mapping.build import compact_model
    from mapping.feature_store import FeatureStore
    from mapping.point_table import PointTable, compact_from_table
    records, feats = loop[2], loop[3]
    whole = posed[0]
    table = PointTable.of_model(whole, {r.name: k for k, r in enumerate(records)})
    assert table.n_points == whole.num_points3D() and len(table.obs_point) == sum(
        p.track.length() for p in whole.points3D.values())
    a = compact_model(whole, records, FeatureStore.in_memory(feats))
    b = compact_from_table(table, records, lambda i: feats[i].keypoints)
    assert a[1] == b[1]                                                       # names
    for x, y in zip(a[2], b[2]):
        assert np.array_equal(x, y)                                           # observed keypoints
    for x, y in zip(a[3], b[3]):
        assert np.array_equal(x, y)                                           # point ids per observation
    assert [(i, r.tolist()) for i, r in a[4]] == [(i, r.tolist()) for i, r in b[4]]
    ma, mb = a[0], b[0]
    assert sorted(ma.point3D_ids()) == sorted(mb.point3D_ids())
    for pid in ma.point3D_ids():
        pa, pb = ma.points3D[pid], mb.points3D[pid]
        assert np.array_equal(pa.xyz, pb.xyz) and np.array_equal(pa.color, pb.color)
        assert [(e.image_id, e.point2D_idx) for e in pa.track.elements] == \
            [(e.image_id, e.point2D_idx) for e in pb.track.elements]
    # a saved table reads back the same
    path = tmp_path / "points.npz"
    table.save(path)
    back = PointTable.load(path)
    assert all(np.array_equal(getattr(back, k), getattr(table, k))
               for k in ("xyz", "rgb", "obs_point", "obs_image", "obs_kp"))


def test_posed_merged_points_lie_on_the_true_surfaces(posed, loop):
    scene = loop[0]
    whole, merged = posed[0], posed[1]
    d_whole = scene.distance_to_surfaces(np.array([p.xyz for p in whole.points3D.values()]))
    d_merged = scene.distance_to_surfaces(np.array([p.xyz for p in merged.points3D.values()]))
    print(f"\nsurface distance median whole {np.median(d_whole) * 1e3:.2f} mm / merged "
          f"{np.median(d_merged) * 1e3:.2f} mm; within 1 cm {np.mean(d_whole <= 0.01):.1%} / "
          f"{np.mean(d_merged <= 0.01):.1%}")
    assert np.median(d_merged) <= 1.1 * np.median(d_whole) + 1e-4
    assert np.mean(d_merged <= 0.01) >= np.mean(d_whole <= 0.01) - 0.01
    assert np.mean(d_merged <= 0.05) >= np.mean(d_whole <= 0.05) - 0.002


# ---- unposed: clusters reconstructed, aligned, merged, adjusted ----------------------------------

@pytest.fixture(scope="module")
def unposed(loop, tmp_path_factory):
    _, _, records, feats = loop
    unposed = [replace(r, cam_from_world=None) for r in records]
    verified = match(unposed, feats, loop_pairs(N_FRAMES, 5), posed=False)
    cfg = replace(ReconstructionConfig(), sfm_method="incremental")
    t = time.perf_counter()
    whole, _ = structure_from_motion(unposed, feats, verified, tmp_path_factory.mktemp("sfm"), cfg)
    t_whole = time.perf_counter() - t
    pcfg = PartitionConfig(max_cluster_images=10, overlap_images=3)
    t = time.perf_counter()
    merged, stats = partitioned_sfm(unposed, feats, verified, tmp_path_factory.mktemp("parts"), cfg, pcfg)
    t_merged = time.perf_counter() - t
    return unposed, verified, whole, merged, stats, (t_whole, t_merged)


def test_unposed_loop_merges_as_accurately_as_one_sfm(unposed, loop):
    records = loop[2]
    _, _, whole, merged, stats, (t_whole, t_merged) = unposed
    e_whole, e_merged = centre_errors(whole, records), centre_errors(merged, records)
    print(f"\nunposed: {stats['n_parts']} clusters {stats['part_sizes']}, centre error median / max: one SfM "
          f"{np.median(e_whole) * 1e3:.2f} / {e_whole.max() * 1e3:.2f} mm in {t_whole:.1f} s, partitioned "
          f"{np.median(e_merged) * 1e3:.2f} / {e_merged.max() * 1e3:.2f} mm in {t_merged:.1f} s {stats['timings']}")
    assert stats["n_parts"] >= 4
    assert merged.num_reg_images() == N_FRAMES and stats["n_images_unregistered"] == 0
    assert all(a["n_shared_images"] >= 3 for a in stats["alignments"] if a["target"] is not None)
    assert shared_observations(merged) == 0
    # a 2.7 x 2.25 m loop seen at 1-3 m: 1 cm is the bar, the one-SfM error the real one
    assert np.median(e_merged) <= 0.01
    assert np.median(e_merged) <= 1.2 * np.median(e_whole)
    assert e_merged.max() <= 1.5 * e_whole.max()


def test_a_cluster_that_does_not_align_is_refused(unposed, loop, tmp_path):
    records, verified = unposed[0], unposed[1]
    feats = loop[3]
    clusters = [np.arange(0, 14), np.arange(10, 24)]
    models = reconstruct_clusters(records, feats, verified, clusters, tmp_path, ReconstructionConfig(), workers=2)
    pcfg = PartitionConfig()
    good = align_pair(models[1], models[0], pcfg)
    assert good.n_shared_images == 4 and good.inlier_ratio > 0.9
    with pytest.raises(VlocError, match=r"clusters \[1\] share at most 4 registered images .*\(needs 5\)"):
        align_models([pycolmap.Reconstruction(m) for m in models], replace(pcfg, min_shared_images=5))
    # the shared images of cluster 1 turned by 5 degrees about their centres: a wrong model
    bad = pycolmap.Reconstruction(models[1])
    turn = Rotation.from_rotvec(np.radians([0.0, 5.0, 0.0])).as_matrix()
    for name in (r.name for r in records[10:14]):
        im = bad.find_image_with_name(name)
        T = Rigid3.from_pycolmap(im.cam_from_world())
        R = turn @ T.rotation
        bad.frame(im.frame_id).rig_from_world = Rigid3(R, -R @ T.centre).to_pycolmap()
    with pytest.raises(VlocError, match="does not align .* rotation residual"):
        align_pair(bad, models[0], pcfg, label="cluster 1")


def conflicting_tracks(rec: pycolmap.Reconstruction) -> int:
    """How many 3D points observe one image twice."""
    from mapping.track_conflicts import is_conflicting
    return sum(is_conflicting(p) for p in rec.points3D.values())


def test_posed_tiles_can_split_conflicting_tracks(posed, loop, tmp_path):
    """With ``split_conflicting_tracks`` no merged point observes an image twice, and the points
    stay as many and as accurate (within 5 %) as without."""
    scene, root, records, feats = loop
    whole, merged, stats, tiles, _ = posed
    pairs = pairs_from_poses([r.camera for r in records], [r.cam_from_world for r in records], PosePairConfig())
    verified = match(records, feats, pairs, posed=True)
    cfg = replace(ReconstructionConfig(), split_conflicting_tracks=True)
    split, _ = partitioned_triangulation(records, feats, verified, tmp_path, cfg, PartitionConfig(), tiles=tiles)
    print(f"\nconflicting tracks: {conflicting_tracks(merged)} as triangulated, {conflicting_tracks(split)} split")
    assert conflicting_tracks(split) == 0
    assert shared_observations(split) == 0
    assert abs(split.num_points3D() - merged.num_points3D()) <= 0.05 * merged.num_points3D()
