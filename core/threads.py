"""Thread settings for CPU inference, applied before numpy / torch / OpenCV start their pools.

Measured (shared redkitchen `revisit` queries, 2 cores, in process): with the libraries'
defaults, OpenBLAS threads (numpy) and the OpenMP threads of torch spin-wait after each call
and take the cores OpenCV's SIFT needs next: p50 117 ms, p90 165 ms per query. With
OpenMP threads that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) and single-threaded
OpenBLAS (numpy's matrix products here are small): p50 64 ms, p90 82 ms, same poses.
Only defaults are set: a value already in the environment wins. These variables are read
when the libraries load, so this runs on the first import of any vloc package; when numpy was
loaded before that (a script that imports numpy first), its BLAS pool is limited at run time
with threadpoolctl instead.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

#: variable -> default
DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",   # torch (OpenMP): idle threads sleep instead of spinning
    "OPENBLAS_NUM_THREADS": "1",    # numpy (OpenBLAS): small products, no spinning helper threads
}


def configure() -> dict[str, str]:
    """Set the defaults that are not set yet; returns the effective values."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "numpy" in sys.modules and os.environ["OPENBLAS_NUM_THREADS"] == DEFAULTS["OPENBLAS_NUM_THREADS"]:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=int(DEFAULTS["OPENBLAS_NUM_THREADS"]), user_api="blas")  # process-wide
    return {key: os.environ[key] for key in DEFAULTS}


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    """OpenCV's and torch's own thread pools at ``n`` threads inside the block, restored after.

    For stages that already run one worker per core (the map build's feature and matching
    pools): one kernel thread per worker instead of each worker's kernels fanning out over all
    cores. Measured on 2 cores, 100 images of 640x480: SIFT 5.0 -> 4.2 s, pair matching
    8.1 -> 7.5 ms per pair. Process-wide while it lasts, so it belongs in batch jobs, not in
    a server answering queries at the same time.
    """
    import cv2
    import torch

    cv_before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_before)
        torch.set_num_threads(torch_before)
