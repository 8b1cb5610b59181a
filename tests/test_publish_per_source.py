"""Per-source publishing: a source is published only when all its vectors are present.

`index --no-wait` every night must publish every complete source even while other
sources are still in flight; those keep their last published rows, untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pytest

from corpusbatch.loading import (
    FailedInput,
    RunStore,
    SourceState,
    desired_rows,
    publish,
    table_schema,
)
from corpusbatch.types import Chunk, EmbeddingIdentity

DIM = 8
IDENT = EmbeddingIdentity(model="m", dimensions=DIM)
SCHEMA = table_schema(IDENT, {"model": "m"})
Docs = dict[str, list[tuple[str, int]]]  # source -> [(text, line)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = RunStore(tmp_path / "store.db", DIM)
    yield s
    s.close()


@pytest.fixture()
def db(tmp_path: Path) -> Any:
    return lancedb.connect(str(tmp_path / "db"))


def text_vec(text: str, dim: int = DIM) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def scan(
    store: RunStore, docs: Docs, ident: EmbeddingIdentity = IDENT, keep: set[str] | None = None
) -> None:
    """Record what a scan of ``docs`` found (no vectors); sources not in docs (or, when
    given, not in ``keep``) are gone."""
    with store.transaction():
        for source, parts in docs.items():
            chunks = [Chunk(source, t, 0, len(t), n, n, ("H",), 3) for t, n in parts]
            store.put_source(source, SourceState("x", 1, 1, "fp"), desired_rows(chunks, ident))
        store.drop_sources(set(docs) if keep is None else keep)


def embed(store: RunStore, texts: list[str], ident: EmbeddingIdentity = IDENT) -> None:
    """Store the vectors of ``texts`` (as a finished batch would)."""
    keys = {
        t: k
        for t, k in store.db.execute("SELECT text, key FROM desired")
        if t in texts  # keys come from the store, so identity matches the scan
    }
    assert set(keys) == set(texts)
    dim = ident.dimensions
    name = "f-" + hashlib.sha256("\n".join(sorted(texts)).encode()).hexdigest()[:8]
    store.add_vectors((k, text_vec(t, dim).tobytes(), "cid", name) for t, k in keys.items())


def table_rows(db: Any) -> dict[str, list[tuple[str, str, int, tuple[float, ...]]]]:
    """source -> sorted (id, text, start_line, vector) of the published table."""
    out: dict[str, list[tuple[str, str, int, tuple[float, ...]]]] = {}
    for r in db.open_table("chunks").to_arrow().to_pylist():
        out.setdefault(r["source"], []).append(
            (r["id"], r["text"], r["start_line"], tuple(r["vector"]))
        )
    return {s: sorted(rows) for s, rows in out.items()}


def texts_of(rows: list[tuple[str, str, int, tuple[float, ...]]]) -> list[tuple[str, int]]:
    return sorted((text, line) for _, text, line, _ in rows)


def test_incomplete_source_keeps_its_published_rows_while_others_update(
    store: RunStore, db: Any
) -> None:
    scan(store, {"a.md": [("a1", 1), ("a2", 2)], "b.md": [("b1", 1)]})
    embed(store, ["a1", "a2", "b1"])
    first = publish(db, "chunks", store, SCHEMA, "m")
    assert first.incomplete_sources == [] and first.inserted == 3
    a_before = table_rows(db)["a.md"]

    # a.md is edited and its new chunk is still in flight; b.md is edited and embedded
    scan(store, {"a.md": [("a1", 1), ("a3", 5)], "b.md": [("b2", 1)]})
    embed(store, ["b2"])
    assert store.incomplete_sources() == ["a.md"]
    second = publish(db, "chunks", store, SCHEMA, "m")
    assert second.incomplete_sources == ["a.md"] and not second.deferred_rebuild
    rows = table_rows(db)
    assert rows["a.md"] == a_before  # exactly the last published rows, vectors included
    assert texts_of(rows["b.md"]) == [("b2", 1)]
    assert rows["b.md"][0][3] == pytest.approx(tuple(text_vec("b2")))
    assert (second.inserted, second.deleted) == (1, 1)

    embed(store, ["a3"])  # the batch arrives
    third = publish(db, "chunks", store, SCHEMA, "m")
    assert third.incomplete_sources == []
    rows = table_rows(db)
    assert texts_of(rows["a.md"]) == [("a1", 1), ("a3", 5)]
    assert texts_of(rows["b.md"]) == [("b2", 1)]
    assert third.version == second.version + 1  # one commit: upsert and stale ids deleted


def test_deleted_source_goes_while_another_is_incomplete(store: RunStore, db: Any) -> None:
    scan(store, {"a.md": [("a1", 1)], "b.md": [("b1", 1)], "c.md": [("c1", 1)]})
    embed(store, ["a1", "b1", "c1"])
    publish(db, "chunks", store, SCHEMA, "m")
    a_before, b_before = table_rows(db)["a.md"], table_rows(db)["b.md"]

    scan(store, {"a.md": [("a1", 1), ("a2", 2)], "b.md": [("b1", 1)]})  # c.md deleted
    result = publish(db, "chunks", store, SCHEMA, "m")
    assert result.incomplete_sources == ["a.md"]
    assert table_rows(db) == {"a.md": a_before, "b.md": b_before}
    assert result.deleted == 1


def test_failed_for_good_key_does_not_hold_back_its_source(store: RunStore, db: Any) -> None:
    scan(store, {"a.md": [("a1", 1), ("a2", 2)]})
    embed(store, ["a1"])
    (key,) = [k for (k,) in store.db.execute("SELECT key FROM desired WHERE text = 'a2'")]
    store.record_failures([FailedInput(key, "cid", 400, "invalid_input", "bad", "input")], "f")
    assert store.incomplete_sources() == []
    result = publish(db, "chunks", store, SCHEMA, "m")
    assert result.incomplete_sources == []
    assert texts_of(table_rows(db)["a.md"]) == [("a1", 1)]  # the clean build lacks a2 too


def test_identity_change_waits_for_every_source(tmp_path: Path, db: Any) -> None:
    old = RunStore(tmp_path / "old.db", DIM)
    scan(old, {"a.md": [("a1", 1)], "b.md": [("b1", 1)]})
    embed(old, ["a1", "b1"])
    first = publish(db, "chunks", old, SCHEMA, "m")
    before = table_rows(db)

    ident2 = EmbeddingIdentity(model="m2", dimensions=4)
    schema2 = table_schema(ident2, {"model": "m2"})
    new = RunStore(tmp_path / "new.db", 4)
    scan(new, {"a.md": [("a1", 1)], "b.md": [("b1", 1)]}, ident2)
    embed(new, ["a1"], ident2)  # b.md still in flight under the new model
    waiting = publish(db, "chunks", new, schema2, "m2")
    assert waiting.deferred_rebuild and waiting.incomplete_sources == ["b.md"]
    assert db.open_table("chunks").version == first.version
    assert table_rows(db) == before  # no mix of two models' vectors

    embed(new, ["b1"], ident2)
    done = publish(db, "chunks", new, schema2, "m2")
    assert not done.deferred_rebuild and done.incomplete_sources == []
    got = db.open_table("chunks").to_arrow().to_pylist()
    assert sorted((r["source"], r["model"], len(r["vector"])) for r in got) == [
        ("a.md", "m2", 4),
        ("b.md", "m2", 4),
    ]
    old.close()
    new.close()


def test_no_change_writes_nothing_even_with_a_source_in_flight(store: RunStore, db: Any) -> None:
    scan(store, {"a.md": [("a1", 1)], "b.md": [("b1", 1)]})
    embed(store, ["a1", "b1"])
    first = publish(db, "chunks", store, SCHEMA, "m")
    same = publish(db, "chunks", store, SCHEMA, "m")
    assert same.version == first.version and same.unchanged == 2

    scan(store, {"a.md": [("a2", 1)], "b.md": [("b1", 1)]})  # a.md in flight, b.md as is
    waiting = publish(db, "chunks", store, SCHEMA, "m")
    again = publish(db, "chunks", store, SCHEMA, "m")
    assert waiting.version == again.version == first.version
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)


def test_new_table_holds_only_complete_sources(tmp_path: Path, store: RunStore, db: Any) -> None:
    scan(store, {"a.md": [("a1", 1)], "b.md": [("b1", 1)]})
    embed(store, ["b1"])
    assert store.incomplete_sources() == ["a.md"]

    empty = RunStore(tmp_path / "empty.db", DIM)
    scan(empty, {"a.md": [("a1", 1)]})
    nothing = publish(db, "chunks", empty, SCHEMA, "m")  # nothing complete: no table
    assert nothing.version is None and nothing.incomplete_sources == ["a.md"]
    with pytest.raises((FileNotFoundError, ValueError)):
        db.open_table("chunks")
    empty.close()

    result = publish(db, "chunks", store, SCHEMA, "m")
    assert result.inserted == 1 and result.incomplete_sources == ["a.md"]
    assert {s: texts_of(r) for s, r in table_rows(db).items()} == {"b.md": [("b1", 1)]}


def _publish(db: Any, store: RunStore) -> Any:
    result = publish(db, "chunks", store, SCHEMA, "m")
    if not result.deferred_rebuild:
        store.mark_published(result.published_sources, result.incomplete_sources)
    return result


def test_a_nightly_publish_reads_only_the_changed_sources(db: Any, store: RunStore) -> None:
    """After a full publish, the next one looks at the changed sources only, and still
    leaves the table equal to a full check."""
    docs = {f"s{i}.md": [(f"text {i} {j}", j + 1) for j in range(4)] for i in range(6)}
    scan(store, docs)
    embed(store, [t for parts in docs.values() for t, _ in parts])
    first = _publish(db, store)
    assert first.published_sources is None and first.inserted == 24  # full: new table
    assert not store.needs_publish()

    docs["s1.md"] = [("text 1 0", 1), ("a new line", 2)]  # edit one source
    del docs["s4.md"]  # delete another
    scan(store, {"s1.md": docs["s1.md"]}, keep=set(docs))  # a scan re-chunks only s1
    assert sorted(store.changed_sources()) == ["s1.md", "s4.md"]
    embed(store, ["a new line"])
    night = _publish(db, store)
    assert night.published_sources == ["s1.md", "s4.md"]
    # only s1's untouched row counts as unchanged: the other 4 sources were not read
    assert (night.inserted, night.deleted, night.unchanged) == (1, 7, 1)
    assert not store.needs_publish()
    rows = table_rows(db)
    assert set(rows) == set(docs)
    assert [t for _, t, _, _ in rows["s1.md"]] == ["a new line", "text 1 0"]

    quiet = _publish(db, store)  # nothing changed: nothing read, nothing written
    version = db.open_table("chunks").version
    assert quiet.published_sources == [] and quiet.version == version


def test_vectors_arriving_later_mark_their_sources(db: Any, store: RunStore) -> None:
    docs = {"a.md": [("alpha", 1)], "b.md": [("beta", 1)], "c.md": [("alpha", 2)]}
    scan(store, docs)
    embed(store, ["beta"])
    first = _publish(db, store)
    assert first.incomplete_sources == ["a.md", "c.md"] and set(table_rows(db)) == {"b.md"}
    assert sorted(store.changed_sources()) == ["a.md", "c.md"]  # they wait for vectors
    embed(store, ["alpha"])  # one vector completes two sources
    later = _publish(db, store)
    assert later.published_sources == ["a.md", "c.md"] and later.incomplete_sources == []
    assert set(table_rows(db)) == {"a.md", "b.md", "c.md"}
    assert store.changed_sources() == []


def test_a_full_check_still_repairs_what_an_incremental_publish_cannot_see(
    db: Any, store: RunStore
) -> None:
    docs = {"a.md": [("alpha", 1)], "b.md": [("beta", 1)]}
    scan(store, docs)
    embed(store, ["alpha", "beta"])
    _publish(db, store)
    db.open_table("chunks").delete("source = 'b.md'")  # damage outside any change
    assert _publish(db, store).published_sources == []  # not seen: nothing changed
    assert set(table_rows(db)) == {"a.md"}
    with store.transaction():
        store.mark_dirty()  # what verify --repair does
    # The table is where a published row's vector and text live: a row deleted outside
    # took them along. The full check notices; b.md is read again and embedded, once.
    full = _publish(db, store)
    assert full.published_sources is None and full.inserted == 0
    assert store.source_state("b.md") is not None
    assert store.source_state("b.md").sha256 == ""  # the next scan reads it again
    scan(store, docs)
    assert store.incomplete_sources() == ["b.md"]
    embed(store, ["beta"])
    assert _publish(db, store).inserted == 1
    assert set(table_rows(db)) == {"a.md", "b.md"}
