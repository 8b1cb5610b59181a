"""Limits learned at run time: a batch file too big for what the provider really allows.

The provider's enqueued-token limit (OpenAI's ``token_limit_exceeded``, "... Limit:
30,000 enqueued tokens ..."), and per-file line, byte and input limits a clone reports at
validation, are learned from the refusal: the file is split into parts that fit, the
limit is kept in the journal (state.db) and every later plan uses it. Nothing is paid
twice, and nothing uploaded is left on the provider.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeBatchAPI, fake_vector
from test_submitting import MODEL, Harness, _texts

from corpusbatch import Settings, index, open_table
from corpusbatch.config import Limits
from corpusbatch.journal import Journal
from corpusbatch.pipeline import run_target
from corpusbatch.splitting import effective_limits, split_cap, stated_limit
from corpusbatch.tokenizers import get_tokenizer

CL100K = get_tokenizer("cl100k_base")
WORDS = [
    *("river", "stone", "cloud", "lamp", "orbit", "cedar", "maple", "ember", "frost"),
    *("harbor", "meadow", "quartz", "violet", "willow", "amber", "batch", "vector"),
    *("lance", "token", "chunk", "queue", "wave", "alpha", "beta", "gamma", "delta"),
]


@pytest.fixture
def api() -> Any:
    with FakeBatchAPI(default_dims=16) as server:
        yield server


def _refused(api: FakeBatchAPI, code: str) -> list[Any]:
    return [b for b in api.batches.values() if b.errors and b.errors[0]["code"] == code]


def _corpus(root: Path, n_files: int, seed: int, tag: str) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        paras = []
        for p in range(6):
            words = [rng.choice(WORDS) for _ in range(rng.randint(150, 190))]
            paras.append(f"{tag} {i} {p} " + " ".join(words) + ".")
        (root / f"{tag}-{i:03d}.md").write_text(f"# {tag} {i}\n\n" + "\n\n".join(paras) + "\n")


def _settings(tmp_path: Path, api: FakeBatchAPI) -> Settings:
    return Settings(
        index_dir=tmp_path / "idx",
        provider="openai",
        base_url=api.base_url,
        dimensions=64,
        poll_interval=0.01,
    )


def test_a_file_over_the_enqueued_token_limit_is_split_and_the_limit_is_kept(
    tmp_path: Path,
) -> None:
    """The issue's case: a 30,000-token queue and one ~78k-token batch file."""
    with FakeBatchAPI(default_dims=64, count_tokens=CL100K.count) as api:
        api.token_cap = 30_000
        docs = tmp_path / "docs"
        _corpus(docs, 69, seed=1, tag="first")
        settings = _settings(tmp_path, api)
        report = index(docs, settings, api_key="k")

        assert report.published and not report.failed and report.pending_files == 0
        assert report.files_planned == 1, "one file planned under the profile's limits"
        assert 70_000 < report.to_embed_tokens < 90_000
        refused = _refused(api, "token_limit_exceeded")
        assert len(refused) == 1, "refused once; the parts never exceed the learned limit"
        ran = [b for b in api.batches.values() if b.status == "completed"]
        assert len(ran) >= 3 and all(b.n_tokens <= 30_000 for b in ran)
        # every input billed exactly once, and the table holds exactly the server's vectors
        rows = open_table(settings).to_arrow().to_pylist()
        texts = {str(r["text"]) for r in rows}
        assert Counter(t for (_, _, t) in api.billed.elements()) == Counter(texts)
        assert len(rows) == report.chunks
        for r in rows[:50]:
            assert r["vector"] == pytest.approx(fake_vector(str(r["text"]), 64).tolist(), abs=1e-6)
        assert api.files == {}, "input and output files are all deleted on the provider"

        target = run_target(settings)
        with Journal(settings.index_dir / "state.db") as journal:
            assert journal.learned_limits(target, report.model) == {"max_enqueued_tokens": 30_000}
            states = Counter(f.state for f in journal.files())
            assert states["split"] == 1 and states["loaded"] == len(ran)
            (parent,) = journal.files(states=("split",))
            assert "Limit: 30,000 enqueued tokens" in (parent.error or "")
            children = [f for f in journal.files() if f.parent == parent.name]
            assert sum(c.n_inputs for c in children) == parent.n_inputs
            assert not Path(parent.path).exists() and not Path(parent.manifest_path).exists()

        # the next plan uses the learned limit: ~45k new tokens go as two files, and the
        # provider refuses nothing more
        _corpus(docs, 35, seed=2, tag="second")
        dry = index(docs, settings, api_key="k", dry_run=True)
        assert dry.to_embed_tokens > 30_000 and dry.files_planned == 2 and dry.waves == 2
        again = index(docs, settings, api_key="k")
        assert again.published and again.pending_files == 0 and not again.failed
        assert len(_refused(api, "token_limit_exceeded")) == 1
        assert all(b.n_tokens <= 30_000 for b in api.batches.values() if b.status != "failed")
        assert max(api.billed.values()) == 1
        assert api.files == {}


def test_a_refusal_that_states_no_number_halves_until_the_parts_fit(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.token_cap = 10
    api.token_cap_states_limit = False
    # inputs of at most 3 tokens: learned limits down to 3 are usable for queue waves
    h = Harness(tmp_path, api, limits=Limits(max_enqueued_tokens=None, max_tokens_per_input=3))
    texts = _texts("h", 8)  # 3 tokens each: one file of 24 tokens
    h.add([[t] for t in texts])
    h.run()
    states = h.states()
    assert set(states) == {"loaded", "split"} and not h.journal.pending()
    h.assert_exactly_once(texts)
    assert h.permanent == {}
    learned = h.journal.learned_limits(None, MODEL)["max_enqueued_tokens"]
    assert learned <= 10 and learned == 6  # 24 -> 12 -> 6: halved while refused
    assert all(b.n_tokens <= 10 for b in api.batches.values() if b.status == "completed")
    assert [f for f in api.files.values() if f.purpose == "batch"] == []


@pytest.mark.parametrize(
    ("knob", "value", "code", "field"),
    [
        ("max_lines", 3, "too_many_tasks", "max_lines_per_file"),
        ("max_inputs", 4, "too_many_inputs", "max_inputs_per_file"),
        ("max_bytes", 700, "file_too_large", "max_bytes_per_file"),
    ],
)
def test_per_file_limits_reported_at_validation_are_learned_and_split(
    tmp_path: Path, api: FakeBatchAPI, knob: str, value: int, code: str, field: str
) -> None:
    setattr(api, knob, value)
    h = Harness(tmp_path, api)
    texts = _texts(f"v{knob}", 10)
    name = h.add([[t] for t in texts])  # 10 lines, 10 inputs, ~2 KB
    h.run()
    assert h.journal.get(name).state == "split"  # type: ignore[union-attr]
    assert len(_refused(api, code)) == 1
    assert h.journal.learned_limits(None, MODEL) == {field: value}
    h.assert_exactly_once(texts)
    for rec in h.journal.files(states=("loaded",)):
        size = {"max_lines": rec.n_lines, "max_inputs": rec.n_inputs, "max_bytes": rec.n_bytes}
        assert size[knob] <= value
    assert [f for f in api.files.values() if f.purpose == "batch"] == []


def test_a_crash_between_planning_the_parts_and_recording_the_split_repeats_it(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    api.token_cap = 9
    h = Harness(tmp_path, api, limits=Limits(max_enqueued_tokens=None, max_tokens_per_input=3))
    texts = _texts("c", 6)
    parent = h.add([[t] for t in texts])  # 18 tokens
    real_update = h.journal.update
    crashed: list[str] = []

    def update(name: str, state: str | None = None, **fields: Any) -> None:
        if state == "split" and not crashed:
            crashed.append(name)
            raise KeyboardInterrupt("killed")
        real_update(name, state, **fields)

    h.journal.update = update  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        h.run()
    assert crashed == [parent] and h.journal.get(parent).state == "created"  # type: ignore[union-attr]
    children = {f.name for f in h.journal.files() if f.parent == parent}
    assert len(children) == 2
    h.journal.update = real_update  # type: ignore[method-assign]
    h.run()
    assert {f.name for f in h.journal.files() if f.parent == parent} == children
    assert h.journal.get(parent).state == "split"  # type: ignore[union-attr]
    h.assert_exactly_once(texts)
    assert len(_refused(api, "token_limit_exceeded")) == 1


@pytest.mark.parametrize("how", ["validation", "unsplittable", "output_gone"])
def test_every_path_that_gives_a_file_up_deletes_its_upload(
    tmp_path: Path, api: FakeBatchAPI, how: str
) -> None:
    h = Harness(tmp_path, api)
    if how == "validation":
        name = h.add([["same"], ["same"]])  # duplicate_custom_id
    elif how == "unsplittable":
        api.token_cap = 2
        name = h.add([_texts("u", 1, words=5)])
    else:
        name = h.add([_texts("g", 2)])
        api.auto_advance = False
        h.run(wait=False)
        api.advance_all()
        batch = api.batches[h.journal.get(name).batch_id]  # type: ignore[union-attr,index]
        del api.files[batch.output_file_id]  # type: ignore[arg-type]
    h.run()
    rec = h.journal.get(name)
    assert rec is not None and rec.state == "failed" and rec.remote_deleted == 1
    assert rec.input_file_id is not None and rec.input_file_id in api.deleted_files
    assert [f for f in api.files.values() if f.purpose == "batch"] == []


@pytest.mark.parametrize(
    ("message", "number"),
    [
        ("Enqueued token limit reached for m in organization o. Limit: 30,000 enqueued", 30_000),
        ("File is larger than the 209715200 maximum.", 209_715_200),
        ("More than 50000 requests.", 50_000),
        ("12 embedding inputs; the limit is 4.", 4),
        ("Enqueued token limit reached. Please try again later.", None),
        (None, None),
    ],
)
def test_stated_limit_reads_the_providers_number(message: str | None, number: int | None) -> None:
    assert stated_limit(message) == number


@pytest.mark.parametrize("have", [2, 3, 10, 78_000])
@pytest.mark.parametrize("stated", [None, 1, 5, 30_000, 100_000])
def test_a_split_cap_is_always_below_the_files_size(have: int, stated: int | None) -> None:
    cap = split_cap(have, stated)
    assert 1 <= cap < have
    if stated is not None:
        assert cap <= stated


def test_learned_limits_are_stored_as_numbers_only(tmp_path: Path) -> None:
    """What is learned is numbers only: nothing of the provider's message is kept there."""
    with Journal(tmp_path / "state.db") as j:
        j.learn_limit("openai@x", MODEL, "max_enqueued_tokens", 30_000)
        rows = list(j._db.execute("SELECT key, value FROM meta"))
    assert [json.loads(v) for _, v in rows] == [30_000]


def test_learned_limits_tighten_plans_but_never_below_one_largest_input() -> None:
    base = Limits(max_enqueued_tokens=3_000_000, max_tokens_per_input=8_191)
    got = effective_limits(
        base,
        {"max_enqueued_tokens": 30_000, "max_lines_per_file": 7, "max_bytes_per_file": 10},
    )
    assert got.max_enqueued_tokens == 30_000 and got.max_lines_per_file == 7
    assert got.max_bytes_per_file == 64 * 8_191  # a one-input line must still fit
    assert effective_limits(base, {"max_enqueued_tokens": 2}).max_enqueued_tokens == 8_191
    assert effective_limits(base, {"max_enqueued_tokens": 9_000_000}) == base  # never looser
    assert effective_limits(base, {"unknown_limit": 1}) == base
