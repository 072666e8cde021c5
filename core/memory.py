"""This process's memory as the kernel counts it: what a build task reports about the worker it ran on."""
from __future__ import annotations

from pathlib import Path


def proc_status_bytes(field: str) -> int | None:
    """A memory line of ``/proc/self/status`` (``VmHWM``: peak resident set, ``VmRSS``: now) in
    bytes; None where there is no /proc (not Linux)."""
    try:
        with open(Path("/proc/self/status")) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM; ru_maxrss where there is no /proc)."""
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
