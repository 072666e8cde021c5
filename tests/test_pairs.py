"""mapping.pairs: pairs of posed images from frustum overlap, with their limits."""
from __future__ import annotations

import numpy as np

from core.geometry import Rigid3
from datasets.synthetic import DEFAULT_CAMERA, generate_scene
from mapping.pairs import PosePairConfig, frustum_overlap, pairs_from_poses, spread_out


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


def _second_pass(poses, lift_m: float, yaw_deg: float):
    """The same path again, lift_m higher and turned yaw_deg about each camera's vertical axis."""
    a = np.radians(yaw_deg)
    turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    out = []
    for T in poses:
        R = turn @ T.rotation
        out.append(Rigid3(R, -R @ (T.centre + np.array([0.0, 0.0, lift_m]))))
    return out


def test_spread_partners_link_two_passes_that_overlap_ranking_keeps_apart():
    """Two passes over one stretch (40 frames 1.2 cm apart each, the second 25 cm higher and
    turned 12 deg): a frame's best overlaps are its own pass's neighbours, so ranking by overlap
    alone leaves (almost) two sub-maps; the spread partners, taken from the other sub-maps
    first, link them at nearly every frame, and all still overlap."""
    scene = generate_scene(seed=3)
    first = scene.trajectory(600, pass_id=0)[:40]
    poses = first + _second_pass(first, 0.25, 12.0)
    cams = [DEFAULT_CAMERA] * len(poses)
    pass_of = np.repeat([0, 1], 40)

    def cross(pairs):
        return int(sum(pass_of[i] != pass_of[j] for i, j in pairs))

    by_overlap = pairs_from_poses(cams, poses, PosePairConfig(pairs_per_image=8, spread_pairs_per_image=0))
    spread = pairs_from_poses(cams, poses, PosePairConfig(pairs_per_image=8, spread_pairs_per_image=4,
                                                          spread_min_overlap=0.5))
    assert cross(by_overlap) <= 0.03 * len(by_overlap)
    assert cross(spread) >= 0.15 * len(spread)
    linked = np.zeros(len(poses), bool)  # the links are spread over the images, not a few hubs
    for i, j in spread:
        if pass_of[i] != pass_of[j]:
            linked[i] = linked[j] = True
    assert linked.mean() >= 0.9
    partners = np.zeros(len(poses), int)
    for i, j in spread:
        partners[i] += 1
        partners[j] += 1
    assert partners.min() >= 8  # nobody loses partners
    depths = PosePairConfig().sample_depths
    for i, j in spread:  # a spread partner overlaps the frame that chose it (>= 0.5), so >= 0.25 one way
        assert max(frustum_overlap(cams[i], poses[i], [cams[j]], [poses[j]], depths)[0],
                   frustum_overlap(cams[j], poses[j], [cams[i]], [poses[i]], depths)[0]) >= 0.25


def test_spread_out_is_farthest_point_sampling():
    centres = np.array([[0, 0, 0], [0.1, 0, 0], [1, 0, 0], [2, 0, 0], [0.5, 0, 0]], float)
    # from camera 0 with camera 1 picked: 3 is farthest (1.9 from 1), then 2 (1.0 from 0 and 3;
    # 4 is 0.4 from 1)
    assert spread_out(centres, 0, [1], [2, 3, 4], 2) == [3, 2]
    assert spread_out(centres, 0, [], [2, 3, 4], 5) == [3, 2, 4]
    assert spread_out(centres, 0, [], [], 3) == [] and spread_out(centres, 0, [], [2], 0) == []


def test_pair_components():
    from mapping.pairs import pair_components
    c = pair_components(6, [(0, 1), (1, 2), (4, 5)])
    assert c[0] == c[1] == c[2] and c[4] == c[5] and len({c[0], c[3], c[4]}) == 3
    assert list(pair_components(3, [])) == [0, 1, 2]
