"""The whole pipeline through the real openai SDK against the loopback fake Batch API.

Checks what matters for money: every chunk ends in the table exactly once with the
vector the server computed, the server embeds nothing twice (faults included), and a
nightly re-run sends exactly the chunks that changed.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fakeapi import FakeBatchAPI, fake_vector

from corpusbatch import Settings, collect, index, open_table, search_index

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"


@pytest.fixture()
def api() -> FakeBatchAPI:
    with FakeBatchAPI(default_dims=64) as server:
        yield server


def remote(tmp_path: Path, api: FakeBatchAPI, **kw: object) -> Settings:
    options: dict[str, object] = {
        "index_dir": tmp_path / "idx",
        "provider": "openai",
        "base_url": api.base_url,
        "dimensions": 64,
        "poll_interval": 0.01,
        "limits": {"max_inputs_per_file": 40, "max_inputs_per_request": 8},
    }
    options.update(kw)
    return Settings(**options)  # type: ignore[arg-type]


def table_rows(settings: Settings) -> list[dict[str, object]]:
    return open_table(settings).to_arrow().to_pylist()


def assert_table_matches_server(settings: Settings, api: FakeBatchAPI) -> None:
    rows = table_rows(settings)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        np.testing.assert_allclose(r["vector"], fake_vector(str(r["text"]), 64), atol=1e-6)
    assert max(api.processed.values()) == 1  # nothing embedded twice


def copy_corpus(dst: Path) -> Path:
    shutil.copytree(SAMPLE / "guides", dst / "guides")
    shutil.copytree(SAMPLE / "reference", dst / "reference")
    return dst


def test_sample_corpus_with_faults_lands_every_chunk_once(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    docs = copy_corpus(tmp_path / "docs")
    api.create_faults = ["500-after", "429"]
    api.download_drops = 1
    api.expire_next = [3]
    settings = remote(tmp_path, api)
    report = index(docs, settings, api_key="test-key")
    assert report.published and not report.failed and report.pending_files == 0
    assert len(table_rows(settings)) == report.chunks
    assert_table_matches_server(settings, api)
    assert sum(api.processed.values()) == report.distinct_vectors
    assert report.retried_inputs > 0  # the expired batch's unfinished lines went again


def test_nightly_rerun_sends_exactly_the_changed_chunks(tmp_path: Path, api: FakeBatchAPI) -> None:
    docs = copy_corpus(tmp_path / "docs")
    settings = remote(tmp_path, api)
    index(docs, settings, api_key="k")
    before = Counter(api.processed)
    old_texts = {str(r["text"]) for r in table_rows(settings)}

    path = docs / "guides" / "moka-pot.md"
    path.write_text(path.read_text() + "\n\n## Night note\n\nRinse the gasket with hot water.\n")
    (docs / "guides" / "v60.md").rename(docs / "reference" / "v60-moved.md")
    (docs / "guides" / "siphon.md").unlink()
    (docs / "guides" / "new.md").write_text("# New\n\nA brand new page about cupping spoons.\n")
    report = index(docs, settings, api_key="k")

    sent = set((api.processed - before).elements())
    new_texts = {str(r["text"]) for r in table_rows(settings)}
    assert sent == new_texts - old_texts  # exactly the chunks that did not exist before
    assert report.embedded_vectors == len(sent)
    assert not any(str(r["source"]).startswith("guides/siphon") for r in table_rows(settings))
    assert_table_matches_server(settings, api)

    quiet = index(docs, settings, api_key="k")
    assert quiet.files_planned == 0 and api.processed == before + Counter(sent)


def test_no_wait_submits_then_collect_publishes(tmp_path: Path, api: FakeBatchAPI) -> None:
    docs = copy_corpus(tmp_path / "docs")
    api.auto_advance = False
    settings = remote(tmp_path, api)
    first = index(docs, settings, api_key="k", wait=False)
    assert first.pending_files > 0 and not first.published
    api.advance_all()
    done = collect(settings, api_key="k")
    assert done.published and done.pending_files == 0
    assert len(table_rows(settings)) == first.chunks
    assert_table_matches_server(settings, api)
    hits = search_index("How hot should the water be?", settings, k=2, api_key="k")
    assert len(hits) == 2  # the query is embedded by the provider, in real time


def test_permanent_failures_are_reported_with_source_and_lines(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nfirst paragraph about grinders\n")
    api.fail_all_lines = True
    settings = remote(tmp_path, api)
    report = index(docs, settings, api_key="k")
    assert report.failed and report.failed[0]["source"] == "a.md"
    assert report.failed[0]["lines"] == "1-3"
    # a failed input is not retried (and paid for) again on the next run
    again = index(docs, settings, api_key="k")
    assert again.files_planned == 0
    api.fail_all_lines = False
    retried = index(docs, settings, api_key="k", retry_failed=True)  # explicit: pay again
    assert retried.files_planned == 1 and not retried.failed
    assert len(table_rows(settings)) == retried.chunks


def test_failed_batch_is_reported_and_planned_again_next_run(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    docs = copy_corpus(tmp_path / "docs")
    # every file of more than one line fails at validation (a verdict on the file)
    api.validation_error = ("invalid_json_line", "This line is not valid JSON.")
    api.validation_error_lines = 2
    settings = remote(tmp_path, api)
    first = index(docs, settings, api_key="k")
    # a batch that fails whole is the provider's verdict on the file, not on its inputs:
    # nothing is held against them, they wait for the next run
    assert not first.failed and first.deferred > 0
    assert first.deferred_reasons and all("invalid_json" in r for r in first.deferred_reasons)
    assert set(first.incomplete_sources)  # published without them, old rows kept
    published = {r["source"] for r in table_rows(settings)}
    assert not published & set(first.incomplete_sources)

    api.validation_error = None
    second = index(docs, settings, api_key="k")
    assert not second.failed and second.published
    assert len(table_rows(settings)) == second.chunks
    assert_table_matches_server(settings, api)


def test_model_change_builds_beside_the_old_table_and_swaps_when_complete(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    docs = copy_corpus(tmp_path / "docs")
    small = remote(tmp_path, api)
    first = index(docs, small, api_key="k")
    question = "How hot should the water be?"
    before = [h.id for h in search_index(question, small, k=3, api_key="k")]

    large = remote(tmp_path, api, model="text-embedding-3-large", dimensions=32)
    api.auto_advance = False
    pending = index(docs, large, api_key="k", wait=False)
    assert pending.pending_files > 0 and not pending.published
    # meanwhile the old table still answers, with the old model's vectors
    assert {r["model"] for r in table_rows(small)} == {"text-embedding-3-small"}
    assert [h.id for h in search_index(question, large, k=3, api_key="k")] == before

    api.advance_all()
    done = collect(large, api_key="k")
    assert done.published and done.deleted == first.chunks
    rows = table_rows(large)
    assert {r["model"] for r in rows} == {"text-embedding-3-large"}
    assert {len(r["vector"]) for r in rows} == {32}
    assert len(rows) == first.chunks  # nothing mixed, nothing lost


def test_indexes_are_built_and_hybrid_search_works(
    tmp_path: Path, api: FakeBatchAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corpusbatch.pipeline as pipeline

    monkeypatch.setattr(pipeline, "VECTOR_INDEX_MIN_ROWS", 100)  # the real threshold is 50k
    docs = copy_corpus(tmp_path / "docs")
    settings = remote(tmp_path, api)
    report = index(docs, settings, api_key="k")
    assert report.chunks >= 100
    indices = {tuple(i.columns): i.index_type for i in open_table(settings).list_indices()}
    assert indices[("text",)] == "FTS"
    assert indices[("vector",)] == "IvfRq"
    # with the ANN index (1-bit RaBitQ on random vectors: the hardest case), re-ranking
    # by exact distance (refine) finds nearly all the exact top 5; which rare row is
    # missed depends on the index's random training, so recall is measured over many
    # queries. Rows of equal distance (the same text in two files) count as either.
    table = open_table(settings)
    recall = []
    for i in range(40):
        query = f"How hot should the water be for cup {i}?"
        exact = (
            table.search(fake_vector(query, 64))
            .distance_type("cosine")
            .bypass_vector_index()
            .limit(report.chunks)
            .to_arrow()
        )
        distance = dict(zip(exact["id"].to_pylist(), exact["_distance"].to_pylist(), strict=True))
        fifth = exact["_distance"].to_pylist()[4]
        hits = search_index(query, settings, k=5, mode="vector", api_key="k")
        assert len(hits) == 5
        recall.append(sum(distance[h.id] <= fifth + 1e-6 for h in hits) / 5)
    assert sum(recall) / len(recall) >= 0.9, recall  # measured 0.977-0.990 over builds
    hits = search_index("descaling vinegar", settings, k=3, mode="hybrid", api_key="k")
    fts = search_index("descaling vinegar", settings, k=3, mode="fts", api_key="k")
    assert len(hits) == 3 and fts and "descal" in fts[0].text.lower()


@pytest.mark.slow
def test_switching_to_local_leaves_remote_batches_alone(tmp_path: Path, api: FakeBatchAPI) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLE / "guides", docs)
    api.auto_advance = False
    remote_settings = remote(tmp_path, api)
    first = index(docs, remote_settings, api_key="k", wait=False)
    assert first.pending_files > 0

    local = Settings(index_dir=remote_settings.index_dir)
    report = index(docs, local)  # the default provider: nothing remote is touched
    assert report.published and report.pending_files == 0
    assert {r["model"] for r in table_rows(local)} == {"all-MiniLM-L6-v2"}
    assert (
        sum(api.processed.values()) == 0
        and not api.requests["POST /v1/files"] > first.files_planned
    )

    api.advance_all()
    done = collect(remote_settings, api_key="k")  # loads the paid-for results...
    assert done.embedded_vectors == first.to_embed_inputs and done.pending_files == 0
    assert not done.published  # ...but the table stays on the model of the last scan
    assert {r["model"] for r in table_rows(local)} == {"all-MiniLM-L6-v2"}


def test_small_delta_goes_through_the_realtime_api(tmp_path: Path, api: FakeBatchAPI) -> None:
    docs = copy_corpus(tmp_path / "docs")
    settings = remote(tmp_path, api, realtime_under=5_000)
    first = index(docs, settings, api_key="k")  # too big for real time: Batch API
    assert first.route == "batch" and api.requests["POST /v1/batches"] > 0
    batches = api.requests["POST /v1/batches"]

    path = docs / "guides" / "aeropress.md"
    path.write_text(path.read_text() + "\n\n## Late note\n\nRinse the cap after brewing.\n")
    second = index(docs, settings, api_key="k")
    assert second.route == "realtime" and second.published
    assert api.requests["POST /v1/batches"] == batches  # no batch for the small delta
    assert sum(api.realtime_processed.values()) == second.embedded_vectors > 0
    assert max(api.realtime_processed.values()) == 1
    rows = table_rows(settings)
    for r in rows:
        np.testing.assert_allclose(r["vector"], fake_vector(str(r["text"]), 64), atol=1e-6)
    assert len(rows) == second.chunks


def test_realtime_runner_resumes_a_killed_file_without_paying_twice(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    from corpusbatch.submitting import make_client
    from corpusbatch.submitting.realtime import RealtimeRunner

    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": [f"text {i}"],
                "encoding_format": "base64",
                "dimensions": 64,
            },
        }
        for i in range(4)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    from dataclasses import replace

    from corpusbatch.config import PROFILES

    client = make_client(replace(PROFILES["openai"], base_url=api.base_url), "k")
    runner = RealtimeRunner(client, outputs_dir=tmp_path)
    runner.run_file(src, out)
    kept = out.read_text().splitlines()[:2]
    out.write_text("\n".join(kept) + "\n" + '{"custom_id": "c2", "resp')  # killed mid-line
    runner.run_file(src, out)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in got) == ["c0", "c1", "c2", "c3"]
    assert api.realtime_processed["text 0"] == 1 and api.realtime_processed["text 2"] == 2
