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

from datasets.synthetic import generate_scene, write_dataset
from mapping.batch import load_batch_config, run_batch, stage_done
from mapping.bundle import read_manifest, verify_files
from vloc.cli import app
from vloc.types import VlocError

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
