"""The published table on object storage (issue #11 items 1, 2 and 4).

A real S3 HTTP API runs on loopback (moto's server, ``tests/s3server.py``); embeddings
come from the loopback fake Batch API. Indexing puts the table under ``s3://`` and
keeps the journal, store.db and staging in the local index directory; a nightly edit
changes only the edited source's rows; a reader process that never ran ``index``
searches the table from its URI alone; and no storage credential, from the environment
or from ``[storage]`` in corpusbatch.toml, ends up in anything corpusbatch writes or
prints.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import lancedb
import pytest
from fakeapi import FakeBatchAPI
from s3server import SECRET_KEY, S3Server

from corpusbatch import Settings, index, loading, open_table, pipeline, search_index
from corpusbatch.config import remembered, settings_from
from corpusbatch.errors import ConfigError
from corpusbatch.workspace import IndexPaths, is_local, table_uri

REPO = Path(__file__).resolve().parents[1]
DIMS = 16
KEY = "sk-cbtest-objstore-0123456789abcdef"


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with S3Server() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS) as server:
        yield server


def docs(root: Path, n: int = 6) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(n):
        body = "\n\n".join(f"Page {i} paragraph {p}: grind{i} brew{p} kettle." for p in range(3))
        (root / f"page{i}.md").write_text(f"# Page {i}\n\n{body}\n")
    return root


def settings_for(idx: Path, api: FakeBatchAPI, db: str, **kw: Any) -> Settings:
    options: dict[str, Any] = {
        "index_dir": idx,
        "provider": "openai",
        "base_url": api.base_url,
        "dimensions": DIMS,
        "chunk_tokens": 40,
        "poll_interval": 0.002,
        "db": db,
    }
    options.update(kw)
    return Settings(**options)


def rows_by_source(settings: Settings) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    table = open_table(settings).to_arrow().select(["id", "source", "content_hash"])
    for rid, source, chash in zip(
        table["id"].to_pylist(),
        table["source"].to_pylist(),
        table["content_hash"].to_pylist(),
        strict=True,
    ):
        out.setdefault(source, set()).add((rid, chash))
    return out


def desired(idx: Path) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    with closing(sqlite3.connect(IndexPaths(idx).store)) as db:
        for rid, source, chash in db.execute("SELECT id, source, content_hash FROM desired"):
            out.setdefault(source, set()).add((rid, chash))
    return out


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENAI_"))}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "corpusbatch", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- configuration ---------------------------------------------------------------------
def test_db_and_storage_come_from_the_config_file_and_storage_is_never_remembered(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "corpusbatch.toml"
    conf.write_text(
        'db = "s3://bucket/prefix"\nnamespace = "team-a"\n\n[storage]\n'
        'aws_endpoint = "http://127.0.0.1:9000"\nallow_http = true\n'
        f'aws_secret_access_key = "{SECRET_KEY}"\n'
    )
    settings = settings_from({}, conf)
    assert settings.db == "s3://bucket/prefix" and settings.namespace == "team-a"
    assert settings.storage["allow_http"] == "true"  # TOML booleans become strings
    assert table_uri(settings) == "s3://bucket/prefix"
    kept = json.dumps(remembered(settings))
    assert "storage" not in remembered(settings) and SECRET_KEY not in kept
    assert SECRET_KEY not in repr(settings) and "9000" not in kept
    assert remembered(settings)["db"] == "s3://bucket/prefix"
    # a local db is remembered absolute, and the default stays inside the index dir
    local = settings_from({"db": "shared/tables"}, None)
    assert remembered(local)["db"] == str((Path.cwd() / "shared/tables").resolve())
    assert table_uri(Settings(index_dir=tmp_path / "i")) == str(tmp_path / "i" / "lancedb")
    assert table_uri(Settings(db="file:///srv/rag")) == "/srv/rag"
    assert is_local(Settings(db="file:///srv/rag")) and is_local(Settings(db="rel/dir"))
    assert not any(is_local(Settings(db=f"{s}://b/p")) for s in ("s3", "gs", "az"))


@pytest.mark.parametrize(
    "uri",
    [f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET_KEY}@bucket/p", "s3://bucket/p?secret=x", ""],
)
def test_a_table_uri_carrying_credentials_is_refused_without_echoing_them(uri: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings(db=uri)
    assert SECRET_KEY not in str(err.value) and "secret=x" not in str(err.value)


def test_a_namespace_must_be_a_plain_name() -> None:
    for bad in ("a/b", "../x", " x", "x'y", "-x"):
        with pytest.raises(ConfigError):
            Settings(namespace=bad)
    assert Settings(namespace="team_a-1.docs").source_prefix == "team_a-1.docs/"
    assert Settings().source_prefix == ""


def test_a_local_db_path_holds_the_table_and_a_no_change_run_skips_lancedb(
    tmp_path: Path, api: FakeBatchAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = docs(tmp_path / "docs")
    settings = settings_for(tmp_path / "idx", api, str(tmp_path / "shared"))
    first = index(root, settings, api_key=KEY)
    assert first.published and first.new == sum(len(v) for v in desired(tmp_path / "idx").values())
    assert (tmp_path / "shared" / "chunks.lance").is_dir()
    assert not (tmp_path / "idx" / "lancedb").exists(), "the table is where --db says"
    assert rows_by_source(settings) == desired(tmp_path / "idx")
    published: list[int] = []
    real = pipeline._publish
    monkeypatch.setattr(pipeline, "_publish", lambda ctx: published.append(1) or real(ctx))
    again = index(root, settings, api_key=KEY)
    assert again.published and published == [], "a local table still skips the publish"


# -- writers racing to create one shared table -----------------------------------------
def ids_and_hashes(settings: Settings) -> set[tuple[str, str]]:
    return {pair for rows in rows_by_source(settings).values() for pair in rows}


def desired_ids_and_hashes(idx: Path) -> set[tuple[str, str]]:
    return {pair for rows in desired(idx).values() for pair in rows}


def test_a_publish_that_meets_a_racing_create_is_worked_out_again_and_lands_whole(
    tmp_path: Path, api: FakeBatchAPI, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Two writers that both found no table both create it; Lance lands the later create
    as an overwrite, and the other's upsert, read before it, is refused ("incompatible
    transaction"). The publish is redone on the newest version instead of failing."""
    shared = str(tmp_path / "shared")
    settings = settings_for(tmp_path / "idx", api, shared, namespace="alpha")
    real, raced = loading._update, []

    def update(table: Any, *args: Any, **kw: Any) -> Any:
        if not raced:  # the other writer's create lands between our open and our commit
            raced.append(table.version)
            lancedb.connect(shared).create_table("chunks", schema=table.schema, mode="overwrite")
        return real(table, *args, **kw)

    monkeypatch.setattr(loading, "_update", update)
    with caplog.at_level(logging.INFO, logger="corpusbatch"):
        result = index(docs(tmp_path / "docs"), settings, api_key=KEY)
    assert raced == [1], "the race happened on the table this writer created"
    assert any("Incompatible transaction" in r.getMessage() for r in caplog.records)
    assert result.published and result.new == len(desired_ids_and_hashes(tmp_path / "idx"))
    assert ids_and_hashes(settings) == desired_ids_and_hashes(tmp_path / "idx")
    assert all(s.startswith("alpha/") for s in rows_by_source(settings))


def test_a_create_that_landed_on_another_writers_rows_puts_them_back(
    tmp_path: Path, api: FakeBatchAPI, caplog: Any
) -> None:
    """The other order: alpha created the table and published before beta's create (which
    found no table a moment earlier) landed as an empty overwrite. Beta puts alpha's rows
    back, then publishes its own; alpha's next run finds its rows as it left them."""
    shared = str(tmp_path / "shared")
    alpha = settings_for(tmp_path / "idx-a", api, shared, namespace="alpha")
    beta = settings_for(tmp_path / "idx-b", api, shared, namespace="beta")
    index(docs(tmp_path / "docs-a"), alpha, api_key=KEY)
    published = ids_and_hashes(alpha)
    assert published == desired_ids_and_hashes(tmp_path / "idx-a")

    db = lancedb.connect(shared)
    late = db.create_table("chunks", schema=db.open_table("chunks").schema, mode="overwrite")
    assert late.count_rows() == 0 and late.version > 1, "what Lance does with the late create"
    with caplog.at_level(logging.WARNING, logger="corpusbatch"):
        loading._undo_overwrite(db, "chunks", late)
    assert ids_and_hashes(alpha) == published
    assert any("putting its" in r.getMessage() for r in caplog.records)

    # an overwrite of an empty version (both creates raced, nobody published): a no-op
    empty = tmp_path / "empty"
    first = lancedb.connect(empty).create_table("t", schema=late.schema)
    second = lancedb.connect(empty).create_table("t", schema=late.schema, mode="overwrite")
    loading._undo_overwrite(lancedb.connect(empty), "t", second)
    assert (first.version, second.version, second.count_rows()) == (1, 2, 0)
    assert lancedb.connect(empty).open_table("t").version == 2, "nothing committed"

    docs(tmp_path / "docs-b", n=3)
    index(tmp_path / "docs-b", beta, api_key=KEY)
    want = desired_ids_and_hashes(tmp_path / "idx-a") | desired_ids_and_hashes(tmp_path / "idx-b")
    assert ids_and_hashes(alpha) == want
    again = index(tmp_path / "docs-a", alpha, api_key=KEY)
    assert (again.new, again.changed, again.deleted) == (0, 0, 0)
    assert ids_and_hashes(alpha) == want


# -- on S3 -----------------------------------------------------------------------------
@pytest.mark.slow
def test_index_nightly_edit_and_a_reader_with_nothing_local_on_s3(
    tmp_path: Path, s3: S3Server, api: FakeBatchAPI
) -> None:
    root = docs(tmp_path / "docs")
    idx = tmp_path / "idx"
    settings = settings_for(idx, api, s3.uri("rag/tables"))
    first = index(root, settings, api_key=KEY)
    assert first.published and first.table_version is not None
    assert rows_by_source(settings) == desired(idx)
    assert any(k.startswith("rag/tables/chunks.lance/_versions/") for k in s3.keys(""))
    # only local state in the index directory: no table there
    assert sorted(p.name for p in idx.iterdir()) == sorted(
        ["batches", "lock", "outputs", "staging", "state.db", "store.db"]
    )
    assert s3.count(["PUT"]) > 0

    # nothing changed: the table is looked at (an object store listing is no proof),
    # nothing is written to it
    s3.reset()
    same = index(root, settings, api_key=KEY)
    assert same.published and (same.new, same.changed, same.deleted) == (0, 0, 0)
    assert s3.count(["PUT", "POST", "DELETE"]) == 0 and s3.count(["GET", "HEAD"]) > 0
    assert same.table_version == first.table_version

    # a nightly edit: one page rewritten, one deleted; every other row stays as it was
    before = rows_by_source(settings)
    (root / "page1.md").write_text("# Page 1\n\nDescaling the kettle with citric acid.\n")
    (root / "page2.md").unlink()
    s3.reset()
    night = index(root, settings, api_key=KEY)
    assert night.published and night.new >= 1 and night.deleted >= len(before["page2.md"])
    assert s3.count(["PUT"]) > 0
    after = rows_by_source(settings)
    assert after == desired(idx)
    assert "page2.md" not in after and after["page1.md"] != before["page1.md"]
    assert {s: r for s, r in after.items() if s != "page1.md"} == {
        s: r for s, r in before.items() if s not in ("page1.md", "page2.md")
    }

    # a reader on another machine: an empty working directory, no index directory,
    # the table URI as a flag, endpoint and credentials from the environment
    elsewhere = tmp_path / "reader"
    elsewhere.mkdir()
    # (the fake API's vectors are a hash of the text: a chunk's own text finds it first
    # by vector alone, which the query embedding must get exactly right)
    (text,) = open_table(settings).search().where("source = 'page1.md'").to_arrow()["text"]
    env = {**s3.env(), "OPENAI_API_KEY": KEY}
    args = ["search", str(text), "--db", s3.uri("rag/tables"), "--json", "--mode", "vector"]
    done = cli([*args, "--provider", "openai", "--base-url", api.base_url], env, elsewhere)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert hits[0]["source"] == "page1.md" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert sorted(p.name for p in elsewhere.iterdir()) == [], "the reader wrote nothing"
    # the library reader: model, dimensions and provider come from the table
    reader = Settings(
        index_dir=elsewhere / "none", db=s3.uri("rag/tables"), provider="openai",
        base_url=api.base_url,
    )  # fmt: skip
    best = search_index(str(text), reader, k=1, mode="vector", api_key=KEY)[0]
    assert best.source == "page1.md" and best.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_no_storage_credential_in_anything_written_or_printed(
    tmp_path: Path, s3: S3Server, api: FakeBatchAPI
) -> None:
    """Credentials from [storage] in corpusbatch.toml and from the environment: none in
    the index directory (store.db's remembered settings included), the reports or the
    log lines of index, status, verify and search."""
    root = docs(tmp_path / "docs")
    work = tmp_path / "work"
    work.mkdir()
    opts = s3.storage_options()
    (work / "corpusbatch.toml").write_text(
        f'db = "{s3.uri("team/tables")}"\nprovider = "openai"\nbase_url = "{api.base_url}"\n'
        f"dimensions = {DIMS}\nchunk_tokens = 40\npoll_interval = 0.002\n\n[storage]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in opts.items())
    )
    printed: list[str] = []
    no_aws = {"OPENAI_API_KEY": KEY}  # only [storage] says where and who
    for args in (
        ["-v", "index", str(root), "--json"],
        ["-v", "index", str(root), "--json"],
        ["status", "--json"],
        ["verify", "--json"],
        ["search", "kettle", "--json"],
    ):
        done = cli(args, no_aws, work)
        printed += [done.stdout, done.stderr]
        assert done.returncode == 0, done.stderr
    assert json.loads(printed[0])["published"] is True
    # the second writer of the table through the environment instead of [storage]
    (work / "corpusbatch.toml").write_text(
        (work / "corpusbatch.toml").read_text().split("[storage]")[0]
    )
    done = cli(["-v", "index", str(root), "--json"], {**s3.env(), **no_aws}, work)
    printed += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stderr
    written = [p for p in (work / ".corpusbatch").rglob("*") if p.is_file()]
    assert any(p.name == "store.db" for p in written)
    leaks = [p for p in written if SECRET_KEY.encode() in p.read_bytes()]
    leaks += [f"printed #{i}" for i, text in enumerate(printed) if SECRET_KEY in text]
    assert leaks == []
    with closing(sqlite3.connect(work / ".corpusbatch" / "store.db")) as db:
        kept = json.loads(db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    assert kept["db"] == s3.uri("team/tables") and "storage" not in kept
    assert s3.endpoint not in json.dumps(kept)
