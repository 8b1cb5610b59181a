"""Every vector is stored once: in staging until published, then in the published table.

Through the real pipeline, the real ``openai`` SDK and the loopback fake Batch API:
after a finished run staging is empty and ``store.db`` holds no vector bytes; rows that
move take their vectors from the table; garbage collection drops the vectors of texts
no source has any more (and only those); switching the identity back costs nothing;
an index directory of the previous layout (vectors as blobs in ``store.db``) is
migrated on first use without embedding anything.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeapi import FakeBatchAPI
from invariants import (
    CleanBuilder,
    assert_no_double_billing,
    assert_table_is_clean_build,
    read_files,
    table_rows,
)

from corpusbatch import Settings, index
from corpusbatch.loading import RunStore
from corpusbatch.staging import Staging

DIMS = 16


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS) as server:
        yield server


@pytest.fixture(scope="module")
def clean() -> Iterator[CleanBuilder]:
    with CleanBuilder() as builder:
        yield builder


def settings_for(tmp_path: Path, api: FakeBatchAPI, **kw: Any) -> Settings:
    options: dict[str, Any] = {
        "index_dir": tmp_path / "idx",
        "provider": "openai",
        "base_url": api.base_url,
        "dimensions": DIMS,
        "chunk_tokens": 40,
        "poll_interval": 0.002,
        "limits": {"max_inputs_per_file": 8, "max_inputs_per_request": 4},
    }
    options.update(kw)
    return Settings(**options)


def para(tag: str, n: int = 30) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def write(root: Path, files: dict[str, list[str]]) -> None:
    for old in root.glob("*.md"):
        if old.name not in files:
            old.unlink()
    for name, paragraphs in files.items():
        (root / name).write_text("\n\n".join(paragraphs) + "\n")


def staged_keys(settings: Settings) -> list[str]:
    return [k for keys in Staging(settings.index_dir / "staging").key_batches() for k in keys]


def store_keys(settings: Settings) -> set[str]:
    with closing(sqlite3.connect(settings.index_dir / "store.db")) as db:
        return {k for (k,) in db.execute("SELECT key FROM vectors")}


def table_keys(settings: Settings) -> set[str]:
    import lancedb

    table = lancedb.connect(str(settings.index_dir / "lancedb")).open_table("chunks")
    return set(table.to_arrow()["key"].to_pylist())


def run(root: Path, settings: Settings) -> Any:
    return index(root, settings, api_key="k")


def test_after_a_finished_run_each_vector_is_stored_once(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {f"d{i}.md": [para(f"a{i}x"), para(f"b{i}x")] for i in range(6)})
    settings = settings_for(tmp_path, api)
    report = run(root, settings)
    assert report.embedded_vectors > 0
    assert staged_keys(settings) == []  # published vectors left staging
    with closing(sqlite3.connect(settings.index_dir / "store.db")) as db:
        cols = {r[1] for r in db.execute("PRAGMA table_info(vectors)")}
    assert "vector" not in cols  # store.db records keys, never vector bytes
    with closing(sqlite3.connect(settings.index_dir / "store.db")) as db:
        kept = db.execute("SELECT COUNT(*) FROM desired WHERE text != ''").fetchone()[0]
    assert kept == 0  # nor texts: the published table holds them
    with closing(sqlite3.connect(settings.index_dir / "store.db")) as db:
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0  # space given back
    assert store_keys(settings) == table_keys(settings)
    assert_table_is_clean_build(settings, read_files(root), api, clean, previous=[])


def test_moved_rows_take_their_vectors_from_the_table_and_cost_nothing(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {"a.md": [para("one"), para("two")], "b.md": [para("three")]})
    settings = settings_for(tmp_path, api)
    run(root, settings)
    before = table_rows(settings)
    # a.md is renamed (every row id changes) and b.md moves down two lines
    (root / "a.md").rename(root / "c.md")
    (root / "b.md").write_text("\n\n" + (root / "b.md").read_text())
    again = run(root, settings)
    assert again.embedded_vectors == 0 and again.to_embed_inputs == 0
    assert staged_keys(settings) == []
    assert_table_is_clean_build(settings, read_files(root), api, clean, previous=before)
    assert_no_double_billing(api)


def test_garbage_collection_drops_only_texts_no_source_has(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {"a.md": [para("keep"), para("edit")], "b.md": [para("shared")]})
    settings = settings_for(tmp_path, api)
    run(root, settings)
    keys_before = store_keys(settings)
    # the edited paragraph's text is gone everywhere; "shared" moves into a.md too
    write(root, {"a.md": [para("keep"), para("new"), para("shared")], "b.md": [para("shared")]})
    run(root, settings)
    after = store_keys(settings)
    assert after == table_keys(settings)  # nothing but what the table uses
    gone = keys_before - after
    assert len(gone) >= 1  # the edited text's vectors were collected
    assert staged_keys(settings) == []
    assert_table_is_clean_build(settings, read_files(root), api, clean, previous=[])


def test_switching_the_identity_back_costs_nothing(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {f"d{i}.md": [para(f"p{i}q")] for i in range(4)})
    settings = settings_for(tmp_path, api)
    first = run(root, settings)
    other = settings_for(tmp_path, api, dimensions=8)
    switched = run(root, other)
    assert switched.embedded_vectors == first.embedded_vectors  # a new identity pays once
    # the old identity's vectors wait in staging, once each
    staged = staged_keys(other)
    assert len(staged) == len(set(staged)) == first.embedded_vectors
    back = run(root, settings)
    assert back.embedded_vectors == 0 and back.to_embed_inputs == 0
    assert_table_is_clean_build(settings, read_files(root), api, clean, previous=[])
    assert_no_double_billing(api)


def _old_layout(settings: Settings) -> None:
    """Turn a finished index into one of the previous layout: vectors as blobs in
    store.db, a table without `key` (layout 2), no staging."""
    import lancedb

    table = lancedb.connect(str(settings.index_dir / "lancedb")).open_table("chunks")
    data = table.to_arrow()
    vectors = dict(
        zip(
            data["key"].to_pylist(),
            [np.asarray(v, dtype="<f4").tobytes() for v in data["vector"].to_pylist()],
            strict=True,
        )
    )
    with closing(sqlite3.connect(settings.index_dir / "store.db")) as db:
        db.execute("DROP TABLE vectors")
        db.execute(
            "CREATE TABLE vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL,"
            " custom_id TEXT NOT NULL, file_name TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO vectors VALUES (?, ?, 'c', 'f')", [(k, v) for k, v in vectors.items()]
        )
        db.commit()
    shutil.rmtree(settings.index_dir / "staging", ignore_errors=True)
    meta = json.loads(data.schema.metadata[b"corpusbatch"])
    meta["schema_version"] = 2
    old = data.drop_columns(["key"])
    old = old.replace_schema_metadata({"corpusbatch": json.dumps(meta, sort_keys=True)})
    lancedb.connect(str(settings.index_dir / "lancedb")).create_table(
        "chunks", data=old, mode="overwrite"
    )


def test_an_index_of_the_previous_layout_is_migrated_without_embedding(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {f"d{i}.md": [para(f"m{i}z"), para(f"n{i}z")] for i in range(3)})
    settings = settings_for(tmp_path, api)
    run(root, settings)
    expected = table_rows(settings)
    _old_layout(settings)
    store = RunStore(settings.index_dir / "store.db", DIMS, settings.index_dir / "staging")
    store.close()  # opening moved the blobs to staging
    assert len(staged_keys(settings)) == len({r.text for r in expected})
    again = run(root, settings)
    assert again.embedded_vectors == 0 and again.to_embed_inputs == 0
    assert table_rows(settings) == expected  # same ids, texts and vector bytes
    assert table_keys(settings) == store_keys(settings)  # layout 3: rows carry their key
    assert staged_keys(settings) == []
    assert_no_double_billing(api)


def test_a_lost_table_is_rebuilt_by_reading_and_embedding_again(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {f"d{i}.md": [para(f"t{i}w")] for i in range(3)})
    settings = settings_for(tmp_path, api)
    first = run(root, settings)
    shutil.rmtree(settings.index_dir / "lancedb")  # the only copy of vectors and texts
    lost = run(root, settings)  # notices: every source is read again next run
    assert lost.embedded_vectors == 0
    again = run(root, settings)
    assert again.embedded_vectors == first.embedded_vectors
    assert_table_is_clean_build(settings, read_files(root), api, clean, previous=[])
    assert run(root, settings).embedded_vectors == 0


def test_a_run_that_changes_nothing_never_imports_lancedb(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    """Importing LanceDB costs 2-4 s here; a nightly run with nothing to do skips it
    (the store remembers the version it published and checks it on disk)."""
    root = tmp_path / "docs"
    root.mkdir()
    write(root, {f"d{i}.md": [para(f"i{i}v")] for i in range(2)})
    settings = settings_for(tmp_path, api)
    run(root, settings)
    cmd = [
        sys.executable, "-X", "importtime", "-m", "corpusbatch", "index", str(root),
        "--index-dir", str(settings.index_dir), "--provider", "openai",
        "--base-url", api.base_url, "--api-key-env", "CB_TEST_KEY",
        "--dimensions", str(DIMS), "--chunk-tokens", "40", "--json",
    ]  # fmt: skip
    env = {**os.environ, "CB_TEST_KEY": "k"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["published"] and report["embedded_vectors"] == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "corpusbatch.pipeline" in imported  # (the import log is there)
    assert "lancedb" not in imported
    # written since (here: a row added by hand): the next run looks at the table
    import lancedb

    table = lancedb.connect(str(settings.index_dir / "lancedb")).open_table("chunks")
    table.add(table.to_arrow().slice(0, 1).to_pylist())
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lancedb" in {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
