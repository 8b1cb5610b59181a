"""Loading: output-line checks, both error shapes, and one-commit publishing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from corpusbatch import loading
from corpusbatch.errors import LoadError
from corpusbatch.loading import (
    RunStore,
    SourceState,
    classify_error,
    desired_rows,
    load_output,
    publish,
    table_schema,
)
from corpusbatch.types import Chunk, EmbeddingIdentity

DIM = 8
IDENT = EmbeddingIdentity(model="m", dimensions=DIM)


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def ok_line(cid: str, vectors: list[np.ndarray], b64: bool = True) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
            if b64
            else v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": "r",
            "body": {
                "object": "list",
                "data": data[::-1],
                "model": "m",
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            },
        },
        "error": None,
    }


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    return path


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "store.db", DIM)
    yield s
    s.close()


def test_good_lines_in_any_order_load_every_vector(store: RunStore, tmp_path: Path) -> None:
    manifest = {"c1": ["k1", "k2"], "c2": ["k3"]}
    out = write_jsonl(
        tmp_path / "out.jsonl",
        [ok_line("c2", [vec(3)], b64=False), ok_line("c1", [vec(1), vec(2)])],
    )
    res = load_output(store, file_name="f", manifest=manifest, output_path=out)
    assert (res.vectors, res.failed, res.tokens) == (3, [], 14)
    assert {k for (k,) in store.db.execute("SELECT key FROM vectors")} == {"k1", "k2", "k3"}
    stored = {k: v for keys, vecs in store.staging.rows() for k, v in zip(keys, vecs, strict=True)}
    for key, seed in (("k1", 1), ("k2", 2), ("k3", 3)):
        np.testing.assert_array_equal(np.frombuffer(stored[key], "<f4"), vec(seed))


def test_both_error_shapes_and_missing_lines_are_failures(store: RunStore, tmp_path: Path) -> None:
    manifest = {"ok": ["a"], "bad": ["b1", "b2"], "expired": ["c"], "lost": ["d"]}
    out = write_jsonl(tmp_path / "out.jsonl", [ok_line("ok", [vec(1)])])
    err = write_jsonl(
        tmp_path / "err.jsonl",
        [
            {
                "custom_id": "bad",
                "response": {
                    "status_code": 400,
                    "request_id": "x",
                    "body": {
                        "error": {
                            "message": "too many tokens",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    },
                },
                "error": None,
            },
            {
                "custom_id": "expired",
                "response": None,
                "error": {"code": "batch_expired", "message": "window expired"},
            },
        ],
    )
    res = load_output(store, file_name="f", manifest=manifest, output_path=out, error_path=err)
    by_key = {f.key: f for f in res.failed}
    assert set(by_key) == {"b1", "b2", "c", "d"}
    assert not by_key["b1"].retryable and by_key["b1"].status_code == 400
    assert by_key["c"].retryable and by_key["c"].code == "batch_expired"
    assert by_key["d"].retryable and by_key["d"].code == "missing"
    assert store.count("vectors") == 1


def test_bad_vectors_and_unknown_ids_are_rejected(store: RunStore, tmp_path: Path) -> None:
    manifest = {"c": ["k1", "k2", "k3"]}
    short = np.ones(DIM - 1, np.float32)
    nan = vec(1).copy()
    nan[0] = np.nan
    line = ok_line("c", [vec(0), short, nan])
    out = write_jsonl(tmp_path / "out.jsonl", [line, ok_line("stranger", [vec(2)]), line])
    (tmp_path / "out.jsonl").open("a").write("{not json\n")
    res = load_output(store, file_name="f", manifest=manifest, output_path=out)
    assert res.vectors == 1
    reasons = {f.key: f for f in res.failed}
    # a wrong length among right ones is the provider's damage (only when every vector
    # is wrong is it --dimensions/--model: tests/test_hostile_output.py)
    assert "dimension" in reasons["k2"].message and reasons["k2"].retryable
    assert "non-finite" in reasons["k3"].message and reasons["k3"].retryable
    assert res.unknown_custom_ids == 2  # the stranger and the repeated line


def test_loading_twice_stores_each_vector_once(store: RunStore, tmp_path: Path) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", [ok_line("c", [vec(1)])])
    for _ in range(2):
        load_output(store, file_name="f", manifest={"c": ["k"]}, output_path=out)
    assert store.count("vectors") == 1


def chunk(source: str, text: str, line: int) -> Chunk:
    return Chunk(source, text, 0, len(text), line, line, ("H",), 3)


def fill(store: RunStore, docs: dict[str, list[tuple[str, int]]]) -> None:
    with store.transaction():
        for source, parts in docs.items():
            rows = list(desired_rows([chunk(source, t, n) for t, n in parts], IDENT))
            store.put_source(source, SourceState("x", 1, 1, "fp"), rows)
        store.drop_sources(set(docs))
    keys = [r[0] for r in store.db.execute("SELECT DISTINCT key FROM desired")]
    store.add_vectors((k, vec(i).tobytes(), "cid", "f") for i, k in enumerate(keys))


def test_publish_creates_updates_deletes_and_skips_no_change(
    store: RunStore, tmp_path: Path
) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    schema = table_schema(IDENT, {"model": "m"})
    fill(store, {"a.md": [("alpha", 1), ("beta", 5)], "b.md": [("alpha", 1)]})
    first = publish(db, "chunks", store, schema, "m")
    assert (first.inserted, first.deleted) == (3, 0)
    table = db.open_table("chunks")
    assert table.count_rows() == 3
    again = publish(db, "chunks", store, schema, "m")
    assert (again.inserted, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 3)
    assert again.version == first.version  # nothing written

    # beta moves down a line (metadata change), b.md disappears, gamma appears
    fill(store, {"a.md": [("alpha", 1), ("beta", 6), ("gamma", 9)]})
    third = publish(db, "chunks", store, schema, "m")
    assert (third.inserted, third.updated, third.deleted, third.unchanged) == (1, 1, 1, 1)
    # one commit sized to the change: the upsert deletes the stale ids too, so no
    # version of the table shows the new rows next to the stale one
    assert third.version == first.version + 1
    rows = db.open_table("chunks").to_arrow().to_pylist()
    assert sorted((r["source"], r["text"], r["start_line"]) for r in rows) == [
        ("a.md", "alpha", 1),
        ("a.md", "beta", 6),
        ("a.md", "gamma", 9),
    ]
    assert len({r["id"] for r in rows}) == 3
    assert all(len(r["vector"]) == DIM for r in rows)


def _by_source(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for r in sorted(rows, key=lambda r: (r["source"], r["start_line"], r["text"])):
        out.setdefault(r["source"], []).append((r["text"], r["start_line"]))
    return out


@pytest.mark.parametrize(("bound", "commits"), [("ATOMIC_UPSERT_BYTES", 2), ("ATOMIC_DELETES", 3)])
def test_a_large_change_commits_whole_sources(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str, commits: int
) -> None:
    """Past ``ATOMIC_UPSERT_BYTES`` of new rows, or ``ATOMIC_DELETES`` stale ones, a
    publish is several commits, each with whole sources: every version between shows
    each document as it was or as it is now (never both, never neither)."""
    db = lancedb.connect(str(tmp_path / "db"))
    schema = table_schema(IDENT, {"model": "m"})
    old = {
        "a.md": [("alpha", 1), ("old a", 2)],
        "b.md": [("beta", 1), ("old b", 2)],
        "c.md": [("gamma", 1)],
        "d.md": [("delta", 1), ("old d", 2)],
    }
    fill(store, old)
    first = publish(db, "chunks", store, schema, "m")
    monkeypatch.setattr(loading, bound, 1)
    new = {
        "a.md": [("alpha", 1), ("new a", 2)],  # one row replaced
        "b.md": [("beta", 3), ("new b", 4)],  # one moved, one replaced
        "d.md": [("delta", 1)],  # one row gone; c.md gone
    }
    fill(store, new)
    second = publish(db, "chunks", store, schema, "m")
    assert (second.inserted, second.updated, second.deleted) == (2, 1, 4)
    assert second.version == first.version + commits
    before, after = _by_source_of(old), _by_source_of(new)
    for version in range(first.version, second.version + 1):
        table = db.open_table("chunks")
        table.checkout(version)
        seen = _by_source(table.to_arrow().to_pylist())
        for source in before.keys() | after.keys():
            assert seen.get(source) in (before.get(source), after.get(source)), (version, source)
    assert _by_source(db.open_table("chunks").to_arrow().to_pylist()) == after


def test_a_source_past_the_bound_is_still_one_commit(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source with more new rows than ``ATOMIC_UPSERT_BYTES`` is a group of its own:
    its new rows and the deletion of its stale ones land in one commit, and every
    version shows each source as it was or as it is now."""
    db = lancedb.connect(str(tmp_path / "db"))
    schema = table_schema(IDENT, {"model": "m"})
    old = {"a.md": [("old a", 1)], "b.md": [("old b", 1)], "c.md": [("gamma", 1)]}
    fill(store, old)
    first = publish(db, "chunks", store, schema, "m")
    monkeypatch.setattr(loading, "ATOMIC_UPSERT_BYTES", 1)
    new = {"a.md": [("new a", 1)], "b.md": [("new b", 1), ("more b", 2)]}
    fill(store, new)
    second = publish(db, "chunks", store, schema, "m")
    assert (second.inserted, second.deleted) == (3, 3)
    assert second.version == first.version + 2  # a.md (with c.md's deletion); b.md
    before, after = _by_source_of(old), _by_source_of(new)
    for version in range(first.version, second.version + 1):
        table = db.open_table("chunks")
        table.checkout(version)
        seen = _by_source(table.to_arrow().to_pylist())
        for source in ("a.md", "b.md", "c.md"):
            assert seen.get(source) in (before.get(source), after.get(source)), version
    assert _by_source(db.open_table("chunks").to_arrow().to_pylist()) == after


def _by_source_of(docs: dict[str, list[tuple[str, int]]]) -> dict[str, list[tuple[str, int]]]:
    return {source: sorted(parts, key=lambda p: (p[1], p[0])) for source, parts in docs.items()}


def test_identity_change_rebuilds_the_table_in_one_commit(tmp_path: Path) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    old = RunStore(tmp_path / "old.db", DIM)
    fill(old, {"a.md": [("alpha", 1), ("beta", 2)]})
    first = publish(db, "chunks", old, table_schema(IDENT, {"model": "m"}), "m")

    ident2 = EmbeddingIdentity(model="m2", dimensions=4)
    new = RunStore(tmp_path / "new.db", 4)
    with new.transaction():
        rows = list(desired_rows([chunk("a.md", "alpha", 1)], ident2))
        new.put_source("a.md", SourceState("x", 1, 1, "fp2"), rows)
    new.add_vectors([(rows[0][1], np.ones(4, np.float32).tobytes(), "c", "f")])
    result = publish(db, "chunks", new, table_schema(ident2, {"model": "m2"}), "m2")

    assert (result.inserted, result.deleted) == (1, 2)
    table = db.open_table("chunks")
    assert table.version == first.version + 1
    got = table.to_arrow().to_pylist()
    assert [(r["model"], len(r["vector"])) for r in got] == [("m2", 4)]
    old_rows = db.open_table("chunks")  # the previous version is still readable
    old_rows.checkout(first.version)
    assert {len(r["vector"]) for r in old_rows.to_arrow().to_pylist()} == {DIM}
    old.close()
    new.close()


# -- failure classes ------------------------------------------------------------------
def _err(code: str | None, message: str = "m", type_: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "type": type_, "param": None}


QUOTA = "You exceeded your current quota, please check your plan and billing details."
MODEL_GONE = "The model `text-embedding-9` does not exist or you do not have access to it."
NO_DIMS = "This model does not support specifying dimensions."
TOO_LONG = "This model's maximum context length is 8192 tokens, however you requested 9000."


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        # the provider says the input itself is bad
        (400, _err(None, "too many tokens", "invalid_request_error"), "input"),
        (400, _err(None, TOO_LONG, "invalid_request_error"), "input"),
        (413, _err(None, "request too large"), "input"),
        (422, _err("invalid_input", "empty string"), "input"),
        (None, _err("invalid_request_error", "bad input"), "input"),
        (None, _err("invalid_input", "bad input"), "input"),
        (None, _err("context_length_exceeded", TOO_LONG), "input"),
        # configuration or account trouble: stop the run, never the input's fault
        (401, _err("invalid_api_key", "Incorrect API key"), "stop"),
        (401, _err(None, "unauthorized"), "stop"),
        (402, _err(None, "payment required"), "stop"),
        (403, _err(None, "forbidden"), "stop"),
        (404, _err(None, "not found"), "stop"),
        (429, _err("insufficient_quota", QUOTA, "insufficient_quota"), "stop"),
        (429, _err(None, QUOTA, "insufficient_quota"), "stop"),
        (400, _err("billing_hard_limit_reached", "billing limit"), "stop"),
        (400, _err("model_not_found", MODEL_GONE, "invalid_request_error"), "stop"),
        (400, _err(None, MODEL_GONE, "invalid_request_error"), "stop"),
        (400, _err(None, NO_DIMS, "invalid_request_error"), "stop"),
        (None, _err("invalid_api_key", "Incorrect API key"), "stop"),
        (None, _err("model_not_found", MODEL_GONE), "stop"),
        # provider trouble: try again later
        (429, _err("rate_limit_exceeded", "Rate limit reached"), "retry"),
        (429, _err(None, "slow down"), "retry"),
        (408, _err(None, "timeout"), "retry"),
        (409, _err(None, "conflict"), "retry"),
        (500, _err("server_error", "oops"), "retry"),
        (502, {}, "retry"),
        (503, "Service Unavailable", "retry"),
        (504, None, "retry"),
        (0, _err("request_timeout", "timed out"), "retry"),
        (None, _err("batch_expired", "window expired"), "retry"),
        (None, _err("batch_cancelled", "cancelled"), "retry"),
        (None, _err("request_timeout", "timed out"), "retry"),
        (None, _err("rate_limit_exceeded", "slow down"), "retry"),
        (None, _err("server_error", "oops"), "retry"),
        (None, _err("weird", "?"), "retry"),
        (None, {}, "retry"),
        (None, None, "retry"),
    ],
)
def test_classify_error_says_who_is_at_fault(status: int | None, error: Any, kind: str) -> None:
    code, message, got = classify_error(status, error)
    assert got == kind
    assert message  # always something to show
    if isinstance(error, dict) and error.get("code"):
        assert code == error["code"]


def test_failed_input_kind_and_retryable_agree(store: RunStore, tmp_path: Path) -> None:
    manifest = {"auth": ["a"], "bad": ["b"], "late": ["c"]}
    err = write_jsonl(
        tmp_path / "err.jsonl",
        [
            {
                "custom_id": "auth",
                "response": {"status_code": 401, "body": {"error": _err("invalid_api_key")}},
            },
            {
                "custom_id": "bad",
                "response": {"status_code": 400, "body": {"error": _err("invalid_input")}},
            },
            {"custom_id": "late", "response": None, "error": _err("batch_expired")},
        ],
    )
    res = load_output(store, file_name="f", manifest=manifest, output_path=None, error_path=err)
    assert {f.key: f.kind for f in res.failed} == {"a": "stop", "b": "input", "c": "retry"}
    assert [f.key for f in res.failed if f.retryable] == ["c"]
    assert [f.key for f in res.by_kind("stop")] == ["a"]
    assert [f.key for f in res.by_kind("input")] == ["b"]


def test_wrong_dimension_stops_the_run_instead_of_paying_again(
    store: RunStore, tmp_path: Path
) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", [ok_line("c", [np.ones(DIM + 1, np.float32)])])
    res = load_output(store, file_name="f", manifest={"c": ["k"]}, output_path=out)
    (failure,) = res.failed
    assert failure.kind == "stop"
    assert "--dimensions" in failure.message and "--model" in failure.message


# -- malformed output never wedges the index --------------------------------------------
def test_malformed_lines_fail_only_their_inputs(
    store: RunStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = {f"c{i}": [f"k{i}"] for i in range(9)}
    good = [json.dumps(ok_line(c, [vec(i)])).encode() for i, c in enumerate(manifest)]
    bad_data = ok_line("c3", [vec(3)])
    bad_data["response"]["body"]["data"] = ["not an object"]
    bad_b64 = ok_line("c4", [vec(4)])
    bad_b64["response"]["body"]["data"][0]["embedding"] = "abc"  # binascii.Error
    odd_bytes = ok_line("c5", [vec(5)])
    odd_bytes["response"]["body"]["data"][0]["embedding"] = base64.b64encode(b"12345").decode()
    body_not_dict = {"custom_id": "c6", "response": {"status_code": 200, "body": "oops"}}
    bad_items = ok_line("c7", [vec(7)])
    bad_items["response"]["body"]["data"][0]["embedding"] = ["x"] * DIM
    lines = [
        good[0],
        b'{"custom_id": "c1", "response": {"status_code": 200, "body": "\xff\xfe"}}',  # UTF-8
        good[2][:40],  # truncated JSON: custom_id unreadable -> missing
        json.dumps(bad_data).encode(),
        json.dumps(bad_b64).encode(),
        json.dumps(odd_bytes).encode(),
        json.dumps(body_not_dict).encode(),
        json.dumps(bad_items).encode(),
        json.dumps(ok_line("stranger", [vec(0)])).encode(),  # unknown custom_id
        good[8],
    ]
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("WARNING", logger="corpusbatch"):
        res = load_output(store, file_name="f", manifest=manifest, output_path=out)
    stored = {k for (k,) in store.db.execute("SELECT key FROM vectors")}
    assert stored == {"k0", "k8"}
    assert res.vectors == 2 and res.unknown_custom_ids == 1
    by_key = {f.key: f for f in res.failed}
    assert set(by_key) == {f"k{i}" for i in range(1, 8)}  # every input accounted for once
    assert len(res.failed) == 7
    assert all(f.kind == "retry" for f in res.failed)
    assert by_key["k2"].code == "missing"
    assert {by_key[f"k{i}"].code for i in (1, 3, 4, 5, 6, 7)} == {"malformed_output"}
    for lineno in range(2, 9):
        assert any(f"{out} line {lineno}" in r.getMessage() for r in caplog.records), lineno

    again = load_output(store, file_name="f", manifest=manifest, output_path=out)
    assert again.vectors == 2
    assert sorted((f.key, f.code) for f in again.failed) == sorted(
        (f.key, f.code) for f in res.failed
    )
    assert store.count("vectors") == 2


def test_missing_output_file_still_raises(store: RunStore, tmp_path: Path) -> None:
    with pytest.raises(LoadError):
        load_output(store, file_name="f", manifest={"c": ["k"]}, output_path=tmp_path / "nope")


def test_run_store_syncs_fully(store: RunStore) -> None:
    # 2 = FULL: a power loss must not leave a file `loaded` in the journal without vectors
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize("limit", [0, 1, 200, 10**9])
@pytest.mark.parametrize("batch_rows", [1, 3, 7, 100])
def test_source_groups_keep_sources_whole_and_rows_in_order(limit: int, batch_rows: int) -> None:
    rng = np.random.default_rng(limit + batch_rows)
    sources = [f"s{i:02d}" for i in range(12) for _ in range(int(rng.integers(1, 6)))]
    rows = pa.table({"source": sources, "n": list(range(len(sources)))})
    batches = iter(rows.to_batches(max_chunksize=batch_rows))
    groups = list(loading._source_groups(batches, limit))
    assert all(groups), "no empty group"
    got = [pa.Table.from_batches(g) for g in groups]
    assert pa.concat_tables(got).column("n").to_pylist() == list(range(len(sources)))
    seen: set[str] = set()
    for table in got:
        mine = set(table.column("source").to_pylist())
        assert not mine & seen, "a source is split across groups"
        seen |= mine
    if limit >= rows.nbytes:
        assert len(groups) == 1
    elif limit <= 1:
        assert len(groups) == 12, "a full group closes at every source boundary"
