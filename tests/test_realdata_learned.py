"""Learned feature sets on the shared redkitchen frames (skip with a reason when ../shared/datasets is
absent): ALIKED (LightGlue and nearest neighbours) and DISK maps of one pass, queried with frames
between the map's: every answer accepted within 5 cm / 5 deg."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_dataset

from bench.sevenscenes import load_ground_truth, read_rgb
from core.geometry import pose_error
from localize import Localizer, LocalizerConfig
from mapping.build import build_map
from mapping.cli import build_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.mark.parametrize("features,keypoints,matchers", [("aliked", 1024, ("lightglue", "nn")),
                                                          ("disk", 512, ("nn",))])
def test_redkitchen_learned_queries_within_5cm_5deg(tmp_path: Path, features, keypoints, matchers):
    from datasets.sevenscenes import frame_number
    root = shared_dataset("7scenes-redkitchen")
    gt = {frame_number(r.name): r for r in load_ground_truth(root, "sfm")}
    map_frames = [n for n in range(0, 100, 5) if n in gt]
    queries = [n for n in range(12, 100, 20) if n in gt]
    m = build_map(root, [gt[n] for n in map_frames], tmp_path / "map", build_config(features, keypoints, "cpu"))
    assert m["statistics"]["n_images"] == len(map_frames) and m["statistics"]["n_points3D"] > 1000
    for matcher in matchers:
        loc = Localizer(tmp_path / "map", LocalizerConfig(learned_matcher=matcher, device="cpu"))
        for n in queries:
            res = loc.localize(read_rgb(root / gt[n].name), gt[n].camera)
            assert res.accepted, f"{features}/{matcher} frame {n}: {res.reason}"
            t, r = pose_error(res.cam_from_world, gt[n].cam_from_world)
            assert t <= 0.05 and r <= 5, f"{features}/{matcher} frame {n}: {t * 100:.1f} cm / {r:.2f} deg"
