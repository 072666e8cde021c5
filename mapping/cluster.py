"""Where a map build's per-image and per-pair stages run when not in this process: a Dask cluster.

``--scheduler local`` starts a ``LocalCluster`` of worker processes on 127.0.0.1;
``--scheduler tcp://HOST:PORT`` joins a running ``dask scheduler`` whose ``dask worker``
processes were started from vloc's environment (they import vloc's code to run its tasks)::

    dask scheduler --host 10.0.0.5 --port 8786
    dask worker tcp://10.0.0.5:8786 --nthreads 1 --nworkers 8      # on each machine

The images and the build's work directory must be on a path every worker can read (and, for
the work directory, write) under the same name: a shared filesystem. :func:`check_workers`
asks every worker before any work is sent, so a worker that cannot see them ends the build
with one line naming the worker and the path. An unreachable scheduler, a scheduler without
workers or a worker that cannot run vloc's code is a :class:`~core.types.VlocError` too (the
CLI: ``error: ...``, exit 2); the bundle at ``--out`` is untouched then.

``distributed`` is imported when a cluster is opened, not with this module.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from core.progress import QUIET, Reporter
from core.types import VlocError

if TYPE_CHECKING:
    from distributed import Client

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class ClusterConfig:
    """A map build's Dask cluster (where the build runs; not part of what it builds)."""

    #: "local" (a LocalCluster on 127.0.0.1) or "tcp://HOST:PORT" (a running ``dask scheduler``).
    scheduler: str = "local"
    #: local: worker processes (default: one per core); tcp: workers to wait for before starting (default 1).
    workers: int | None = None
    #: images per feature-extraction task.
    images_per_task: int = 8
    #: image pairs per matching + verification task.
    pairs_per_task: int = 64
    #: images per retrieval-index task (the vocabulary's sample rows, then VLAD vectors).
    images_per_index_task: int = 64
    #: seconds to reach the scheduler.
    connect_timeout_s: float = 10.0
    #: seconds to wait for the scheduler's workers to join.
    worker_wait_s: float = 60.0
    #: seconds a running stage waits while the cluster has no worker before giving up.
    no_worker_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.scheduler != "local" and not _TCP.match(self.scheduler):
            raise VlocError(f"--scheduler must be local or tcp://HOST:PORT, got {self.scheduler!r}")
        if self.workers is not None and self.workers < 1:
            raise VlocError(f"--workers must be at least 1, got {self.workers}")
        if self.images_per_task < 1 or self.pairs_per_task < 1 or self.images_per_index_task < 1:
            raise VlocError("images_per_task, pairs_per_task and images_per_index_task must be at least 1")


def cluster_config(scheduler: str | None, workers: int | None = None) -> ClusterConfig | None:
    """The CLI's / job file's choice: None or "none" (this process, the default) or a cluster."""
    if scheduler is None or scheduler == "none":
        if workers is not None:
            raise VlocError("--workers needs --scheduler local or --scheduler tcp://HOST:PORT")
        return None
    return ClusterConfig(scheduler=scheduler.strip(), workers=workers)


def _reachable(address: str, timeout_s: float) -> None:
    """Fail fast, with the reason, when nothing accepts a TCP connection at the scheduler's address
    (distributed itself retries a refused connection until its timeout)."""
    m = _TCP.match(address)
    host, port = m["host"].strip("[]"), int(m["port"])
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise VlocError(f"cannot reach the Dask scheduler at {address} ({reason}): start one with "
                        "`dask scheduler`, or build with --scheduler local") from None


def _is_scheduler(address: str, timeout_s: float) -> None:
    """Ask what answers at the address (Dask's own handshake and ``identity``, on a loop of our own)
    before a Client connects: a Client that fails to connect leaves a finaliser that blocks the exit
    for 20 s, and another service there (a proxy, a web server) fails its handshake in odd ways."""
    import asyncio

    from distributed.comm import connect

    async def identity() -> dict:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    try:
        answer = asyncio.run(asyncio.wait_for(identity(), timeout_s))
    except (OSError, TimeoutError) as e:
        raise VlocError(f"no Dask scheduler answers at {address} ({type(e).__name__}: {e}): start one with "
                        "`dask scheduler`, or build with --scheduler local") from None
    except Exception as e:  # noqa: BLE001 - a garbled handshake fails in any way: the line says where
        raise VlocError(f"something answers at {address}, but not a Dask scheduler ({type(e).__name__} in the "
                        "handshake): give the address `dask scheduler` prints") from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise VlocError(f"{address} is a Dask {kind}, not a scheduler: give the scheduler's address")


@contextmanager
def open_cluster(scheduler: str = "local", workers: int | None = None, *, reporter: Reporter = QUIET,
                 config: ClusterConfig | None = None) -> Iterator[Client]:
    """A ``distributed.Client`` on a new LocalCluster ("local": ``workers`` processes of one thread,
    default one per core, on 127.0.0.1) or on the running scheduler at "tcp://HOST:PORT" (after at
    least ``workers`` workers, default 1, have joined). Closed, with the local cluster, on exit.
    ``config``: the other settings (timeouts); its scheduler / workers are used when given."""
    cfg = config or ClusterConfig(scheduler=scheduler, workers=workers)
    from distributed import Client, LocalCluster

    if cfg.scheduler == "local":
        n = cfg.workers or max(1, os.cpu_count() or 1)
        # the scheduler's HTTP server (the dashboard when bokeh is installed) binds :8787 on every
        # interface unless told otherwise: loopback, any free port
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster, set_as_default=False) as client:
            _announce(client, f"local Dask cluster: {n} worker process(es)", reporter)
            yield client
        return
    _reachable(cfg.scheduler, cfg.connect_timeout_s)
    _is_scheduler(cfg.scheduler, cfg.connect_timeout_s)
    try:
        client = Client(cfg.scheduler, timeout=cfg.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise VlocError(f"cannot connect to the Dask scheduler at {cfg.scheduler}: {e}") from None
    with client:
        want = cfg.workers or 1
        try:
            client.wait_for_workers(want, timeout=cfg.worker_wait_s)
        except TimeoutError:
            have = n_workers(client)
            raise VlocError(f"the Dask scheduler at {cfg.scheduler} has {have} worker(s), {want} wanted, after "
                            f"{cfg.worker_wait_s:.0f} s: start them with `dask worker {cfg.scheduler}`") from None
        have = n_workers(client)
        _announce(client, f"Dask scheduler {cfg.scheduler}: {have} worker(s)", reporter)
        yield client


def _announce(client: Client, what: str, reporter: Reporter) -> None:
    services = client.scheduler_info(n_workers=0).get("services", {})
    has_bokeh = importlib.util.find_spec("bokeh") is not None  # the dashboard's pages need it
    dashboard = f", dashboard {client.dashboard_link}" if "dashboard" in services and has_bokeh else ""
    reporter.log(what + dashboard)


def n_workers(client: Client) -> int:
    """Workers the scheduler has now (asked, without each one's details)."""
    info = client.scheduler_info(n_workers=0)
    return int(info.get("n_workers", len(info.get("workers", {}))))


def probe_paths(images_root: str, image_names: list[str], work_dir: str) -> str | None:
    """Run on a worker: None when it can read ``image_names`` under ``images_root`` and create and
    remove a file in ``work_dir``, else what fails (one line)."""
    root = Path(images_root)
    if not root.is_dir():
        return f"cannot see the image root {root}"
    for name in image_names:
        try:
            with open(root / name, "rb") as f:
                f.read(1)
        except OSError as e:
            return f"cannot read the image {root / name} ({e.strerror or e})"
    work = Path(work_dir)
    probe = work / f".probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"vloc")
        probe.unlink()
    except OSError as e:
        return f"cannot write into the work directory {work} ({e.strerror or e})"
    return None


def check_workers(client: Client, images_root: Path, image_names: list[str], work_dir: Path) -> int:
    """Ask every worker whether it sees the images (a few of ``image_names``: first, middle, last)
    and can write the work directory; a VlocError naming the first worker that cannot. Returns the
    number of workers asked."""
    names = sorted({image_names[0], image_names[len(image_names) // 2], image_names[-1]}) if image_names else []
    answers = client.run(probe_paths, str(images_root), names, str(work_dir), on_error="return")
    if not answers:
        raise VlocError("the Dask cluster has no workers")
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            raise VlocError(f"Dask worker {worker} cannot run vloc's code ({type(answer).__name__}: {answer}): "
                            "start the workers from vloc's environment")
        if answer is not None:
            raise VlocError(f"Dask worker {worker} {answer}: images and work directory must be on a path every "
                            "worker can read (a shared filesystem)")
    return len(answers)
