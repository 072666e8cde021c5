"""`vloc demo` serves the operator console until Enter: run it as a user would (a subprocess with a
pipe for stdin), read the console URL and key it prints, check the console and the moving robot
on the live fleet, press Enter, and see it stop; ``--no-wait`` stops at once."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)
VLOC = Path(sys.executable).parent / "vloc"


def _lines(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def _wait_line(out: queue.Queue, prefix: str, timeout: float) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            line = out.get(timeout=5)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"the demo ended before printing {prefix!r}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def test_demo_serves_the_console_with_a_moving_robot_until_enter(tmp_path):
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = subprocess.Popen([str(VLOC), "demo", "--workdir", str(tmp_path), "--frames", "16", "--robot-frames", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    try:
        url = _wait_line(out, "operator console:", 480)
        key = _wait_line(out, "admin key (paste it there):", 10)
        base = url.split("/console/")[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/console/#/map/room/fleet")
        with httpx.Client(base_url=base, trust_env=False, timeout=30) as c:
            page = c.get("/console/")
            assert page.status_code == 200 and "Content-Security-Policy" in page.headers
            layers = c.get("/v1/maps/room/layers", headers={"Authorization": f"Bearer {key}"}).json()
            assert layers["has_layers"] and layers["occupancy"]  # the demo built the floor plan
            # the robot keeps driving while the server waits: two of its answers arrive on the live fleet
            frames = []
            with c.stream("GET", "/v1/maps/room/live", headers={"Authorization": f"Bearer {key}"}) as r:
                t0 = time.monotonic()
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        frames += [rb["frames"] for rb in json.loads(line[5:])["robots"]
                                   if rb["robot_id"] == "demo-robot"]
                    if len(set(frames)) >= 3 or time.monotonic() - t0 > 60:
                        break
            assert len(set(frames)) >= 3, frames
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_demo_no_wait_stops_at_once(tmp_path):
    proc = subprocess.run([str(VLOC), "demo", "--workdir", str(tmp_path), "--frames", "16", "--robot-frames", "2",
                           "--no-wait"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "operator console: http://127.0.0.1:" in proc.stdout and "server stopped" in proc.stderr
