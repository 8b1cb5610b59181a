"""Loading: output JSONL -> vector store -> the published LanceDB table.

Two steps, so that a table reader never loses a row of a complete source:

1. :func:`load_output` streams one output file (and its error file) line by line,
   checks every line (known ``custom_id``, status, index range, dimension, finite
   values), and stores the good vectors in the staging table (LanceDB, see
   :mod:`corpusbatch.staging`), then records their keys in the run store (SQLite,
   ``store.db``) in one transaction per file. This happens as soon as a batch finishes,
   so paid work is on disk at once; loading the same file twice is harmless (vectors
   are keyed by content).
2. :func:`publish` moves the table to the newest complete state *per source* with one
   commit that writes the new rows and deletes replaced and stale rows by id (a larger
   change than ``ATOMIC_UPSERT_BYTES`` is several commits of whole sources): a source is complete
   when each of its desired rows has a vector or failed for good. Complete sources get
   exactly their desired rows (new and changed rows upserted, stale rows deleted);
   sources still in flight keep their last published rows untouched; rows of sources
   that are gone are deleted. Unchanged rows are not rewritten; a run that changes
   nothing writes nothing. Published vectors leave staging: each vector is stored once.

The run store also holds the *desired* rows of the current run (what the sources say
the table should contain) and the permanent failures, so that a killed run resumes
without re-reading anything it already recorded.

Every input that does not come back with a usable vector is a :class:`FailedInput` of
one of three kinds, which say who is at fault (:func:`classify_error` decides):

``"input"``
    The provider says the input itself is bad (a 400, 413 or 422 that is not about the
    model, the ``dimensions`` parameter, the key or the quota; or a ``response: null``
    line whose code names a bad input, such as ``context_length_exceeded``). Only these
    are held against the input: recorded as failed for good and never sent again unless
    the user asks (``--retry-failed``).
``"stop"``
    Configuration or account trouble: 401, 402, 403, 404, an exhausted quota or billing
    limit, an invalid key, an unknown model, a 400 about the model or ``dimensions``, and
    a vector of the wrong dimension (``--dimensions``/``--model`` disagree with the
    provider; sending again would pay again for the same wrong answer). The run stops
    with a clear message; the input is not blamed and the next run picks it up.
``"retry"``
    Provider trouble that may pass: rate limits, timeouts, 5xx, expiry, cancellation,
    unknown codes, missing result lines, malformed output lines, non-finite vectors and
    embeddings missing from a response. Sent again later; never held against the input.

A malformed output line fails only that line's inputs (as ``"retry"``); nothing inside
an output file makes :func:`load_output` raise, so one bad line cannot wedge the index.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import json
import logging
import math
import random
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .errors import ConfigError, LoadError, redact
from .staging import LOOKUP_CHUNK, KeySet, Staging, lookup, quoted_in
from .staging import vector_bytes as staging_bytes
from .types import Chunk, EmbeddingIdentity, content_hash, row_id, vector_key

log = logging.getLogger(__name__)

FailureKind = Literal["input", "retry", "stop"]

# A request that failed with one of these may succeed when sent again (any code or
# status that says neither "bad input" nor "stop" is retried as well).
RETRYABLE_CODES = frozenset(
    {"batch_expired", "batch_cancelled", "request_timeout", "rate_limit_exceeded", "server_error"}
)
RETRYABLE_STATUS = frozenset({0, 408, 409, 429, 500, 502, 503, 504})
# The provider says the input itself is bad (unless the message is about the model).
INPUT_STATUS = frozenset({400, 413, 422})
INPUT_CODES = frozenset({"invalid_request_error", "invalid_input", "context_length_exceeded"})
# Configuration or account trouble: stop the run, whatever the status.
STOP_STATUS = frozenset({401, 402, 403, 404})
STOP_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "invalid_api_key", "model_not_found"}
)
_ABOUT_CONFIG = re.compile(
    r"\bdimensions\b"
    r"|\bmodel\b[^.]*\b(?:does not exist|not found|not supported|unsupported|not available"
    r"|do not have access|does not have access)"
    r"|\b(?:unknown|unsupported|invalid)\s+model\b",
    re.IGNORECASE,
)

# Dropping the texts of at least this many rows (and a fifth of all) rewrites store.db.
VACUUM_MIN_ROWS = 5000

_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS desired (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    heading TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS desired_key ON desired(key);
CREATE INDEX IF NOT EXISTS desired_source ON desired(source);
CREATE INDEX IF NOT EXISTS desired_content ON desired(content_hash);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changed (
    source TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    file_name TEXT NOT NULL,
    custom_id TEXT,
    code TEXT,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS content_of (
    key TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gc (
    content_hash TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS unstage (
    key TEXT PRIMARY KEY
);
"""
# Which keys have a vector, and where it came from. The vector itself is in the staging
# table (waiting, see corpusbatch/staging.py) or in the published table (its `key`
# column): never here. `content_hash` (of the chunk text, any identity) is what garbage
# collection goes by: a vector is kept while some desired row has its text, under this
# identity or another one (so switching back costs nothing).
_VECTORS_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key TEXT PRIMARY KEY,
    custom_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    content_hash TEXT
);
CREATE INDEX IF NOT EXISTS vectors_file ON vectors(file_name);
CREATE INDEX IF NOT EXISTS vectors_content ON vectors(content_hash);
"""


@dataclass(frozen=True, slots=True)
class FailedInput:
    """One embedding input that did not come back with a usable vector."""

    key: str
    custom_id: str
    status_code: int | None
    code: str | None
    message: str
    kind: FailureKind

    @property
    def retryable(self) -> bool:
        """Worth sending again later (``kind == "retry"``)."""
        return self.kind == "retry"


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the last scan saw of one source file."""

    sha256: str
    size: int
    mtime_ns: int
    fingerprint: str  # chunker + identity that produced its rows


@dataclass
class LoadResult:
    """What loading one output/error file pair found."""

    lines: int = 0
    vectors: int = 0
    tokens: int = 0
    failed: list[FailedInput] = field(default_factory=list)
    unknown_custom_ids: int = 0

    def by_kind(self, kind: FailureKind) -> list[FailedInput]:
        """The failed inputs of one kind, in the order they were found."""
        return [f for f in self.failed if f.kind == kind]


class RunStore:
    """SQLite store of desired rows, embedded vectors and permanent failures."""

    def __init__(self, path: Path, dimensions: int, staging: Path | None = None) -> None:
        self.path = path
        self.dimensions = dimensions
        self.staging = Staging(staging or path.with_name("staging"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: LanceDB pulls publish batches from its own thread while
        # this thread waits; the connection is never used by two threads at once.
        self.db = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        # a new store returns freed pages (dropped texts, collected keys) to the disk;
        # this must come before anything writes the file, WAL mode included
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL, like the journal: a power loss must not leave a file `loaded` in the journal
        # while its vectors were never synced here.
        self.db.execute("PRAGMA synchronous=FULL")
        # 64 MiB of page cache (the default is 2 MiB): scans of a million desired rows
        # and their key index otherwise thrash it
        self.db.execute("PRAGMA cache_size=-65536")
        # a first scan writes the whole store in one transaction: without a limit its
        # WAL file keeps that size (GBs at a million chunks) after the checkpoint
        self.db.execute("PRAGMA journal_size_limit=67108864")
        self.db.executescript(_STORE_SCHEMA)
        self._migrate_vectors()
        self.db.executescript(_VECTORS_SCHEMA)

    def _migrate_vectors(self) -> None:
        """Move vectors out of an older store.db (which kept them as blobs) to staging.

        Crash-safe: the blobs are appended to staging first (a repeated move leaves
        duplicates that readers tolerate), then one transaction swaps the SQLite table
        for the blob-less one; VACUUM returns the space.
        """
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(vectors)")}
        if "vector" not in cols:
            return
        total = self.count("vectors")
        log.warning("moving %d stored vectors from %s to the staging table", total, self.path)
        cur = self.db.execute("SELECT key, vector FROM vectors")
        while rows := cur.fetchmany(8192):
            self.staging.add(rows)
        with self.transaction() as db:
            db.execute("ALTER TABLE vectors RENAME TO vectors_blobs")
            db.execute("DROP INDEX IF EXISTS vectors_file")
            for statement in _VECTORS_SCHEMA.split(";"):  # (executescript would commit)
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO vectors (key, custom_id, file_name, content_hash)"
                " SELECT b.key, b.custom_id, b.file_name,"
                " (SELECT d.content_hash FROM desired d WHERE d.key = b.key LIMIT 1)"
                " FROM vectors_blobs b"
            )
            db.execute("DROP TABLE vectors_blobs")
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # (VACUUM makes it take effect)
        self.db.execute("VACUUM")
        self.staging.maintain()

    def release_memory(self) -> None:
        """Hand back the page cache of ``store.db`` (up to 64 MiB after a scan or plan of
        a large corpus; it fills again as needed)."""
        self.db.execute("PRAGMA shrink_memory")

    def close(self) -> None:
        self.db.close()

    # -- sources and desired rows ---------------------------------------------------
    def source_state(self, source: str) -> SourceState | None:
        row = self.db.execute(
            "SELECT sha256, size, mtime_ns, fingerprint FROM sources WHERE source = ?", (source,)
        ).fetchone()
        return SourceState(*row) if row else None

    def put_source(
        self, source: str, state: SourceState, rows: Iterable[tuple[Any, ...]] | None
    ) -> int:
        """Record ``source``'s state; with ``rows``, replace its desired rows too.

        Call inside :meth:`transaction`. Returns the number of rows written.
        """
        self.db.execute(
            "INSERT INTO sources (source, sha256, size, mtime_ns, fingerprint) VALUES (?,?,?,?,?)"
            " ON CONFLICT(source) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, fingerprint = excluded.fingerprint",
            (source, state.sha256, state.size, state.mtime_ns, state.fingerprint),
        )
        if rows is None:
            return 0
        self.mark_changed([source])
        self._leaving("source = ?", (source,))
        self.db.execute("DELETE FROM desired WHERE source = ?", (source,))
        cur = self.db.executemany(
            "INSERT OR REPLACE INTO desired (id, key, source, heading, start_line, end_line,"
            " n_tokens, text, content_hash) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
        return cur.rowcount

    def drop_sources(self, keep: set[str]) -> list[str]:
        """Forget every source not in ``keep`` (and its rows); call inside a transaction."""
        gone = [s for (s,) in self.db.execute("SELECT source FROM sources") if s not in keep]
        for source in gone:
            self._leaving("source = ?", (source,))
            self.db.execute("DELETE FROM desired WHERE source = ?", (source,))
            self.db.execute("DELETE FROM sources WHERE source = ?", (source,))
        self.mark_changed(gone)
        return gone

    def _leaving(self, where: str, args: tuple[Any, ...]) -> None:
        """Desired rows matching ``where`` are about to go: their texts become garbage
        collection candidates, and the text of a key with no vector yet (perhaps in
        flight under this identity) is remembered for when its vector arrives."""
        self.db.execute(
            "INSERT OR IGNORE INTO gc (content_hash)"
            f" SELECT content_hash FROM desired WHERE {where}",
            args,
        )
        self.db.execute(
            "INSERT OR IGNORE INTO content_of (key, content_hash) SELECT key, content_hash"
            f" FROM desired WHERE {where} AND key NOT IN (SELECT key FROM vectors)",
            args,
        )

    # What the next publish must look at. Normally the sources in `changed`: their
    # rows were rescanned or dropped, or vectors or failures arrived for their keys, so
    # a nightly publish reads and writes only those. "dirty" asks for a full check of
    # every row against the table instead (after a repair, for stores older than
    # `changed`, or when the table must be created or rebuilt).
    def mark_changed(self, sources: Iterable[str]) -> None:
        """Note sources whose table rows may differ from their desired rows (in a tx)."""
        self.db.executemany(
            "INSERT OR IGNORE INTO changed (source) VALUES (?)", ((s,) for s in sources)
        )

    def _mark_changed_keys(self, where: str, args: tuple[Any, ...]) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO changed (source) SELECT DISTINCT d.source FROM desired d"
            f" WHERE d.key IN ({where})",
            args,
        )

    def changed_sources(self) -> list[str]:
        return [s for (s,) in self.db.execute("SELECT source FROM changed ORDER BY source")]

    def mark_dirty(self) -> None:
        """Ask the next publish to check every row (call inside a transaction)."""
        self.set_meta("dirty", "1")

    def is_dirty(self) -> bool:
        """Whether the next publish must check every row, not just changed sources."""
        return self.get_meta("dirty") != "0"

    def needs_publish(self) -> bool:
        """Whether a publish has anything to look at."""
        pending = self.db.execute("SELECT 1 FROM changed LIMIT 1").fetchone()
        return self.is_dirty() or pending is not None

    def mark_published(self, published: Collection[str] | None, waiting: Iterable[str]) -> None:
        """Forget what a publish brought up to date.

        ``published`` are the sources it published (None: it checked every row);
        ``waiting`` the incomplete sources it kept, which the next publish looks at again.
        """
        with self.transaction():
            if published is None:
                self.db.execute("DELETE FROM changed")
                self.set_meta("dirty", "0")
            else:
                self.db.executemany(
                    "DELETE FROM changed WHERE source = ?", ((s,) for s in published)
                )
            self.mark_changed(waiting)

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value; call inside a transaction."""
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def keys_to_embed(
        self, exclude: set[str], *, among_changed: bool = False
    ) -> Iterator[tuple[str, str, int]]:
        """Distinct (key, text, n_tokens) of desired rows with no vector nor failure.

        ``among_changed`` looks only at sources marked changed, as
        :meth:`incomplete_sources` does (a source lacking a vector always is, unless a
        full check is due), so a nightly count does not read the whole store."""
        scope = " AND source IN (SELECT source FROM changed)" if among_changed else ""
        # in the order rows were written (a sequential read: grouping by key read the
        # rows in key order, one random page each, 129 s at a million rows); a row with
        # no text (dropped after publishing) waits for its source to be read again
        cur = self.db.execute(
            "SELECT key, text, n_tokens FROM desired"
            " WHERE text != '' AND key NOT IN (SELECT key FROM vectors)"
            f" AND key NOT IN (SELECT key FROM failures){scope}"
            " ORDER BY rowid"
        )
        seen: set[str] = set()
        for key, text, n_tokens in cur:
            if key not in exclude and key not in seen:
                seen.add(key)
                yield key, text, n_tokens

    def texts_for(self, keys: Sequence[str]) -> dict[str, tuple[str, int]]:
        """(text, n_tokens) of each key in ``keys`` that a desired row still uses."""
        out: dict[str, tuple[str, int]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = ", ".join("?" * len(part))
            for key, text, n in self.db.execute(
                f"SELECT key, MAX(text), MIN(n_tokens) FROM desired WHERE key IN ({q})"
                " GROUP BY key",
                part,
            ):
                if text:
                    out[key] = (text, n)
        return out

    def missing_vectors(self, keys: Sequence[str]) -> list[str]:
        """The keys among ``keys`` that have no stored vector."""
        have = self._have(keys)
        return [k for k in keys if k not in have]

    def incomplete_sources(self, among_changed: bool = False) -> list[str]:
        """Sources with a desired row that has neither a vector nor a permanent failure.

        Such a source is still in flight: publishing keeps its last published rows. With
        ``among_changed`` only sources marked changed are looked at (every incomplete
        source is, unless a full check is due), so a nightly publish reads only those.
        """
        scope = " AND d.source IN (SELECT source FROM changed)" if among_changed else ""
        return [
            s
            for (s,) in self.db.execute(
                "SELECT DISTINCT d.source FROM desired d"
                " LEFT JOIN vectors v ON v.key = d.key"
                " LEFT JOIN failures f ON f.key = d.key"
                f" WHERE v.key IS NULL AND f.key IS NULL{scope} ORDER BY d.source"
            )
        ]

    def where_used(self, key: str) -> list[tuple[str, int, int]]:
        """(source, start_line, end_line) of every desired row with vector ``key``."""
        return list(
            self.db.execute(
                "SELECT source, start_line, end_line FROM desired WHERE key = ? ORDER BY source",
                (key,),
            )
        )

    # -- vectors ------------------------------------------------------------------
    def add_vectors(self, rows: Iterable[tuple[str, bytes, str, str]]) -> int:
        """Store (key, float32 bytes, custom_id, file_name); keys already known are kept.

        The vectors go to the staging table a part at a time (bounded memory); then one
        SQLite transaction records their keys and marks the sources that use them
        changed. A crash in between leaves staged vectors SQLite does not know: loading
        the file again stores them again, and :meth:`sweep_staging` drops the strays.
        """
        noted: list[tuple[str, str, str]] = []
        part: list[tuple[str, bytes, str, str]] = []
        for row in rows:
            part.append(row)
            if len(part) >= 4096:
                noted += self._stage(part)
                part = []
        noted += self._stage(part)
        if not noted:
            return 0
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO vectors (key, custom_id, file_name, content_hash)"
                " VALUES (?1, ?2, ?3, COALESCE((SELECT content_hash FROM desired"
                " WHERE key = ?1 LIMIT 1), (SELECT content_hash FROM content_of WHERE key = ?1)))",
                noted,
            )
            added = db.total_changes - before
            for i in range(0, len(noted), 500):
                part_keys = tuple(r[0] for r in noted[i : i + 500])
                q = ", ".join("?" * len(part_keys))
                db.execute(f"DELETE FROM content_of WHERE key IN ({q})", part_keys)
                self._mark_changed_keys(q, part_keys)
        return added

    def _stage(self, rows: list[tuple[str, bytes, str, str]]) -> list[tuple[str, str, str]]:
        """Append the rows whose key has no vector yet to staging (first copy wins)."""
        if not rows:
            return []
        known = self._have([r[0] for r in rows])
        fresh: dict[str, tuple[str, bytes, str, str]] = {}
        for r in rows:
            if r[0] not in known and r[0] not in fresh:
                fresh[r[0]] = r
        self.staging.add([(k, r[1]) for k, r in fresh.items()])
        return [(k, r[2], r[3]) for k, r in fresh.items()]

    def desired_among(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` that some desired row uses."""
        return self._keys_in("desired", keys)

    def _have(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` that have a vector."""
        return self._keys_in("vectors", keys)

    def _keys_in(self, table: str, keys: Sequence[str]) -> set[str]:
        assert table in ("desired", "vectors", "unstage")
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = ", ".join("?" * len(part))
            found.update(
                k for (k,) in self.db.execute(f"SELECT key FROM {table} WHERE key IN ({q})", part)
            )
        return found

    def adopt(self, table: Any, keys: Sequence[str]) -> int:
        """Record the ``keys`` that the published ``table`` already holds a vector for.

        The table is the cache of everything published: a text that comes back (a
        revert, a copied file) after its vector was collected here is found there,
        and costs nothing. Returns how many keys were adopted.
        """
        found: list[tuple[str, str, str, str | None]] = []
        for i in range(0, len(keys), LOOKUP_CHUNK):
            got = (
                table.search()
                .where(quoted_in("key", keys[i : i + LOOKUP_CHUNK]))
                .select(["key", "custom_id", "content_hash"])
                .limit(None)
                .to_arrow()
            )
            found += [
                (k, c or "", "(published table)", h)
                for k, c, h in zip(
                    got["key"].to_pylist(),
                    got["custom_id"].to_pylist(),
                    got["content_hash"].to_pylist(),
                    strict=True,
                )
            ]
        if found:
            with self.transaction() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO vectors (key, custom_id, file_name, content_hash)"
                    " VALUES (?,?,?,?)",
                    found,
                )
                part = tuple({f[0] for f in found})
                for i in range(0, len(part), 500):
                    sub = part[i : i + 500]
                    self._mark_changed_keys(", ".join("?" * len(sub)), sub)
        return len({f[0] for f in found})

    def forget_vectors(self, keys: Collection[str]) -> None:
        """Forget that ``keys`` have vectors (none could be found): their sources are
        incomplete again and the next run embeds them (reading a source again first
        where its texts were dropped after publishing)."""
        ordered = sorted(keys)
        with self.transaction() as db:
            for i in range(0, len(ordered), 500):
                part = tuple(ordered[i : i + 500])
                q = ", ".join("?" * len(part))
                self._mark_changed_keys(q, part)
                db.execute(f"DELETE FROM vectors WHERE key IN ({q})", part)
                self.rescan(
                    s
                    for (s,) in db.execute(
                        f"SELECT DISTINCT source FROM desired WHERE key IN ({q}) AND text = ''",
                        part,
                    ).fetchall()
                )
        self.staging.delete(ordered)

    def rescan(self, sources: Iterable[str]) -> None:
        """Make the next scan read and chunk ``sources`` again whatever their stat (their
        rows lack a text that is needed again); until then they keep their rows."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE sources SET sha256 = '', size = -1, mtime_ns = -1 WHERE source = ?",
                ((s,) for s in sources),
            )

    def drop_texts(self, published: Collection[str] | None, keep: Collection[str]) -> None:
        """Forget the chunk texts of published sources (``None``: every source but
        ``keep``): the published table holds them now, so each text is stored once.

        Rows that shrink leave their pages mostly empty (SQLite does not merge them): when
        a large share of the rows lost their texts (a first index), the store is
        rewritten compactly (VACUUM); small nightly drops just reuse the space."""
        with self.transaction() as db:
            if published is None:
                _stage_sources(self, "texts_keep", keep)
                dropped = db.execute(
                    "UPDATE desired SET text = '' WHERE text != ''"
                    " AND source NOT IN (SELECT source FROM texts_keep)"
                ).rowcount
            else:
                _stage_sources(self, "texts_drop", published)
                dropped = db.execute(
                    "UPDATE desired SET text = '' WHERE text != ''"
                    " AND source IN (SELECT source FROM texts_drop)"
                ).rowcount
        if dropped >= max(VACUUM_MIN_ROWS, self.count("desired") // 5):
            log.info("compacting %s after dropping %d published texts", self.path, dropped)
            self.db.execute("VACUUM")
        else:
            self.db.execute("PRAGMA incremental_vacuum")

    def collect_garbage(self) -> int:
        """Drop vectors whose text no desired row has any more (under any identity).

        Candidates are the texts of desired rows replaced or dropped since the last
        collection. Vectors of published rows are dropped by the publish that deletes
        the rows; here their keys are forgotten and staged copies deleted. Returns how
        many vectors were collected.
        """
        dead: list[str] = []
        cur = self.db.execute(
            "SELECT v.key FROM gc g JOIN vectors v ON v.content_hash = g.content_hash"
            " WHERE NOT EXISTS (SELECT 1 FROM desired d WHERE d.content_hash = g.content_hash)"
        )
        dead = [k for (k,) in cur]
        with self.transaction() as db:
            for i in range(0, len(dead), 500):
                part = tuple(dead[i : i + 500])
                db.execute(f"DELETE FROM vectors WHERE key IN ({', '.join('?' * len(part))})", part)
            db.execute(
                "DELETE FROM content_of WHERE content_hash IN (SELECT content_hash FROM gc)"
                " AND NOT EXISTS (SELECT 1 FROM desired d"
                " WHERE d.content_hash = content_of.content_hash)"
            )
            db.execute("DELETE FROM gc")
        self.staging.delete(dead)
        if dead:
            log.info("collected %d vectors no source uses any more", len(dead))
        return len(dead)

    def sweep_staging(self) -> int:
        """Delete staged vectors whose key this store does not know (left by a crash
        between the staging append and the SQLite commit)."""
        stray: list[str] = []
        for keys in self.staging.key_batches():
            known = self._have(keys)
            stray += [k for k in keys if k not in known]
        self.staging.delete(set(stray))
        return len(stray)

    def record_failures(self, failures: Iterable[FailedInput], file_name: str) -> None:
        """Record inputs rejected for good; their sources are marked changed."""
        rows = [(f.key, file_name, f.custom_id, f.code, f.message) for f in failures]
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO failures (key, file_name, custom_id, code, message)"
                " VALUES (?,?,?,?,?)",
                rows,
            )
            for i in range(0, len(rows), 500):
                part = tuple(r[0] for r in rows[i : i + 500])
                self._mark_changed_keys(", ".join("?" * len(part)), part)

    def failures(self) -> list[tuple[str, str, str | None, str]]:
        """(key, file_name, code, message) of inputs that failed for good."""
        return list(self.db.execute("SELECT key, file_name, code, message FROM failures"))

    def clear_failures(self) -> int:
        """Forget permanent failures so the next run tries those inputs again."""
        with self.transaction():
            self._mark_changed_keys("SELECT key FROM failures", ())
            self.rescan(  # (a scan in this run reads them again: their texts are needed)
                s
                for (s,) in self.db.execute(
                    "SELECT DISTINCT source FROM desired"
                    " WHERE key IN (SELECT key FROM failures) AND text = ''"
                ).fetchall()
            )
            return self.db.execute("DELETE FROM failures").rowcount

    def count(self, table: str) -> int:
        assert table in ("desired", "vectors", "failures", "sources", "unstage")
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def transaction(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    """One transaction; inside one already open (a dry run's), just part of it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        self.outer = self.db.in_transaction
        if not self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def desired_rows(chunks: Iterable[Chunk], identity: EmbeddingIdentity) -> Iterator[tuple[Any, ...]]:
    """Rows for :meth:`RunStore.put_source` from one document's chunks.

    Equal chunks in one source get occurrence numbers 0, 1, ... so their row ids differ.
    """
    counts: dict[tuple[str, str], int] = {}
    for c in chunks:
        key = vector_key(identity, c.text)
        occurrence = counts.get((c.source, key), 0)
        counts[(c.source, key)] = occurrence + 1
        yield (
            row_id(key, c.source, occurrence),
            key,
            c.source,
            c.heading_path,
            c.start_line,
            c.end_line,
            c.n_tokens,
            c.text,
            content_hash(c.text),
        )


# -- classifying failures -----------------------------------------------------------
def classify_error(status: int | None, error: Any) -> tuple[str | None, str, FailureKind]:
    """(code, message, kind) of a failed output line; the one place that decides.

    ``status`` is ``response.status_code`` (None for the ``response: null`` shape) and
    ``error`` the ``response.body.error`` or top-level ``error`` object. See the module
    docstring for what each kind means.
    """
    if error is None:
        error = {}
    elif not isinstance(error, dict):
        error = {"message": str(error)}
    code = error.get("code") or error.get("type")
    code = str(code) if code is not None else None
    message = redact(str(error.get("message") or "no message"))  # stored and reported
    names = {str(error[n]) for n in ("code", "type") if error.get(n) is not None}
    param = error.get("param")
    about_config = param in ("model", "dimensions") or bool(_ABOUT_CONFIG.search(message))
    return code, message, _kind(status, names, about_config)


def _kind(status: Any, names: set[str], about_config: bool) -> FailureKind:
    if not isinstance(status, int) or status == 0:
        status = None
    if names & STOP_CODES or status in STOP_STATUS:
        return "stop"
    bad_input = status in INPUT_STATUS if status is not None else bool(names & INPUT_CODES)
    if not bad_input:
        return "retry"
    if about_config and "context_length_exceeded" not in names:
        return "stop"
    return "input"


def _failure(
    keys: Sequence[str], custom_id: str, status: int | None, error: Any
) -> list[FailedInput]:
    code, message, kind = classify_error(status, error)
    return [FailedInput(k, custom_id, status, code, message, kind) for k in keys]


# -- reading output files ---------------------------------------------------------
class _BadLine(Exception):
    """A problem inside one output line: fails that line's inputs, nothing else."""


def _decode_embedding(value: Any) -> np.ndarray:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _BadLine(f"bad base64 embedding: {exc}") from None
        if len(raw) % 4:
            raise _BadLine(f"base64 embedding of {len(raw)} bytes, not a multiple of 4")
        vec = np.frombuffer(raw, dtype="<f4")
    elif isinstance(value, list):
        arr = np.asarray(value) if value else np.zeros(0, np.float32)
        if arr.ndim != 1 or arr.dtype.kind not in "iuf":
            raise _BadLine("embedding list holds something other than numbers")
        vec = arr.astype(np.float32)
    else:
        raise _BadLine(f"embedding is a {type(value).__name__}, not a list or base64 string")
    if vec.size == 0:
        raise _BadLine("empty embedding")
    return vec


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(object or None, problem or ""); an object with a problem still names its inputs."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        obj, _ = _parse_line(raw.decode("utf-8", "replace").encode())
        return obj, f"invalid UTF-8: {exc}"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON: {exc}"
    return (obj, "") if isinstance(obj, dict) else (None, "not a JSON object")


def _iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                yield (lineno, *_parse_line(raw))


def _tokens(body: dict[str, Any]) -> int:
    usage = body.get("usage")
    n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return n if isinstance(n, int) and n > 0 else 0


class _LineReader:
    """Checks output lines against a manifest and yields vectors."""

    def __init__(
        self, manifest: dict[str, list[str]], dimensions: int, result: LoadResult, path: Path
    ) -> None:
        self.manifest = manifest
        self.dimensions = dimensions
        self.result = result
        self.path = path
        self.seen: set[str] = set()

    def vectors(self, path: Path) -> Iterator[tuple[str, bytes, str]]:
        for lineno, obj, problem in _iter_lines(path):
            self.result.lines += 1
            cid = obj.get("custom_id") if obj is not None else None
            keys = self.manifest.get(cid) if isinstance(cid, str) else None
            if obj is None:
                log.warning("%s line %d skipped: %s", path, lineno, problem)
                continue
            if keys is None or cid in self.seen:
                self.result.unknown_custom_ids += 1
                log.warning("%s line %d: unknown or repeated custom_id %r", path, lineno, cid)
                continue
            assert isinstance(cid, str)
            self.seen.add(cid)
            yield from self._checked(obj, cid, keys, lineno, problem)

    def _checked(
        self, obj: dict[str, Any], cid: str, keys: list[str], lineno: int, problem: str
    ) -> list[tuple[str, bytes, str]]:
        try:
            if problem:
                raise _BadLine(problem)
            return self._line(obj, cid, keys, lineno)
        except _BadLine as exc:
            log.warning("%s line %d (%s) malformed, will retry: %s", self.path, lineno, cid, exc)
            self.result.failed += [
                FailedInput(k, cid, None, "malformed_output", f"line {lineno}: {exc}", "retry")
                for k in keys
            ]
            return []

    def _line(
        self, obj: dict[str, Any], cid: str, keys: list[str], lineno: int
    ) -> list[tuple[str, bytes, str]]:
        response = obj.get("response")
        if not isinstance(response, dict):
            self.result.failed += _failure(keys, cid, None, obj.get("error"))
            return []
        status, body = response.get("status_code"), response.get("body")
        if not isinstance(status, int):
            raise _BadLine(f"status_code is {status!r}")
        if status != 200:
            error = body.get("error", body) if isinstance(body, dict) else body
            self.result.failed += _failure(keys, cid, status, error)
            return []
        if not isinstance(body, dict):
            raise _BadLine("response body is not an object")
        got = self._embeddings(body, len(keys))
        self.result.tokens += _tokens(body)
        return self._keep(got, cid, keys, lineno)

    def _embeddings(self, body: dict[str, Any], n: int) -> dict[int, np.ndarray]:
        data = body.get("data") or []
        if not isinstance(data, list):
            raise _BadLine("data is not a list")
        got: dict[int, np.ndarray] = {}
        for item in data:
            if not isinstance(item, dict):
                raise _BadLine("data item is not an object")
            index = item.get("index")
            if type(index) is int and 0 <= index < n and index not in got:
                got[index] = _decode_embedding(item.get("embedding"))
        return got

    def _keep(
        self, got: dict[int, np.ndarray], cid: str, keys: list[str], lineno: int
    ) -> list[tuple[str, bytes, str]]:
        out: list[tuple[str, bytes, str]] = []
        for i, key in enumerate(keys):
            vec = got.get(i)
            problem = self._check(vec)
            if problem is None:
                assert vec is not None
                out.append((key, vec.astype("<f4", copy=False).tobytes(), cid))
                continue
            log.warning("%s line %d (%s) input %d: %s", self.path, lineno, cid, i, problem[1])
            self.result.failed.append(
                FailedInput(key, cid, 200, problem[0], problem[1], problem[2])
            )
        self.result.vectors += len(out)
        return out

    def _check(self, vec: np.ndarray | None) -> tuple[str, str, FailureKind] | None:
        if vec is None:
            return "bad_vector", "missing from the response", "retry"
        if vec.shape != (self.dimensions,):
            return (
                "wrong_dimension",
                f"dimension {vec.shape[0]} != expected {self.dimensions}; check --dimensions"
                " and --model",
                "stop",
            )
        if not np.isfinite(vec).all():
            return "bad_vector", "non-finite values", "retry"
        return None


def load_output(
    store: RunStore,
    *,
    file_name: str,
    manifest: dict[str, list[str]],
    output_path: Path | None,
    error_path: Path | None = None,
    dimensions: int | None = None,
) -> LoadResult:
    """Load one finished batch file's output and error files into ``store``.

    ``dimensions`` is the vector length of the identity the file was planned for
    (default: the store's); a file planned before a change of ``--dimensions`` is
    still checked, and kept, under its own.

    Every input of the manifest ends up either as a stored vector or in
    ``result.failed`` exactly once (inputs that appear in neither file, or only on a line
    that could not be read, are failed as ``"retry"``; a repeated ``custom_id`` counts
    once, the first copy; lines of ``custom_id`` s the manifest does not know are
    skipped). A vector of the wrong length is ``"stop"`` only when no vector of the file
    had the right one (a configuration mismatch); among right ones it is provider
    damage, ``"retry"``. Nothing inside the files makes this raise; only a file missing
    from disk raises :class:`LoadError`.
    """
    result = LoadResult()
    dims = dimensions or store.dimensions
    reader = _LineReader(manifest, dims, result, output_path or Path("-"))
    for path in (output_path, error_path):
        if path is None:
            continue
        if not path.exists():
            raise LoadError(
                f"output file {path} is missing", path=str(path), hint="run `corpusbatch collect`"
            )
        reader.path = path
        store.add_vectors((k, v, cid, file_name) for k, v, cid in reader.vectors(path))
    if result.vectors:
        # Vectors of the right length came back too: the wrong ones are the provider's
        # damage, not a --dimensions/--model mismatch (that makes every vector wrong).
        result.failed = [
            dataclasses.replace(f, kind="retry") if f.code == "wrong_dimension" else f
            for f in result.failed
        ]
    failed_keys = {f.key for f in result.failed}
    for cid, keys in manifest.items():
        if cid not in reader.seen:
            result.failed += [
                FailedInput(k, cid, None, "missing", "no result line for this request", "retry")
                for k in keys
                if k not in failed_keys
            ]
    return result


# -- publishing -------------------------------------------------------------------
# Version of the published table's layout, kept in the identity blob of the schema
# metadata. A table written by an older layout therefore has another identity: the next
# `index` or `collect` rebuilds it in one commit from the stored vectors (no embedding),
# see :func:`table_is_current`. 1: flat columns only. 2: adds `doc_id` and `metadata`.
# 3: adds `key` (the content-addressed vector key: the table is the vector cache).
TABLE_SCHEMA_VERSION = 3

# What a citation needs, as one struct: LangChain's and LlamaIndex's LanceDB stores read
# a chunk's metadata from a column named `metadata` (struct -> dict).
METADATA_TYPE = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("heading", pa.string()),
        pa.field("start_line", pa.int32()),
        pa.field("end_line", pa.int32()),
    ]
)


def table_schema(identity: EmbeddingIdentity, settings_blob: dict[str, Any]) -> pa.Schema:
    """Arrow schema of the published table; the index identity rides in its metadata.

    ``doc_id`` is the chunk's source path (the document it came from: LlamaIndex's
    ``ref_doc_id``); ``metadata`` repeats ``id``, ``source``, ``heading`` and the line
    range as a struct for RAG frameworks, next to the flat columns that SQL filters use.
    """
    meta = {"corpusbatch": identity_meta(settings_blob)}
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), identity.dimensions)),
            pa.field("text", pa.string()),
            pa.field("source", pa.string()),
            pa.field("heading", pa.string()),
            pa.field("start_line", pa.int32()),
            pa.field("end_line", pa.int32()),
            pa.field("n_tokens", pa.int32()),
            pa.field("content_hash", pa.string()),
            pa.field("custom_id", pa.string()),
            pa.field("model", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("metadata", METADATA_TYPE),
            pa.field("key", pa.string()),
        ],
        metadata=meta,
    )


def identity_meta(settings_blob: dict[str, Any]) -> str:
    """What a table built with ``settings_blob`` carries in its schema metadata: two
    tables hold rows of the same identity and layout exactly when these are equal."""
    return json.dumps({**settings_blob, "schema_version": TABLE_SCHEMA_VERSION}, sort_keys=True)


def table_identity_meta(table: Any) -> str | None:
    """The :func:`identity_meta` a published table was built with (None: unknown)."""
    return _identity_of(table.schema)


def schema_version(schema: pa.Schema) -> int:
    """The layout version of a published table's schema (1 before versions were kept)."""
    raw = _identity_of(schema)
    try:
        blob = json.loads(raw) if raw else {}
    except ValueError:
        return 0
    version = blob.get("schema_version", 1) if isinstance(blob, dict) else 0
    return version if isinstance(version, int) else 0


def table_is_current(db: Any, name: str) -> bool:
    """Whether table ``name`` exists and has the current layout.

    False for a table written by an older corpusbatch: a run must publish then, and
    :func:`publish` rebuilds it in one commit from the stored vectors (its identity blob
    differs), so it is migrated without embedding anything.
    """
    try:
        table = db.open_table(name)
    except (FileNotFoundError, ValueError):
        return False
    return schema_version(table.schema) == TABLE_SCHEMA_VERSION


def _arrow_batch(
    rows: list[tuple[Any, ...]], vectors: list[bytes], schema: pa.Schema, model: str
) -> pa.RecordBatch:
    dim = schema.field("vector").type.list_size
    cols = list(zip(*rows, strict=True))
    flat = np.frombuffer(b"".join(vectors), dtype="<f4")
    if flat.size != dim * len(rows):
        raise LoadError("stored vectors have the wrong dimension", hint="run `corpusbatch verify`")
    ids = pa.array(cols[0], pa.string())
    sources = pa.array(cols[2], pa.string())
    headings = pa.array(cols[3], pa.string())
    starts = pa.array(cols[4], pa.int32())
    ends = pa.array(cols[5], pa.int32())
    metadata = pa.StructArray.from_arrays(
        [ids, sources, headings, starts, ends], fields=list(METADATA_TYPE)
    )
    arrays = [
        ids,
        pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim),
        pa.array(cols[7], pa.string()),
        sources,
        headings,
        starts,
        ends,
        pa.array(cols[6], pa.int32()),
        pa.array(cols[8], pa.string()),
        pa.array(cols[9], pa.string()),
        pa.array([model] * len(rows), pa.string()),
        sources,
        metadata,
        pa.array(cols[1], pa.string()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


_ROW_COLUMNS = (
    "SELECT d.id, d.key, d.source, d.heading, d.start_line, d.end_line, d.n_tokens, d.text,"
    " d.content_hash, v.custom_id"
)
_ROW_SELECT = _ROW_COLUMNS + " FROM desired d JOIN vectors v ON v.key = d.key"


def _rows_of(driver: str, on: str) -> str:
    """The row query driven by the (small) temp table ``driver``: CROSS JOIN keeps it
    the outer loop, where SQLite's planner would scan every desired row for each
    batch (quadratic at a million rows)."""
    return (
        f"{_ROW_COLUMNS} FROM {driver} x CROSS JOIN desired d ON d.{on} = x.{on}"
        " CROSS JOIN vectors v ON v.key = d.key"
    )


def stage_ids(store: RunStore, ids: set[str]) -> None:
    """Put ``ids`` in a temp table that :func:`iter_row_batches` can join on.

    A nightly publish touches a few rows of a large table; joining on the changed ids in
    SQLite reads just those rows, where filtering in Python would read every row's text.
    """
    store.db.execute("CREATE TEMP TABLE IF NOT EXISTS publish_ids (id TEXT PRIMARY KEY)")
    store.db.execute("DELETE FROM publish_ids")
    store.db.executemany("INSERT INTO publish_ids (id) VALUES (?)", ((i,) for i in ids))


def _stage_sources(store: RunStore, name: str, sources: Collection[str]) -> None:
    """Put ``sources`` in temp table ``name`` (one column ``source``) to join on."""
    store.db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (source TEXT PRIMARY KEY)")
    store.db.execute(f"DELETE FROM {name}")
    store.db.executemany(f"INSERT INTO {name} (source) VALUES (?)", ((s,) for s in sources))


class VectorFinder:
    """Finds the vector of each key: in staging, else in the published table.

    Records in ``store.db`` (its ``unstage`` table) which keys came from staging: they
    are deleted there once the publish has committed, as the table holds them then (a
    million keys are not held in memory). Remembers which keys were found nowhere.
    """

    def __init__(self, store: RunStore, table: Any | None) -> None:
        self.store = store
        self.table = table  # the published table, if it has this identity and a key column
        self.missing: set[str] = set()
        self.skipped_rows = 0  # rows left out because their vector is nowhere
        self.needs_text: set[str] = set()  # sources of rows whose text was dropped

    def find(self, keys: Sequence[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(keys))
        got = self.store.staging.fetch(wanted)
        self.note_staged(got)
        rest = [k for k in wanted if k not in got]
        if rest and self.table is not None:
            got.update(lookup(self.table, rest))
        self.missing.update(k for k in rest if k not in got)
        return got

    def note_staged(self, keys: Iterable[str]) -> None:
        """Keys about to be published from staging (deleted there after the commit;
        :func:`finish_unstaging` if the publish is killed after its commit)."""
        with self.store.transaction() as db:  # (one commit, not one per key)
            db.executemany("INSERT OR IGNORE INTO unstage (key) VALUES (?)", ((k,) for k in keys))


class _Unstage(KeySet):
    """The keys of ``store.db``'s ``unstage`` table, as a :class:`KeySet`."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.count("unstage")

    def chunks(self, size: int) -> Iterator[list[str]]:
        cur = self.store.db.execute("SELECT key FROM unstage ORDER BY key")
        while rows := cur.fetchmany(size):
            yield [k for (k,) in rows]

    def among(self, keys: Sequence[str]) -> set[str]:
        return self.store._keys_in("unstage", keys)


def iter_staged_rows(
    store: RunStore,
    schema: pa.Schema,
    model: str,
    finder: VectorFinder,
    *,
    skip_sources: Collection[str] = (),
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every desired row with a staged vector, as Arrow batches, for a table built whole.

    Staging is read once in its own order and joined to the desired rows by key in
    SQLite: one lookup per staged key there, instead of a filtered query of staging per
    batch of rows (at a million rows those queries made the first publish superlinear).
    Desired rows whose vector is recorded but not staged end in ``finder.missing``.
    """
    db = store.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_keys (key TEXT PRIMARY KEY)")
    db.execute("CREATE TEMP TABLE IF NOT EXISTS emitted_keys (key TEXT PRIMARY KEY)")
    db.execute("DELETE FROM emitted_keys")
    where = ""
    if skip_sources:
        _stage_sources(store, "publish_skip", skip_sources)
        where = " WHERE d.source NOT IN (SELECT source FROM publish_skip)"
    for keys, vectors in store.staging.rows():
        vecs = dict(zip(keys, vectors, strict=True))  # (a crash's duplicate: same vector)
        with store.transaction():
            db.execute("DELETE FROM batch_keys")
            db.executemany(
                "INSERT OR IGNORE INTO batch_keys (key) SELECT ?1"
                " WHERE NOT EXISTS (SELECT 1 FROM emitted_keys WHERE key = ?1)",
                ((k,) for k in vecs),
            )
            db.execute("INSERT OR IGNORE INTO emitted_keys (key) SELECT key FROM batch_keys")
        rows = db.execute(_rows_of("batch_keys", "key") + where + " ORDER BY d.rowid").fetchall()
        kept = [r for r in rows if r[7]]
        finder.needs_text.update(r[2] for r in rows if not r[7])
        finder.skipped_rows += len(rows) - len(kept)
        finder.note_staged({r[1] for r in kept})
        if kept:
            yield _arrow_batch(kept, [vecs[r[1]] for r in kept], schema, model)
        if on_rows is not None:
            on_rows(len(rows))
    lost = db.execute(
        "SELECT DISTINCT d.key FROM desired d JOIN vectors v ON v.key = d.key"
        + (where + " AND" if where else " WHERE")
        + " d.key NOT IN (SELECT key FROM emitted_keys)"
    ).fetchall()
    finder.missing.update(k for (k,) in lost)


def iter_row_batches(
    store: RunStore,
    schema: pa.Schema,
    model: str,
    finder: VectorFinder,
    *,
    staged_only: bool = False,
    skip_sources: Collection[str] = (),
    batch_rows: int = 8192,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Desired rows that have a vector, as Arrow batches.

    Only staged ids (:func:`stage_ids`) if asked; never rows of ``skip_sources``. A row
    whose vector ``finder`` cannot find is left out (its key ends in ``finder.missing``).
    """
    sql = _rows_of("publish_ids", "id") if staged_only else _ROW_SELECT
    if skip_sources:
        _stage_sources(store, "publish_skip", skip_sources)
        sql += " WHERE d.source NOT IN (SELECT source FROM publish_skip)"
    cur = store.db.execute(sql + " ORDER BY d.source, d.start_line, d.id")
    while rows := cur.fetchmany(batch_rows):
        found = finder.find([r[1] for r in rows])  # (also for rows lacking a text: a
        kept = [r for r in rows if r[1] in found and r[7]]  # lost vector is noticed now)
        finder.skipped_rows += len(rows) - len(kept)
        finder.needs_text.update(r[2] for r in rows if not r[7])
        if kept:
            yield _arrow_batch(kept, [found[r[1]] for r in kept], schema, model)
        if on_rows is not None:
            on_rows(len(rows))


@dataclass
class PublishResult:
    """What one publish did to the table."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0  # rows of complete sources left as they were
    version: int | None = None  # None: there is no table (nothing complete to publish)
    incomplete_sources: list[str] = field(default_factory=list)  # kept as last published
    deferred_rebuild: bool = False  # identity changed; rebuild waits for every source
    # sources brought up to date by an incremental publish; None: every row was checked
    published_sources: list[str] | None = None


def _existing_rows(
    current: pa.Table | None, skip: Collection[str]
) -> dict[str, tuple[str, int, int]]:
    existing: dict[str, tuple[str, int, int]] = {}
    if current is None:
        return existing
    for rid, source, heading, start, end in zip(
        current["id"].to_pylist(),
        current["source"].to_pylist(),
        current["heading"].to_pylist(),
        current["start_line"].to_pylist(),
        current["end_line"].to_pylist(),
        strict=True,
    ):
        if source not in skip:
            existing[rid] = (heading, start, end)
    return existing


def diff_against_table(
    store: RunStore,
    current: pa.Table | None,
    skip: Collection[str] = (),
    only: Collection[str] | None = None,
) -> tuple[set[str], set[str], int, int]:
    """(ids to upsert, ids to delete, n_new, n_unchanged) from desired rows with vectors.

    Rows of the sources in ``skip`` (still in flight) are left out on both sides: none
    of them is upserted or deleted. With ``only``, just the desired rows of those
    sources are read (``current`` must then hold just their table rows).
    """
    skip = frozenset(skip)  # membership is tested once per row
    existing = _existing_rows(current, skip)
    upsert: set[str] = set()
    wanted: set[str] = set()
    new = unchanged = 0
    sql = (
        "SELECT d.id, d.source, d.heading, d.start_line, d.end_line FROM desired d"
        " JOIN vectors v ON v.key = d.key"
    )
    if only is not None:
        _stage_sources(store, "publish_only", only)
        sql += " WHERE d.source IN (SELECT source FROM publish_only)"
    for rid, source, heading, start, end in store.db.execute(sql):
        if source in skip:
            continue
        wanted.add(rid)
        old = existing.get(rid)
        if old is None:
            new += 1
            upsert.add(rid)
        elif old != (heading, start, end):
            upsert.add(rid)
        else:
            unchanged += 1
    delete = set(existing) - wanted
    return upsert, delete, new, unchanged


def sql_in(column: str, values: Iterable[str]) -> str:
    """A SQL ``IN`` filter for hex/identifier-like values (quotes are escaped)."""
    return quoted_in(column, sorted(values))


def namespace_filter(prefix: str) -> str | None:
    """SQL filter for the rows of one writer's namespace (None: the whole table)."""
    if not prefix:
        return None
    return "starts_with(source, '" + prefix.replace("'", "''") + "')"


def _current_rows(table: Any, sources: Collection[str] | None = None, prefix: str = "") -> pa.Table:
    """id, key, source, heading and lines of the table's rows (only of ``sources``, or
    with every source, only of the namespace ``prefix``)."""
    cols = ["id", "key", "source", "heading", "start_line", "end_line"]
    if sources is None:
        query = table.search()
        if (where := namespace_filter(prefix)) is not None:
            query = query.where(where)
        return query.select(cols).limit(None).to_arrow()
    parts = []
    names = sorted(sources)
    for i in range(0, len(names), 500):  # a scalar index on `source` makes each cheap
        where = sql_in("source", names[i : i + 500])
        parts.append(table.search().where(where).select(cols).limit(None).to_arrow())
    if not parts:  # (limit(0) would mean "no limit" to LanceDB)
        return pa.schema([table.schema.field(c) for c in cols]).empty_table()
    return pa.concat_tables(parts)


def publish(
    db: Any,
    table_name: str,
    store: RunStore,
    schema: pa.Schema,
    model: str,
    on_rows: Callable[[int], None] | None = None,
    namespace: str = "",
) -> PublishResult:
    """Bring every complete source's rows in the table up to date.

    A source is complete when each of its desired rows has a vector or failed for good
    (:meth:`RunStore.incomplete_sources`). Complete sources get exactly their desired
    rows that have vectors: new and changed rows are upserted and stale rows deleted by
    id in one commit, so a reader sees a publish whole or not at all
    (at any table size; a change past ``ATOMIC_UPSERT_BYTES`` of new rows is several
    commits, each of whole sources). Sources still in flight keep their last published
    rows; rows of sources no longer desired are
    deleted. Nothing is written when nothing changed, and
    no table is created while no row can be published. If the table was built with
    another index identity (model, dimensions, prefix, chunker, layout; kept in the
    schema metadata) it is replaced whole by one overwrite commit once every source is
    complete (until then it is left as it is: vectors of two models never mix).

    Vectors come from the staging table and leave it once the table holds them; the
    published table's own rows supply the vectors of rows that move.

    With a ``namespace`` (a source prefix such as ``"docs/"``; every source of ``store``
    has it) the table is shared with other writers: only rows whose source starts with
    it are read, upserted or deleted, and a table of another identity is refused
    (:class:`ConfigError`) instead of replaced, since the other writers' rows would go.
    """
    table = db.open_table(table_name) if _table_exists(db, table_name) else None
    same = table is not None and _identity_of(table.schema) == _identity_of(schema)
    if table is not None and not same and namespace:
        raise _shared_identity_error(table_name, table.schema, schema)
    if same:
        finish_unstaging(store, table)  # a publish killed after its commit
    else:  # (noted for a table that is gone or replaced: their vectors stay staged)
        store.db.execute("DELETE FROM unstage")
    full = not same or store.is_dirty()
    incomplete = store.incomplete_sources(among_changed=not full)
    finder = VectorFinder(store, table if same else None)
    if table is None and namespace:
        table = _create_shared(db, table_name, schema)
        same, finder = True, VectorFinder(store, table)
    if table is None:
        result = _create(
            db, table_name, store, schema, model, finder, skip=incomplete, on_rows=on_rows
        )
    elif not same:
        result = _rebuild(db, table, table_name, store, schema, model, finder, incomplete, on_rows)
    else:
        only = None if full else set(store.changed_sources()) - set(incomplete)

        def update(table: Any, finder: VectorFinder) -> PublishResult:
            args = (table, store, schema, model, finder, incomplete, only, on_rows)
            return _update(*args, prefix=(namespace or "") if full else "")

        if namespace:
            result, finder = _update_shared(db, table_name, store, update)
        else:
            result = update(table, finder)
        if only is not None:
            result.published_sources = sorted(only)
    result.incomplete_sources = incomplete
    if result.version is not None and not result.deferred_rebuild:
        _unstage(store)
        store.drop_texts(result.published_sources, keep=incomplete)
    if finder.needs_text:
        log.warning(
            "%d sources have rows the table lost along with their text; they are read "
            "again by the next run",
            len(finder.needs_text),
        )
        store.rescan(finder.needs_text)
    if finder.missing:
        log.warning(
            "%d vectors recorded as stored could not be found; their sources will be "
            "embedded again by the next run",
            len(finder.missing),
        )
        store.forget_vectors(finder.missing)
    if incomplete:
        log.info("%d sources still in flight keep their published rows", len(incomplete))
    return result


def _update_shared(
    db: Any,
    table_name: str,
    store: RunStore,
    update: Callable[[Any, VectorFinder], PublishResult],
) -> tuple[PublishResult, VectorFinder]:
    """``update(table, finder)`` on a shared table, done again from its newest version
    when another writer's commit made ours impossible (Lance gives up on an upsert that
    meets a concurrent overwrite, see :func:`_create_shared`; redoing it is safe, since
    rows are keyed by id and what differs is worked out again)."""

    def attempt() -> tuple[PublishResult, VectorFinder]:
        table = db.open_table(table_name)
        finish_unstaging(store, table)  # (keys noted by an attempt that gave way)
        finder = VectorFinder(store, table)
        return update(table, finder), finder

    result: tuple[PublishResult, VectorFinder] = retry_conflicts(attempt, "publish")
    return result


def _create_shared(db: Any, name: str, schema: pa.Schema) -> Any:
    """The table a namespaced writer publishes into, created empty if there is none.

    Writers of one table may start at once. Creating is refused when the table exists
    already (then it is opened), but two writers that both found none both commit a
    create, and Lance lands the later one as an overwrite on top of the earlier: should
    another writer have published in between, its rows would be gone. So a create that
    landed on an existing version puts back the rows of the version before it
    (:func:`_undo_overwrite`). One of another identity is refused.
    """
    try:
        table = db.create_table(name, schema=schema)
    except Exception as exc:  # it exists (or a racing writer made it meanwhile)
        if not _table_exists(db, name):
            raise
        log.info("table %r exists already, made by another writer (%s)", name, exc)
        table = db.open_table(name)
    else:
        if table.version > 1:
            _undo_overwrite(db, name, table)
    if _identity_of(table.schema) != _identity_of(schema):
        raise _shared_identity_error(name, table.schema, schema)
    return table


def _undo_overwrite(db: Any, name: str, table: Any) -> None:
    """Our create of table ``name`` landed as version N on a table another writer made
    meanwhile: insert again every row of version N - 1 (rows of ours there are none)."""
    before = db.open_table(name)
    before.checkout(table.version - 1)
    if not (lost := before.count_rows()):
        log.info("table %r: our create raced another writer's, nothing was lost", name)
        return
    log.warning(
        "table %r: our create landed on another writer's version %d; putting its %d rows back",
        name,
        table.version - 1,
        lost,
    )

    def put_back() -> None:
        rows = before.search().limit(None).to_batches(8192)
        reader = pa.RecordBatchReader.from_batches(before.schema, rows)
        table.merge_insert("id").when_not_matched_insert_all().execute(reader)

    retry_conflicts(put_back, "restore rows")


def _shared_identity_error(name: str, have: pa.Schema, want: pa.Schema) -> ConfigError:
    """Why a namespaced writer may not publish into a table built with other settings."""

    def blob(schema: pa.Schema) -> dict[str, Any]:
        try:
            value = json.loads(_identity_of(schema) or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    old, new = blob(have), blob(want)
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k} {old.get(k)!r} (this writer: {new.get(k)!r})" for k in differ)
    return ConfigError(
        f"table {name!r} is shared by namespaced writers and was built with other "
        f"settings: {shown or 'an unreadable identity'}; it is not rebuilt, since that "
        "would delete the other writers' rows",
        hint="every writer of one table must use the same provider, model, dimensions, "
        "input prefix and chunking; use those settings, or another --table or --db",
    )


def _unstage(store: RunStore) -> None:
    """The table holds what came from staging now: delete it there."""
    store.staging.delete(_Unstage(store))
    store.db.execute("DELETE FROM unstage")


def finish_unstaging(store: RunStore, table: Any) -> None:
    """Finish what a publish killed after its commit left: staged vectors that the
    table holds now are deleted from staging (the others stay)."""
    keys = [k for (k,) in store.db.execute("SELECT key FROM unstage")]
    if not keys:
        return
    store.staging.delete(set(lookup(table, keys)))
    store.db.execute("DELETE FROM unstage")


def _nonempty(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatchReader | None:
    first = next(batches, None)
    if first is None:
        return None
    return pa.RecordBatchReader.from_batches(schema, itertools.chain([first], batches))


def _update(
    table: Any,
    store: RunStore,
    schema: pa.Schema,
    model: str,
    finder: VectorFinder,
    incomplete: list[str],
    only: Collection[str] | None,
    on_rows: Callable[[int], None] | None,
    prefix: str = "",
) -> PublishResult:
    """Upsert and delete what differs, for every source (of the namespace ``prefix``)
    or only the ``only`` ones."""
    current = _current_rows(table, only, prefix)
    upsert, delete, new, unchanged = diff_against_table(store, current, incomplete, only)
    result = PublishResult(
        inserted=new, updated=len(upsert) - new, deleted=len(delete), unchanged=unchanged
    )
    if delete:
        _save_vectors_of_deleted(store, table, current, delete)
    stale = _stale_by_source(current, delete)
    batches: Iterator[pa.RecordBatch] = iter(())
    if upsert:
        stage_ids(store, upsert)
        batches = iter_row_batches(store, schema, model, finder, staged_only=True, on_rows=on_rows)
    _commit_by_source(table, schema, _source_groups(batches, ATOMIC_UPSERT_BYTES), stale)
    if upsert:
        # rows left out had lost their vector: mostly rows deleted from the table outside
        # corpusbatch (which took their vectors along), so they count as not inserted
        lost = min(finder.skipped_rows, result.inserted)
        result.inserted -= lost
        result.updated -= finder.skipped_rows - lost
    result.version = table.version
    return result


#: A publish is one commit, so that a reader sees it whole or not at all, when its new and
#: changed rows come to at most ``ATOMIC_UPSERT_BYTES`` of Arrow data (about 14k chunks
#: at 256 dimensions, 4k at 1,536) and it deletes at most ``ATOMIC_DELETES`` stale rows:
#: the rows are held in memory and committed with the deletion marks of the rows they
#: replace (:func:`_merge_whole`), so that bound is the memory a publish holds. A larger
#: change is several such commits, each holding whole sources: a reader sees every
#: document as it was or as it is now, never a mix, never twice.
ATOMIC_UPSERT_BYTES = 32 << 20
ATOMIC_DELETES = 50_000


def _stale_by_source(current: pa.Table | None, delete: Collection[str]) -> dict[str, list[str]]:
    """The ids of ``delete``, by the source that their table rows belong to."""
    stale: dict[str, list[str]] = {}
    if current is None or not delete:
        return stale
    gone = set(delete)
    ids, sources = current["id"].to_pylist(), current["source"].to_pylist()
    for rid, source in zip(ids, sources, strict=True):
        if rid in gone:
            stale.setdefault(source, []).append(rid)
    return stale


def _source_groups(batches: Iterator[pa.RecordBatch], limit: int) -> Iterator[list[pa.RecordBatch]]:
    """Rows (ordered by source) regrouped into groups of whole sources, each closed at
    the first source boundary once it holds ``limit`` bytes (estimated per row)."""
    group: list[pa.RecordBatch] = []
    size = 0
    last: str | None = None  # the source of the row before ``batch``
    for batch in batches:
        while batch.num_rows:
            full_at = math.ceil(max(0, limit - size) * batch.num_rows / max(1, batch.nbytes))
            cut = _boundary(batch, max(full_at, 0 if group else 1), last)
            if cut is None:
                group.append(batch)
                size += batch.nbytes
                last = batch.column("source")[-1].as_py()
                break
            if cut:
                group.append(batch.slice(0, cut))
                last = batch.column("source")[cut - 1].as_py()
            yield group
            group, size, batch = [], 0, batch.slice(cut)
    if group:
        yield group


def _boundary(batch: pa.RecordBatch, start: int, last: str | None) -> int | None:
    """The first row at or after ``start`` that begins another source than the row
    before it (``last`` before row 0), or None."""
    sources = batch.column("source").to_pylist()
    for i in range(start, len(sources)):
        if sources[i] != (last if i == 0 else sources[i - 1]):
            return i
    return None


def _commit_by_source(
    table: Any,
    schema: pa.Schema,
    groups: Iterator[list[pa.RecordBatch]],
    stale: dict[str, list[str]],
) -> None:
    """Each group of rows in one commit with the stale rows of its sources (a single
    source past ``ATOMIC_UPSERT_BYTES`` is a group of its own, still one commit); the stale
    rows of sources without new rows go with the last group, or in commits of their own
    (whole sources, up to ``ATOMIC_DELETES`` ids each)."""
    pending: pa.Table | None = None
    for group in groups:
        if pending is not None:
            _merge_whole(table, pending, _pop_stale(pending, stale))
        pending = pa.Table.from_batches(group, schema)
    packs = _delete_packs({s: ids for s, ids in stale.items() if s not in _sources(pending)})
    if pending is not None:
        own = sum(len(stale.get(s, ())) for s in _sources(pending))
        extra = packs.pop(0) if packs and own + len(packs[0]) <= ATOMIC_DELETES else []
        _merge_whole(table, pending, _pop_stale(pending, stale) + extra)
    for ids in packs:
        _merge_whole(table, schema.empty_table(), ids)


def _sources(rows: pa.Table | None) -> set[str]:
    return set() if rows is None else set(rows.column("source").to_pylist())


def _pop_stale(rows: pa.Table, stale: dict[str, list[str]]) -> list[str]:
    """The stale ids of the sources of ``rows`` (taken out of ``stale``)."""
    return [rid for source in sorted(_sources(rows)) for rid in stale.pop(source, [])]


def _delete_packs(stale: dict[str, list[str]]) -> list[list[str]]:
    """The stale ids, whole sources at a time, in packs of up to ``ATOMIC_DELETES`` (a
    source with more is a pack of its own)."""
    packs: list[list[str]] = []
    for source in sorted(stale):
        ids = stale[source]
        if not packs or len(packs[-1]) + len(ids) > ATOMIC_DELETES:
            packs.append([])
        packs[-1] += ids
    return packs


def _merge_whole(table: Any, rows: pa.Table, delete: list[str]) -> None:
    """One commit: insert or replace ``rows`` by id, and delete the rows whose ids are in
    ``delete``. The LanceDB handle is moved to the new version after.

    Written as one Lance ``Update`` transaction, the operation a merge makes, built from
    what it touches: the current rows of those ids are found through the BTREE index on
    ``id`` and marked deleted in their fragments, ``rows`` become new fragments, and one
    commit publishes both. A merge with a delete clause instead joins the whole table's
    ids against the new rows (+119 MB and 0.23 s on a 1M-row table for a 21-row edit,
    against +16 MB and 0.03 s this way; LanceDB's own merge hashes the table's side,
    +1.2 GB)."""
    import lance

    ds = table.to_lance()
    gone = _rows_by_fragment(ds, rows.column("id").to_pylist() + delete)
    removed: list[int] = []
    updated: list[Any] = []
    for fragment, ids in gone.items():
        meta = ds.get_fragment(fragment).delete(sql_in("id", ids))
        if meta is None:
            removed.append(fragment)  # (every row of it went)
        else:
            updated.append(meta)
    new = []
    if rows.num_rows:
        new = lance.fragment.write_fragments(
            rows, ds, schema=ds.schema, data_storage_version=ds.data_storage_version
        )
    if removed or updated or new:
        operation = lance.LanceOperation.Update(
            removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new
        )
        lance.LanceDataset.commit(ds, operation, read_version=ds.version)
    table.checkout_latest()


def _rows_by_fragment(ds: Any, ids: list[str]) -> dict[int, list[str]]:
    """The ids among ``ids`` that rows of ``ds`` have, by the fragment holding them."""
    out: dict[int, list[str]] = {}
    for i in range(0, len(ids), ATOMIC_DELETES):
        part = ids[i : i + ATOMIC_DELETES]
        found = ds.to_table(columns=["id"], filter=sql_in("id", part), with_row_address=True)
        addresses = found.column("_rowaddr").to_pylist()
        for rid, address in zip(found.column("id").to_pylist(), addresses, strict=True):
            out.setdefault(address >> 32, []).append(rid)
    return out


#: Attempts of a table commit that another writer's commit conflicted with.
COMMIT_ATTEMPTS = 8


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is Lance refusing a commit because another writer committed first
    (retryable: the operation is done again on the new version). That includes a commit
    that another writer's overwrite made incompatible (a racing create, see
    :func:`_create_shared`)."""
    text = f"{type(exc).__name__} {exc}".lower()
    if "incompatible transaction" in text and "concurrent transaction" in text:
        return True
    return "conflict" in text and ("commit" in text or "retryable" in text)


def retry_conflicts(operation: Callable[[], Any], what: str) -> Any:
    """Run ``operation`` (an idempotent table write), again after a commit conflict.

    Lance retries most conflicts itself; this covers those it gives up on when several
    writers commit to one table at once. Other errors are raised at once."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return operation()
        except Exception as exc:
            if attempt == COMMIT_ATTEMPTS or not is_commit_conflict(exc):
                raise
            log.info("%s: commit conflict with another writer, attempt %d: %s", what, attempt, exc)
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _save_vectors_of_deleted(
    store: RunStore, table: Any, current: pa.Table, delete: set[str]
) -> None:
    """Copy to staging the vectors that deleting rows ``delete`` would lose although a
    desired row still needs them (e.g. a source in flight wants that text back)."""
    keys = {
        k
        for i, k in zip(current["id"].to_pylist(), current["key"].to_pylist(), strict=True)
        if i in delete
    }
    if not keys:
        return
    wanted: set[str] = set()
    ordered = sorted(keys)
    for i in range(0, len(ordered), 500):
        part = ordered[i : i + 500]
        q = ", ".join("?" * len(part))
        wanted.update(
            k
            for (k,) in store.db.execute(
                f"SELECT DISTINCT key FROM desired WHERE key IN ({q})", part
            )
        )
    if not wanted:
        return
    keep: dict[str, bytes] = {}
    retained: set[str] = set()
    ordered = sorted(wanted)
    for i in range(0, len(ordered), LOOKUP_CHUNK):
        got = (
            table.search()
            .where(quoted_in("key", ordered[i : i + LOOKUP_CHUNK]))
            .select(["id", "key", "vector"])
            .limit(None)
            .to_arrow()
        )
        for rid, key, vec in zip(
            got["id"].to_pylist(), got["key"].to_pylist(), staging_bytes(got["vector"]), strict=True
        ):
            if rid in delete:
                keep.setdefault(key, vec)
            else:
                retained.add(key)
    staged = store.staging.fetch([k for k in keep if k not in retained])
    store.staging.add([(k, v) for k, v in keep.items() if k not in retained and k not in staged])


def _rebuild(
    db: Any,
    table: Any,
    table_name: str,
    store: RunStore,
    schema: pa.Schema,
    model: str,
    finder: VectorFinder,
    incomplete: list[str],
    on_rows: Callable[[int], None] | None,
) -> PublishResult:
    if incomplete:
        log.warning(
            "index identity changed: table %r is rebuilt once %d sources in flight finish",
            table_name,
            len(incomplete),
        )
        return PublishResult(version=table.version, deferred_rebuild=True)
    log.warning("index identity changed: rebuilding table %r in one commit", table_name)
    old_rows = table.count_rows()
    _restore_texts(store, table)
    _stage_table_vectors(store, table)
    result = _create(db, table_name, store, schema, model, finder, overwrite=True, on_rows=on_rows)
    result.deleted = old_rows
    return result


def _restore_texts(store: RunStore, table: Any) -> None:
    """Before the table is rebuilt, take back the texts of rows it holds that were
    dropped from store.db (a layout change keeps row ids; new settings re-chunk, and
    so have every text already)."""
    if not store.db.execute("SELECT 1 FROM desired WHERE text = '' LIMIT 1").fetchone():
        return
    with store.transaction() as db:
        for batch in table.search().select(["id", "text"]).limit(None).to_batches(8192):
            db.executemany(
                "UPDATE desired SET text = ? WHERE id = ? AND text = ''",
                zip(batch.column("text").to_pylist(), batch.column("id").to_pylist(), strict=True),
            )


def _stage_table_vectors(store: RunStore, table: Any) -> None:
    """Before a table of another identity is overwritten, keep its vectors in staging
    (those whose text is still wanted, so switching back costs nothing; the rest are
    garbage). A table without a ``key`` column (an older layout) had its vectors in
    store.db, which moved them to staging already."""
    if "key" not in table.schema.names:
        return
    moved = 0
    batches = table.search().select(["key", "vector"]).limit(None).to_batches(8192)
    for batch in batches:
        keys = batch.column("key").to_pylist()
        known = store._have(keys)
        staged = store.staging.fetch([k for k in keys if k in known])
        vecs = staging_bytes(pa.chunked_array([batch.column("vector")]))
        rows = [(k, v) for k, v in zip(keys, vecs, strict=True) if k in known and k not in staged]
        store.staging.add(rows)
        moved += len(rows)
    if moved:
        log.info("kept %d vectors of the old identity in staging", moved)


def _create(
    db: Any,
    name: str,
    store: RunStore,
    schema: pa.Schema,
    model: str,
    finder: VectorFinder,
    *,
    overwrite: bool = False,
    skip: Collection[str] = (),
    on_rows: Callable[[int], None] | None = None,
) -> PublishResult:
    """Write the table whole; a new table is created only if it gets at least one row."""
    batches = iter_staged_rows(store, schema, model, finder, skip_sources=skip, on_rows=on_rows)
    reader = _nonempty(batches, schema)
    if reader is None and not overwrite:
        return PublishResult()
    table = db.create_table(
        name,
        data=reader if reader is not None else schema.empty_table(),
        schema=schema,
        mode="overwrite" if overwrite else "create",
    )
    return PublishResult(inserted=table.count_rows(), version=table.version)


def same_identity(table: Any, schema: pa.Schema) -> bool:
    """Whether ``table`` was built with the identity (and layout) of ``schema``."""
    return _identity_of(table.schema) == _identity_of(schema)


def _identity_of(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    raw = meta.get(b"corpusbatch")
    return raw.decode() if raw else None


def _table_exists(db: Any, name: str) -> bool:
    try:
        db.open_table(name)
    except (FileNotFoundError, ValueError):
        return False
    return True
