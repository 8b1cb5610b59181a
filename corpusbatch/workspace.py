"""The index directory: where an index keeps its files, its lock and its table.

Layout (default ``./.corpusbatch``, see docs/architecture.md)::

    state.db   journal of batch files      store.db   desired rows, which keys have vectors
    lancedb/   the published table (unless settings.db puts it elsewhere, e.g. s3://)
    staging/   vectors not published yet
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

from .config import Settings, is_remote_uri, redact_url
from .errors import IndexNotFound, LockedError, register_secret

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


# Environment variables whose values are credentials of an object store: registered
# for redaction (an error that echoes one shows ``[redacted]``), never read otherwise;
# LanceDB's object store layer reads them itself.
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
_SECRET_OPTION = ("secret", "token", "password", "sas", "account_key", "service_account_key")


def table_uri(settings: Settings) -> str:
    """Where the published table of ``settings`` lives: ``db`` (a local path or an object
    store URI), else ``index_dir/lancedb``."""
    if settings.db:
        if is_remote_uri(settings.db):
            return settings.db
        return str(Path(settings.db.removeprefix("file://")))
    return str(IndexPaths(settings.index_dir).lancedb)


def is_local(settings: Settings) -> bool:
    """Whether the published table is a directory on this machine."""
    return not (settings.db and is_remote_uri(settings.db))


def storage_options(settings: Settings) -> dict[str, str]:
    """LanceDB ``storage_options`` for the table: ``[storage]`` of the config file (the
    environment's AWS_*/AZURE_*/GOOGLE_* variables are read by LanceDB itself). Secret
    values are registered for redaction from messages and logs."""
    for name in _SECRET_ENV:
        register_secret(os.environ.get(name))
    options = dict(settings.storage)
    for key, value in options.items():
        if any(word in key.lower() for word in _SECRET_OPTION):
            register_secret(value)
    return options


def connect(where: Settings | IndexPaths) -> Any:
    """The LanceDB connection holding the published table: every open of that table
    goes through here. An :class:`IndexPaths` means its local ``lancedb`` directory."""
    import lancedb

    if isinstance(where, IndexPaths):
        return lancedb.connect(str(where.lancedb))
    uri = table_uri(where)
    options = storage_options(where)
    if is_local(where):
        return lancedb.connect(uri)
    try:
        return lancedb.connect(uri, storage_options=options or None)
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexNotFound(
            f"cannot reach the table store {redact_url(uri)}: {exc}",
            hint="check the endpoint and credentials in the environment (AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID, ...) or [storage] in corpusbatch.toml",
        ) from exc


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
    if is_local(settings) and not Path(table_uri(settings)).exists():
        raise IndexNotFound(
            f"no index in {paths.root}" if settings.db is None else f"no table in {settings.db}",
            hint="run `corpusbatch index DIR` first, or pass --index-dir or --db",
        )
    db = connect(settings)
    try:
        table: Table = db.open_table(settings.table)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise IndexNotFound(
            f"table {settings.table!r} not found in {redact_url(table_uri(settings))}",
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
