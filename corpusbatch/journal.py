"""Durable journal of batch files (SQLite in the index directory), and their state machine.

A batch file's whole lifecycle is declared here, in :data:`TRANSITIONS` and
:data:`REQUIRES`, and enforced by :meth:`Journal.update`: a move that the table does not
allow, or that lacks a field it needs, raises :class:`~corpusbatch.errors.StateError` and
writes nothing. Every executor (remote batches, real-time calls, the local model) and the
loader move files only through it::

    planned -> uploading -> uploaded -> creating -> created -> finished -> downloaded -> loaded
    planned -> downloaded                   (local model, real-time API)
    created -> uploaded                     (queue full, or batch vanished: create again)
    uploading/uploaded/creating -> planned  (upload lost: upload again)
    downloaded -> finished/planned          (output file lost on disk: fetch or run again)
    planned/uploading/uploaded/creating/created -> split
                                            (too big for a limit the provider reported: its
                                             inputs were re-planned into smaller child files)
    any state but loaded/split -> failed    (with the reason in ``error``)

docs/architecture.md draws it. ``uploading`` and ``creating`` are *intents*: they are
committed before the network call, so after a crash the next run knows a call may have
gone out and reconciles (looks the file or batch up by its metadata) instead of repeating
it. ``loaded``, ``split`` and ``failed``
are terminal. A ``split`` file's inputs live on in its children (``parent`` names it),
which are journaled before the parent moves, so a crash in between splits it again into
the same child names (``add_file`` ignores names it knows). A ``failed`` file's inputs
are not held against them: they have no vector and no recorded input failure, so the
next run plans them again.

Every transition is one committed SQLite transaction (WAL, ``synchronous=FULL``), so
``kill -9`` or a power loss at any point leaves the journal consistent, and every fact
needed to resume lives in a row, never only in memory:

* provider ids (``input_file_id``, ``batch_id``, ``output_file_id``, ``error_file_id``);
* ``create_seq``, sent in the batch metadata and bumped when a batch is known dead, so a
  stale batch is never adopted; ``not_before``, the back-off after a full queue;
* ``missing_polls`` and ``missing_since``: how often and since when the provider has
  answered 404 for the batch (a batch seen missing is looked up again, across runs,
  before anything is created again);
* ``identity`` (JSON of the :class:`~corpusbatch.types.EmbeddingIdentity` the file was
  planned for: its vectors are checked and stored under that identity, whatever the
  current run's settings), ``target`` (provider and base URL that must run it) and
  ``route`` (``local``, ``batch`` or ``realtime``: the price it was planned and priced at);
* ``request_counts``, ``submitted_at`` (for ``status``), ``remote_deleted``.

Limits a provider reported at run time (its enqueued-token limit in a
``token_limit_exceeded`` message, per-file line, byte or input limits of a validation
error) are kept in the ``meta`` table (:meth:`Journal.learn_limit`), per target and model,
and tighten every later plan and queue wave (:meth:`Journal.learned_limits`).

``events`` records every transition. Paths read back from the journal must lie inside the
index directory; a row naming any other place raises instead of being trusted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LOCAL_MODEL
from .errors import StateError

STATES = (
    "planned",
    "uploading",
    "uploaded",
    "creating",
    "created",
    "finished",
    "downloaded",
    "loaded",
    "split",
    "failed",
)
TERMINAL = ("loaded", "split", "failed")
ROUTES = ("local", "batch", "realtime")

# The state machine: every allowed move, and nothing else.
TRANSITIONS: dict[str, frozenset[str]] = {
    # uploading: remote upload intent; downloaded: the local model or the real-time API
    # wrote the output directly.
    # split (here and below): too big for a limit the provider reported; its inputs were
    # planned again into smaller child files (journaled first, ``parent`` = this file).
    "planned": frozenset({"uploading", "downloaded", "split", "failed"}),
    # uploaded: the upload answered, or was found by name and size; planned: not found.
    "uploading": frozenset({"uploaded", "planned", "split", "failed"}),
    # creating: create intent; created: our batch found by its metadata (adopted);
    # planned: the provider lost the uploaded file.
    "uploaded": frozenset({"creating", "created", "planned", "split", "failed"}),
    # created: answered, or adopted by metadata; uploaded: refused with a retryable
    # error, so create again later; planned: the uploaded file is gone.
    "creating": frozenset({"created", "uploaded", "planned", "split", "failed"}),
    # finished: a terminal batch status with output; uploaded: the batch died of a full
    # queue or vanished for good and must be created again (create_seq bumped).
    "created": frozenset({"finished", "uploaded", "split", "failed"}),
    "finished": frozenset({"downloaded", "failed"}),
    # loaded: its results are stored; finished/planned: the output file on disk is gone
    # before it was loaded, fetch or run it again.
    "downloaded": frozenset({"loaded", "finished", "planned", "failed"}),
    "loaded": frozenset(),
    "split": frozenset(),
    "failed": frozenset(),
}

# Fields a state needs: they must be set (in the same update or before) when it is entered.
REQUIRES: dict[str, tuple[str, ...]] = {
    "uploaded": ("input_file_id",),
    "creating": ("input_file_id",),
    "created": ("input_file_id", "batch_id"),
    "finished": ("batch_id", "batch_status"),
    "split": ("error",),  # the provider's refusal and what was learned from it
    "failed": ("error",),
}

# Fields a state must not carry over: entering it clears them.
CLEARS: dict[str, tuple[str, ...]] = {
    "planned": (
        "input_file_id",
        "batch_id",
        "batch_status",
        "output_file_id",
        "error_file_id",
        "output_path",
        "error_path",
        "missing_polls",
        "missing_since",
    ),
    "uploaded": ("batch_id", "batch_status", "missing_polls", "missing_since"),
    "created": ("missing_polls", "missing_since"),
}

_PATH_FIELDS = ("path", "manifest_path", "output_path", "error_path")

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
    remote_deleted INTEGER NOT NULL DEFAULT 0,
    missing_polls INTEGER NOT NULL DEFAULT 0,
    missing_since REAL,
    identity TEXT,
    target TEXT,
    route TEXT
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
    ("missing_polls", "INTEGER NOT NULL DEFAULT 0"),
    ("missing_since", "REAL"),
    ("identity", "TEXT"),
    ("target", "TEXT"),
    ("route", "TEXT"),
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
    # ``missing_polls``/``missing_since``: consecutive 404s for ``batch_id`` and the time
    # of the first. ``identity``: JSON of the embedding identity the file was planned
    # for (None in journals older than this field). ``target``: provider and base URL
    # that must run it (None: any). ``route``: local, batch or realtime.
    missing_polls: int = 0
    missing_since: float | None = None
    identity: str | None = None
    target: str | None = None
    route: str | None = None

    def identity_dict(self) -> dict[str, Any] | None:
        """The embedding identity this file was planned for, if recorded."""
        return dict(json.loads(self.identity)) if self.identity else None


# Column order of the files table as read into FileRecord.
_COLUMNS = [f.name for f in dataclasses.fields(FileRecord)]


class Journal:
    """SQLite-backed record of every batch file and where it stands."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Index directory whose files the journal may name (state.db lives in it).
        self.root = path.parent.resolve()
        self.target: str | None = None  # set on views made by scoped()
        self.routes: tuple[str, ...] | None = None
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
        if "route" not in have:
            # Before routes were recorded, the local model ran its own files and the
            # Batch API everything else.
            self._db.execute(
                "UPDATE files SET route = CASE WHEN model = ? THEN 'local' ELSE 'batch' END",
                (LOCAL_MODEL,),
            )

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
        identity: str | None = None,
        target: str | None = None,
        route: str | None = None,
    ) -> None:
        """Record a planned file (no-op if a file of that name is already known)."""
        if route is not None and route not in ROUTES:
            raise StateError(f"unknown route {route!r} for {name}")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO files (name, plan, path, manifest_path, sha256, model,"
                " n_lines, n_inputs, n_tokens, n_bytes, state, attempt, parent, created_at,"
                " updated_at, identity, target, route)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,'planned',?,?,?,?,?,?,?)",
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
                    identity,
                    target,
                    route,
                ),
            )

    def update(self, name: str, state: str | None = None, **fields: Any) -> None:
        """Move a file to ``state`` and/or set fields, in one committed transaction.

        A move must be allowed by :data:`TRANSITIONS` and leave the fields that
        :data:`REQUIRES` names for the new state set; otherwise :class:`StateError` is
        raised and nothing is written. Fields that :data:`CLEARS` lists for the new state
        are reset unless given. Setting fields without a state never moves the file.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown journal field(s) {sorted(bad)}")
        with self.transaction() as db:
            current = self._get(db, name)
            if current is None:
                raise KeyError(name)
            if state is not None:
                fields = self._transition(current, state, fields)
            fields["updated_at"] = time.time()
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE files SET {sets} WHERE name = ?", (*fields.values(), name))
            if state is not None:
                detail = (
                    fields.get("error") or fields.get("batch_id") or fields.get("input_file_id")
                )
                db.execute(
                    "INSERT INTO events (at, name, state, detail) VALUES (?,?,?,?)",
                    (fields["updated_at"], name, state, detail),
                )

    @staticmethod
    def _transition(current: FileRecord, state: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields to write for ``current -> state``; raises if the move is illegal."""
        if state not in TRANSITIONS[current.state]:
            raise StateError(
                f"illegal journal transition {current.state} -> {state} for {current.name}",
                hint="this is a bug in corpusbatch; please report it with the index's state.db",
            )
        out: dict[str, Any] = {
            k: (0 if k == "missing_polls" else None) for k in CLEARS.get(state, ())
        }
        out.update(fields)
        out["state"] = state
        missing = [
            k for k in REQUIRES.get(state, ()) if out.get(k, getattr(current, k)) in (None, "")
        ]
        if missing:
            raise StateError(
                f"journal transition {current.state} -> {state} for {current.name} "
                f"lacks {', '.join(missing)}",
                hint="this is a bug in corpusbatch; please report it with the index's state.db",
            )
        return out

    def get(self, name: str) -> FileRecord | None:
        return self._get(self._db, name)

    def _get(self, db: sqlite3.Connection, name: str) -> FileRecord | None:
        row = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM files WHERE name = ?", (name,)
        ).fetchone()
        return self._record(row) if row else None

    def _record(self, row: tuple[Any, ...]) -> FileRecord:
        """A row as a FileRecord, refusing paths that point outside the index directory."""
        record = FileRecord(*row)
        for key in _PATH_FIELDS:
            value = getattr(record, key)
            if value and not _inside(Path(value), self.root):
                raise StateError(
                    f"{self.path} names {value!r} as the {key} of {record.name}, "
                    f"outside the index directory {self.root}",
                    hint="the journal was changed by hand or copied from elsewhere; move the "
                    "index directory back or delete it and index again",
                )
        return record

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
        if self.target is not None:
            # journals older than the target column: their files belong to whoever runs
            where.append("(target = ? OR target IS NULL)")
            args.append(self.target)
        if self.routes is not None:
            where.append(f"COALESCE(route, 'batch') IN ({', '.join('?' * len(self.routes))})")
            args.extend(self.routes)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, name"
        return [self._record(row) for row in self._db.execute(sql, args)]

    def scoped(self, target: str, routes: tuple[str, ...] | None = None) -> Journal:
        """A view that lists only files for ``target`` (and ``routes``); same connection.

        ``target`` names who runs a file: ``"local"``, or a provider and its base URL. An
        executor driven through a view never touches files planned for another target
        (e.g. remote batches still in flight when a run switches to the local model) or
        another route (a file planned, and priced, for the Batch API never goes through
        the real-time API). Close the original journal, not the view.
        """
        view = copy.copy(self)
        view.target = target
        view.routes = routes
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

    # -- limits learned at run time ------------------------------------------------------
    @staticmethod
    def _limit_prefix(target: str | None, model: str) -> str:
        return f"limit\x1f{target or ''}\x1f{model}\x1f"

    def learned_limits(self, target: str | None, model: str) -> dict[str, int]:
        """Limits (``Limits`` field -> value) learned for ``target`` and ``model``."""
        prefix = self._limit_prefix(target, model)
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {key[len(prefix) :]: int(value) for key, value in rows}

    def learn_limit(self, target: str | None, model: str, name: str, value: int) -> int:
        """Remember that ``name`` (a ``Limits`` field) is at most ``value`` for ``target``
        and ``model``; a limit only ever tightens. Returns the limit now in force."""
        if value < 1:
            raise ValueError(f"limit {name}={value} must be positive")
        key = self._limit_prefix(target, model) + name
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None and int(row[0]) <= value:
                return int(row[0])
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )
        return value


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False
