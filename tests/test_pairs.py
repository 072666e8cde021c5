"""mapping.pairs: pairs of posed images from frustum overlap, with their limits."""
from __future__ import annotations

import numpy as np

from datasets.synthetic import DEFAULT_CAMERA, generate_scene
from mapping.pairs import PosePairConfig, pairs_from_poses


def _walk():
    scene = generate_scene(seed=3)
    poses = scene.trajectory(24, pass_id=0)
    return [DEFAULT_CAMERA] * len(poses), poses


def test_pairs_overlap_and_respect_the_limits():
    cams, poses = _walk()
    centres = np.array([T.centre for T in poses])
    pairs = pairs_from_poses(cams, poses, PosePairConfig(pairs_per_image=4))
    assert pairs and all(i < j for i, j in pairs) and len(set(pairs)) == len(pairs)
    per_image = np.bincount(np.array(pairs).ravel(), minlength=len(poses))
    assert per_image.min() >= 1  # every image is matched to something
    base = np.array([np.linalg.norm(centres[i] - centres[j]) for i, j in pairs])
    floor = float(np.percentile(base, 50))
    wide = pairs_from_poses(cams, poses, PosePairConfig(pairs_per_image=4, min_baseline_m=floor))
    assert wide and all(np.linalg.norm(centres[i] - centres[j]) >= floor for i, j in wide)
    assert set(wide) != set(pairs)
    none = pairs_from_poses(cams, poses, PosePairConfig(max_distance_m=1e-6))
    assert none == []
