"""Bringing a bundle into the data directory: safe tar extraction or a copy, then validation.

Both paths stage into ``DATA_DIR/tmp/<uuid>/`` (same filesystem, so the registry can rename
the result into ``maps/<map_id>/<version>/`` atomically) and end with :func:`validate_bundle`.

Archive rules (ApiError 422 unless noted): a tar, optionally gzip/bzip2/xz compressed; only
regular files and directories; no absolute names, no ``..``, no links of any kind; at most
``max_members`` members and ``max_bytes`` bytes in total as declared by the member headers
(413), which also bounds a compression bomb since tar extracts exactly the declared sizes.
The bundle is either the archive root or its single top-level folder.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from api.errors import ApiError
from bundleio import MANIFEST, read_manifest, verify_files
from core.types import VlocError

REQUIRED = ("model", "features.h5", "retrieval.npz")


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    p = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or p.is_absolute() or ":" in p.parts[0] or "\\" in name:
        raise ApiError(422, f"archive member {name[:200]!r} has an absolute or non-portable path")
    if any(part == ".." for part in p.parts):
        raise ApiError(422, f"archive member {name[:200]!r} points outside the archive ('..')")
    if m.issym() or m.islnk():
        raise ApiError(422, f"archive member {name[:200]!r} is a link; bundles contain only files and folders")
    if not (m.isfile() or m.isdir()):
        raise ApiError(422, f"archive member {name[:200]!r} is not a regular file or folder")


def extract_archive(fileobj: BinaryIO, dest: Path, max_bytes: int, max_members: int) -> Path:
    """Extract a bundle archive into the empty directory ``dest``; returns the bundle root."""
    total = count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            for m in tf:
                count += 1
                if count > max_members:
                    raise ApiError(413, f"archive has more than {max_members} members")
                _check_member(m)
                total += max(m.size, 0)
                if total > max_bytes:
                    raise ApiError(413, f"archive expands to more than {max_bytes} bytes")
                tf.extract(m, dest, filter="data")
    except ApiError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
        raise ApiError(422, f"not a readable tar archive: {e}") from None
    if count == 0:
        raise ApiError(422, "the archive is empty")
    return bundle_root(dest)


def bundle_root(dest: Path) -> Path:
    """``dest`` when it holds manifest.json, else its single top-level folder that does."""
    if (dest / MANIFEST).is_file():
        return dest
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise ApiError(422, f"no {MANIFEST} at the archive root or in its single top-level folder: not a map bundle")


ENABLE_PATHS = ("registration by server-side path is off on this server: upload the bundle as a tar "
                "instead, or have the operator name the directories bundles may come from (setting "
                "import_roots: VLOC_IMPORT_ROOTS='[\"/srv/bundles\"]' or 'vloc serve --import-root /srv/bundles')")


def copy_from_path(src: str, dest: Path, import_roots: list[Path], max_bytes: int, max_members: int) -> Path:
    """Copy a server-side bundle directory into ``dest``/bundle; returns the copy.

    Only under ``import_roots`` (none: registration by path is off, 403). The path is resolved
    (links followed) and checked against the roots before anything about it is said, so a path
    outside them gets the same 403 whether it exists or not; messages name paths relative to the
    bundle, never other files of the server."""
    if not import_roots:
        raise ApiError(403, ENABLE_PATHS)
    try:
        path = Path(src).expanduser().resolve(strict=False)
        roots = [Path(r).expanduser().resolve(strict=False) for r in import_roots]
    except (OSError, RuntimeError, ValueError):
        raise ApiError(422, f"{src[:300]!r} is not a usable path") from None
    if not any(path.is_relative_to(r) for r in roots):
        raise ApiError(403, f"{src[:300]!r} is outside the directories bundles may be registered from "
                            f"(setting import_roots: {', '.join(str(r) for r in roots)})")
    if not path.exists():
        raise ApiError(422, f"{src[:300]!r} does not exist on the server")
    if not path.is_dir():
        raise ApiError(422, f"{src[:300]!r} is not a directory")
    total = count = 0
    try:
        for root, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                p = Path(root) / name
                count += 1
                if p.is_symlink():
                    raise ApiError(422, f"{p.relative_to(path)} is a link; bundles contain only files and folders")
                if count > max_members:
                    raise ApiError(413, f"bundle has more than {max_members} files")
                if name in files:
                    total += p.stat().st_size
                    if total > max_bytes:
                        raise ApiError(413, f"bundle is larger than {max_bytes} bytes")
        out = dest / "bundle"
        shutil.copytree(path, out, symlinks=True)
    except ApiError:
        raise
    except OSError as e:
        raise ApiError(422, f"cannot read {src[:300]!r}: {e.strerror or type(e).__name__}") from None
    return out


def validate_bundle(root: Path) -> dict:
    """Check a staged bundle (manifest, format version, file list, checksums); returns its manifest."""
    try:
        manifest = read_manifest(root)
    except VlocError as e:
        raise ApiError(422, f"not a valid map bundle: {e}") from None
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ApiError(422, "not a valid map bundle: the manifest has no file list")
    for rel in files:
        p = PurePosixPath(str(rel))
        if p.is_absolute() or ".." in p.parts:
            raise ApiError(422, f"not a valid map bundle: manifest names a file outside the bundle: {str(rel)[:200]!r}")
    missing = [r for r in REQUIRED if not (root / r).exists()]
    if missing:
        raise ApiError(422, f"not a valid map bundle: missing {', '.join(missing)}")
    try:
        bad = verify_files(root, manifest)
    except (KeyError, TypeError, OSError) as e:
        raise ApiError(422, f"not a valid map bundle: cannot verify its files ({e!r})") from None
    if bad:
        raise ApiError(422, f"bundle files differ from the manifest's sizes/checksums: {', '.join(bad[:10])}")
    return manifest


def summarize(manifest: dict) -> dict:
    """The registry's summary of a bundle (shown by GET /v1/maps)."""
    s = manifest.get("statistics") or {}
    return {"format_version": manifest.get("format_version"), "vloc_version": manifest.get("vloc_version"),
            "created_utc": manifest.get("created_utc"), "n_images": s.get("n_images"),
            "n_points3D": s.get("n_points3D"), "world_frame": (manifest.get("world_frame") or {}).get("kind"),
            "georeferenced": "georeference" in manifest}


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
