"""What every benchmark states about the machine it ran on: platform, libraries, CUDA, the speed probe
(OpenCV SIFT on a fixed image: compare runs of one window by it) and this process's memory."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np


def _version(module: str) -> str | None:
    """A library's version, None when it is not installed (a GPU machine may lack pycolmap or kornia)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Platform, core count, library versions, CUDA device (when there is one) and the speed probe."""
    import os

    import torch
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "pycolmap": _version("pycolmap"), "kornia": _version("kornia"), "cuda": bool(torch.cuda.is_available()),
            "speed_probe": speed_probe()}
    if info["cuda"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def speed_probe(repeats: int = 9) -> dict:
    """How fast this machine is right now: OpenCV SIFT (the pipeline's settings: 2,048 keypoints,
    contrast 0.02) on a fixed 640x480 synthetic image, median of ``repeats`` runs. Shared
    machines vary (this probe read 75-102 ms within one hour here); compare runs of different
    windows by it."""
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (480, 640)).astype(np.uint8), (0, 0), 2.0)
    img = cv2.add(img, np.tile(np.linspace(0, 60, 640, dtype=np.uint8), (480, 1)))
    sift = cv2.SIFT_create(nfeatures=2048, contrastThreshold=0.02)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sift.detectAndCompute(img, None)
        times.append((time.perf_counter() - t) * 1000)
    return {"sift_640x480_ms": statistics.median(times), "opencv_threads": cv2.getNumThreads()}


def machine_line(machine: dict) -> str:
    """A :func:`machine_info` block as the footnote of a benchmark table."""
    m = machine
    line = f"machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}, CUDA={m['cuda']}"
    probe = m.get("speed_probe") or {}
    if "sift_640x480_ms" in probe:
        line += f"; speed probe: SIFT 640x480 {probe['sift_640x480_ms']:.0f} ms"
    return line


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (psutil, else /proc/self/status VmRSS)."""
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except ImportError:
        kb = _proc_status_kb("VmRSS")
        return int(kb * 1024) if kb is not None else 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM, else ru_maxrss)."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def available_memory_bytes() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
