"""Vectors that wait to be published: a LanceDB table in the index directory.

Every vector lives in exactly one place. Once published it is in the published table,
which doubles as the content-addressed cache through its ``key`` column (a BTREE index
makes a lookup by key cheap); until then, or while it belongs to another identity
(kept so that switching ``--dimensions`` back costs nothing), it waits here. SQLite
(``store.db``) only records *that* a vector exists for a key, and where it came from.

Rows are ``(key, vector)`` with the vector as little-endian float32 bytes, so vectors
of any dimension share the table. A key may appear twice after a crash between this
append and the SQLite commit that follows it; readers take either copy (they are the
same result) and :meth:`Staging.delete` removes both.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

TABLE = "vectors"
SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("vector", pa.binary())])
# keys per `IN (...)` filter: long enough to amortise a query, short enough to parse fast
LOOKUP_CHUNK = 2000
# deleting most rows is one delete of the complement when at most this many stay
REWRITE_MAX_KEEP = 20_000
# compact once this many appends have made fragments (one per loaded file part)
COMPACT_FRAGMENTS = 32
# rows per batch of a full read of staging: each batch is also a SQLite join and an
# Arrow batch of the new table; Lance decodes ahead of the reader, so smaller batches
# hold less (reading 1M staged vectors of 1 KiB: +145 MB peak at 8192, +102 at 2048)
SCAN_ROWS = 2048


def quoted_in(column: str, values: Iterable[str]) -> str:
    """A SQL ``IN`` filter for hex/identifier-like values (quotes are escaped)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def lookup(table: Any, keys: Sequence[str], column: str = "key") -> dict[str, bytes]:
    """``key -> float32 bytes`` for the ``keys`` found in ``table`` (staging or published).

    A published table stores vectors as fixed-size lists; they come back as bytes too.
    """
    out: dict[str, bytes] = {}
    for i in range(0, len(keys), LOOKUP_CHUNK):
        part = keys[i : i + LOOKUP_CHUNK]
        got = (
            table.search()
            .where(quoted_in(column, part))
            .select([column, "vector"])
            .limit(None)
            .to_arrow()
        )
        out.update(zip(got[column].to_pylist(), vector_bytes(got["vector"]), strict=True))
    return out


def vector_bytes(column: pa.ChunkedArray) -> list[bytes]:
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist()  # type: ignore[no-any-return]
    out: list[bytes] = []
    for chunk in column.chunks:  # FixedSizeList<float32>: slice the flat values per row
        flat = chunk.flatten().to_numpy(zero_copy_only=False).astype("<f4", copy=False)
        dim = chunk.type.list_size
        out += [flat[i * dim : (i + 1) * dim].tobytes() for i in range(len(chunk))]
    return out


class KeySet(ABC):
    """A set of keys to delete from staging, read in sorted chunks and tested a batch
    at a time, so that a million of them need not be in memory at once."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def chunks(self, size: int) -> Iterator[list[str]]:
        """Every key once, in sorted order, ``size`` at a time."""

    @abstractmethod
    def among(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that are in the set."""


class KeyList(KeySet):
    """A :class:`KeySet` held in memory."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = set(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def chunks(self, size: int) -> Iterator[list[str]]:
        ordered = sorted(self._keys)
        for i in range(0, len(ordered), size):
            yield ordered[i : i + size]

    def among(self, keys: Sequence[str]) -> set[str]:
        return self._keys.intersection(keys)


class Staging:
    """The staging table of one index directory (opened lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._table: Any = None

    def _open(self, create: bool) -> Any:
        if self._table is not None:
            return self._table
        if not create and not self.path.exists():
            return None
        import lancedb

        db = lancedb.connect(str(self.path))
        try:
            self._table = db.open_table(TABLE)
        except (FileNotFoundError, ValueError):
            if not create:
                return None
            self._table = db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
        return self._table

    def add(self, rows: Sequence[tuple[str, bytes]]) -> None:
        """Append ``(key, float32 bytes)`` rows in one commit."""
        if not rows:
            return
        keys, vectors = zip(*rows, strict=True)
        data = pa.table(
            [pa.array(keys, pa.string()), pa.array(vectors, pa.binary())], schema=SCHEMA
        )
        self._open(create=True).add(data)

    def fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The staged vectors of ``keys`` (missing keys are left out)."""
        table = self._open(create=False)
        if table is None or not keys:
            return {}
        return lookup(table, keys)

    def delete(self, keys: Collection[str] | KeySet) -> None:
        """Remove every copy of ``keys`` (a collection, or a :class:`KeySet` too large
        to hold in memory)."""
        table = self._open(create=False)
        gone = keys if isinstance(keys, KeySet) else KeyList(keys)
        if table is None or not len(gone):
            return
        total = self.count()
        if 2 * len(gone) >= total and total - len(gone) <= REWRITE_MAX_KEEP:
            self._rewrite_without(gone)
            return
        for part in gone.chunks(LOOKUP_CHUNK):
            table.delete(quoted_in("key", part))

    def _rewrite_without(self, gone: KeySet) -> None:
        """Delete most rows in one commit: everything if nothing else is staged, else all
        but the few keys that stay (never a read of the vectors into memory)."""
        kept: set[str] = set()
        for keys in self.key_batches():
            kept.update(set(keys) - gone.among(keys))
        if not kept:
            self.clear()
            return
        table = self._open(create=False)
        table.delete(f"NOT ({quoted_in('key', sorted(kept))})")

    def clear(self) -> None:
        """Remove every row (cheaper than deleting them one key at a time)."""
        if self._open(create=False) is None:
            return
        import lancedb

        db = lancedb.connect(str(self.path))
        self._table = db.create_table(TABLE, schema=SCHEMA, mode="overwrite")
        _optimize(self._table)

    def count(self) -> int:
        table = self._open(create=False)
        return 0 if table is None else int(table.count_rows())

    def key_batches(self, batch_rows: int = 65536) -> Iterator[list[str]]:
        """Every staged key, a batch at a time (for sweeps and checks)."""
        table = self._open(create=False)
        if table is None:
            return
        for batch in table.search().select(["key"]).limit(None).to_batches(batch_rows):
            yield batch.column("key").to_pylist()

    def rows(self, batch_rows: int = SCAN_ROWS) -> Iterator[tuple[list[str], list[bytes]]]:
        """Every staged ``(keys, vectors)``, a batch at a time."""
        table = self._open(create=False)
        if table is None:
            return
        for batch in table.search().select(["key", "vector"]).limit(None).to_batches(batch_rows):
            yield batch.column("key").to_pylist(), batch.column("vector").to_pylist()

    def maintain(self) -> None:
        """Compact fragments, drop old versions, and index keys once there are many."""
        table = self._open(create=False)
        if table is None:
            return
        from lancedb.index import BTree

        stats = table.stats()
        fragments = int((stats.get("fragment_stats") or {}).get("num_fragments", 0))
        if fragments >= COMPACT_FRAGMENTS:
            _optimize(table)
        indexed = {tuple(i.columns) for i in table.list_indices()}
        if ("key",) not in indexed and table.count_rows() >= 10_000:
            table.create_index("key", config=BTree())


def _optimize(table: Any) -> None:
    """Compact and keep only the newest version: staging has no readers but the run
    that holds the index lock, so older versions are only disk space."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "removes every version except..."
        table.optimize(cleanup_older_than=timedelta(0))
