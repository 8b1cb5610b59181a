"""The remote executor against the loopback fake Batch API, through the real openai SDK.

Every test asserts the two invariants that matter to a user paying for a Batch API:
each input is embedded by the provider exactly once, and each ends loaded with exactly
the vector the provider computed (or recorded as a permanent failure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from fakeapi import FakeBatchAPI, fake_vector, word_tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from corpusbatch.config import PROFILES, Limits, Profile
from corpusbatch.errors import BackendError
from corpusbatch.journal import FileRecord, Journal
from corpusbatch.submitting import (
    BatchSubmitter,
    ProviderAdapter,
    RemoteEmbedder,
    cancel,
    make_client,
    status,
)

DIMS = 16
MODEL = "text-embedding-3-small"


@pytest.fixture
def api() -> Any:
    with FakeBatchAPI(default_dims=DIMS) as server:
        yield server


class Harness:
    """A journal, a submitter and a minimal loader that mirrors the pipeline's contract.

    ``on_output`` decodes every output line into ``self.loaded`` (text -> vectors, a
    list so a duplicate load would show), queues retryable failures as a new file with
    ``attempt + 1``, records permanent ones, and marks the file loaded.
    """

    def __init__(
        self,
        tmp_path: Path,
        api: FakeBatchAPI,
        *,
        limits: Limits | None = None,
        encoding: str = "base64",
        max_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        self.dir = tmp_path
        self.api = api
        self.encoding = encoding
        self.max_attempts = max_attempts
        self.journal = Journal(tmp_path / "state.db")
        self.profile = replace(
            PROFILES["openai"],
            base_url=api.base_url,
            limits=limits or Limits(max_enqueued_tokens=None, max_enqueued_requests=None),
        )
        self.client = make_client(self.profile, "test", timeout=10.0)
        kwargs.setdefault("poll_interval", 0.002)
        self.submitter = BatchSubmitter(
            self.client, profile=self.profile, outputs_dir=tmp_path / "outputs", **kwargs
        )
        self.loaded: dict[str, list[np.ndarray]] = {}
        self.permanent: dict[str, str] = {}
        self.messages: list[str] = []
        self._n = 0

    # -- planning, the way the planner does it -------------------------------------------
    def add(self, lines: list[list[str]], *, attempt: int = 0, parent: str | None = None) -> str:
        self._n += 1
        name = f"b-test-{self._n:05d}.jsonl"
        path = self.dir / "batches" / name
        path.parent.mkdir(exist_ok=True)
        body_lines, manifest = [], []
        for texts in lines:
            cid = "cb-" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:40]
            body: dict[str, Any] = {"model": MODEL, "input": texts}
            if self.encoding != "float":
                body["encoding_format"] = self.encoding
            body_lines.append(
                json.dumps(
                    {"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": body}
                )
            )
            manifest.append(json.dumps({"custom_id": cid, "keys": texts}))
        data = ("\n".join(body_lines) + "\n").encode()
        path.write_bytes(data)
        mpath = path.with_name(name.removesuffix(".jsonl") + ".manifest.jsonl")
        mpath.write_text("\n".join(manifest) + "\n")
        self.journal.add_file(
            name=name,
            plan="p-test",
            path=path,
            manifest_path=mpath,
            sha256=hashlib.sha256(data).hexdigest(),
            model=MODEL,
            n_lines=len(lines),
            n_inputs=sum(len(t) for t in lines),
            n_tokens=sum(word_tokens(t) for texts in lines for t in texts),
            n_bytes=len(data),
            attempt=attempt,
            parent=parent,
        )
        return name

    def add_raw(self, raw_lines: list[str], n_tokens: int = 1) -> str:
        """A file with arbitrary line text (for validation failures)."""
        self._n += 1
        name = f"b-raw-{self._n:05d}.jsonl"
        path = self.dir / "batches" / name
        path.parent.mkdir(exist_ok=True)
        data = ("\n".join(raw_lines) + "\n").encode()
        path.write_bytes(data)
        mpath = path.with_name(name.removesuffix(".jsonl") + ".manifest.jsonl")
        mpath.write_text("")
        self.journal.add_file(
            name=name,
            plan="p-test",
            path=path,
            manifest_path=mpath,
            sha256=hashlib.sha256(data).hexdigest(),
            model=MODEL,
            n_lines=len(raw_lines),
            n_inputs=len(raw_lines),
            n_tokens=n_tokens,
            n_bytes=len(data),
        )
        return name

    # -- loading ----------------------------------------------------------------------------
    def on_output(self, rec: FileRecord) -> None:
        manifest = {}
        for raw in Path(rec.manifest_path).read_text().splitlines():
            obj = json.loads(raw)
            manifest[obj["custom_id"]] = obj["keys"]
        seen: set[str] = set()
        retry: list[list[str]] = []
        adapter = ProviderAdapter()
        for path in (rec.output_path, rec.error_path):
            if path is None:
                continue
            for raw in Path(path).read_text().splitlines():
                if not raw.strip():
                    continue
                res = adapter.parse_line(json.loads(raw))
                assert res.custom_id is not None
                seen.add(res.custom_id)
                texts = manifest[res.custom_id]
                if res.ok:
                    assert res.body is not None
                    for item in res.body["data"]:
                        self.loaded.setdefault(texts[item["index"]], []).append(
                            _decode(item["embedding"])
                        )
                elif res.retryable and rec.attempt + 1 < self.max_attempts:
                    retry.append(texts)
                else:
                    for t in texts:
                        self.permanent[t] = f"{res.status_code} {res.code} {res.message}"
        assert seen == set(manifest), "every line must be in the output or the error file"
        if retry:
            self.add(retry, attempt=rec.attempt + 1, parent=rec.name)
        self.journal.update(rec.name, "loaded")

    def run(self, *, wait: bool = True) -> None:
        self.submitter.drive(
            self.journal, wait=wait, on_output=self.on_output, progress=self.messages.append
        )

    def states(self) -> Counter[str]:
        return Counter(f.state for f in self.journal.files())

    def assert_exactly_once(self, texts: list[str]) -> None:
        """Each text embedded once by the server and loaded once with its exact vector."""
        for t in texts:
            assert self.api.processed[t] == 1, t
            assert len(self.loaded[t]) == 1, t
            np.testing.assert_array_equal(self.loaded[t][0], fake_vector(t, DIMS))


def _decode(emb: Any) -> np.ndarray:
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4")
    return np.asarray(emb, dtype="<f4")


def _texts(prefix: str, n: int, words: int = 3) -> list[str]:
    return [" ".join(f"{prefix}{i}w{j}" for j in range(words)) for i in range(n)]


def _provider_batch_files(api: FakeBatchAPI) -> list[str]:
    return [f.id for f in api.files.values()]


# -- the normal path -----------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_files_run_loaded_and_cleaned_up(tmp_path: Path, api: FakeBatchAPI, encoding: str) -> None:
    h = Harness(tmp_path, api, encoding=encoding)
    texts = _texts("a", 12)
    for i in range(3):
        h.add([texts[i * 4 : i * 4 + 2], texts[i * 4 + 2 : i * 4 + 4]])
    h.run()
    assert h.states() == {"loaded": 3}
    h.assert_exactly_once(texts)
    assert h.permanent == {}
    # every provider file (inputs, outputs) was deleted after loading
    assert _provider_batch_files(api) == []
    assert all(f.remote_deleted for f in h.journal.files())
    events = [e[2] for e in h.journal.events(h.journal.files()[0].name)]
    assert events == [
        "uploading",
        "uploaded",
        "creating",
        "created",
        "finished",
        "downloaded",
        "loaded",
    ]
    assert api.requests["POST /v1/batches"] == 3
    assert api.requests["POST /v1/files"] == 3


def test_batches_carry_metadata_and_output_expiry(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api, delete_remote_files=False)
    name = h.add([_texts("m", 2)])
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.batch_id is not None
    batch = api.batches[rec.batch_id]
    assert batch.metadata == {
        "corpusbatch_file": name,
        "corpusbatch_sha256": rec.sha256[:32],
        "corpusbatch_plan": "p-test",
        "corpusbatch_seq": "0",
    }
    # without cleanup the provider still holds the input and output files
    assert rec.input_file_id in api.files and rec.output_file_id in api.files
    assert Path(rec.output_path or "").exists()
    assert not list((tmp_path / "outputs").glob("*.part"))


def test_output_expiry_is_not_sent_when_the_provider_rejects_it(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.accept_output_expires_after = False
    adapter = ProviderAdapter()
    adapter.supports_output_expiry = False
    h = Harness(tmp_path, api, adapter=adapter)
    texts = _texts("x", 2)
    h.add([texts])
    h.run()
    h.assert_exactly_once(texts)


# -- never twice: create and upload that fail after the fact -----------------------------------
@pytest.mark.parametrize(
    "faults", [["500-after"], ["drop-after"], ["429", "500"], ["500-after", "429", "500-after"]]
)
def test_create_errors_never_make_a_second_batch(
    tmp_path: Path, api: FakeBatchAPI, faults: list[str]
) -> None:
    api.create_faults = list(faults)
    h = Harness(tmp_path, api)
    texts = _texts("c", 4)
    h.add([texts[:2]])
    h.add([texts[2:]])
    h.run()
    assert h.states() == {"loaded": 2}
    assert len(api.batches) == 2, "a failed-looking create must be adopted, not repeated"
    h.assert_exactly_once(texts)


def test_upload_that_arrived_despite_an_error_is_adopted(tmp_path: Path, api: FakeBatchAPI) -> None:
    api.upload_faults = ["500-after"]
    h = Harness(tmp_path, api)
    texts = _texts("u", 3)
    h.add([texts])
    h.run()
    assert api.requests["POST /v1/files"] == 1, "the stored upload is found, not repeated"
    h.assert_exactly_once(texts)


def test_failed_upload_is_retried(tmp_path: Path, api: FakeBatchAPI) -> None:
    api.upload_faults = ["500"]
    h = Harness(tmp_path, api)
    texts = _texts("v", 3)
    h.add([texts])
    h.run()
    assert api.requests["POST /v1/files"] == 2
    h.assert_exactly_once(texts)


def test_crash_in_uploading_reuses_the_upload(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("k", 2)
    name = h.add([texts])
    rec = h.journal.get(name)
    assert rec is not None
    # the previous process uploaded the file, then died before recording the id
    with open(rec.path, "rb") as fh:
        uploaded = h.client.files.create(file=(name, fh), purpose="batch")
    h.journal.update(name, "uploading")
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.input_file_id == uploaded.id
    assert api.requests["POST /v1/files"] == 1
    h.assert_exactly_once(texts)


def _batch_left_by_a_dead_process(h: Harness, name: str) -> tuple[str, Any]:
    """Upload ``name`` and create its batch with our metadata, as a killed run would have."""
    rec = h.journal.get(name)
    assert rec is not None
    with open(rec.path, "rb") as fh:
        fid = h.client.files.create(file=(name, fh), purpose="batch").id
    batch = h.client.batches.create(
        input_file_id=fid,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata=h.submitter._metadata(rec),
    )
    return fid, batch


def _left_creating(h: Harness, name: str, fid: str) -> None:
    """Walk the journal the way a run that died inside batches.create() left it."""
    h.journal.update(name, "uploading")
    h.journal.update(name, "uploaded", input_file_id=fid)
    h.journal.update(name, "creating")


def test_crash_in_creating_adopts_the_batch(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("z", 2)
    name = h.add([texts])
    # the previous process created the batch, then died before recording its id
    fid, batch = _batch_left_by_a_dead_process(h, name)
    _left_creating(h, name, fid)
    h.run()
    assert h.journal.get(name).batch_id == batch.id  # type: ignore[union-attr]
    assert len(api.batches) == 1
    h.assert_exactly_once(texts)


def test_reconcile_pages_through_the_batch_list(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("pg", 2)
    name = h.add([texts])
    fid, ours = _batch_left_by_a_dead_process(h, name)
    other = h.client.files.create(file=("other.jsonl", b'{"x": 1}\n'), purpose="batch")
    for i in range(130):  # someone else's newer batches push ours to the second page
        h.client.batches.create(
            input_file_id=other.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            metadata={"job": str(i)},
        )
    _left_creating(h, name, fid)
    h.run()
    assert h.journal.get(name).batch_id == ours.id  # type: ignore[union-attr]
    assert api.requests["POST /v1/batches"] == 131
    h.assert_exactly_once(texts)


# -- queue waves ----------------------------------------------------------------------------------
def test_waves_respect_enqueued_token_and_request_caps(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api, limits=Limits(max_enqueued_tokens=20, max_enqueued_requests=5))
    texts = _texts("w", 24, words=1)  # 1 token each
    for i in range(8):  # 8 files of 3 tokens / 2-3 lines
        chunk = texts[i * 3 : i * 3 + 3]
        h.add([chunk[:1], chunk[1:]] if i % 2 else [chunk[:1], chunk[1:2], chunk[2:]])
    h.run()
    assert h.states() == {"loaded": 8}
    assert 0 < api.max_enqueued_tokens <= 20
    assert 0 < api.max_enqueued_requests <= 5
    h.assert_exactly_once(texts)


def test_file_larger_than_the_queue_fails_with_advice(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api, limits=Limits(max_enqueued_tokens=5))
    small, big = _texts("s", 1, words=2), _texts("b", 1, words=9)
    h.add([small])
    big_name = h.add([big])
    h.run()
    rec = h.journal.get(big_name)
    assert rec is not None and rec.state == "failed"
    assert "max_tokens_per_file" in (rec.error or "")
    h.assert_exactly_once(small)
    assert api.processed[big[0]] == 0


def test_token_limit_exceeded_is_resubmitted_with_the_same_upload(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    # The provider's queue is smaller than configured (shared with other work).
    api.token_cap = 7
    h = Harness(tmp_path, api)
    texts = _texts("t", 9)  # 3 tokens each: 3 files of 9 tokens can never all be queued
    for i in range(3):
        h.add([texts[i * 3 : i * 3 + 3]])
    api.token_cap = 9
    h.run()
    assert h.states() == {"loaded": 3}
    statuses = Counter(b.status for b in api.batches.values())
    assert statuses["failed"] >= 1, "the fake should have refused some batches"
    assert all(
        b.errors and b.errors[0]["code"] == "token_limit_exceeded"
        for b in api.batches.values()
        if b.status == "failed"
    )
    assert api.requests["POST /v1/files"] == 3, "input files are reused, not uploaded again"
    assert h.permanent == {}
    h.assert_exactly_once(texts)


# -- partial results and line errors ----------------------------------------------------------
def test_expired_batch_keeps_done_lines_and_retries_the_rest(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.expire_next = [2]
    h = Harness(tmp_path, api)
    texts = _texts("e", 5)
    first = h.add([[t] for t in texts])
    h.run()
    rec = h.journal.get(first)
    assert rec is not None and rec.batch_status == "expired"
    retries = [f for f in h.journal.files() if f.parent == first]
    assert len(retries) == 1 and retries[0].n_lines == 3
    h.assert_exactly_once(texts)


def test_line_errors_of_both_shapes(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("l", 4)
    lines = [[t] for t in texts]
    h.add(lines)
    cids = ["cb-" + hashlib.sha256("\n".join(line).encode()).hexdigest()[:40] for line in lines]
    api.line_faults = {cids[0]: "500", cids[1]: "timeout", cids[2]: "400"}
    h.run()
    assert set(h.permanent) == {texts[2]}
    assert h.permanent[texts[2]].startswith("400")
    h.assert_exactly_once([texts[0], texts[1], texts[3]])


def test_all_lines_failed_completed_batch_has_no_output_file(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.fail_all_lines = True
    h = Harness(tmp_path, api)
    texts = _texts("f", 3)
    name = h.add([[t] for t in texts])
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "loaded"
    assert rec.batch_status == "completed" and rec.output_file_id is None
    assert rec.output_path is None and rec.error_path is not None
    assert set(h.permanent) == set(texts)


def test_validation_failure_is_reported_with_code_and_line(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    h = Harness(tmp_path, api)
    name = h.add([["same"], ["same"]])  # one custom_id twice
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "failed"
    assert "duplicate_custom_id at line 2" in (rec.error or "")
    assert api.processed.total() == 0


def _line(cid: str, text: str, **over: Any) -> str:
    obj: dict[str, Any] = {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": [text]},
    }
    body = over.pop("body", {})
    obj.update(over)
    obj["body"].update(body)
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("knob", "lines", "expected"),
    [
        ({"max_lines": 1}, [_line("a", "x"), _line("b", "y")], "too_many_tasks"),
        ({"max_inputs": 1}, [_line("a", "x"), _line("b", "y")], "too_many_inputs"),
        ({"max_bytes": 10}, [_line("a", "x")], "file_too_large"),
        ({}, [_line("a", "x"), "{not json"], "invalid_json_line at line 2"),
        ({}, [_line("a", "x"), _line("b", "y", body={"model": "other"})], "model_mismatch"),
        ({}, [_line("a", "x", url="/v1/chat/completions")], "url_mismatch at line 1"),
        ({}, [_line("a", "x", method="GET")], "invalid_method at line 1"),
    ],
)
def test_validation_errors_end_as_failed_with_the_providers_reason(
    tmp_path: Path, api: FakeBatchAPI, knob: dict[str, int], lines: list[str], expected: str
) -> None:
    for key, value in knob.items():
        setattr(api, key, value)
    h = Harness(tmp_path, api)
    name = h.add_raw(lines)
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "failed" and rec.batch_status == "failed"
    assert expected in (rec.error or "")
    assert rec.batch_id is not None and rec.batch_id in (rec.error or "")
    assert api.processed.total() == 0


def test_an_input_bigger_than_the_providers_queue_fails_once_and_leaves_no_upload(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    """Refused with nothing else of ours queued, a file is too big for the provider's
    queue; a single input cannot be split, so it fails at once (not after 20 refusals)
    with the provider's words and advice, and its uploaded file is deleted."""
    api.token_cap = 2
    h = Harness(tmp_path, api, max_capacity_retries=3)
    name = h.add([_texts("cap", 1, words=5)])
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "failed"
    assert "token_limit_exceeded" in (rec.error or "") and "cannot split" in (rec.error or "")
    assert len(api.batches) == 1 and api.requests["POST /v1/files"] == 1
    assert rec.remote_deleted == 1
    assert [f for f in api.files.values() if f.purpose == "batch"] == []
    assert h.journal.learned_limits(None, MODEL) == {"max_enqueued_tokens": 2}


def test_cancelled_batch_is_collected_and_its_lines_retried(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.cancel_keep = 1
    h = Harness(tmp_path, api)
    texts = _texts("q", 3)
    name = h.add([[t] for t in texts])
    h.run(wait=False)
    assert h.journal.get(name).state == "created"  # type: ignore[union-attr]
    rows = status(h.journal, h.client)
    assert [r.file for r in rows] == [name] and rows[0].batch_id is not None
    assert rows[0].request_counts is not None and not rows[0].waiting_to_load
    assert cancel(h.journal, h.client) == [rows[0].batch_id]
    h.run()
    assert h.journal.get(name).batch_status == "cancelled"  # type: ignore[union-attr]
    h.assert_exactly_once(texts)
    assert status(h.journal, h.client) == []


# -- transient trouble ----------------------------------------------------------------------
def test_dropped_downloads_are_retried(tmp_path: Path, api: FakeBatchAPI) -> None:
    api.download_drops = 3
    h = Harness(tmp_path, api)
    texts = _texts("d", 6)
    h.add([texts[:3], texts[3:]])
    h.run()
    assert api.download_drops == 0
    h.assert_exactly_once(texts)
    assert not list((tmp_path / "outputs").glob("*.part"))


def test_downloads_failing_beyond_the_attempts_wait_for_the_next_round(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.download_drops = 4
    h = Harness(tmp_path, api, download_attempts=2)
    texts = _texts("g", 2)
    h.add([texts])
    h.run()
    h.assert_exactly_once(texts)


def test_poll_errors_are_tolerated(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("p", 2)
    h.add([texts])
    h.run(wait=False)
    api.retrieve_faults = [500, 429, 503, 502]
    h.run()
    h.assert_exactly_once(texts)


def test_vanished_batch_is_created_again(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api, missing_grace=0.0)
    texts = _texts("n", 2)
    name = h.add([texts])
    h.run(wait=False)
    rec = h.journal.get(name)
    assert rec is not None and rec.batch_id is not None
    del api.batches[rec.batch_id]  # the provider lost it before running it
    h.run()
    assert h.journal.get(name).create_seq == 1  # type: ignore[union-attr]
    h.assert_exactly_once(texts)


def test_a_passing_404_does_not_make_a_second_batch(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("nf", 2)
    name = h.add([texts])
    h.run(wait=False)
    api.retrieve_faults = [404, 404]
    h.run()
    assert h.journal.get(name).create_seq == 0  # type: ignore[union-attr]
    assert len(api.batches) == 1
    h.assert_exactly_once(texts)


def _nightly(h: Harness, n: int, **kwargs: Any) -> None:
    """``n`` separate `--no-wait` runs: a new submitter each time, nothing kept in memory."""
    for _ in range(n):
        kwargs.setdefault("poll_interval", 0.002)
        h.submitter = BatchSubmitter(
            h.client, profile=h.profile, outputs_dir=h.dir / "outputs", **kwargs
        )
        h.run(wait=False)


def test_a_batch_missing_across_no_wait_runs_is_never_paid_twice(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    """404 for several runs in a row, then back: one batch, collected once.

    The old executor counted 404s in memory per run, so a `--no-wait` cron job never
    reached its threshold (the batch stayed "created" for ever); with one run that did,
    it created and paid a second batch and never collected the first.
    """
    h = Harness(tmp_path, api)
    texts = _texts("mb", 3)
    name = h.add([texts])
    api.vanish_batches = [5]  # answers 404 for the next five polls, then reappears
    _nightly(h, 1)
    assert h.states() == {"created": 1}
    _nightly(h, 4, missing_grace=3600.0, vanished_after=2)
    rec = h.journal.get(name)
    assert rec is not None and rec.missing_polls == 4, "404s are counted in the journal"
    _nightly(h, 6, missing_grace=3600.0, vanished_after=2)
    assert len(api.batches) == 1, "the hidden batch was not created again"
    assert h.states() == {"loaded": 1}
    h.assert_exactly_once(texts)


def test_a_missing_batch_listed_under_another_id_is_followed(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    """A batch that answers 404 but whose twin (same metadata) is listed is adopted."""
    h = Harness(tmp_path, api, missing_grace=0.0, vanished_after=1)
    texts = _texts("tw", 2)
    name = h.add([texts])
    h.run(wait=False)
    rec = h.journal.get(name)
    assert rec is not None and rec.batch_id is not None
    twin = api.batches.pop(rec.batch_id)
    twin.id = "batch_twin"
    api.batches[twin.id] = twin
    h.run()
    assert h.journal.get(name).batch_id == "batch_twin"  # type: ignore[union-attr]
    assert len(api.batches) == 1
    h.assert_exactly_once(texts)


def test_a_batch_gone_for_good_is_created_again_after_the_grace(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    h = Harness(tmp_path, api)
    texts = _texts("gg", 2)
    name = h.add([texts])
    api.vanish_batches = [-1]
    _nightly(h, 4, missing_grace=3600.0, vanished_after=2)
    assert len(api.batches) == 1, "within the grace nothing is created again"
    rec = h.journal.get(name)
    assert rec is not None and rec.missing_since is not None
    _nightly(h, 1, missing_grace=0.0, vanished_after=2)
    h.run()
    assert h.journal.get(name).create_seq == 1  # type: ignore[union-attr]
    assert len(api.batches) == 2
    h.assert_exactly_once(texts)


def test_wait_false_submits_and_returns(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api, limits=Limits(max_enqueued_tokens=6))
    texts = _texts("r", 4)
    for i in range(4):
        h.add([[texts[i]]])
    h.run(wait=False)
    assert h.states() == {"created": 2, "planned": 2}
    assert api.processed.total() == 0
    for _ in range(20):
        h.run(wait=False)
        if not h.journal.pending():
            break
    assert h.states() == {"loaded": 4}
    h.assert_exactly_once(texts)


def test_changed_batch_file_is_not_uploaded(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    name = h.add([_texts("h", 2)])
    rec = h.journal.get(name)
    assert rec is not None
    Path(rec.path).write_text("tampered\n")
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "failed" and "changed" in (rec.error or "")
    assert api.requests["POST /v1/files"] == 0


def test_rejected_api_key_raises(tmp_path: Path, api: FakeBatchAPI) -> None:
    api.valid_keys = {"the-right-key"}
    h = Harness(tmp_path, api)
    h.add([_texts("i", 1)])
    with pytest.raises(BackendError, match="refused the API key"):
        h.run()


def test_server_without_batch_api_stops_the_run(tmp_path: Path, api: FakeBatchAPI) -> None:
    api.batch_api = False
    h = Harness(tmp_path, api)
    h.add([_texts("nb", 1)])
    with pytest.raises(BackendError, match="Batch API"):
        h.run()


def test_files_left_on_the_provider_by_an_earlier_run_are_deleted(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    h = Harness(tmp_path, api, delete_remote_files=False)
    h.add([_texts("lf", 2)])
    h.run()
    assert len(api.files) == 2  # input and output
    again = BatchSubmitter(
        h.client, profile=h.profile, outputs_dir=tmp_path / "outputs", poll_interval=0.002
    )
    again.drive(h.journal, wait=True, on_output=h.on_output)
    assert api.files == {}
    assert all(f.remote_deleted for f in h.journal.files())


def test_unwritable_outputs_stop_the_run_and_resume_later(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the outputs folder should be")
    h = Harness(tmp_path, api)
    texts = _texts("uw", 2)
    name = h.add([texts])
    with pytest.raises(BackendError, match="cannot write"):
        h.run()
    assert h.journal.get(name).state == "finished"  # type: ignore[union-attr]
    blocker.unlink()
    h.run()
    h.assert_exactly_once(texts)


def test_status_shows_files_waiting_to_load(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    done = h.add([_texts("s1", 1)])
    h.run()
    waiting = h.add([_texts("s2", 1)])
    for step, fields in (
        ("uploading", {}),
        ("uploaded", {"input_file_id": "file-x"}),
        ("creating", {}),
        ("created", {"batch_id": "batch-x"}),
        ("finished", {"batch_status": "completed"}),
    ):
        h.journal.update(waiting, step, **fields)
    rows = {r.file: r for r in status(h.journal, h.client)}
    assert set(rows) == {waiting} and rows[waiting].waiting_to_load
    assert rows[waiting].batch_status == "completed" and rows[waiting].age_s >= 0
    everything = status(h.journal, h.client, include_loaded=True)
    assert {r.file for r in everything} == {done, waiting}
    assert everything[0].to_dict()["file"] == done


def test_on_output_must_settle_the_file(tmp_path: Path, api: FakeBatchAPI) -> None:
    h = Harness(tmp_path, api)
    h.add([_texts("o", 1)])
    with pytest.raises(BackendError, match="did not mark"):
        h.submitter.drive(h.journal, wait=True, on_output=lambda rec: None)


# -- line parsing and the real-time embedder ------------------------------------------------
@pytest.mark.parametrize(
    ("line", "ok", "retryable", "code"),
    [
        (
            {
                "custom_id": "a",
                "response": {"status_code": 200, "body": {"data": []}},
                "error": None,
            },
            True,
            False,
            None,
        ),
        (
            {
                "custom_id": "a",
                "response": {
                    "status_code": 400,
                    "body": {"error": {"message": "bad", "code": "invalid"}},
                },
                "error": None,
            },
            False,
            False,
            "invalid",
        ),
        (
            {"custom_id": "a", "response": {"status_code": 503, "body": {}}, "error": None},
            False,
            True,
            None,
        ),
        (
            {
                "custom_id": "a",
                "response": None,
                "error": {"code": "batch_expired", "message": "late"},
            },
            False,
            True,
            "batch_expired",
        ),
        (
            # an unknown code is not held against the input: try again later
            {"custom_id": "a", "response": None, "error": {"code": "weird", "message": "?"}},
            False,
            True,
            "weird",
        ),
    ],
)
def test_parse_line_shapes(line: dict[str, Any], ok: bool, retryable: bool, code: str) -> None:
    res = ProviderAdapter().parse_line(line)
    assert (res.custom_id, res.ok, res.retryable, res.code) == ("a", ok, retryable, code)


def test_status_mapping_is_case_insensitive() -> None:
    assert ProviderAdapter().status("IN_PROGRESS") == "in_progress"


@pytest.mark.parametrize("dims", [None, 8])
def test_remote_embedder_returns_the_servers_vectors(api: FakeBatchAPI, dims: int | None) -> None:
    profile: Profile = replace(PROFILES["openai"], base_url=api.base_url)
    embedder = RemoteEmbedder(make_client(profile, "test"), MODEL, dims, max_inputs=2)
    texts = ["what is a batch", "how are vectors stored", "third"]
    out = embedder.embed(texts)
    assert out.shape == (3, dims or DIMS) and out.dtype == np.float32
    for row, text in zip(out, texts, strict=True):
        np.testing.assert_array_equal(row, fake_vector(text, dims or DIMS))
    assert api.requests["POST /v1/embeddings"] == 2
    assert embedder.embed([]).shape[0] == 0


def test_remote_embedder_wraps_errors(api: FakeBatchAPI) -> None:
    profile = replace(PROFILES["openai"], base_url=api.base_url)
    client = openai.OpenAI(api_key="test", base_url=api.base_url, max_retries=0)
    with pytest.raises(BackendError, match="failed"):
        RemoteEmbedder(client, MODEL).embed([""])
    assert make_client(profile, "k").base_url.host == "127.0.0.1"


# -- any schedule of faults ---------------------------------------------------------------
_faults = st.fixed_dictionaries(
    {
        "files": st.lists(st.integers(1, 3), min_size=1, max_size=4),
        "create": st.lists(st.sampled_from(["429", "500", "500-after", "drop-after"]), max_size=3),
        "upload": st.lists(st.sampled_from(["500", "500-after", "drop-after"]), max_size=2),
        "retrieve": st.lists(st.sampled_from([429, 500, 503]), max_size=3),
        "drops": st.integers(0, 3),
        "expire": st.lists(st.integers(0, 2), max_size=2),
        "token_cap": st.one_of(st.none(), st.integers(9, 20)),
        "wave_cap": st.one_of(st.none(), st.integers(9, 20)),
    }
)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(plan=_faults)
def test_any_fault_schedule_embeds_each_input_exactly_once(plan: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeBatchAPI(default_dims=DIMS) as api:
        api.create_faults = list(plan["create"])
        api.upload_faults = list(plan["upload"])
        api.retrieve_faults = list(plan["retrieve"])
        api.download_drops = plan["drops"]
        api.expire_next = list(plan["expire"])
        api.token_cap = plan["token_cap"]
        h = Harness(
            Path(tmp),
            api,
            limits=Limits(max_enqueued_tokens=plan["wave_cap"], max_enqueued_requests=None),
            max_attempts=5,
        )
        texts: list[str] = []
        for i, n_lines in enumerate(plan["files"]):
            lines = [_texts(f"f{i}l{j}x", 1) for j in range(n_lines)]  # 3 tokens each
            h.add(lines)
            texts += [t for line in lines for t in line]
        h.run()
        assert not h.journal.pending()
        assert h.states() == {"loaded": len(h.journal.files())}
        assert h.permanent == {}
        h.assert_exactly_once(texts)
        assert set(api.processed) == set(texts)
        if plan["wave_cap"] is not None:
            assert api.max_enqueued_tokens <= plan["wave_cap"]
        assert [f for f in api.files.values() if f.purpose == "batch"] == []


class _TaggingAdapter(ProviderAdapter):
    """A provider whose lines differ from OpenAI's: inputs carry a `user` tag, and its
    output lines nest the response under `result` (converted back on download)."""

    rewrites_lines = True

    def __init__(self) -> None:
        self.name = "tagging"
        self.outputs_converted = 0

    def input_line(self, line: dict[str, Any]) -> dict[str, Any]:
        line["body"]["user"] = "corpusbatch"
        return line

    def output_line(self, line: dict[str, Any]) -> dict[str, Any]:
        self.outputs_converted += 1
        if "result" in line:  # never produced by the fake; shows the direction of the hook
            line["response"] = line.pop("result")
        return line


def test_adapter_rewrites_lines_both_ways_without_touching_planner_or_loader(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    adapter = _TaggingAdapter()
    h = Harness(tmp_path, api, adapter=adapter, delete_remote_files=False)
    texts = _texts("t", 6)
    h.add([texts[:3], texts[3:]])
    h.run()
    assert h.states() == {"loaded": 1}
    h.assert_exactly_once(texts)
    uploaded = [f for f in api.files.values() if f.filename.startswith("b-test")]
    assert uploaded and all(
        json.loads(line)["body"]["user"] == "corpusbatch"
        for line in uploaded[0].data.decode().splitlines()
    )
    assert adapter.outputs_converted == 2  # every output line went through the hook


def test_unreachable_provider_stops_the_run_instead_of_hanging(tmp_path: Path) -> None:
    api = FakeBatchAPI(default_dims=DIMS).start()
    h = Harness(tmp_path, api, unreachable_after=0.0)
    h.add([_texts("u", 2)])
    api.stop()  # the network is gone
    with pytest.raises(BackendError, match="cannot reach") as info:
        h.run()
    assert "resume" in str(info.value)
    assert h.states()["failed"] == 0  # nothing given up: the next run resumes
