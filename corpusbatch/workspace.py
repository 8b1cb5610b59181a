"""The index directory: where an index keeps its files, its lock and its table.

Layout (default ``./.corpusbatch``, see docs/architecture.md)::

    state.db   journal of batch files      store.db   desired rows, which keys have vectors
    lancedb/   the published table         staging/   vectors not published yet
    batches/   outputs/   JSONL files
    lock       held by a running index
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import IndexNotFound, LockedError

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexPaths:
    """Where an index keeps its files (see docs/architecture.md)."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "state.db"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def lancedb(self) -> Path:
        return self.root / "lancedb"

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def lock(self) -> Path:
        return self.root / "lock"


@contextlib.contextmanager
def index_lock(paths: IndexPaths) -> Iterator[None]:
    """Hold the index directory's lock, or raise :class:`LockedError` at once."""
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another corpusbatch run is using {paths.root}",
                hint="wait for it to finish (a cron job should just try again later)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def connect(paths: IndexPaths) -> Any:
    import lancedb

    return lancedb.connect(str(paths.lancedb))


def last_settings(index_dir: Path) -> dict[str, Any]:
    """The settings the last `index` run on ``index_dir`` used (empty if none).

    This is state, not configuration: :func:`corpusbatch.config.settings_from` decides
    what of it may be used (a remembered base URL or key variable is never trusted to
    direct an API key). Unreadable or malformed values count as nothing remembered.
    """
    path = IndexPaths(index_dir).store
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        except sqlite3.Error:
            return {}
    if not row:
        return {}
    try:
        value = json.loads(row[0])
    except (TypeError, ValueError):
        log.warning("the settings remembered in %s are not valid JSON; ignoring them", path)
        return {}
    if not isinstance(value, dict):
        log.warning("the settings remembered in %s are malformed; ignoring them", path)
        return {}
    return value


def open_table(settings: Settings) -> Table:
    """Open the published table, or raise :class:`IndexNotFound` with what to do.

    A plain ``lancedb.table.Table``: one row per chunk (see README, "The table's
    columns"). A table written by an older corpusbatch lacks ``doc_id`` and
    ``metadata``; it still opens (with a warning) and the next ``corpusbatch index``
    rebuilds it from the stored vectors, embedding nothing.
    """
    paths = IndexPaths(settings.index_dir)
    if not paths.lancedb.exists():
        raise IndexNotFound(
            f"no index in {paths.root}",
            hint="run `corpusbatch index DIR` first, or pass --index-dir",
        )
    db = connect(paths)
    try:
        table: Table = db.open_table(settings.table)
    except (FileNotFoundError, ValueError) as exc:
        raise IndexNotFound(
            f"table {settings.table!r} not found in {paths.lancedb}",
            hint="run `corpusbatch index DIR` to completion first",
        ) from exc
    if "metadata" not in table.schema.names:
        log.warning(
            "table %r predates the `metadata` and `doc_id` columns that LangChain and "
            "LlamaIndex read; run `corpusbatch index` once to add them (nothing is "
            "embedded again)",
            settings.table,
        )
    return table


def table_identity(table: Table) -> dict[str, Any]:
    """The identity recorded in a published table's metadata."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"corpusbatch")
    return dict(json.loads(raw)) if raw else {}
