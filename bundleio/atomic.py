"""Atomic bundle writes: a new bundle, or a new revision of one, appears in one rename.

Writes go to a hidden sibling temp directory that is renamed into place, so a reader sees
either the old bundle or the new one, never a half-written one.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bundleio.manifest import MANIFEST, dir_size, read_manifest, record_pending_stage, write_manifest


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success rename it to ``final`` (replacing it).

    On any exception the temp directory is removed and ``final`` is untouched.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def update_bundle(bundle: Path, stage: str) -> Iterator[tuple[Path, dict]]:
    """Change an existing bundle atomically: yield ``(tmp, manifest)``, a full copy and its manifest.

    The caller writes new or replaced files under ``tmp`` (always as new files: write to a new
    name or unlink first) and edits ``manifest`` in place. On success the manifest's ``revision``
    is incremented, ``history`` gains ``{stage, utc}``, checksums are recomputed and the copy
    replaces the bundle in one rename; on any exception the bundle is untouched.
    """
    import time

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    with atomic_directory(bundle) as tmp:
        for p in bundle.iterdir():
            if p.name == MANIFEST:
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        manifest = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")}
        yield tmp, manifest
        manifest["revision"] = int(manifest.get("revision", 0)) + 1
        manifest.setdefault("history", []).append(
            {"stage": stage, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        record_pending_stage(manifest, stage)
        stats = manifest.get("statistics")
        if isinstance(stats, dict) and "bytes_on_disk" in stats:
            stats["bytes_on_disk"] = dir_size(tmp)
        write_manifest(tmp, manifest)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
