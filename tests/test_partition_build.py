"""`vloc map build --partition`: partitioned reconstruction inside the build, in process and as Dask tasks
on a LocalCluster, on a generated loop with exact truth; the progress bars it reports; bad flag values.

The loop: ``generate_scene(seed=3)`` (a 6 x 5 x 2.6 m textured room) seen from its closed camera loop
(an ellipse of 2.7 x 2.25 m, cameras looking out at the walls 1-3 m away), 30 frames of 320 x 240.
The unposed folder holds only the colour frames; the posed build takes the rendered poses.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from typer.testing import CliRunner

from core.accuracy import aligned_centre_errors
from core.camera import Camera
from core.geometry import Rigid3
from core.progress import Reporter
from datasets.synthetic import generate_scene, write_dataset
from mapping.build import build_map
from mapping.config import BuildConfig
from vloc.cli import app

N_FRAMES = 30
CAMERA = Camera("PINHOLE", 320, 240, (262.5, 262.5, 160.0, 120.0))
runner = CliRunner()


class Recorder(Reporter):
    """A reporter that records each bar (description, total, unit, items advanced) and each log line,
    in class lists (the CLI makes its own instance)."""

    bars: list[dict] = []
    lines: list[str] = []

    def track(self, items, description, total=None, unit=""):
        bar = {"description": description, "total": total, "unit": unit, "done": 0}
        Recorder.bars.append(bar)
        for x in items:
            yield x
            bar["done"] += 1

    @contextmanager
    def stage(self, description, total, unit=""):
        bar = {"description": description, "total": total, "unit": unit, "done": 0}
        Recorder.bars.append(bar)

        def advance(n=1):
            bar["done"] += n
        yield advance

    def log(self, message):
        Recorder.lines.append(str(message))


@pytest.fixture
def recorder(monkeypatch):
    Recorder.bars, Recorder.lines = [], []
    monkeypatch.setattr("mapping.cli.Reporter", Recorder)
    return Recorder


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    records = write_dataset(generate_scene(seed=3), root, N_FRAMES, camera=CAMERA)
    for p in list(root.rglob("*.depth.png")):  # the unposed folder: colour frames only
        p.unlink()
    return root, records


def unposed_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["map", "build", "--images", str(root), "--camera", str(CAMERA), "--max-keypoints", "2000",
            "--out", str(out), "--json", *extra]


def centres(bundle: Path) -> dict[str, np.ndarray]:
    rec = pycolmap.Reconstruction(str(bundle / "model"))
    return {im.name: Rigid3.from_pycolmap(im.cam_from_world()).centre for im in rec.images.values()}


def centre_errors(bundle: Path, truth: dict[str, np.ndarray]) -> np.ndarray:
    """(registered,) centre errors (m) after one similarity onto ``truth`` (name -> centre)."""
    return aligned_centre_errors(centres(bundle), truth)


def duplicate_observations(bundle: Path) -> int:
    rec = pycolmap.Reconstruction(str(bundle / "model"))
    seen, dup = set(), 0
    for p in rec.points3D.values():
        for e in p.track.elements:
            dup += (e.image_id, e.point2D_idx) in seen
            seen.add((e.image_id, e.point2D_idx))
    return dup


def stats_of(res) -> dict:
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return json.loads(res.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def in_process(loop, tmp_path_factory):
    """The unposed loop built in process with --partition on, 10 images per cluster (bars recorded)."""
    root, _ = loop
    Recorder.bars, Recorder.lines = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mapping.cli.Reporter", Recorder)
        out = tmp_path_factory.mktemp("inproc") / "map"
        res = runner.invoke(app, unposed_args(root, out, "--partition", "on", "--max-partition-images", "10"))
    return out, stats_of(res), list(Recorder.bars), list(Recorder.lines)


def test_unposed_loop_partitioned_through_map_build(in_process, loop):
    out, s, _, _ = in_process
    truth = {r.name: r.cam_from_world.centre for r in loop[1]}
    p = s["partitions"]
    err = centre_errors(out, truth)
    print(f"\n{p['n_parts']} clusters {p['part_sizes']}, centre error median {np.median(err) * 1e3:.2f} mm, "
          f"max {err.max() * 1e3:.2f} mm")
    assert p["kind"] == "clusters" and p["n_parts"] >= 3 and max(p["part_sizes"]) < N_FRAMES
    assert s["n_images"] == N_FRAMES and s["n_images_unregistered"] == 0
    assert all(a["n_shared_images"] >= 3 for a in p["alignments"] if a["target"] is not None)
    assert duplicate_observations(out) == 0
    assert np.median(err) <= 0.01 and err.max() <= 0.03
    assert s["timings"]["partitions_s"] > 0 and s["timings"]["merge_s"] > 0


def test_progress_bars_count_images_pairs_and_partitions(in_process):
    _, s, bars, lines = in_process
    by_unit = {b["unit"]: b for b in bars}
    assert set(by_unit) == {"images", "pairs", "partitions"}, bars
    assert by_unit["images"]["total"] == by_unit["images"]["done"] == N_FRAMES
    assert by_unit["pairs"]["total"] == by_unit["pairs"]["done"] == s["n_pairs"]
    assert by_unit["partitions"]["total"] == by_unit["partitions"]["done"] == s["partitions"]["n_parts"]
    assert any(f"{s['partitions']['n_parts']} clusters of at most 10 images" in line for line in lines), lines


def test_partitioned_build_on_a_local_cluster_matches_in_process_and_resumes(in_process, loop, recorder, tmp_path):
    """One Dask task per cluster: the same partitions, the same images registered, points within 5 %
    and the same accuracy against the truth as in process (incremental SfM and the merge's
    adjustments run multi-threaded, so the two are not bit-identical); a rerun reads every
    cluster's model back from the work directory."""
    root, records = loop
    truth = {r.name: r.cam_from_world.centre for r in records}
    ref, ref_stats = in_process[0], in_process[1]
    out = tmp_path / "map"
    args = unposed_args(root, out, "--partition", "on", "--max-partition-images", "10", "--scheduler", "local",
                        "--workers", "2")
    s = stats_of(runner.invoke(app, args))
    n = s["partitions"]["n_parts"]
    assert s["cluster"]["partition_tasks"] == n == ref_stats["partitions"]["n_parts"]
    assert s["partitions"]["part_sizes"] == ref_stats["partitions"]["part_sizes"]
    assert s["partitions"]["parts_resumed"] == 0
    assert {b["unit"]: (b["total"], b["done"]) for b in recorder.bars}["partitions"] == (n, n)
    assert any("local Dask cluster: 2 worker process(es)" in line for line in recorder.lines), recorder.lines
    assert sorted(centres(out)) == sorted(centres(ref))
    assert abs(s["n_points3D"] - ref_stats["n_points3D"]) <= 0.05 * ref_stats["n_points3D"]
    err, err_ref = centre_errors(out, truth), centre_errors(ref, truth)
    print(f"\ncentre error median / max: Dask {np.median(err) * 1e3:.2f} / {err.max() * 1e3:.2f} mm, in process "
          f"{np.median(err_ref) * 1e3:.2f} / {err_ref.max() * 1e3:.2f} mm")
    assert np.median(err) <= 0.01 and err.max() <= 0.03
    # a rerun finds every cluster's model in the work directory: nothing reconstructed again
    s2 = stats_of(runner.invoke(app, args))
    assert s2["partitions"]["parts_resumed"] == n and s2["cluster"]["feature_tasks"] == 0
    assert s2["partitions"]["part_registered"] == s["partitions"]["part_registered"]
    err2 = centre_errors(out, truth)
    assert np.median(err2) <= 0.01 and err2.max() <= 0.03


def test_posed_tiles_through_build_map_keep_the_poses_without_duplicate_points(loop, tmp_path):
    root, records = loop
    cfg = BuildConfig(features=replace(BuildConfig().features, max_keypoints=2000))
    whole = build_map(root, records, tmp_path / "whole", cfg)["statistics"]
    tiled_cfg = replace(cfg, partition="on", max_partition_images=10,
                        partitioning=replace(cfg.partitioning, overlap_m=0.3))
    tiled = build_map(root, records, tmp_path / "tiles", tiled_cfg)["statistics"]
    p = tiled["partitions"]
    print(f"\nposed: {p['n_parts']} tiles {p['part_sizes']}, points whole {whole['n_points3D']} / tiled "
          f"{tiled['n_points3D']} (tiles held {p['n_points_in']})")
    assert "partitions" not in whole
    assert p["kind"] == "tiles" and p["n_parts"] >= 2 and p["n_points_in"] > 1.1 * tiled["n_points3D"]
    assert duplicate_observations(tmp_path / "tiles") == 0
    assert abs(tiled["n_points3D"] - whole["n_points3D"]) <= 0.05 * whole["n_points3D"]
    est = centres(tmp_path / "tiles")
    assert len(est) == N_FRAMES
    for r in records:
        assert np.allclose(est[r.name], r.cam_from_world.centre, atol=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--partition", "maybe"], "--partition must be auto, off or on, got 'maybe'"),
    (["--max-partition-images", "many"], "--max-partition-images takes a whole number of images, got 'many'"),
    (["--max-partition-images", "4"], "--max-partition-images must be at least 10, got 4"),
])
def test_bad_partition_flags_are_one_error_line(extra, message, loop, tmp_path):
    res = runner.invoke(app, unposed_args(loop[0], tmp_path / "map", *extra))
    assert res.exit_code == 2, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == [f"error: {message}"]
    assert not (tmp_path / "map").exists()


def test_bad_partition_keys_in_a_job_file_are_one_error_line(loop, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"out: bundle\nbuild:\n  images: {loop[0]}\n  camera: {CAMERA}\n  partition: sometimes\n")
    res = runner.invoke(app, ["map", "build", "--config", str(job), "-q"])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "build.partition" in res.output, res.output
    job.write_text(f"out: bundle\nbuild:\n  images: {loop[0]}\n  camera: {CAMERA}\n")
    res = runner.invoke(app, ["map", "build", "--config", str(job), "-q", "--partition", "on"])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "job file" in res.output, res.output
    assert not (tmp_path / "bundle").exists()
