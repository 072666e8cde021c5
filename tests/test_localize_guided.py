"""Guided matching around a first pose (localize.guided) on generated correspondences with known truth."""
from __future__ import annotations

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from localize.guided import guided_matches

CAM = Camera.pinhole(500.0, 640, 480)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scene(seed=0, n=200):
    rng = np.random.default_rng(seed)
    pose = Rigid3(np.eye(3), np.zeros(3))
    X = np.c_[rng.uniform(-1.5, 1.5, n), rng.uniform(-1.0, 1.0, n), rng.uniform(3, 6, n)]  # all in view
    map_desc = _unit(rng.normal(size=(n, 128)))
    seen = rng.random(n) < 0.7                                  # the query sees 70 % of the points
    kp = CAM.project(X[seen]) + rng.normal(0, 0.7, (seen.sum(), 2))
    desc = _unit(map_desc[seen] + rng.normal(0, 0.01, (seen.sum(), 128)))
    # distractors: keypoints 2-3 px from some projections, unrelated descriptors
    d_idx = rng.choice(np.nonzero(seen)[0], 40, replace=False)
    off = rng.normal(size=(40, 2))
    kp_d = CAM.project(X[d_idx]) + 2.5 * off / np.linalg.norm(off, axis=1, keepdims=True)
    keypoints = np.r_[kp, kp_d]
    query_desc = np.r_[desc, _unit(rng.normal(size=(40, 128)))]
    truth_point = np.r_[np.nonzero(seen)[0], np.full(40, -1)]
    return pose, X, map_desc, keypoints, query_desc, truth_point


def test_guided_matches_find_the_true_pairs_and_ignore_nearby_distractors():
    pose, X, map_desc, kp, qd, truth = _scene()
    q, p = guided_matches(pose, CAM, kp, qd, X, map_desc, radius_px=6.0)
    assert len(q) >= 0.95 * (truth >= 0).sum()
    assert np.all(truth[q] == p)                                # every match is a true one
    assert len(np.unique(q)) == len(q) and len(np.unique(p)) == len(p)


def test_guided_matches_need_the_pose_near_the_truth():
    pose, X, map_desc, kp, qd, truth = _scene(1)
    shifted = Rigid3(pose.rotation, pose.translation + [0.2, 0.0, 0.0])   # ~20-30 px off
    q, _ = guided_matches(shifted, CAM, kp, qd, X, map_desc, radius_px=6.0)
    assert len(q) < 0.1 * (truth >= 0).sum()
    q, p = guided_matches(shifted, CAM, kp, qd, X, map_desc, radius_px=60.0)  # a wide window finds them
    assert np.mean(truth[q] == p) > 0.95 and len(q) > 0.5 * (truth >= 0).sum()


def test_guided_matches_handle_empty_and_out_of_view_inputs():
    pose, X, map_desc, kp, qd, _ = _scene(2)
    q, p = guided_matches(pose, CAM, kp[:0], qd[:0], X, map_desc, 6.0)
    assert len(q) == len(p) == 0
    behind = Rigid3(np.diag([1.0, -1.0, -1.0]), np.zeros(3))    # looking away from every point
    q, p = guided_matches(behind, CAM, kp, qd, X, map_desc, 6.0)
    assert len(q) == len(p) == 0
