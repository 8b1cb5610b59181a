"""Table upkeep after a publish: scalar indexes, optimize() deferred while changes are
small (searches still see the new rows), and the vector index trained again once the
table has doubled since it was trained (its partitions no longer fit the data)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from corpusbatch import pipeline
from corpusbatch.loading import RunStore

DIM = 8


def rows(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(n, DIM)).astype("f4")
    ids = [f"{i:032x}" for i in range(start, start + n)]
    return pa.table(
        {
            "id": ids,
            "key": ids,
            "source": [f"s{i % 7}.md" for i in range(start, start + n)],
            "text": [f"text number {i}" for i in range(start, start + n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
        }
    )


def test_vector_index_is_trained_again_when_the_table_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "VECTOR_INDEX_MIN_ROWS", 300)
    monkeypatch.setattr(pipeline, "OPTIMIZE_ROWS", 250)
    store = RunStore(tmp_path / "store.db", DIM)
    table = lancedb.connect(str(tmp_path / "db")).create_table("t", data=rows(0, 200))

    pipeline._maintain(table, store, 0)  # below the minimum: scalar and FTS indexes only
    columns = {tuple(i.columns) for i in table.list_indices()}
    assert {("id",), ("source",), ("key",), ("text",)} <= columns
    assert ("vector",) not in columns and store.get_meta("vector_index_rows") is None

    table.add(rows(200, 150))
    pipeline._maintain(table, store, 0)
    assert ("vector",) in {tuple(i.columns) for i in table.list_indices()}
    assert store.get_meta("vector_index_rows") == "350"

    small = rows(350, 10)
    table.add(small)  # a small change: optimize() waits, search still sees it
    pipeline._maintain(table, store, 10)
    stats = table.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows == 10
    assert store.get_meta("unoptimized_rows") == "10"
    hit = table.search(small["vector"][9].as_py()).limit(1).to_arrow()
    assert hit["id"].to_pylist() == [f"{359:032x}"]

    table.add(rows(360, 290))  # 650 < 2 x 350: new rows join the existing partitions
    pipeline._maintain(table, store, 290)  # 300 rows due >= OPTIMIZE_ROWS: optimized
    assert store.get_meta("vector_index_rows") == "350"
    assert store.get_meta("unoptimized_rows") == "0"
    stats = table.index_stats("vector_idx")
    assert stats is not None and stats.num_unindexed_rows == 0

    table.add(rows(650, 100))  # 750 >= 700: trained again on every row
    pipeline._maintain(table, store, 0)
    assert store.get_meta("vector_index_rows") == "750"
    store.close()
