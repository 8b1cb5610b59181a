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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import IndexNotFound
from .journal import Journal
from .loading import RunStore, namespace_filter, sql_in, table_identity_meta
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
    # keys recorded as embedded whose vector is neither staged nor on a row of the table
    # (rows deleted outside corpusbatch took theirs along): the repair embeds them again
    lost_vectors: list[str] = field(default_factory=list)
    sources_changed: list[str] = field(default_factory=list)
    sources_missing: list[str] = field(default_factory=list)
    files_failed: list[str] = field(default_factory=list)
    files_pending: list[str] = field(default_factory=list)
    # the table still holds the rows of another identity (a switch of model, dimensions,
    # prefix or chunking waits for sources in flight): its rows are checked for damage
    # only, not against the desired rows, which the pending rebuild writes whole
    rebuild_pending: bool = False
    repaired: RunReport | None = None
    # the vector key on each damaged row (not reported: what a repair forgets)
    row_keys: dict[str, str] = field(default_factory=dict, repr=False)

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
            self.lost_vectors,
            self.sources_changed,
            self.sources_missing,
            self.files_failed,
        )
        return not self.damaged_rows and not any(problems)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["row_keys"]
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
            _check_table(settings, store, report)
            _check_store(store, dims, report)
            _check_vectors_found(settings, store, report)
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


def _check_table(settings: Settings, store: RunStore, report: VerifyReport) -> None:
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
        report.rebuild_pending = not _of_last_scan(store, table)
        if report.rebuild_pending:
            log.warning(
                "table %r still holds the rows of the previous identity: the switch to the "
                "new one completes when the sources in flight finish (`corpusbatch "
                "collect`); its rows are checked for damage only",
                settings.table,
            )
        # a row is checked against the table's own dimension; a row of the wrong one
        # cannot be stored in it (only a null vector can)
        dims = table.schema.field("vector").type.list_size
        columns = _COLUMNS + (["key"] if "key" in table.schema.names else [])
        query = table.search()  # a namespaced writer checks only its own rows
        if (mine := namespace_filter(_namespace_prefix(store))) is not None:
            query = query.where(mine)
        for batch in query.select(columns).limit(None).to_batches(8192):
            _check_batch(batch.to_pydict(), dims, seen, report)
    report.rows = sum(seen.values())
    report.duplicated = sorted(k for k, n in seen.items() if n > 1)
    if not report.rebuild_pending:
        report.missing = sorted(expected - set(seen))
        report.orphaned = sorted(set(seen) - expected)


def _of_last_scan(store: RunStore, table: Any) -> bool:
    """Whether ``table`` holds rows of the identity (and layout) of the last scan."""
    want = store.get_meta("table_identity")
    if want is not None:
        return table_identity_meta(table) == want
    # an index scanned before that was recorded: compare what makes the vector keys
    have = json.loads(table_identity_meta(table) or "{}")
    ident = json.loads(store.get_meta("identity") or "{}")
    fields = ("model", "dimensions", "request_dimensions", "input_prefix")
    return all(have.get(f) == ident.get(f) for f in fields)


def _check_batch(
    cols: dict[str, list[Any]], dims: int, seen: Counter[str], report: VerifyReport
) -> None:
    keys = cols.get("key") or [None] * len(cols["id"])
    for rid, vector, text, chash, key in zip(
        cols["id"], cols["vector"], cols["text"], cols["content_hash"], keys, strict=True
    ):
        seen[rid] += 1
        damaged = True
        if vector is None or len(vector) != dims:
            report.wrong_dimension.append(rid)
        elif not np.isfinite(arr := np.asarray(vector, dtype=np.float32)).all():
            report.non_finite.append(rid)
        elif not arr.any():
            report.zero_vectors.append(rid)
        else:
            damaged = False
        if vector is not None and content_hash(text or "") != chash:
            report.text_mismatch.append(rid)
            damaged = True
        if damaged and key:
            report.row_keys[rid] = key


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
    # A duplicated row's vector is fine; the other kinds may hold a bad vector. The key
    # is the one on the row (the table may hold another identity than the last scan's);
    # a table of an older layout has none, and the desired row's key stands for it.
    for rid in damaged - set(report.duplicated):
        if rid in report.row_keys:
            keys.add(report.row_keys[rid])
            continue
        keys.update(k for (k,) in store.db.execute("SELECT key FROM desired WHERE id = ?", (rid,)))
    keys.update(report.lost_vectors)
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


def _check_vectors_found(settings: Settings, store: RunStore, report: VerifyReport) -> None:
    """Every vector ``store.db`` records must be staged or on a row of the table: a plan
    trusts the record and never pays for it again, so one found nowhere would be left
    out of the table (or paid for twice). The keys found are gathered in a temp table,
    not in memory."""
    db = store.db
    db.execute("CREATE TEMP TABLE IF NOT EXISTS verify_found (key TEXT PRIMARY KEY)")
    db.execute("DELETE FROM verify_found")
    for keys in _found_keys(settings, store):
        with store.transaction():
            db.executemany(
                "INSERT OR IGNORE INTO verify_found (key) VALUES (?)", ((k,) for k in keys)
            )
    report.lost_vectors = [
        k
        for (k,) in db.execute(
            "SELECT key FROM vectors WHERE key NOT IN (SELECT key FROM verify_found) ORDER BY key"
        )
    ]
    db.execute("DELETE FROM verify_found")


def _found_keys(settings: Settings, store: RunStore) -> Iterator[list[str]]:
    """Keys of the staged vectors, then of every row of the table (every writer's: a
    vector is found wherever it is). A table of an older layout has no ``key`` column:
    its vectors were moved to staging."""
    yield from store.staging.key_batches()
    try:
        table = open_table(settings)
    except IndexNotFound:
        return
    if "key" not in table.schema.names:
        return
    for batch in table.search().select(["key"]).limit(None).to_batches(65536):
        yield [k for k in batch.column("key").to_pylist() if k]


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
