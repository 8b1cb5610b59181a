"""Durable journal of batch files (SQLite in the index directory).

Each batch file moves through::

    planned -> uploading -> uploaded -> creating -> created -> finished
            -> downloaded -> loaded            (or -> failed, permanently)

``uploading`` and ``creating`` are *intents*: they are committed before the network
call, so after a crash the next run knows a call may have gone out and reconciles
(looks the file or batch up by its metadata) instead of repeating it. The local backend
uses the same states minus the remote ones (planned -> finished -> loaded).

Every transition is one committed SQLite transaction (WAL mode), so ``kill -9`` at any
point leaves the journal consistent.

Besides the state, a file row keeps what the remote executor needs to resume without
paying twice: provider ids (``input_file_id``, ``batch_id``, ``output_file_id``,
``error_file_id``), ``create_seq`` (sent in the batch metadata; bumped when a batch is
known dead, so a stale one is never adopted), ``not_before`` (back-off after the
provider's queue was full), ``request_counts`` and ``submitted_at`` (for ``status``) and
``remote_deleted`` (provider copies cleaned up). ``events`` records every transition.
"""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATES = (
    "planned",
    "uploading",
    "uploaded",
    "creating",
    "created",
    "finished",
    "downloaded",
    "loaded",
    "failed",
)
TERMINAL = ("loaded", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    path TEXT NOT NULL,
    manifest_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    n_lines INTEGER NOT NULL,
    n_inputs INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    n_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    parent TEXT,
    input_file_id TEXT,
    batch_id TEXT,
    batch_status TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    output_path TEXT,
    error_path TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    create_seq INTEGER NOT NULL DEFAULT 0,
    not_before REAL,
    request_counts TEXT,
    submitted_at REAL,
    remote_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE TABLE IF NOT EXISTS events (
    at REAL NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


# Columns added after the first release: (name, SQL type and default). Older journals are
# migrated in place on open, so an index directory survives an upgrade mid-run.
_ADDED_COLUMNS = (
    ("create_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("not_before", "REAL"),
    ("request_counts", "TEXT"),
    ("submitted_at", "REAL"),
    ("remote_deleted", "INTEGER NOT NULL DEFAULT 0"),
)


@dataclass
class FileRecord:
    """One row of the journal's ``files`` table."""

    name: str
    plan: str
    path: str
    manifest_path: str
    sha256: str
    model: str
    n_lines: int
    n_inputs: int
    n_tokens: int
    n_bytes: int
    state: str
    attempt: int
    parent: str | None
    input_file_id: str | None
    batch_id: str | None
    batch_status: str | None
    output_file_id: str | None
    error_file_id: str | None
    output_path: str | None
    error_path: str | None
    error: str | None
    created_at: float
    updated_at: float
    # Remote bookkeeping. ``create_seq`` numbers the provider batches made for this file:
    # it is bumped when a batch is known dead (capacity failure, vanished), so a stale
    # batch is never adopted again. ``not_before``: do not create before this time.
    # ``request_counts``: last seen provider counts as JSON. ``submitted_at``: when the
    # current batch was created. ``remote_deleted``: provider-side files were cleaned up.
    create_seq: int = 0
    not_before: float | None = None
    request_counts: str | None = None
    submitted_at: float | None = None
    remote_deleted: int = 0


# Column order of the files table as read into FileRecord.
_COLUMNS = [f.name for f in dataclasses.fields(FileRecord)]


class Journal:
    """SQLite-backed record of every batch file and where it stands."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model: str | None = None  # set on views made by scoped()
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE files ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def add_file(
        self,
        *,
        name: str,
        plan: str,
        path: Path,
        manifest_path: Path,
        sha256: str,
        model: str,
        n_lines: int,
        n_inputs: int,
        n_tokens: int,
        n_bytes: int,
        attempt: int = 0,
        parent: str | None = None,
    ) -> None:
        """Record a planned file (no-op if a file of that name is already known)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO files (name, plan, path, manifest_path, sha256, model,"
                " n_lines, n_inputs, n_tokens, n_bytes, state, attempt, parent, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,'planned',?,?,?,?)",
                (
                    name,
                    plan,
                    str(path),
                    str(manifest_path),
                    sha256,
                    model,
                    n_lines,
                    n_inputs,
                    n_tokens,
                    n_bytes,
                    attempt,
                    parent,
                    now,
                    now,
                ),
            )

    def update(self, name: str, state: str | None = None, **fields: Any) -> None:
        """Move a file to ``state`` and/or set fields, in one committed transaction."""
        if state is not None:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
            fields["state"] = state
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown journal field(s) {sorted(bad)}")
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            cur = db.execute(f"UPDATE files SET {sets} WHERE name = ?", (*fields.values(), name))
            if cur.rowcount != 1:
                raise KeyError(name)
            if state is not None:
                detail = (
                    fields.get("error") or fields.get("batch_id") or fields.get("input_file_id")
                )
                db.execute(
                    "INSERT INTO events (at, name, state, detail) VALUES (?,?,?,?)",
                    (fields["updated_at"], name, state, detail),
                )

    def get(self, name: str) -> FileRecord | None:
        row = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM files WHERE name = ?", (name,)
        ).fetchone()
        return FileRecord(*row) if row else None

    def files(
        self, states: tuple[str, ...] | None = None, plan: str | None = None
    ) -> list[FileRecord]:
        """Files (optionally only in ``states`` / of one ``plan``), in name order."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM files"
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if plan is not None:
            where.append("plan = ?")
            args.append(plan)
        if self.model is not None:
            where.append("model = ?")
            args.append(self.model)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, name"
        return [FileRecord(*row) for row in self._db.execute(sql, args)]

    def scoped(self, model: str) -> Journal:
        """A view of this journal that lists only files of ``model`` (same connection).

        An executor driven through it never touches batch files planned for another
        model, e.g. remote files still in flight when a run switches to the local model.
        Close the original journal, not the view.
        """
        view = copy.copy(self)
        view.model = model
        return view

    def pending(self) -> list[FileRecord]:
        """Files not yet loaded nor permanently failed."""
        return [f for f in self.files() if f.state not in TERMINAL]

    def events(self, name: str | None = None) -> list[tuple[float, str, str, str | None]]:
        """State transitions ``(at, name, state, detail)`` in order, optionally of one file."""
        sql = "SELECT at, name, state, detail FROM events"
        args: tuple[str, ...] = ()
        if name is not None:
            sql += " WHERE name = ?"
            args = (name,)
        return [tuple(r) for r in self._db.execute(sql + " ORDER BY rowid", args)]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
