"""`vloc map build --config`: one job file, resumable stages, a killed build resumes to the same bundle."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from typer.testing import CliRunner

from bundleio import read_manifest, verify_files
from core.types import VlocError
from datasets.synthetic import generate_scene, write_dataset
from hdmap.job import load_batch_config, run_batch, stage_done
from vloc.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    write_dataset(generate_scene(seed=5), root, 12)
    return root


def write_job(path: Path, frames: Path, out: str = "bundle") -> Path:
    path.write_text(f"""# a map job (relative paths are relative to this file)
out: {out}
build:
  images: {frames}
  poses: {frames / 'pgt_sfm_seq01.txt'}
  poses_format: pgt
  camera: {(frames / 'camera.txt').read_text().strip()}
  max_keypoints: 1500
""")
    return path


def model_points(bundle: Path) -> np.ndarray:
    rec = pycolmap.Reconstruction(str(bundle / "model"))
    return np.array([rec.points3D[i].xyz for i in sorted(rec.points3D)])


def data_files(bundle: Path) -> dict[str, str]:
    return {k: v["sha256"] for k, v in read_manifest(bundle)["files"].items()}


def test_job_runs_then_skips_finished_stages(frames, tmp_path):
    job = write_job(tmp_path / "job.yaml", frames)
    res = runner.invoke(app, ["map", "build", "--config", str(job), "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["stages"] == {"build": "ran"}
    bundle = tmp_path / "bundle"
    m = read_manifest(bundle)
    assert m["stages"]["build"]["key"] and verify_files(bundle, m) == []
    before = (bundle / "manifest.json").read_bytes()
    assert run_batch(load_batch_config(job)) == {"build": "skipped"}
    assert (bundle / "manifest.json").read_bytes() == before  # untouched
    # a corrupted file is caught by the checksums and the stage runs again
    with open(bundle / "retrieval.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert run_batch(load_batch_config(job)) == {"build": "ran"}
    assert verify_files(bundle, read_manifest(bundle)) == []
    # a changed config gives another key: the stage reruns
    job.write_text(job.read_text().replace("max_keypoints: 1500", "max_keypoints: 1200"))
    assert run_batch(load_batch_config(job)) == {"build": "ran"}


def test_killed_build_resumes_to_the_same_bundle(frames, tmp_path):
    clean = tmp_path / "clean"
    res = runner.invoke(app, ["map", "build", "--config", str(write_job(tmp_path / "clean.yaml", frames, "clean")), "-q"])
    assert res.exit_code == 0, res.output

    job = write_job(tmp_path / "job.yaml", frames, "killed")
    work = tmp_path / ".killed.work" / "build"
    proc = subprocess.Popen([sys.executable, "-m", "vloc.cli", "map", "build", "--config", str(job), "-q"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((work / "matches").rglob("*.npz"))) >= 3:
                os.killpg(proc.pid, signal.SIGKILL)  # killed in the middle of the matching stage
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (tmp_path / "killed").exists()  # no half-written bundle is visible
    features_done = {p: p.stat().st_mtime_ns for p in (work / "features").rglob("*.npz")}
    assert features_done

    assert run_batch(load_batch_config(job)) == {"build": "ran"}
    killed = tmp_path / "killed"
    # finished work was reused, not redone
    assert all(p.stat().st_mtime_ns == t for p, t in features_done.items())
    assert data_files(killed) == data_files(clean)  # byte-identical model, features and index
    assert np.array_equal(model_points(killed), model_points(clean))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_bad_job_files_are_refused_with_the_field(frames, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: b\nbuild:\n  images: x\n  max_keypionts: 3\n")
    with pytest.raises(VlocError, match="max_keypionts"):
        load_batch_config(bad)
    bad.write_text(f"out: b\nbuild: {{images: {frames}}}\ngeoref: {{from_exif: true, gnss: g.csv}}\n")
    with pytest.raises(VlocError, match="exactly one"):
        load_batch_config(bad)
    bad.write_text("out: [unclosed\n")
    res = runner.invoke(app, ["map", "build", "--config", str(bad)])
    assert res.exit_code == 2 and "not valid" in res.output
    res = runner.invoke(app, ["map", "build", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not stage_done(tmp_path / "nothing", "build", "0" * 64)


def write_gnss(path: Path, frames: Path, origin=(55.7, 13.2, 20.0), yaw_deg: float = 30.0) -> None:
    """GNSS fixes (cm noise) of the frames' true centres under a known map -> ENU similarity."""
    from core.camera import Camera
    from datasets.posefile import load_poses
    from hdmap.geodesy import enu_to_geodetic
    recs = load_poses(frames / "pgt_sfm_seq01.txt", "pgt", camera=Camera.parse((frames / "camera.txt").read_text()))
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    enu = np.array([R @ r.cam_from_world.centre + [5.0, -3.0, 0.5] for r in recs])
    enu += np.random.default_rng(0).normal(0, 0.01, enu.shape)
    geo = enu_to_geodetic(enu, origin)
    path.write_text("name,latitude,longitude,altitude\n" + "".join(
        f"{r.name},{g[0]:.10f},{g[1]:.10f},{g[2]:.4f}\n" for r, g in zip(recs, geo)))


def noise_geotiff(path: Path, centre_lat_lon: tuple[float, float]) -> None:
    """A 200 x 200 m random orthophoto around a place (nothing a map could register to)."""
    import rasterio
    from rasterio.transform import from_origin

    from hdmap.geodesy import geodetic_to_crs, utm_crs_for
    crs = utm_crs_for(*centre_lat_lon)
    e, n, _ = geodetic_to_crs(np.array([[*centre_lat_lon, 0.0]]), crs)[0]
    img = np.random.default_rng(1).integers(0, 255, (3, 2000, 2000), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=2000, height=2000, count=3, dtype="uint8",
                       crs=crs.to_wkt(), transform=from_origin(e - 100, n + 100, 0.1, 0.1)) as dst:
        dst.write(img)


def test_full_job_georef_layers_then_a_refused_stage(frames, tmp_path):
    write_gnss(tmp_path / "gnss.csv", frames)
    job = write_job(tmp_path / "job.yaml", frames)
    job.write_text(job.read_text() + f"""georef:
  gnss: gnss.csv
  max_error: 0.5
layers:
  depth_root: {frames}
  depth_camera: {(frames / 'camera.txt').read_text().strip()}
  depth_stride: 2
  voxel: 0.05
""")
    res = runner.invoke(app, ["map", "build", "--config", str(job), "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["stages"] == {"build": "ran", "georef": "ran",
                                                                          "layers": "ran"}
    bundle = tmp_path / "bundle"
    m = read_manifest(bundle)
    assert set(m["stages"]) == {"build", "georef", "layers"} and verify_files(bundle, m) == []
    assert m["georeference"]["residuals"]["horizontal_m"]["median"] < 0.05
    assert any(f.startswith("layers/") for f in m["files"])
    assert run_batch(load_batch_config(job)) == {"build": "skipped", "georef": "skipped", "layers": "skipped"}
    shown = runner.invoke(app, ["map", "info", str(bundle)]).output
    assert "job stages" in shown and "occupancy_floor0.pgm" in shown and "revision" in shown

    # a changed GNSS file reruns georef and everything after it, not the build
    write_gnss(tmp_path / "gnss.csv", frames, yaw_deg=31.0)
    assert run_batch(load_batch_config(job)) == {"build": "skipped", "georef": "ran", "layers": "ran"}

    # an orthophoto of nothing: the fusion stage refuses, the job stops with exit 2, done stages stay
    noise_geotiff(tmp_path / "ortho.tif", (55.7, 13.2))
    job.write_text(job.read_text().replace("layers:", "fuse_aerial:\n  ortho: ortho.tif\nlayers:"))
    before = (bundle / "manifest.json").read_bytes()
    res = runner.invoke(app, ["map", "build", "--config", str(job), "-q"])
    assert res.exit_code == 2 and "refused" in res.output
    assert (bundle / "manifest.json").read_bytes() == before
    assert stage_done(bundle, "georef", read_manifest(bundle)["stages"]["georef"]["key"])
