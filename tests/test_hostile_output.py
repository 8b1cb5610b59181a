"""Hostile provider output (issue #10 item 5): nothing a provider sends back corrupts
the table or the journal, and each affected input is retried or reported exactly once.

Each case is armed on the loopback fake Batch API and a real ``index`` runs through the
real ``openai`` SDK: truncated JSON lines, unknown ``custom_id`` s, vectors of the wrong
length, NaN and infinity, duplicated lines, the output file of another batch, an HTML
error page answered with 200 instead of JSON (on poll, list, create, upload and
download), and a batch that disappears for good. After the run the table must be a
clean build of the corpus (``tests/invariants.py``), nothing paid twice unless the
provider lost the result, every journal file settled (loaded or split), and exactly the
damaged inputs sent again, once. A second run plans nothing.

The loader is also fed one output file holding every kind of bad line at once: every
input of the manifest ends as a stored vector or as exactly one failure.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeapi import FakeBatchAPI, fake_vector
from invariants import CleanBuilder, billing_problems, read_files, table_problems, table_rows

from corpusbatch import Settings, index
from corpusbatch.journal import TERMINAL, Journal
from corpusbatch.loading import RunStore, load_output

pytestmark = pytest.mark.slow

DIMS = 32
WORDS = ["river", "stone", "cloud", "lamp", "orbit", "cedar", "maple", "ember", "frost"]


@pytest.fixture(scope="module")
def clean() -> Iterator[CleanBuilder]:
    with CleanBuilder() as builder:
        yield builder


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS, seed=5) as server:
        yield server


def _corpus(root: Path) -> Path:
    rng = random.Random(11)
    root.mkdir(parents=True)
    for i in range(4):
        parts = [f"# Doc {i}\n"]
        for p in range(3):
            words = " ".join(rng.choice(WORDS) for _ in range(40))
            parts.append(f"## Part {p}\n\n{words} {i}.{p}\n")
        (root / f"doc{i}.md").write_text("\n".join(parts))
    return root


def _settings(tmp_path: Path, api: FakeBatchAPI) -> Settings:
    return Settings(
        index_dir=tmp_path / "idx",
        provider="openai",
        base_url=api.base_url,
        dimensions=DIMS,
        chunk_tokens=60,
        poll_interval=0.002,
        missing_batch_grace=0.05,
        limits={"max_inputs_per_file": 6, "max_inputs_per_request": 3},
    )


def _arm(kind: str) -> Callable[[FakeBatchAPI], None]:
    def arm(api: FakeBatchAPI) -> None:
        if kind in ("truncated_json", "wrong_dims", "nan", "inf"):
            api.malformed_next = [kind]
        elif kind in ("unknown_custom_id", "duplicate_line", "other_batch"):
            api.hostile_next = [kind]
        elif kind.startswith("html_"):
            api.html_next = [kind.removeprefix("html_")]
        elif kind == "vanished":
            api.vanish_batches = [-1]
        else:
            raise AssertionError(kind)

    return arm


# inputs that must be sent again, by kind: the whole damaged line (3 inputs), the one
# damaged vector of a line, every input of the file, or none
RETRIED = {
    "truncated_json": "line",
    "wrong_dims": 1,
    "nan": 1,
    "inf": 1,
    "other_batch": "file",
    "unknown_custom_id": 0,
    "duplicate_line": 0,
    "html_retrieve": 0,
    "html_list": 0,
    "html_create": 0,
    "html_upload": 0,
    "html_content": 0,
    "vanished": 0,
}


@pytest.mark.parametrize("kind", sorted(RETRIED))
def test_hostile_output_never_corrupts_and_retries_each_input_once(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder, kind: str
) -> None:
    root = _corpus(tmp_path / "docs")
    settings = _settings(tmp_path, api)
    _arm(kind)(api)
    report = index(root, settings, api_key="k")

    # the run completes, holds nothing against the inputs, leaves nothing pending
    assert report.published and report.pending_files == 0
    assert report.failed == [] and report.deferred == 0
    files = read_files(root)
    problems = table_problems(settings, files, api, clean, previous=[])
    assert problems == [], problems
    assert billing_problems(api) == []
    # exactly the damaged inputs went again, once each
    lost = sum(api.lost.values())
    expected = {"line": 3, "file": lost}.get(str(RETRIED[kind]), RETRIED[kind])
    assert report.retried_inputs == expected
    if kind in ("truncated_json", "other_batch"):
        assert lost == expected > 0
    again = Counter({t: n - 1 for t, n in api.processed.items() if n > 1})
    assert sum(again.values()) == expected
    assert set(api.processed) == {r.text for r in table_rows(settings)}
    # the journal is settled and names no provider file still alive
    with Journal(settings.index_dir / "state.db") as journal:
        records = journal.files()
        assert records and all(r.state in TERMINAL for r in records)
        assert {r.state for r in records} <= {"loaded", "split"}
    assert [f for f in api.files.values() if f.purpose == "batch"] == []
    # nothing is reported or sent twice: the next run has nothing to do
    quiet = index(root, settings, api_key="k")
    assert quiet.files_planned == 0 and quiet.failed == [] and quiet.retried_inputs == 0
    assert sum(api.processed.values()) == len(api.processed) + expected


def test_other_batch_output_of_an_earlier_batch_of_ours(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    """The provider hands a batch the output file of the batch of ours that finished
    before it: those lines are the other file's (already loaded) custom_ids."""
    root = _corpus(tmp_path / "docs")
    settings = _settings(tmp_path, api)
    api.hostile_next = ["duplicate_line", "other_batch"]  # 1st normal-ish, 2nd swapped
    report = index(root, settings, api_key="k")
    assert report.published and report.pending_files == 0 and report.failed == []
    assert table_problems(settings, read_files(root), api, clean, previous=[]) == []
    assert billing_problems(api) == []
    assert report.retried_inputs == sum(api.lost.values()) > 0


# -- the loader, one output file with everything wrong at once ---------------------------
def _ok_line(cid: str, texts: list[str]) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(fake_vector(t, DIMS).tobytes()).decode(),
        }
        for i, t in enumerate(texts)
    ]
    body = {"object": "list", "data": data, "usage": {"prompt_tokens": len(texts)}}
    return {"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}


def test_every_kind_of_bad_line_in_one_file_fails_each_input_exactly_once(
    tmp_path: Path,
) -> None:
    lines = {f"cb-{i}": [f"t{i}a", f"t{i}b"] for i in range(9)}
    manifest = {cid: [f"k-{t}" for t in texts] for cid, texts in lines.items()}
    out: list[bytes] = []
    good = json.dumps(_ok_line("cb-0", lines["cb-0"])).encode()
    out.append(good)
    out.append(good)  # duplicated line: counted once
    out.append(json.dumps(_ok_line("cb-1", lines["cb-1"])).encode()[:60])  # truncated
    wrong = _ok_line("cb-2", lines["cb-2"])
    wrong["response"]["body"]["data"][0]["embedding"] = [0.5] * (DIMS // 2)  # wrong length
    out.append(json.dumps(wrong).encode())
    for cid, bad in (("cb-3", float("nan")), ("cb-4", float("inf"))):
        line = _ok_line(cid, lines[cid])
        vec = np.full(DIMS, 0.1, dtype="<f4")
        vec[3] = bad
        line["response"]["body"]["data"][1]["embedding"] = vec.tolist()
        out.append(json.dumps(line).encode())  # NaN / Infinity words in the JSON
    out.append(json.dumps(_ok_line("cb-unknown", ["x", "y"])).encode())  # unknown id
    out.append(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")  # HTML
    out.append(json.dumps(_ok_line("cb-5", lines["cb-5"])).encode())
    # cb-6: the provider says 500 twice (error file), cb-7 and cb-8: no line at all
    err = {
        "custom_id": "cb-6",
        "response": {"status_code": 500, "body": {"error": {"message": "oops"}}},
        "error": None,
    }
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"\n".join(out) + b"\n")
    errors = tmp_path / "err.jsonl"
    errors.write_text((json.dumps(err) + "\n") * 2)

    store = RunStore(tmp_path / "store.db", DIMS)
    try:
        result = load_output(
            store, file_name="f.jsonl", manifest=manifest, output_path=output, error_path=errors
        )
        keys = [k for ks in manifest.values() for k in ks]
        stored = set(keys) - set(store.missing_vectors(keys))
    finally:
        store.close()
    failed = Counter(f.key for f in result.failed)
    assert max(failed.values()) == 1, "an input is failed at most once"
    assert stored.isdisjoint(failed), "an input is stored or failed, never both"
    assert stored | set(failed) == set(keys), "every input is accounted for"
    assert stored == {"k-t0a", "k-t0b", "k-t2b", "k-t3a", "k-t4a", "k-t5a", "k-t5b"}
    assert result.unknown_custom_ids == 3  # the repeated cb-0, cb-unknown, repeated cb-6
    by_key = {f.key: f for f in result.failed}
    # every failure is the provider's fault: sent again, never held against the input
    assert {f.kind for f in result.failed} == {"retry"}
    assert by_key["k-t2a"].code == "wrong_dimension"  # among right ones: damage
    assert by_key["k-t3b"].code == by_key["k-t4b"].code == "bad_vector"
    assert by_key["k-t1a"].code == "missing" and by_key["k-t7a"].code == "missing"
    assert by_key["k-t6a"].status_code == 500


def test_every_vector_of_the_wrong_length_stops_once_as_configuration(tmp_path: Path) -> None:
    """When no vector has the expected length, it is --dimensions/--model, not damage."""
    manifest = {"cb-0": ["k0"], "cb-1": ["k1"]}
    line0 = _ok_line("cb-0", ["a"])
    line1 = _ok_line("cb-1", ["b"])
    for line in (line0, line1):
        line["response"]["body"]["data"][0]["embedding"] = [0.1] * (DIMS * 2)
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps(line0) + "\n" + json.dumps(line1) + "\n")
    store = RunStore(tmp_path / "store.db", DIMS)
    try:
        result = load_output(store, file_name="f", manifest=manifest, output_path=output)
    finally:
        store.close()
    assert [(f.key, f.kind, f.code) for f in result.failed] == [
        ("k0", "stop", "wrong_dimension"),
        ("k1", "stop", "wrong_dimension"),
    ]
    assert result.vectors == 0
