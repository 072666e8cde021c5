"""Fleet simulator: odometry model (pure), a small fleet against a live server on a generated
room (exact truth), the CLI's user errors, and a real-data run on the shared redkitchen."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_dataset
from typer.testing import CliRunner

from bench.fleet import FleetConfig, OdomNoise, Shot, robot_slices, run_fleet, simulate_odometry, summarize_robot
from core.geometry import Rigid3, pose_error


def _loop(n: int) -> list[Rigid3]:
    """world_from_base along a circle of radius 2 m, facing along the path."""
    out = []
    for k in range(n):
        a = 2 * np.pi * k / n
        c, s = np.cos(a), np.sin(a)
        out.append(Rigid3(np.array([[-s, -c, 0], [c, -s, 0], [0, 0, 1.0]]), [2 * c, 2 * s, 0.0]))
    return out


def test_odometry_without_noise_is_the_true_motion():
    truth = _loop(20)
    odom = simulate_odometry(truth, OdomNoise(0, 0, 0, 0), np.random.default_rng(0))
    map_from_odom = truth[0]
    for T, o in zip(truth, odom):
        t, r = pose_error((map_from_odom * o).inverse(), T.inverse())
        assert t < 1e-9 and r < 1e-6


def test_noisy_odometry_drifts_and_grows_with_distance():
    truth = _loop(40)
    odom = simulate_odometry(truth, OdomNoise(0.05, 0.05, 0.002, 0.2), np.random.default_rng(1))
    drift = [pose_error((truth[0] * o).inverse(), T.inverse())[0] for T, o in zip(truth, odom)]
    assert drift[0] == 0.0
    assert 0.01 < drift[-1] < 2.0, drift[-1]   # ~12.5 m driven, a few % drift
    assert np.mean(drift[20:]) > np.mean(drift[1:10])


def test_slices_and_summary():
    assert robot_slices(10, 3) == [range(0, 3), range(3, 6), range(6, 9)]
    assert robot_slices(2, 3) == [range(0, 1), range(1, 2), range(0, 1)]
    shots = [Shot(0, 0, "a", "ok", 100.0, True, 0.01, 0.2, None, False),
             Shot(0, 1, "b", "ok", 300.0, True, 0.03, 0.4, 0.1, True),
             Shot(0, 2, "c", "dropped:skipped"), Shot(0, 3, "d", "ok", 200.0, False),
             Shot(0, 4, "e", "http_500"), Shot(0, 5, "f", "dropped:busy")]  # busy: sent, shed by the server
    row = summarize_robot(0, shots)
    assert row["ticks"] == 6 and row["sent"] == 5 and row["answered"] == 3 and row["accepted"] == 2
    assert row["median_t_cm"] == pytest.approx(2.0) and row["median_r_deg"] == pytest.approx(0.3)
    assert row["pct_5cm_5deg"] == pytest.approx(200 / 3)
    assert row["dropped"] == 2 and row["dropped_by_reason"] == {"skipped": 1, "busy": 1} and row["errors"] == 1
    assert row["p50_ms"] == pytest.approx(200.0) and row["median_prior_err_cm"] == pytest.approx(10.0)


@pytest.fixture(scope="module")
def served_room(tmp_path_factory):
    """A generated room's map served by a LiveServer; robot frames = renders of another pass (JPEG)."""
    from api.app import create_app
    from api.client import VlocClient
    from api.registry import Registry
    from api.settings import Settings
    from api.testing import LiveServer, encode_image, shared_test_map
    from bench.serve_config import QueryFrame
    from datasets.synthetic import DEFAULT_CAMERA

    tm = shared_test_map()
    poses = tm.scene.trajectory(24, pass_id=1)
    frames = [QueryFrame(f"p1-{k:02d}", encode_image(tm.scene.render(T, DEFAULT_CAMERA)[0], "JPEG"),
                         DEFAULT_CAMERA, T) for k, T in enumerate(poses)]
    data = tmp_path_factory.mktemp("fleet-server")
    reg = Registry(data)
    admin_key = reg.create_key("admin", name="t-admin")[1]
    robot_key = reg.create_key("robot", ["room"], name="t-robots")[1]
    # frames may wait long on 2 shared cores: no stale drops here (drops are counted, not tested)
    settings = Settings(data_dir=data, workers=2, log_level="warning", max_frame_age_s=30,
                        max_queue_wait_s=0, import_roots=[tm.bundle.parent])
    with LiveServer(create_app(settings)) as srv:
        with VlocClient(srv.url, admin_key, timeout=300) as admin:
            admin.register_map_path("room", tm.bundle)
        with VlocClient(srv.url, robot_key, timeout=300) as robot:
            robot.localize("room", frames[0].data, DEFAULT_CAMERA)  # warm-up
        yield srv.url, robot_key, frames


@pytest.mark.parametrize("mode", ["stream", "rest"])
def test_small_fleet_localizes_through_the_service(served_room, mode):
    url, key, frames = served_room
    cfg = FleetConfig(robots=2, mode=mode, hz=1.0, seconds=4.0, seed=3)
    res = run_fleet(url, key, "room", frames, cfg)
    assert len(res["per_robot"]) == 2
    for row in res["per_robot"]:
        assert row["ticks"] == 4 and row["errors"] == 0, row
        assert row["answered"] + row["dropped"] == 4, row
        assert row["answered"] >= 2 and row["accepted"] >= row["answered"] - 1, row
        assert row["median_t_cm"] < 2.0 and row["median_r_deg"] < 0.5, row
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"], row
        if mode == "rest":  # the robot waits for each pose: every frame after the first fix has the odometry prior
            assert row["prior_used"] >= row["accepted"] - 1, row
            assert row["median_prior_err_cm"] is not None, row
        if row["median_prior_err_cm"] is not None:  # stream: only frames sent after a fix came back have one
            assert row["median_prior_err_cm"] < 50, row
    json.dumps(res, allow_nan=False)


def test_fleet_against_wrong_map_reports_errors_not_crash(served_room):
    url, key, frames = served_room
    res = run_fleet(url, key, "no-such-map", frames, FleetConfig(robots=1, mode="rest", hz=2.0, seconds=1.0))
    row = res["per_robot"][0]
    assert row["answered"] == 0 and row["errors"] == row["ticks"] == 2, row


def test_cli_missing_root_is_exit_2(tmp_path):
    from vloc.cli import app
    r = CliRunner().invoke(app, ["robots", "fleet", "--robots", "2", "--root", str(tmp_path / "absent")])
    assert r.exit_code == 2, r.output
    assert "not found" in r.output


@pytest.mark.realdata
@pytest.mark.slow
def test_fleet_on_redkitchen(tmp_path):
    from bench.fleet import run_local_fleet
    root = shared_dataset("7scenes-redkitchen")
    res = run_local_fleet(FleetConfig(robots=3, mode="stream", hz=1.0, seconds=8.0), root,
                          workdir=tmp_path / "cache")
    for row in res["per_robot"]:
        assert row["errors"] == 0 and row["answered"] >= 4, row
        assert row["accepted"] >= 0.7 * row["answered"], row
        assert row["median_t_cm"] < 10 and row["median_r_deg"] < 3, row
