"""`vloc bench scale` helpers: building layout, pose offsetting, stats; a 2-room map end to end."""
from __future__ import annotations

import numpy as np
import pytest

from bench.scale import (
    ScaleConfig,
    accuracy_summary,
    bench_camera,
    building_records,
    choose_queries,
    ensure_queries,
    markdown_table,
    offset_records,
    percentile_stats,
    room_of,
    room_offsets,
    rooms_for_size,
    stage_medians,
    to_world,
)
from core.geometry import Rigid3, pose_error
from core.types import ImageRecord


def test_layout_and_queries():
    assert rooms_for_size(100, 25) == 4 and rooms_for_size(1000, 25) == 40 and rooms_for_size(101, 25) == 5
    off = room_offsets(5, 12.0)
    assert off.shape == (5, 3) and np.allclose(off[:, 2], 0)
    d = np.linalg.norm(off[:, None] - off[None], axis=2)
    assert d[~np.eye(5, dtype=bool)].min() == pytest.approx(12.0)
    q = choose_queries(4, 25, 30, seed=0)
    assert len(q) == len(set(q)) == 30 and q == choose_queries(4, 25, 30, seed=0)
    assert all(0 <= r < 4 and 0 <= f < 25 for r, f in q)
    assert len(choose_queries(1, 3, 10)) == 3
    assert room_of("room-0012/seq-01/frame-000000.color.png") == 12 and room_of("seq-01/x.png") is None


def test_offset_composition():
    rng = np.random.default_rng(1)
    from scipy.spatial.transform import Rotation
    cam_from_room = Rigid3(Rotation.from_rotvec(rng.normal(size=3)).as_matrix(), rng.normal(size=3))
    offset = np.array([24.0, 12.0, 0.0])
    cam_from_world = to_world(cam_from_room, offset)
    x_room = rng.normal(size=(5, 3))
    assert np.allclose(cam_from_world.transform(x_room + offset), cam_from_room.transform(x_room))
    assert np.allclose(cam_from_world.centre, cam_from_room.centre + offset)
    rec = offset_records([ImageRecord("seq-01/a.png", None, cam_from_room)], "room-0003", offset)[0]
    assert rec.name == "room-0003/seq-01/a.png" and np.allclose(rec.cam_from_world.translation,
                                                                cam_from_world.translation)


def test_stats():
    s = percentile_stats([1, 2, 3, 4, 100])
    assert s["p50"] == 3 and s["n"] == 5 and s["max"] == 100
    assert percentile_stats([])["p50"] is None
    assert stage_medians([{"a": 1, "b": 5}, {"a": 3}]) == {"a": 2.0, "b": 5.0}
    a = accuracy_summary([0.01, 0.5, np.inf, 0.02], [0.1, 0.2, np.inf, 6.0], [True, True, False, True],
                         [True, True, False, True])
    assert a["pct_accepted"] == 75 and a["wrong_accepted"] == 2 and a["pct_5cm_5deg"] == 25
    assert a["median_t_cm_accepted"] == pytest.approx(2.0) and a["pct_top1_right_room"] == 75


def test_two_room_building_end_to_end(tmp_path):
    """Two rooms 12 m apart, 16 images each at 320x240: the map is in world coordinates and a
    pass-1 frame of room 1 localizes at its offset world pose."""
    from bench.scale import _measure_worker
    from localize import Localizer
    from mapping.build import BuildConfig, build_map
    cfg = ScaleConfig(width=320, height=240, frames_per_room=16, n_boxes=2)
    rooms = tmp_path / "rooms"
    records = building_records(rooms, 32, cfg)
    assert len(records) == 32 and records[16].name.startswith("room-0001/")
    assert np.linalg.norm(records[16].cam_from_world.centre[:2] - [12.0, 0.0]) < 2.5
    build_map(rooms, records, tmp_path / "map", BuildConfig())
    again = building_records(rooms, 32, cfg)[20]  # from the cache: same name, pose, camera
    assert again.name == records[20].name and again.camera == records[20].camera
    assert np.allclose(again.cam_from_world.matrix4(), records[20].cam_from_world.matrix4())
    offsets = room_offsets(2, cfg.spacing_m)
    (path, gt), = ensure_queries(rooms, [(1, 3)], offsets, cfg)
    assert np.linalg.norm(gt.centre[:2] - [12.0, 0.0]) < 2.5
    import cv2
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    res = Localizer(tmp_path / "map").localize(rgb, bench_camera(320, 240))
    assert res.accepted, res.reason
    t_err, r_err = pose_error(res.cam_from_world, gt)
    assert t_err < 0.02 and r_err < 0.5
    assert room_of(res.retrieved[0]) == 1
    m = _measure_worker(str(tmp_path / "map"), [(str(path), gt, 1)], bench_camera(320, 240))
    assert m["accuracy"]["pct_accepted"] == 100 and m["rss_load_increase_mb"] >= 0
    entry = {"n_images": 16, "n_rooms": 2, "map": {"n_images": 16, "n_points3D": 1, "bundle_bytes": 1,
                                                    "build_seconds": 1.0}, **m}
    assert "| 16 (2) |" in markdown_table({"sizes": {"16": entry}, "data": "x",
                                           "machine": {"processor": "p", "cpu_count": 2, "platform": "l",
                                                       "cuda": False}})
