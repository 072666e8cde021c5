"""The map and key registry: SQLite in ``DATA_DIR/registry.sqlite``, bundles in ``DATA_DIR/maps/``.

Tables: ``maps`` (id, active version, next version number), ``versions`` (one registered bundle
each, stored at ``DATA_DIR/maps/<map_id>/<version>/``), ``api_keys`` (sha256 of the secret,
never the secret), ``grants`` (robot key -> map id, ``*`` for every map), ``activations`` (each
time a version became the active one: when, and the key that did it; added to schema 1 as a new
table, which registries written before it simply gain on open).

Paths are derived from ids that match :data:`ID_RE` (one safe path component), never taken
from a request, so no id can reach outside the data directory. One short-lived connection per
call (WAL journal): safe from any thread and from a second process (the ``vloc keys`` CLI).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from api.errors import ApiError
from core.types import VlocError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALL_MAPS = "*"
ROLES = ("robot", "admin")
TOKEN_PREFIX = "vloc_"

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (
  map_id TEXT PRIMARY KEY, active_version TEXT, next_seq INTEGER NOT NULL DEFAULT 1,
  created_utc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
  map_id TEXT NOT NULL REFERENCES maps(map_id) ON DELETE CASCADE, version TEXT NOT NULL,
  bytes INTEGER NOT NULL, summary_json TEXT NOT NULL, registered_utc TEXT NOT NULL,
  PRIMARY KEY (map_id, version));
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('robot', 'admin')),
  token_sha256 TEXT NOT NULL UNIQUE, created_utc TEXT NOT NULL, revoked_utc TEXT);
CREATE TABLE IF NOT EXISTS grants (
  key_id TEXT NOT NULL REFERENCES api_keys(key_id) ON DELETE CASCADE, map_id TEXT NOT NULL,
  PRIMARY KEY (key_id, map_id));
CREATE TABLE IF NOT EXISTS activations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  map_id TEXT NOT NULL REFERENCES maps(map_id) ON DELETE CASCADE, version TEXT NOT NULL,
  activated_utc TEXT NOT NULL, key_id TEXT);
"""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def valid_id(s: str) -> bool:
    return isinstance(s, str) and ID_RE.fullmatch(s) is not None


def check_id(s: str, what: str = "map id") -> str:
    """``s`` when it is a valid id, else ApiError 422 (bad characters, path separators, too long)."""
    if not valid_id(s):
        raise ApiError(422, f"invalid {what} {s[:80]!r}: use 1-64 letters, digits, '_', '.', '-', "
                            f"starting with a letter or digit")
    return s


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class VersionRecord:
    map_id: str
    version: str
    bytes: int
    registered_utc: str
    summary: dict


@dataclass(frozen=True)
class MapRecord:
    map_id: str
    active_version: str | None
    created_utc: str
    versions: tuple[VersionRecord, ...]


@dataclass(frozen=True)
class ActivationRecord:
    """A version becoming a map's active one: when, and by which key (None: not through the API)."""

    map_id: str
    version: str
    activated_utc: str
    key_id: str | None


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    role: str
    maps: tuple[str, ...]
    created_utc: str
    revoked_utc: str | None = None


class Registry:
    """Maps, versions, active versions, API keys and grants of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.maps_dir = self.data_dir / "maps"
        self.tmp_dir = self.data_dir / "tmp"
        self.path = self.data_dir / "registry.sqlite"
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise VlocError(f"{self.path} was written by a newer vloc (registry schema {version} > "
                                f"{SCHEMA_VERSION}); upgrade vloc")
            c.executescript(SCHEMA)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            c.execute("PRAGMA foreign_keys=ON")
            yield c
        finally:
            c.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: writers serialise, readers go on)."""
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def ping(self) -> None:
        """Raise when the database cannot be read."""
        with self._conn() as c:
            c.execute("SELECT count(*) FROM maps").fetchone()

    # paths -----------------------------------------------------------------------------------
    def version_dir(self, map_id: str, version: str) -> Path:
        """``DATA_DIR/maps/<map_id>/<version>`` for validated ids (ValueError otherwise)."""
        if not (valid_id(map_id) and valid_id(version)):
            raise ValueError(f"invalid ids {map_id!r} / {version!r}")
        return self.maps_dir / map_id / version

    def staging_dir(self) -> Path:
        """A fresh empty directory on the data directory's filesystem (renamed into place later)."""
        d = self.tmp_dir / uuid.uuid4().hex
        d.mkdir()
        return d

    def clean_staging(self) -> None:
        """Remove leftovers of interrupted registrations / deletions (call at startup)."""
        for p in self.tmp_dir.iterdir():
            shutil.rmtree(p, ignore_errors=True)

    def discard(self, path: Path) -> None:
        """Move a directory out of the way (atomic rename into tmp/) and delete it."""
        if not path.exists():
            return
        trash = self.tmp_dir / f"deleted-{uuid.uuid4().hex}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # maps ------------------------------------------------------------------------------------
    def list_maps(self, only: set[str] | None = None) -> list[MapRecord]:
        """All maps (or those in ``only``) with their versions, ordered by id."""
        with self._conn() as c:
            maps = c.execute("SELECT map_id, active_version, created_utc FROM maps ORDER BY map_id").fetchall()
            vers = c.execute("SELECT map_id, version, bytes, registered_utc, summary_json FROM versions "
                             "ORDER BY map_id, registered_utc, version").fetchall()
        by_map: dict[str, list[VersionRecord]] = {}
        for m, v, b, r, s in vers:
            by_map.setdefault(m, []).append(VersionRecord(m, v, b, r, json.loads(s)))
        return [MapRecord(m, a, cr, tuple(by_map.get(m, ()))) for m, a, cr in maps
                if only is None or m in only]

    def get_map(self, map_id: str) -> MapRecord | None:
        with self._conn() as c:
            row = c.execute("SELECT map_id, active_version, created_utc FROM maps WHERE map_id = ?",
                            (map_id,)).fetchone()
            if row is None:
                return None
            vers = c.execute("SELECT version, bytes, registered_utc, summary_json FROM versions WHERE map_id = ? "
                             "ORDER BY registered_utc, version", (map_id,)).fetchall()
        return MapRecord(row[0], row[1], row[2],
                         tuple(VersionRecord(map_id, v, b, r, json.loads(s)) for v, b, r, s in vers))

    def active_version(self, map_id: str) -> VersionRecord | None:
        """The active version of a map; None when the map is unknown or has none active."""
        with self._conn() as c:
            row = c.execute("SELECT v.version, v.bytes, v.registered_utc, v.summary_json FROM maps m "
                            "JOIN versions v ON v.map_id = m.map_id AND v.version = m.active_version "
                            "WHERE m.map_id = ?", (map_id,)).fetchone()
        return None if row is None else VersionRecord(map_id, row[0], row[1], row[2], json.loads(row[3]))

    def count_maps(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT count(*) FROM maps").fetchone()[0])

    def active_versions(self) -> list[tuple[str, str]]:
        with self._conn() as c:
            return [tuple(r) for r in c.execute(
                "SELECT map_id, active_version FROM maps WHERE active_version IS NOT NULL").fetchall()]

    def add_version(self, map_id: str, staged_bundle: Path, summary: dict, nbytes: int,
                    version: str | None = None, activate: bool | None = None,
                    by: str | None = None) -> tuple[VersionRecord, bool]:
        """Move a validated bundle from the staging area into place and record it.

        version: None -> the map's next integer. activate: None -> when the map has no active
        version. by: the key id recorded with an activation. Returns (record, activated).
        ApiError 409 when the version exists.
        """
        check_id(map_id)
        if version is not None:
            check_id(version, "version")
        with self._write() as c:
            row = c.execute("SELECT active_version, next_seq FROM maps WHERE map_id = ?", (map_id,)).fetchone()
            if row is None:
                c.execute("INSERT INTO maps (map_id, created_utc) VALUES (?, ?)", (map_id, utc_now()))
                row = (None, 1)
            active, seq = row
            if version is None:
                taken = {v for (v,) in c.execute("SELECT version FROM versions WHERE map_id = ?", (map_id,))}
                while str(seq) in taken:
                    seq += 1
                version = str(seq)
            elif c.execute("SELECT 1 FROM versions WHERE map_id = ? AND version = ?",
                           (map_id, version)).fetchone():
                raise ApiError(409, f"map {map_id!r} already has a version {version!r}")
            if version.isdigit():
                seq = max(seq, int(version))
            c.execute("UPDATE maps SET next_seq = ? WHERE map_id = ?", (seq + 1, map_id))
            rec = VersionRecord(map_id, version, int(nbytes), utc_now(), summary)
            c.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                      (map_id, version, rec.bytes, json.dumps(summary), rec.registered_utc))
            do_activate = activate if activate is not None else active is None
            if do_activate:
                c.execute("UPDATE maps SET active_version = ? WHERE map_id = ?", (version, map_id))
                self._record_activation(c, map_id, version, by)
            final = self.version_dir(map_id, version)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():          # leftover of a crash between rename and commit
                self.discard(final)
            os.rename(staged_bundle, final)  # inside the transaction: a failed rename rolls it back
        return rec, do_activate

    def set_active(self, map_id: str, version: str, by: str | None = None) -> None:
        """Make ``version`` the active one (ApiError 404 when the map or version is unknown); ``by``:
        the key id recorded in the activation history."""
        with self._write() as c:
            self._require_version(c, map_id, version)
            c.execute("UPDATE maps SET active_version = ? WHERE map_id = ?", (version, map_id))
            self._record_activation(c, map_id, version, by)

    @staticmethod
    def _record_activation(c: sqlite3.Connection, map_id: str, version: str, by: str | None) -> None:
        c.execute("INSERT INTO activations (map_id, version, activated_utc, key_id) VALUES (?, ?, ?, ?)",
                  (map_id, version, utc_now(), by))

    def activations(self, map_id: str, limit: int = 100) -> list[ActivationRecord]:
        """The map's activation history, newest first (at most ``limit``)."""
        with self._conn() as c:
            rows = c.execute("SELECT map_id, version, activated_utc, key_id FROM activations WHERE map_id = ? "
                             "ORDER BY seq DESC LIMIT ?", (map_id, int(limit))).fetchall()
        return [ActivationRecord(*r) for r in rows]

    def remove_version(self, map_id: str, version: str) -> Path:
        """Forget a version (409 when it is active); returns its directory for :meth:`discard`."""
        with self._write() as c:
            self._require_version(c, map_id, version)
            (active,) = c.execute("SELECT active_version FROM maps WHERE map_id = ?", (map_id,)).fetchone()
            if active == version:
                raise ApiError(409, f"version {version!r} is the active version of map {map_id!r}: activate "
                                    f"another version first, or delete the map")
            c.execute("DELETE FROM versions WHERE map_id = ? AND version = ?", (map_id, version))
        return self.version_dir(map_id, version)

    def remove_map(self, map_id: str) -> Path:
        """Forget a map and all its versions; returns its directory for :meth:`discard`."""
        with self._write() as c:
            if c.execute("DELETE FROM maps WHERE map_id = ?", (map_id,)).rowcount == 0:
                raise ApiError(404, f"no map {map_id!r}")
        return self.maps_dir / check_id(map_id)

    @staticmethod
    def _require_version(c: sqlite3.Connection, map_id: str, version: str) -> None:
        if c.execute("SELECT 1 FROM maps WHERE map_id = ?", (map_id,)).fetchone() is None:
            raise ApiError(404, f"no map {map_id!r}")
        if c.execute("SELECT 1 FROM versions WHERE map_id = ? AND version = ?",
                     (map_id, version)).fetchone() is None:
            raise ApiError(404, f"map {map_id!r} has no version {version!r}")

    # keys ------------------------------------------------------------------------------------
    def create_key(self, role: str, maps: list[str] | tuple[str, ...] = (), name: str = "") -> tuple[KeyRecord, str]:
        """A new key; returns (record, secret). Only the secret's sha256 is stored."""
        if role not in ROLES:
            raise ApiError(422, f"role must be one of {', '.join(ROLES)}, got {role!r}")
        maps = tuple(dict.fromkeys(m for m in maps))
        for m in maps:
            if m != ALL_MAPS:
                check_id(m)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = KeyRecord(secrets.token_hex(6), name, role, maps, utc_now())
        with self._write() as c:
            c.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                      (rec.key_id, name, role, hash_token(token), rec.created_utc))
            c.executemany("INSERT INTO grants VALUES (?, ?)", [(rec.key_id, m) for m in maps])
        return rec, token

    def list_keys(self) -> list[KeyRecord]:
        with self._conn() as c:
            keys = c.execute("SELECT key_id, name, role, created_utc, revoked_utc FROM api_keys "
                             "ORDER BY created_utc, key_id").fetchall()
            grants = c.execute("SELECT key_id, map_id FROM grants ORDER BY map_id").fetchall()
        by_key: dict[str, list[str]] = {}
        for k, m in grants:
            by_key.setdefault(k, []).append(m)
        return [KeyRecord(k, n, r, tuple(by_key.get(k, ())), cr, rv) for k, n, r, cr, rv in keys]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key (True) or say it was unknown or already revoked (False)."""
        with self._write() as c:
            return c.execute("UPDATE api_keys SET revoked_utc = ? WHERE key_id = ? AND revoked_utc IS NULL",
                             (utc_now(), key_id)).rowcount > 0

    def key_for_token(self, token: str) -> KeyRecord | None:
        """The live key whose secret is ``token``, else None."""
        with self._conn() as c:
            row = c.execute("SELECT key_id, name, role, created_utc FROM api_keys "
                            "WHERE token_sha256 = ? AND revoked_utc IS NULL", (hash_token(token),)).fetchone()
            if row is None:
                return None
            maps = tuple(m for (m,) in c.execute("SELECT map_id FROM grants WHERE key_id = ?", (row[0],)))
        return KeyRecord(row[0], row[1], row[2], maps, row[3])
