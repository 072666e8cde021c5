"""`vloc map build --scheduler`: features and matching as Dask tasks on a real cluster.

The cluster is the real programs: `dask scheduler` and `dask worker` from the venv, on 127.0.0.1
only (HTTP servers on loopback too), each in its own process group, killed when the test ends
(also on failure), with idle / death timeouts so none outlives a crashed test run. Every wait is
bounded in time.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pycolmap
import pytest
from typer.testing import CliRunner

from bundleio import read_manifest
from core.geometry import pose_error
from datasets.synthetic import DEFAULT_CAMERA, generate_scene, write_dataset
from hdmap.job import load_batch_config, run_batch
from localize import Localizer
from vloc.cli import app

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_FRAMES = 16
SEED = 3
runner = CliRunner()
pytestmark = pytest.mark.skipif(not (BIN / "dask").exists(), reason="the dask CLI is not in the venv")


# ---- processes ---------------------------------------------------------------------------------
class Procs:
    """Started processes (each its own session, so a kill takes its children: a worker's nanny and
    worker process); all killed at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []

    def start(self, name: str, args: list[str], wrap: list[str] | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = subprocess.Popen([*(wrap or []), str(BIN / "dask"), *args], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)
        self.procs.clear()

    def log_tail(self) -> str:
        return "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:] for f in sorted(self.logs.glob("*.log")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_of(address: str) -> int:
    """Workers the scheduler knows (a short-lived client; bounded by its timeout)."""
    from distributed import Client
    with Client(address, timeout=10, set_as_default=False) as c:
        return len(c.scheduler_info()["workers"])


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Address of a `dask scheduler` on 127.0.0.1 (killed after the module)."""
    tmp = tmp_path_factory.mktemp("dask-scheduler")
    procs = Procs(tmp / "logs")
    info = tmp / "scheduler.json"
    try:
        procs.start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(free_port()),
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info),
                                  "--idle-timeout", "600s"])
        deadline = time.monotonic() + 60
        while not info.exists():
            assert time.monotonic() < deadline, f"dask scheduler did not start\n{procs.log_tail()}"
            assert procs.procs[0].poll() is None, f"dask scheduler exited\n{procs.log_tail()}"
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give the writer its close
        yield json.loads(info.read_text())["address"]
    finally:
        procs.kill_all()


@pytest.fixture
def cluster(scheduler, tmp_path):
    """``start(name, wrap=None)`` starts one `dask worker` on the module's scheduler; ``wait(n)``
    until n workers are known. Every worker is killed when the test ends."""
    procs = Procs(tmp_path / "worker-logs")

    class Cluster:
        address = scheduler

        @staticmethod
        def start(name: str, wrap: list[str] | None = None) -> subprocess.Popen:
            return procs.start(name, ["worker", scheduler, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                      "--dashboard-address", "127.0.0.1:0", "--name", name, "--death-timeout", "60",
                                      "--local-directory", str(tmp_path / "worker-space")], wrap)

        @staticmethod
        def wait(n: int) -> None:
            deadline = time.monotonic() + 90
            while workers_of(scheduler) != n:
                assert time.monotonic() < deadline, f"{n} workers did not join\n{procs.log_tail()}"
                time.sleep(0.2)

        kill = staticmethod(Procs.kill)
        log_tail = staticmethod(procs.log_tail)

    try:
        yield Cluster
    finally:
        procs.kill_all()
        deadline = time.monotonic() + 30  # the next test starts from a scheduler without workers
        while workers_of(scheduler) and time.monotonic() < deadline:
            time.sleep(0.2)


# ---- data and the in-process reference ---------------------------------------------------------
@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-frames")
    write_dataset(generate_scene(seed=SEED), root, N_FRAMES)
    return root


def build_args(frames: Path, out: Path, *extra: str) -> list[str]:
    return ["map", "build", "--images", str(frames), "--poses", str(frames / "pgt_sfm_seq01.txt"),
            "--poses-format", "pgt", "--camera", (frames / "camera.txt").read_text().strip(),
            "--max-keypoints", "1500", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory):
    """The same map built in this process (no scheduler: today's code path)."""
    out = tmp_path_factory.mktemp("dask-ref") / "ref"
    res = runner.invoke(app, build_args(frames, out))
    assert res.exit_code == 0, res.output
    assert "cluster" not in read_manifest(out)["statistics"]
    return out


@pytest.fixture(scope="module")
def queries():
    """Three frames of another pass through the room, with their true poses."""
    scene = generate_scene(seed=SEED)
    return [(scene.render(T, DEFAULT_CAMERA)[0], T) for T in scene.trajectory(3, pass_id=1)]


def data_files(bundle: Path) -> dict[str, str]:
    return {k: v["sha256"] for k, v in read_manifest(bundle)["files"].items()}


def assert_same_map(bundle: Path, reference: Path, queries) -> None:
    """Same images registered, points within 1 %, query poses within 1 mm; and in fact the same data."""
    a, b = pycolmap.Reconstruction(str(bundle / "model")), pycolmap.Reconstruction(str(reference / "model"))
    assert sorted(im.name for im in a.images.values()) == sorted(im.name for im in b.images.values())
    assert len(a.images) == N_FRAMES
    assert abs(a.num_points3D() - b.num_points3D()) <= 0.01 * b.num_points3D()
    la, lb = Localizer(bundle), Localizer(reference)
    for rgb, truth in queries:
        ra, rb = la.localize(rgb, DEFAULT_CAMERA), lb.localize(rgb, DEFAULT_CAMERA)
        assert ra.accepted and rb.accepted, (ra.reason, rb.reason)
        assert pose_error(ra.cam_from_world, rb.cam_from_world)[0] < 1e-3
        assert pose_error(ra.cam_from_world, truth)[0] < 0.01
    # same tasks, same per-item code, same keys: byte-identical model, features and index
    assert data_files(bundle) == data_files(reference)


# ---- the tests ---------------------------------------------------------------------------------
def test_build_on_a_real_cluster_equals_the_in_process_build(frames, reference, queries, cluster, tmp_path):
    cluster.start("w1")
    cluster.start("w2")
    cluster.wait(2)
    out = tmp_path / "dask"
    res = runner.invoke(app, build_args(frames, out, "--scheduler", cluster.address, "--workers", "2"))
    assert res.exit_code == 0, res.output + cluster.log_tail()
    stats = read_manifest(out)["statistics"]
    assert stats["cluster"]["scheduler"] == cluster.address and stats["cluster"]["n_workers"] == 2
    assert stats["cluster"]["feature_tasks"] == 2 and stats["cluster"]["match_tasks"] >= 1
    assert (tmp_path / ".dask.work" / "build" / "features").is_dir()  # the default work dir: kept, to resume
    assert_same_map(out, reference, queries)


def test_a_worker_killed_mid_build_changes_nothing(frames, reference, queries, cluster, tmp_path):
    victim = cluster.start("victim")
    cluster.start("survivor")
    cluster.wait(2)
    out = tmp_path / "killed"
    features = tmp_path / ".killed.work" / "build" / "features"
    seen: dict = {}

    def kill_after_first_features() -> None:  # bounded: gives up after 120 s
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list(features.rglob("*.npz")) if features.is_dir() else []
            if done:
                cluster.kill(victim)  # SIGKILL to the worker's whole process group (nanny + worker)
                seen["features_done"] = len(done)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_features, daemon=True)
    watcher.start()
    res = runner.invoke(app, build_args(frames, out, "--scheduler", cluster.address, "--workers", "2"))
    watcher.join(timeout=130)
    assert res.exit_code == 0, res.output + cluster.log_tail()
    assert victim.poll() is not None and 0 < seen["features_done"] < N_FRAMES, seen  # killed mid-extraction
    assert read_manifest(out)["statistics"]["cluster"]["n_workers"] == 1
    assert_same_map(out, reference, queries)


def test_losing_every_worker_ends_the_build_with_an_error_in_bounded_time(frames, cluster, tmp_path):
    from core.camera import Camera
    from core.types import VlocError
    from datasets.posefile import load_poses
    from mapping.build import build_map
    from mapping.cluster import ClusterConfig

    only = cluster.start("only")
    cluster.wait(1)
    records = load_poses(frames / "pgt_sfm_seq01.txt", "pgt",
                         camera=Camera.parse((frames / "camera.txt").read_text().strip()))
    features = tmp_path / "work" / "features"

    def kill_after_first_features() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (features.is_dir() and any(features.rglob("*.npz"))):
            time.sleep(0.02)
        cluster.kill(only)

    threading.Thread(target=kill_after_first_features, daemon=True).start()
    t = time.monotonic()
    with pytest.raises(VlocError, match="no Dask worker left"):
        build_map(frames, records, tmp_path / "never", work_dir=tmp_path / "work",
                  cluster=ClusterConfig(cluster.address, workers=1, no_worker_timeout_s=3))
    assert time.monotonic() - t < 60 and not (tmp_path / "never").exists()


def test_unreachable_scheduler_is_one_error_line_and_keeps_the_bundle(frames, reference, tmp_path):
    out = tmp_path / "existing"
    shutil.copytree(reference, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    t = time.monotonic()
    res = runner.invoke(app, build_args(frames, out, "--scheduler", f"tcp://127.0.0.1:{free_port()}"))
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the Dask scheduler" in errors[0], res.output
    assert time.monotonic() - t < 10  # a refused connection is reported at once, not after retries
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # another service at the address (a web server on the wrong port) fails Dask's handshake: said so
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(10)

        def answer_http() -> None:  # bounded: a few connections, each within the timeout
            for _ in range(4):
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n" * 8)

        threading.Thread(target=answer_http, daemon=True).start()
        res = runner.invoke(app, build_args(frames, out, "--scheduler", f"tcp://127.0.0.1:{server.getsockname()[1]}"))
    assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
    assert "not a Dask scheduler" in res.output or "no Dask scheduler answers" in res.output, res.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a malformed address and --workers without a scheduler are refused as well
    for extra in (["--scheduler", "127.0.0.1:8786"], ["--workers", "2"]):
        res = runner.invoke(app, build_args(frames, out, *extra))
        assert res.exit_code == 2 and res.output.count("error:") == 1, res.output


def test_a_worker_that_cannot_see_the_images_is_named(frames, cluster, tmp_path):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (a user + mount namespace to hide the images from one worker) is not allowed here")
    cluster.start("sees")
    # a worker on a "machine" without the shared images: an empty tmpfs over the image folder
    blind = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs none "{frames}" && exec "$0" "$@"']
    cluster.start("blind", wrap=blind)
    cluster.wait(2)
    out = tmp_path / "never"
    res = runner.invoke(app, build_args(frames, out, "--scheduler", cluster.address, "--workers", "2"))
    assert res.exit_code == 2, res.output + cluster.log_tail()
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert "cannot read the image" in errors[0] and str(frames) in errors[0] and "Dask worker tcp://" in errors[0]
    assert not out.exists()


def test_job_file_on_a_local_cluster_resumes_an_in_process_build(frames, reference, tmp_path):
    """`scheduler: local` in the job file (a LocalCluster on 127.0.0.1): it resumes what an in-process
    run of the same job left in the work directory (same keys), and where a build runs is not part
    of its stage key."""
    job = tmp_path / "job.yaml"
    job.write_text(f"out: bundle\nbuild:\n  images: {frames}\n  poses: {frames / 'pgt_sfm_seq01.txt'}\n"
                   f"  poses_format: pgt\n  camera: {(frames / 'camera.txt').read_text().strip()}\n"
                   "  max_keypoints: 1500\n")
    assert run_batch(load_batch_config(job)) == {"build": "ran"}  # in process, fills the work dir
    assert data_files(tmp_path / "bundle") == data_files(reference)
    shutil.rmtree(tmp_path / "bundle")
    job.write_text(job.read_text() + "  scheduler: local\n  workers: 2\n")
    res = runner.invoke(app, ["map", "build", "--config", str(job), "-q"])
    assert res.exit_code == 0, res.output
    stats = read_manifest(tmp_path / "bundle")["statistics"]
    assert {k: stats["cluster"][k] for k in ("scheduler", "n_workers", "feature_tasks", "match_tasks")} == \
        {"scheduler": "local", "n_workers": 2, "feature_tasks": 0, "match_tasks": 0}  # all resumed (the index is rebuilt)
    assert data_files(tmp_path / "bundle") == data_files(reference)
    # the same job without the scheduler has the same key: up to date
    job.write_text(job.read_text().replace("  scheduler: local\n  workers: 2\n", ""))
    assert run_batch(load_batch_config(job)) == {"build": "skipped"}
