"""Conflicting tracks (one image observed twice) split into consistent, re-triangulated tracks."""
import numpy as np
import pycolmap

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord
from mapping.reconstruct import posed_reconstruction
from mapping.track_conflicts import _sub_tracks, split_conflicting_tracks
from vision.features import Features


def _posed(X: np.ndarray, xs: tuple[float, ...]) -> pycolmap.Reconstruction:
    """Images at x = ``xs`` (identity rotation) whose keypoint k is the exact projection of X[k];
    registered at their poses, no 3D points yet."""
    cam = Camera("PINHOLE", 200, 200, (200.0, 200.0, 100.0, 100.0))
    poses = [Rigid3(np.eye(3), np.array([-x, 0.0, 0.0])) for x in xs]
    records = [ImageRecord(f"im{i}.png", cam, T) for i, T in enumerate(poses)]
    n = len(X)
    feats = [Features(cam.project(T.transform(X)).astype(np.float32), np.ones(n, np.float32),
                      np.zeros(n, np.float32), np.zeros((n, 128), np.uint8)) for T in poses]
    return posed_reconstruction(records, feats)


def test_sub_tracks_take_each_image_once_best_first():
    assert _sub_tracks([1, 2, 2, 3, 1], np.array([0.1, 0.2, 0.5, 0.3, 3.0])) == [[0, 1, 3], [2, 4]]
    assert _sub_tracks([1, 2, 3], np.array([1.0, 0.0, 2.0])) == [[1, 0, 2]]


def test_a_track_joining_two_scene_points_splits_into_both():
    X = np.array([[0.6, 0.1, 4.0], [0.64, 0.12, 4.0], [0.1, -0.2, 5.0]])   # X0, X1 ~2 px apart
    rec = _posed(X, (0.0, 0.4, 0.8, 1.2))

    def add(xyz, obs):
        t = pycolmap.Track()
        t.add_elements([pycolmap.TrackElement(i + 1, k) for i, k in obs])
        return rec.add_point3D(xyz, t)

    # one track over X0 in images 0-3 and X1 in images 1-3 (a chain of pair matches joined them);
    # a clean X2 track stays as it is
    add((X[0] + X[1]) / 2, [(0, 0), (1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1)])
    clean = add(X[2], [(0, 2), (1, 2), (2, 2), (3, 2)])
    stats = split_conflicting_tracks(rec, max_error_px=2.0, min_tri_angle_deg=1.0)
    assert stats == {"conflicting": 1, "kept": 2, "dropped": 0}
    assert np.allclose(rec.points3D[clean].xyz, X[2])
    tracks = {tuple(sorted((e.image_id - 1, e.point2D_idx) for e in p.track.elements)): p.xyz
              for pid, p in rec.points3D.items() if pid != clean}
    assert len(tracks) == 2
    for obs, xyz in tracks.items():
        assert len({i for i, _ in obs}) == len(obs)                           # no image twice
        truth = X[0] if obs[0][1] == 0 else X[1]
        assert {k for _, k in obs} == {obs[0][1]}                             # one scene point each
        assert np.linalg.norm(xyz - truth) < 1e-6


def test_a_sub_track_of_one_image_is_dropped():
    X = np.array([[0.3, 0.1, 4.0], [-0.5, 0.4, 3.0]])
    rec = _posed(X, (0.0, 0.4))
    t = pycolmap.Track()
    # image 0 twice (both points), image 1 once (X0): the second sub-track has one image -> dropped
    t.add_elements([pycolmap.TrackElement(1, 0), pycolmap.TrackElement(2, 0), pycolmap.TrackElement(1, 1)])
    rec.add_point3D(X[0], t)
    stats = split_conflicting_tracks(rec, max_error_px=2.0, min_tri_angle_deg=1.0)
    assert stats == {"conflicting": 1, "kept": 1, "dropped": 1}
    (p,) = rec.points3D.values()
    assert sorted((e.image_id, e.point2D_idx) for e in p.track.elements) == [(1, 0), (2, 0)]
    assert np.linalg.norm(p.xyz - X[0]) < 1e-6
