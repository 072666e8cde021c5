"""The floors hold: import-linter's contracts in pyproject.toml (imports only go down, no circle).

`make test` runs this; a wrong-way import fails it with the offending line, as the second test
shows on a copy of the tree with one planted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "vision", "bundleio", "datasets", "mapping", "hdmap", "localize", "api", "robots", "bench", "vloc")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_imports_only_go_down():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_a_wrong_way_import_fails_with_its_line(tmp_path):
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    stats = tmp_path / "core" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom api.errors import ApiError  # planted\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert "core.stats -> api.errors (l." in r.stdout, r.stdout
