"""The invariants a nightly run must keep, in one place for the regression tests and the
model-based test (``tests/test_nights.py``).

* :meth:`CleanBuilder.rows` builds the index of a set of files from scratch, with the
  run's identity, through its own fault-free :class:`~fakeapi.FakeBatchAPI`: the table
  every run that returns must converge to.
* :func:`table_problems` compares a published table with that clean build row by row
  (id, source, lines, text, vector bytes), allowing the sources a run reports as
  ``incomplete_sources``, and the sources it could not read (``skipped`` with a read
  error, :func:`unreadable_sources`), to keep exactly the rows of the last published
  table.
* :func:`billing_problems` (``billed[k] <= 1 + lost[k]``: no input paid twice unless the
  provider lost its result, or its text left the corpus and the table in between, which
  lets garbage collection drop its vector) and :func:`lost_problems` (every billed result whose text
  is still wanted under the identity it was billed for is in ``store.db``).

Every ``*_problems`` function returns a list of human-readable findings (empty: fine);
the ``assert_*`` wrappers raise ``AssertionError`` listing them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from fakeapi import FakeBatchAPI

from corpusbatch import Settings
from corpusbatch import index as run_index
from corpusbatch.pipeline import resolve_identity
from corpusbatch.types import EmbeddingIdentity, vector_key


class Row(NamedTuple):
    id: str
    source: str
    start_line: int
    end_line: int
    text: str
    vector: bytes

    def short(self) -> str:
        return f"{self.source}:{self.start_line}-{self.end_line} id={self.id[:10]}"


# ---------------------------------------------------------------------------- reading ---
def table_rows(settings: Settings) -> list[Row]:
    """Every row of the published table (``[]`` when there is no table yet)."""
    import lancedb

    path = Path(settings.index_dir) / "lancedb"
    if not path.exists():
        return []
    try:
        table = lancedb.connect(str(path)).open_table(settings.table)
    except (FileNotFoundError, ValueError):
        return []
    return _rows_of(table)


def _rows_of(table: Any) -> list[Row]:
    import numpy as np

    out = []
    for r in table.to_arrow().to_pylist():
        vec = np.asarray(r["vector"], dtype="<f4").tobytes()
        out.append(Row(r["id"], r["source"], r["start_line"], r["end_line"], r["text"], vec))
    return sorted(out)


def table_version(settings: Settings) -> int | None:
    """The published table's newest version (None when there is no table)."""
    import lancedb

    path = Path(settings.index_dir) / "lancedb"
    if not path.exists():
        return None
    try:
        return int(lancedb.connect(str(path)).open_table(settings.table).version)
    except (FileNotFoundError, ValueError):
        return None


def half_published_problems(settings: Settings, since: int | None, before: list[Row]) -> list[str]:
    """Every version committed after ``since`` shows each source as it was (``before``)
    or as it is now, never a mix: each commit of a publish holds whole sources."""
    import lancedb

    latest = table_version(settings)
    if since is None or latest is None or latest <= since:
        return []
    table = lancedb.connect(str(Path(settings.index_dir) / "lancedb")).open_table(settings.table)
    now = _row_sets(table_rows(settings))
    was = _row_sets(before)
    kept = {int(v["version"]) for v in table.list_versions()}
    out = []
    for version in range(since + 1, latest):
        if version not in kept:
            continue
        table.checkout(version)
        seen = _row_sets(_rows_of(table))
        for source in sorted(set(seen) | set(was) | set(now)):
            got = seen.get(source, frozenset())
            old, new = was.get(source, frozenset()), now.get(source, frozenset())
            if got in (old, new):
                continue
            out.append(
                f"version {version} shows {source} half-published: {len(got)} rows, "
                f"{len(old)} before and {len(new)} after"
            )
    return out


def stored_keys(settings: Settings) -> set[str]:
    """Vector keys that ``store.db`` knows a vector for (in staging or the table)."""
    path = Path(settings.index_dir) / "store.db"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {k for (k,) in db.execute("SELECT key FROM vectors")}
    finally:
        db.close()


def dangling_problems(settings: Settings) -> list[str]:
    """Vectors ``store.db`` records as stored that are neither staged nor on a row of
    the published table: a plan trusts the record and never pays for them again, so a
    later publish would find them nowhere (or a run would pay for them twice)."""
    import lancedb

    recorded = stored_keys(settings)
    if not recorded:
        return []
    found: set[str] = set()
    for where, name in (
        (Path(settings.index_dir) / "staging", "vectors"),
        (Path(settings.index_dir) / "lancedb", settings.table),
    ):
        if not where.exists():
            continue
        try:
            table = lancedb.connect(str(where)).open_table(name)
        except (FileNotFoundError, ValueError):
            continue
        found.update(table.to_arrow().column("key").to_pylist())
    gone = sorted(recorded - found)
    if not gone:
        return []
    return [
        f"{len(gone)} vectors recorded in store.db are neither staged nor in the table: "
        + _clip([k[:12] for k in gone])
    ]


def read_files(root: Path) -> dict[str, bytes]:
    """The corpus as {relative POSIX path: bytes} (what a clean build is a function of)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------ clean build ---
class CleanBuilder:
    """Clean builds through a separate fault-free fake; cached by (files, identity)."""

    def __init__(self, poison: str | None = None) -> None:
        self.api = FakeBatchAPI(seed=1)
        self.api.poison = poison
        self.api.start()
        self._cache: dict[str, list[Row]] = {}
        self._scratch = Path(tempfile.mkdtemp(prefix="cb-clean-"))
        self.builds = 0

    def close(self) -> None:
        self.api.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> CleanBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, files: Mapping[str, bytes], settings: Settings) -> list[Row]:
        """The table a fault-free ``index`` of ``files`` builds with ``settings``."""
        if not files:
            return []
        ident = resolve_identity(settings)
        blob = json.dumps(
            [
                sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()),
                [ident.model, ident.dimensions, ident.request_dimensions, ident.input_prefix],
                settings.chunk_tokens,
                settings.overlap_tokens,
                sorted(settings.limits.items()),
                self.api.poison,
            ]
        )
        key = hashlib.sha256(blob.encode()).hexdigest()
        if key not in self._cache:
            self.builds += 1
            work = self._scratch / f"b{self.builds}"
            root = work / "root"
            for rel, data in files.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            clean = replace(
                settings,
                index_dir=work / "idx",
                provider="openai",
                base_url=self.api.base_url,
                realtime_under=None,
                poll_interval=0.001,
            )
            run_index(root, clean, api_key="clean", wait=True)
            self._cache[key] = table_rows(clean)
            shutil.rmtree(work, ignore_errors=True)
        return self._cache[key]

    def rejected(self, identity: EmbeddingIdentity, chunk_text: str) -> bool:
        return _rejected(self.api, identity, chunk_text)


def _rejected(api: FakeBatchAPI, identity: EmbeddingIdentity, chunk_text: str) -> bool:
    k = (identity.model, identity.dimensions, identity.embed_text(chunk_text))
    return api.rejected[k] > 0


def _row_sets(rows: Iterable[Row]) -> dict[str, frozenset[Row]]:
    return {k: frozenset(v) for k, v in _by_source(rows).items()}


def _by_source(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.source, []).append(r)
    return out


def _clip(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ------------------------------------------------------------------------- the table ---
def table_problems(
    settings: Settings,
    files: Mapping[str, bytes],
    api: FakeBatchAPI,
    clean: CleanBuilder,
    *,
    previous: list[Row],
    incomplete: Iterable[str] = (),
    unreadable: Iterable[str] = (),
    last_scanned: Mapping[str, bytes] | None = None,
    same_identity: bool = True,
    refused: bool = False,
) -> list[str]:
    """How the published table differs from what the run must leave.

    ``files`` is the corpus the run scanned, ``previous`` the table after the previous
    run (the last published state), ``incomplete`` the report's ``incomplete_sources``.
    ``unreadable`` are sources the run could not read (see :func:`unreadable_sources`;
    they need not be in ``files``): like incomplete ones, they keep exactly the rows of
    the last published table.
    A refused mass delete must leave ``previous`` untouched. Rows whose input a
    provider rejected as bad input (400; a whole request fails, so its other inputs
    too) may be absent from the table (rejected by ``api``) or from the clean build
    (rejected by the clean fake); rows present in both must be equal.
    """
    table = table_rows(settings)
    problems: list[str] = []
    ids = [r.id for r in table]
    if len(set(ids)) != len(ids):
        dup = sorted({i[:10] for i in ids if ids.count(i) > 1})
        problems.append(f"duplicated row ids in the table: {_clip(dup)}")
    if refused:
        if table != previous:
            problems.append(
                "a refused mass delete changed the table: "
                f"{len(previous)} rows before, {len(table)} after"
            )
        return problems
    identity = resolve_identity(settings)
    want = clean.rows(files, settings)
    have_by, want_by, prev_by = _by_source(table), _by_source(want), _by_source(previous)
    incomplete = set(incomplete)
    unreadable = set(unreadable)
    for src in sorted(incomplete - set(files) - unreadable):
        if src in have_by:
            problems.append(f"{src}: gone from the folder but reported incomplete, has rows")
    for src in sorted(set(have_by) | set(want_by) | incomplete | unreadable):
        have = have_by.get(src, [])
        if src in unreadable:
            # kept: its last published rows, or the rows of what the last scan read of
            # it once their vectors arrived; under a new identity neither can stay
            ok = [prev_by.get(src, [])]
            if last_scanned and src in last_scanned:
                ok.append(_by_source(clean.rows({src: last_scanned[src]}, settings)).get(src, []))
            if not same_identity:
                ok.append([])
            if have not in ok:
                problems.append(
                    f"{src}: could not be read but its {len(have)} rows are not the "
                    f"{len(prev_by.get(src, []))} rows of the last published table"
                    " (nor those of its last scanned content)"
                )
            continue
        if src in incomplete and src in files:
            if have != prev_by.get(src, []):
                problems.append(
                    f"{src}: reported incomplete but its {len(have)} rows are not the "
                    f"{len(prev_by.get(src, []))} rows of the last published table"
                )
            continue
        if src not in files and have:
            problems.append(f"{src}: gone from the folder, still has {len(have)} rows")
            continue
        problems += _source_problems(src, have, want_by.get(src, []), identity, api, clean)
    return problems


READ_ERRORS = ("cannot read", "cannot stat", "permission denied")


def unreadable_sources(report: Any) -> set[str]:
    """Sources a run reports in ``skipped`` because it could not read them now (a read
    or stat error, not their content): they keep their last published rows."""
    return {
        s["path"]
        for s in getattr(report, "skipped", None) or []
        if str(s.get("reason", "")).startswith(READ_ERRORS)
    }


def _source_problems(
    src: str,
    have: list[Row],
    want: list[Row],
    identity: EmbeddingIdentity,
    api: FakeBatchAPI,
    clean: CleanBuilder,
) -> list[str]:
    h, w = {r.id: r for r in have}, {r.id: r for r in want}
    missing = [
        w[i].short() for i in sorted(set(w) - set(h)) if not _rejected(api, identity, w[i].text)
    ]
    extra = [
        h[i].short() for i in sorted(set(h) - set(w)) if not clean.rejected(identity, h[i].text)
    ]
    differ = []
    for i in sorted(set(h) & set(w)):
        if h[i] != w[i]:
            what = [f for f in Row._fields if getattr(h[i], f) != getattr(w[i], f)]
            differ.append(f"{w[i].short()} ({'/'.join(what)})")
    out = []
    if missing:
        out.append(f"{src}: {len(missing)} rows of a clean build missing: {_clip(missing)}")
    if extra:
        out.append(f"{src}: {len(extra)} rows not in a clean build: {_clip(extra)}")
    if differ:
        out.append(f"{src}: {len(differ)} rows differ from a clean build: {_clip(differ)}")
    return out


def assert_table_is_clean_build(
    settings: Settings,
    files: Mapping[str, bytes],
    api: FakeBatchAPI,
    clean: CleanBuilder,
    **kw: Any,
) -> None:
    problems = table_problems(settings, files, api, clean, **kw)
    assert not problems, "table != clean build:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- billing ---
def billing_problems(api: FakeBatchAPI, collected: Mapping[Any, int] | None = None) -> list[str]:
    """Inputs billed twice although the provider never lost their result.

    ``collected`` counts, per billed input, the times its text left both the corpus
    and the table: its vector may have been garbage-collected then, and a text that
    comes back later is paid for again (once per such absence).
    """
    out = []
    for (model, dims, text), n in sorted(api.billed.items()):
        lost = api.lost[(model, dims, text)]
        if collected:
            lost += collected.get((model, dims, text), 0)
        if n > 1 + lost:
            out.append(f"billed {n}x (lost {lost}x) {model}/{dims}: {text[:50]!r}")
    return out


def assert_no_double_billing(api: FakeBatchAPI) -> None:
    problems = billing_problems(api)
    assert not problems, "paid twice:\n  " + "\n  ".join(problems)


def lost_problems(api: FakeBatchAPI, settings: Settings, wanted_texts: Iterable[str]) -> list[str]:
    """Billed, not-lost results of inputs still wanted (chunk texts of the current
    corpus under the current identity) whose vector is not in the index's store."""
    identity = resolve_identity(settings)
    prefix = identity.input_prefix
    wanted = set(wanted_texts)
    keys = stored_keys(settings)
    out = []
    for (model, dims, text), n in sorted(api.billed.items()):
        if (model, dims) != (identity.model, identity.dimensions) or not text.startswith(prefix):
            continue
        chunk = text[len(prefix) :]
        if chunk not in wanted or n <= api.lost[(model, dims, text)]:
            continue
        if vector_key(identity, chunk) not in keys:
            out.append(f"billed but not stored {model}/{dims}: {text[:50]!r}")
    return out


def assert_nothing_billed_is_lost(
    api: FakeBatchAPI, settings: Settings, wanted_texts: Iterable[str]
) -> None:
    problems = lost_problems(api, settings, wanted_texts)
    assert not problems, "paid for and thrown away:\n  " + "\n  ".join(problems)
