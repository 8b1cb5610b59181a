"""``corpusbatch verify``: reconcile journal, sources, stored vectors and the table.

Finds rows that are missing, duplicated, orphaned, of the wrong dimension, non-finite
or all-zero, rows whose text no longer matches their hash, sources that changed since
the last scan, and batch files stuck or failed. ``repair`` deletes exactly the damaged
rows (every copy of a duplicated one) and bad vectors, marks the store dirty whenever it
dropped anything or found rows missing or orphaned, then runs :func:`corpusbatch.index`,
which re-embeds only the dropped vectors and republishes: each expected row ends in the
table exactly once. Without the corpus folder the next ``index`` run republishes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import IndexNotFound
from .journal import Journal
from .loading import RunStore, namespace_filter, sql_in
from .pipeline import RunReport, index, resolve_identity
from .types import content_hash
from .workspace import IndexPaths, index_lock, open_table

log = logging.getLogger(__name__)

_COLUMNS = ["id", "vector", "text", "content_hash"]


@dataclass
class VerifyReport:
    """What verify found (ids of rows, keys of vectors, names of files)."""

    rows: int = 0
    expected_rows: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    wrong_dimension: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)
    zero_vectors: list[str] = field(default_factory=list)
    text_mismatch: list[str] = field(default_factory=list)
    bad_stored_vectors: list[str] = field(default_factory=list)
    sources_changed: list[str] = field(default_factory=list)
    sources_missing: list[str] = field(default_factory=list)
    files_failed: list[str] = field(default_factory=list)
    files_pending: list[str] = field(default_factory=list)
    repaired: RunReport | None = None

    @property
    def damaged_rows(self) -> set[str]:
        return set(
            self.duplicated
            + self.wrong_dimension
            + self.non_finite
            + self.zero_vectors
            + self.text_mismatch
        )

    @property
    def ok(self) -> bool:
        problems = (
            self.missing,
            self.orphaned,
            self.bad_stored_vectors,
            self.sources_changed,
            self.sources_missing,
            self.files_failed,
        )
        return not self.damaged_rows and not any(problems)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def verify(
    settings: Settings,
    root: Path | None = None,
    *,
    repair: bool = False,
    api_key: str | None = None,
) -> VerifyReport:
    """Check the index under ``settings``; with ``repair``, fix what is wrong.

    ``root`` is the corpus folder (default: the one the last ``index`` run used).
    """
    paths = IndexPaths(settings.index_dir)
    if not paths.store.exists():
        raise IndexNotFound(f"no index in {paths.root}", hint="run `corpusbatch index DIR` first")
    report = VerifyReport()
    with index_lock(paths):
        store = RunStore(paths.store, resolve_identity(settings).dimensions, paths.staging)
        try:
            # The stored rows and vectors belong to the last scan's identity: check them
            # against it, not against flags that may name another (other --dimensions
            # would make every paid vector look "bad" and a repair delete it).
            dims = _last_dimensions(store) or store.dimensions
            store.dimensions = dims
            root = root or _last_root(store)
            _check_table(settings, store, dims, report)
            _check_store(store, dims, report)
            if root is not None:
                _check_sources(store, root, report)
            _check_journal(paths, report)
            if repair:
                _invalidate(settings, store, report)
        finally:
            store.close()
    if repair and root is not None:
        if root.is_dir():
            report.repaired = index(root, settings, api_key=api_key)
        else:
            log.warning(
                "repair: the corpus folder %s is gone; the damage was dropped and the next "
                "`corpusbatch index` on the corpus republishes it",
                root,
            )
    return report


def _last_dimensions(store: RunStore) -> int | None:
    raw = store.get_meta("identity")
    try:
        return int(json.loads(raw)["dimensions"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


def _last_root(store: RunStore) -> Path | None:
    value = store.get_meta("root")
    return Path(value) if value else None


def _check_table(settings: Settings, store: RunStore, dims: int, report: VerifyReport) -> None:
    try:
        table = open_table(settings)
    except IndexNotFound:
        table = None
    expected = {
        rid
        for (rid,) in store.db.execute("SELECT d.id FROM desired d JOIN vectors v ON v.key = d.key")
    }
    report.expected_rows = len(expected)
    seen: Counter[str] = Counter()
    if table is not None:
        query = table.search()  # a namespaced writer checks only its own rows
        if (mine := namespace_filter(_namespace_prefix(store))) is not None:
            query = query.where(mine)
        reader = query.select(_COLUMNS).limit(None).to_batches(8192)
        for batch in reader:
            _check_batch(batch.to_pydict(), dims, seen, report)
    report.rows = sum(seen.values())
    report.duplicated = sorted(k for k, n in seen.items() if n > 1)
    report.missing = sorted(expected - set(seen))
    report.orphaned = sorted(set(seen) - expected)


def _check_batch(
    cols: dict[str, list[Any]], dims: int, seen: Counter[str], report: VerifyReport
) -> None:
    for rid, vector, text, chash in zip(
        cols["id"], cols["vector"], cols["text"], cols["content_hash"], strict=True
    ):
        seen[rid] += 1
        if vector is None or len(vector) != dims:
            report.wrong_dimension.append(rid)
            continue
        arr = np.asarray(vector, dtype=np.float32)
        if not np.isfinite(arr).all():
            report.non_finite.append(rid)
        elif not arr.any():
            report.zero_vectors.append(rid)
        if content_hash(text or "") != chash:
            report.text_mismatch.append(rid)


def _check_store(store: RunStore, dims: int, report: VerifyReport) -> None:
    """Staged vectors of desired keys must have the right length and be usable."""
    for keys, blobs in store.staging.rows():
        wanted = store.desired_among(keys)
        for key, blob in zip(keys, blobs, strict=True):
            if key not in wanted:
                continue
            arr = np.frombuffer(blob, dtype="<f4")
            if arr.shape != (dims,) or not np.isfinite(arr).all() or not arr.any():
                report.bad_stored_vectors.append(key)


def _namespace_prefix(store: RunStore) -> str:
    namespace = store.get_meta("namespace") or ""
    return f"{namespace}/" if namespace else ""


def _check_sources(store: RunStore, root: Path, report: VerifyReport) -> None:
    prefix = _namespace_prefix(store)
    for source, size, mtime_ns in store.db.execute(
        "SELECT source, size, mtime_ns FROM sources ORDER BY source"
    ):
        try:
            st = (root / source.removeprefix(prefix)).stat()
        except OSError:
            report.sources_missing.append(source)
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            report.sources_changed.append(source)


def _check_journal(paths: IndexPaths, report: VerifyReport) -> None:
    if not paths.journal.exists():
        return
    with Journal(paths.journal) as journal:
        for record in journal.files():
            if record.state == "failed":
                report.files_failed.append(record.name)
            elif record.state not in ("loaded", "split"):  # split: its parts carry on
                report.files_pending.append(record.name)


def _invalidate(settings: Settings, store: RunStore, report: VerifyReport) -> None:
    """Delete damaged rows from the table and bad vectors from the store, and mark the
    store dirty so that the next publish diffs the table again.

    A duplicated row is brought back to one copy here, whatever the republish does
    next (it may be refused, or stop on a bad key: the table must not lose the row).
    Rows with a bad vector or text are deleted; the republish re-embeds them. Missing and
    orphaned rows need no deletion here, only that publish: a clean store means "the
    table already is the desired state" and would skip it.
    """
    damaged = report.damaged_rows
    keys = set(report.bad_stored_vectors)
    # A duplicated row's vector is fine; the other kinds may hold a bad vector.
    for rid in damaged - set(report.duplicated):
        keys.update(k for (k,) in store.db.execute("SELECT key FROM desired WHERE id = ?", (rid,)))
    keys |= _lost_vectors(settings, store, report.missing, damaged)
    republish = bool(damaged or keys or report.missing or report.orphaned)
    # Dirty first: if the table delete below fails or the process dies after it, the
    # next run still republishes what was dropped.
    with store.transaction():
        if republish:
            store.mark_dirty()
        store.forget_vectors(keys)
    only_duplicated = set(report.duplicated) - (damaged - set(report.duplicated))
    broken = damaged - only_duplicated
    if only_duplicated:
        _keep_one_copy(settings, only_duplicated)
    if broken:
        open_table(settings).delete(sql_in("id", broken))
    log.info(
        "repair: dropped %d damaged rows and %d stored vectors; %d missing and %d orphaned "
        "rows are fixed by the republish",
        len(damaged),
        len(keys),
        len(report.missing),
        len(report.orphaned),
    )


def _lost_vectors(
    settings: Settings, store: RunStore, missing: list[str], damaged: set[str]
) -> set[str]:
    """Keys of missing rows whose vector is nowhere any more: not staged, and in the
    table only on rows that are about to be dropped as damaged (the table is where a
    published vector lives, so a deleted row took its vector with it)."""
    keys = {
        k
        for rid in missing
        for (k,) in store.db.execute("SELECT key FROM desired WHERE id = ?", (rid,))
    }
    if not keys:
        return set()
    found = set(store.staging.fetch(sorted(keys)))
    try:
        table = open_table(settings)
    except IndexNotFound:
        return keys - found
    rest = sorted(keys - found)
    return keys - found - _keys_on_rows(table, rest, exclude=damaged)


def _keys_on_rows(table: Any, keys: list[str], exclude: set[str]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(keys), 500):
        got = (
            table.search()
            .where(sql_in("key", keys[i : i + 500]))
            .select(["id", "key"])
            .limit(None)
            .to_arrow()
        )
        out.update(
            k
            for rid, k in zip(got["id"].to_pylist(), got["key"].to_pylist(), strict=True)
            if rid not in exclude
        )
    return out


def _keep_one_copy(settings: Settings, ids: set[str]) -> None:
    """Replace every duplicated row by one copy of itself (read back from the table)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = open_table(settings)
    rows = table.search().where(sql_in("id", ids)).limit(None).to_arrow()
    rows = rows.drop_columns([c for c in rows.column_names if c.startswith("_")])
    first: dict[str, int] = {}
    for i, rid in enumerate(rows["id"].to_pylist()):
        first.setdefault(rid, i)
    one_each = rows.take(pa.array(sorted(first.values()))).cast(table.schema)
    assert pc.count_distinct(one_each["id"]).as_py() == len(ids & set(first))
    table.delete(sql_in("id", ids))
    table.add(one_each)
