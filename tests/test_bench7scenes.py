"""`vloc bench 7scenes` (localize/bench7scenes.py): splits, metrics, degradations, and an
end-to-end run on a small generated 7-Scenes-layout folder (no shared data needed)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.sevenscenes import (
    DEGRADATIONS,
    THRESHOLDS,
    Bench7ScenesConfig,
    accuracy_metrics,
    cdf_path,
    darken,
    dense_split,
    half_resolution,
    jpeg,
    latency_metrics,
    markdown_table,
    motion_blur,
    query_errors,
    revisit_split,
    run_7scenes_bench,
    sensor_noise,
)
from core.camera import Camera
from core.geometry import Rigid3

CAM = Camera("PINHOLE", 640, 480, (525.0, 525.0, 320.0, 240.0))
M_KEYS = {"n_queries", "rejected", "median_t_cm", "median_r_deg", "pct_2cm_1deg", "pct_5cm_5deg",
          "pct_10cm_1deg", "pct_15cm_5deg", "pct_25cm_2deg", "pct_1m_5deg", "latency_ms",
          "accepted_beyond_3sigma_pct"}


# splits ------------------------------------------------------------------------------------------
def test_splits_on_300_frames() -> None:
    frames = range(300)
    rv = revisit_split(frames)
    assert len(rv.map) == 40 and len(rv.queries) == 20
    assert all(n % 5 == 0 and (n // 100) in (0, 2) for n in rv.map)
    assert rv.queries == list(range(100, 200, 5))
    dn = dense_split(frames)
    assert len(dn.map) == 20 and len(dn.queries) == 40
    assert dn.map == list(range(0, 300, 15))
    assert all(n % 15 in (5, 10) for n in dn.queries)
    for s in (rv, dn):
        assert not set(s.map) & set(s.queries)


def test_splits_use_only_given_frames_and_parameters() -> None:
    rv = revisit_split([0, 5, 7, 100, 105, 200, 999], block=100, stride=5)
    assert rv.map == [0, 5, 200] and rv.queries == [100, 105]
    rv = revisit_split(range(36), block=12, stride=3)
    assert rv.map == [0, 3, 6, 9, 24, 27, 30, 33] and rv.queries == [12, 15, 18, 21]
    dn = dense_split(range(12), step=6, query_offsets=(2, 4))
    assert dn.map == [0, 6] and dn.queries == [2, 4, 8, 10]
    with pytest.raises(ValueError):
        dense_split(range(12), step=6, query_offsets=(0, 3))


# metrics -----------------------------------------------------------------------------------------
def test_accuracy_metrics_known_values() -> None:
    # t (m), r (deg) for 5 queries; the last is rejected (inf)
    t = [0.01, 0.04, 0.12, 0.5, math.inf]
    r = [0.5, 3.0, 0.9, 1.5, math.inf]
    m = accuracy_metrics(t, r)
    assert m["n_queries"] == 5 and m["rejected"] == 1
    assert m["median_t_cm"] == pytest.approx(12.0) and m["median_r_deg"] == pytest.approx(1.5)
    assert m["pct_2cm_1deg"] == pytest.approx(20.0)     # q0
    assert m["pct_5cm_5deg"] == pytest.approx(40.0)     # q0, q1
    assert m["pct_10cm_1deg"] == pytest.approx(20.0)    # q1 fails r, q2 fails t
    assert m["pct_15cm_5deg"] == pytest.approx(60.0)    # q0..q2
    assert m["pct_25cm_2deg"] == pytest.approx(40.0)    # q0, q2 (q1 has 3 deg)
    assert m["pct_1m_5deg"] == pytest.approx(80.0)      # all but the rejected one
    assert {k for k, _, _ in THRESHOLDS} <= set(m)


def test_accuracy_metrics_thresholds_are_inclusive_and_need_both() -> None:
    m = accuracy_metrics([0.05, 0.01], [5.0, 6.0])
    assert m["pct_5cm_5deg"] == 50.0


def test_rejected_majority_gives_null_median_and_json_safe() -> None:
    m = accuracy_metrics([0.01, math.inf, math.inf], [0.1, math.inf, math.inf])
    assert m["rejected"] == 2 and m["median_t_cm"] is None and m["median_r_deg"] is None
    assert m["pct_1m_5deg"] == pytest.approx(100 / 3)
    json.dumps(m, allow_nan=False)
    # exactly half rejected: the median is the mean of a finite and an infinite value -> inf -> None
    assert accuracy_metrics([0.01, math.inf], [0.1, math.inf])["median_t_cm"] is None
    empty = accuracy_metrics([], [])
    assert empty["n_queries"] == 0 and empty["median_t_cm"] is None and empty["pct_5cm_5deg"] is None


def test_query_errors_rejected_is_inf_even_with_a_pose() -> None:
    gt = Rigid3.from_quat_wxyz([1, 0, 0, 0], [0, 0, 1.0])
    shifted = Rigid3(gt.rotation, gt.translation + [0.03, 0, 0])
    rot = Rigid3.from_quat_wxyz([np.cos(np.radians(1)), 0, np.sin(np.radians(1)), 0], [0, 0, 1.0])
    t, r = query_errors([shifted, shifted, None, rot], [True, False, True, True], [gt] * 4)
    assert t[0] == pytest.approx(0.03) and r[0] == pytest.approx(0.0, abs=1e-6)
    assert math.isinf(t[1]) and math.isinf(r[1]) and math.isinf(t[2])
    assert r[3] == pytest.approx(2.0, abs=1e-6)
    m = accuracy_metrics(t, r, rejected=2)
    assert m["rejected"] == 2 and m["pct_5cm_5deg"] == 50.0


def test_latency_metrics_median_over_repeats() -> None:
    runs = [list(range(1, 11)), [x * 3 for x in range(1, 11)], [x * 2 for x in range(1, 11)]]
    stages = [[{"features": 1.0, "total": 2.0}, {"features": 3.0, "total": 4.0, "pose": 7.0}]] * 3
    lat = latency_metrics(runs, stages)
    assert lat["p50"] == pytest.approx(np.percentile(runs[2], 50))   # the middle run
    assert lat["p90"] == pytest.approx(np.percentile(runs[2], 90))
    assert lat["stages"] == {"features": 2.0, "total": 3.0, "pose": 7.0}
    assert latency_metrics([])["p50"] is None


# degradations ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = cv2_smooth(rng.integers(0, 256, (480, 640, 3)).astype(np.uint8))
    return img


def cv2_smooth(img: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def test_degradations_shape_dtype_determinism(image: np.ndarray) -> None:
    assert set(DEGRADATIONS) == {"dark", "motion_blur", "noise", "jpeg15", "half_res"}
    for name, f in DEGRADATIONS.items():
        a, cam_a = f(image, CAM, [0, 7])
        b, cam_b = f(image, CAM, [0, 7])
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
        assert (a.shape[1], a.shape[0]) == (cam_a.width, cam_a.height), name
        assert np.array_equal(a, b) and cam_a == cam_b, name
        if name != "half_res":
            assert a.shape == image.shape and cam_a == CAM, name
            assert not np.array_equal(a, image), name
        else:
            assert a.shape == (240, 320, 3), name


def test_dark_formula_and_mean(image: np.ndarray) -> None:
    d = darken(image)
    assert d.mean() < 0.35 * image.mean()
    x = np.array([[[0, 128, 255]]], np.uint8)
    assert darken(x).tolist() == [[[0, round(255 * 0.35 * (128 / 255) ** 1.8), round(255 * 0.35)]]]


def test_blur_noise_jpeg_half_res(image: np.ndarray) -> None:
    step = np.zeros((8, 32, 3), np.uint8)
    step[:, 16:] = 255
    b = motion_blur(step)
    assert b[0, 15, 0] == pytest.approx(255 * 4 / 9, abs=1) and b[0, 11, 0] == 0 and b[0, 20, 0] == 255
    assert np.array_equal(motion_blur(step.transpose(1, 0, 2)), step.transpose(1, 0, 2))  # horizontal only
    n1, n2 = sensor_noise(image, 8.0, 1), sensor_noise(image, 8.0, 2)
    assert not np.array_equal(n1, n2)
    diff = n1.astype(np.float64) - image
    mid = (image > 40) & (image < 215)
    assert diff[mid].std() == pytest.approx(8.0, rel=0.05) and abs(diff[mid].mean()) < 0.2
    j = jpeg(image, 15)
    assert j.shape == image.shape and 1.0 < np.abs(j.astype(int) - image).mean() < 40
    h, cam = half_resolution(image, CAM)
    assert h.shape == (240, 320, 3) and cam == Camera("PINHOLE", 320, 240, (262.5, 262.5, 160.0, 120.0))


# end to end --------------------------------------------------------------------------------------
TINY = Bench7ScenesConfig(block=6, revisit_stride=3, dense_step=6, dense_query_offsets=(2, 4))
#: frames 0..35 of a 72-frame loop (5 deg apart): a half loop, rendered only where a split needs them.
TINY_FRAMES = [n for n in range(36) if n % 2 == 0 or n % 3 == 0]


@pytest.fixture(scope="module")
def tiny_7scenes(tmp_path_factory):
    """A 7-Scenes-layout folder (seq-01/frame-N.color.png, pgt_sfm_seq01.txt, pgt_dslam_seq01.txt)
    of a generated room with exact poses; only TINY_FRAMES are rendered (and listed)."""
    import cv2

    from datasets.synthetic import DEFAULT_CAMERA, generate_scene
    root = tmp_path_factory.mktemp("tiny7")
    (root / "seq-01").mkdir()
    scene = generate_scene(0)
    poses = scene.trajectory(72)
    lines = []
    for n in TINY_FRAMES:
        rgb, _ = scene.render(poses[n], DEFAULT_CAMERA)
        cv2.imwrite(str(root / "seq-01" / f"frame-{n:06d}.color.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        vals = [*poses[n].quat_wxyz, *poses[n].translation, DEFAULT_CAMERA.focals[0]]
        lines.append(" ".join([f"seq-01/frame-{n:06d}.color.png"] + [f"{v:.10g}" for v in vals]))
    (root / "pgt_sfm_seq01.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(root / "pgt_sfm_seq01.txt", root / "pgt_dslam_seq01.txt")
    return root


@pytest.mark.slow
def test_end_to_end_on_generated_scene(tiny_7scenes, tmp_path, capsys) -> None:
    out = tmp_path / "res" / "b7.json"
    res = run_7scenes_bench(tiny_7scenes, out, repeats=1, cfg=TINY)
    print(markdown_table(res))
    on_disk = json.loads(out.read_text())
    assert on_disk["revisit"] == json.loads(json.dumps(res["revisit"]))
    assert list(on_disk)[:4] == ["machine", "revisit", "dense", "degraded"]
    for protocol, (n_map, n_q) in {"revisit": (6, 6), "dense": (6, 12)}.items():
        P = on_disk[protocol]
        assert set(P["map"]) >= {"build_s", "bytes_per_image", "n_points", "n_images"}
        assert n_map - 2 <= P["map"]["n_images"] <= n_map, P["map"]  # a map image may stay unregistered
        assert P["map"]["n_points"] > 100 and P["map"]["build_s"] > 0
        assert set(P["gt"]) == {"sfm", "dslam"}
        for M in P["gt"].values():
            assert set(M) == M_KEYS and M["n_queries"] == n_q
            assert set(M["latency_ms"]) >= {"p50", "p90", "stages"} and "total" in M["latency_ms"]["stages"]
    assert set(on_disk["degraded"]) == {"dark", "motion_blur", "noise", "jpeg15", "half_res"}
    for M in on_disk["degraded"].values():
        assert set(M) == M_KEYS and M["n_queries"] == 6
    # exact synthetic poses: the dense sanity protocol must localize most queries to a few cm
    dense = on_disk["dense"]["gt"]["sfm"]
    assert dense["pct_5cm_5deg"] >= 50.0, dense
    assert cdf_path(out).is_file() and cdf_path(out).stat().st_size > 5000
    table = markdown_table(res)
    assert table.count("\n| ") >= 2 + 2 + 5 and "revisit + half_res" in table


def test_cli_reports_missing_pgt_file(tmp_path) -> None:
    from vloc.cli import app
    (tmp_path / "seq-01").mkdir()
    (tmp_path / "pgt_sfm_seq01.txt").write_text("seq-01/frame-000000.color.png 1 0 0 0 0 0 0 525\n")
    r = CliRunner().invoke(app, ["bench", "7scenes", "--root", str(tmp_path), "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2
    assert "error:" in r.output or "error:" in (r.stderr if hasattr(r, "stderr") else "")


def test_cv_folds_of_three_blocks_are_every_proper_subset_including_one_pass_maps():
    from bench.sevenscenes_cv import cv_folds
    folds = cv_folds(range(300), block=100, stride=5)
    assert [(m, q) for m, q, _ in folds] == [([0], [1, 2]), ([1], [0, 2]), ([2], [0, 1]),
                                             ([0, 1], [2]), ([0, 2], [1]), ([1, 2], [0])]
    for m, q, split in folds:
        assert not set(split.map) & set(split.queries)
        assert all(n % 5 == 0 and n // 100 in m for n in split.map)
        assert all(n % 5 == 0 and n // 100 in q for n in split.queries)
    assert cv_folds(range(100)) == []  # one block: nothing to hold out
    assert [(m, q) for m, q, _ in cv_folds(range(200))] == [([0], [1]), ([1], [0])]


def test_cv_folds_of_a_long_sequence_stay_linear_in_its_blocks():
    """A whole 1000-frame sequence: each block alone and each block left out (20 folds), not all
    1022 proper subsets of ten blocks."""
    from bench.sevenscenes_cv import cv_folds
    folds = cv_folds(range(1000), block=100, stride=5)
    assert len(folds) == 20
    one_pass, left_out = folds[:10], folds[10:]
    assert [m for m, _, _ in one_pass] == [[b] for b in range(10)]
    assert sorted(q for _, q, _ in left_out) == [[b] for b in range(10)]
    for m, q, split in folds:
        assert sorted(m + q) == list(range(10))
        assert len(split.map) == 20 * len(m) and len(split.queries) == 20 * len(q)


def test_cv_mean_worst_and_confident_wrong_answers():
    import math

    import numpy as np

    from bench.sevenscenes import QueryRun
    from bench.sevenscenes_cv import accepted_beyond, mean_metrics, worst_fold
    run = QueryRun(["a", "b", "c", "d"], np.array([0.01, 0.20, math.inf, 0.02]), np.array([0.5, 1.0, math.inf, 6.0]),
                   [True, True, False, True], ["ok", "ok", "rejected", "ok"])
    assert accepted_beyond(run) == 2  # 20 cm, and 6 deg; the rejected one does not count
    a = {"pct_2cm_1deg": 90.0, "median_t_cm": 0.5, "latency_ms": {"p50": 30.0}}
    b = {"pct_2cm_1deg": 70.0, "median_t_cm": 1.5, "latency_ms": {"p50": 40.0}}
    c = {"pct_2cm_1deg": 70.0, "median_t_cm": None, "latency_ms": {"p50": 35.0}}
    assert mean_metrics([a, b]) == {"pct_2cm_1deg": 80.0, "median_t_cm": 1.0, "latency_ms": {"p50": 35.0}}
    assert mean_metrics([a, c])["median_t_cm"] is None  # a fold that missed half its queries
    assert worst_fold([{"metrics": a}, {"metrics": b}, {"metrics": c}]) is c  # same share, larger median


def test_calibration_share_of_accepted_poses_beyond_3_sigma():
    import math

    import numpy as np

    from bench.sevenscenes import QueryRun
    from bench.sevenscenes_cv import beyond_3sigma_pct
    run = QueryRun(["a", "b", "c", "d", "e"], np.array([0.01, 0.05, 0.01, math.inf, 0.005]),
                   np.array([0.1, 0.1, 0.9, math.inf, 0.1]), [True, True, True, False, True], [""] * 5,
                   sigma_t_m=[0.004, 0.01, 0.01, None, None], sigma_r_deg=[0.1, 0.1, 0.2, None, None])
    # a: 1 cm <= 1.2 cm, in; b: 5 cm > 3 cm, out; c: 0.9 deg > 0.6 deg, out; d rejected; e has no sigma
    assert beyond_3sigma_pct(run) == pytest.approx(100 * 2 / 3)
    assert run.metrics()["accepted_beyond_3sigma_pct"] == pytest.approx(100 * 2 / 3)
    assert beyond_3sigma_pct(QueryRun(["a"], np.array([0.01]), np.array([0.1]), [True], [""])) is None


def test_share_of_true_poses_that_were_accepted():
    import math

    import numpy as np

    from bench.sevenscenes import QueryRun
    from bench.sevenscenes_cv import accepted_of_true_pct
    inf = math.inf
    # returned poses: 1 cm (accepted), 10 cm (rejected), 40 cm (rejected), none (rejected), 2 cm (accepted)
    run = QueryRun(list("abcde"), np.array([0.01, inf, inf, inf, 0.02]), np.array([0.1, inf, inf, inf, 0.2]),
                   [True, False, False, False, True], [""] * 5,
                   pose_t_err_m=np.array([0.01, 0.10, 0.40, inf, 0.02]), pose_r_err_deg=np.array([0.1, 1, 1, inf, 0.2]))
    assert accepted_of_true_pct(run) == pytest.approx(100 * 2 / 3)   # of the three within 15 cm / 5 deg
    assert accepted_of_true_pct(QueryRun(["a"], np.array([0.01]), np.array([0.1]), [True], [""])) is None


def test_protocol_flag_is_checked_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from vloc.cli import app
    r = CliRunner().invoke(app, ["bench", "7scenes", "--root", str(tmp_path), "--protocol", "revisit,bogus",
                                 "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2
    assert "protocols must be among revisit, dense, cv" in r.output
    r = CliRunner().invoke(app, ["bench", "7scenes", "--root", str(tmp_path), "--protocol", "cv",
                                 "--degradations", "fog", "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2
    assert "unknown degradation" in r.output
    assert not (tmp_path / "x.json").exists()
