"""The bundle's manifest: format name and version, conventions, checksums of every file, and the
record of the job stages that produced it. See :mod:`bundleio` for the layout."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from bundleio.feature_sets import feature_sets, root_is_legacy
from core.types import VlocError

FORMAT_NAME = "vloc-map-bundle"
#: the newest format this code reads and writes. Version 2 bundles have a learned feature set at
#: their root (readers before it would take its descriptors for SIFT); bundles whose root set is
#: SIFT are written as version 1, whatever other feature sets they carry under features/.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"

CONVENTIONS = {
    "units": "metres",
    "pose": "cam_from_world: x_cam = R @ x_world + t (COLMAP image pose)",
    "quaternion": "w, x, y, z (Hamilton, unit)",
    "camera_frame": "x right, y down, z forward",
    "pixel": "COLMAP: centre of the top-left pixel is (0.5, 0.5)",
}


#: stage name -> key of a batch stage now running (see :func:`recording_stage`).
_PENDING_STAGES: ContextVar[dict[str, str]] = ContextVar("vloc_pending_stages", default={})


@contextmanager
def recording_stage(stage: str, key: str) -> Iterator[None]:
    """While active, the bundle write of ``stage`` also records ``manifest["stages"][stage]``
    = ``{key, utc}`` in the same atomic write, so a batch knows which stages are done."""
    token = _PENDING_STAGES.set({**_PENDING_STAGES.get(), stage: key})
    try:
        yield
    finally:
        _PENDING_STAGES.reset(token)


def record_pending_stage(manifest: dict, stage: str) -> None:
    """Add the running batch stage's record to a manifest about to be written (no-op outside a batch)."""
    import time

    key = _PENDING_STAGES.get().get(stage)
    if key is not None:
        manifest.setdefault("stages", {})[stage] = {
            "key": key, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_manifest(root: Path, manifest: dict) -> None:
    files = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    version = 1 if root_is_legacy(feature_sets(manifest)) else FORMAT_VERSION
    manifest = {"format": FORMAT_NAME, "format_version": version, **manifest, "files": files}
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(bundle: Path) -> dict:
    """Read and check a bundle's manifest; refuses unknown formats and newer versions."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise VlocError(f"{bundle} is not a map bundle directory")
    if not path.is_file():
        raise VlocError(f"{bundle} has no {MANIFEST}: not a vloc map bundle (or an unfinished one)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlocError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise VlocError(f"{path}: unknown bundle format {m.get('format') if isinstance(m, dict) else m!r}"
                        f" (expected {FORMAT_NAME!r})")
    v = m.get("format_version")
    if not isinstance(v, int):
        raise VlocError(f"{path}: format_version missing or not an integer")
    if v > FORMAT_VERSION:
        raise VlocError(f"{bundle}: bundle format version {v} is newer than this vloc supports "
                        f"({FORMAT_VERSION}); upgrade vloc to read it")
    if v < 1:
        raise VlocError(f"{bundle}: unknown bundle format version {v}")
    return m


def verify_files(bundle: Path, manifest: dict) -> list[str]:
    """Names of files whose size or checksum differs from the manifest (empty when intact)."""
    bad = []
    for rel, info in manifest.get("files", {}).items():
        p = Path(bundle) / rel
        if not p.is_file() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad
