"""Models corpusbatch does not know (issue #10 item 1), through the real openai SDK
against the loopback fake Batch API.

A generic provider's model, or a DeepInfra model outside the built-in list, has no
known vector length, no known ``dimensions`` support and no tokenizer of its own: the
first ``index`` asks the provider once (one input, priced), keeps the answer in the
index, sends ``dimensions`` only to a model that takes it, and checks the provider's
reported token usage against its cl100k_base estimate.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakeapi import FakeBatchAPI, fake_vector

from corpusbatch import Settings, index, open_table
from corpusbatch.cli import main
from corpusbatch.config import TOKEN_HEADROOM, TOKEN_MARGIN, planning_limits
from corpusbatch.errors import ConfigError
from corpusbatch.pipeline import resolve_identity, with_learned
from corpusbatch.submitting.adapter import PROBE_TEXT
from corpusbatch.tokenizers import get_tokenizer

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"
MODEL = "acme/embed-v1"
NATIVE = 48


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    shutil.copytree(SAMPLE / "guides", root / "guides")
    return root


@pytest.fixture()
def api() -> FakeBatchAPI:
    with FakeBatchAPI(default_dims=1536, model_dims={MODEL: NATIVE}) as server:
        yield server


def settings_for(
    tmp_path: Path, api: FakeBatchAPI, provider: str = "acme", **kw: object
) -> Settings:
    options: dict[str, object] = {
        "index_dir": tmp_path / "idx",
        "provider": provider,
        "base_url": api.base_url,
        "model": MODEL,
        "poll_interval": 0.01,
        "delete_remote_files": False,  # the uploaded batch files stay on the fake to read
        "scan_workers": 1,
        "limits": {"max_inputs_per_file": 60},
    }
    options.update(kw)
    return Settings(**options)  # type: ignore[arg-type]


def uploaded_bodies(api: FakeBatchAPI) -> list[dict[str, object]]:
    """The body of every request line the fake received in a batch file."""
    return [
        json.loads(raw)["body"]
        for f in api.files.values()
        if f.purpose == "batch"
        for raw in f.data.splitlines()
        if raw.strip()
    ]


def assert_table_has_server_vectors(settings: Settings, dims: int) -> int:
    rows = open_table(settings).to_arrow().to_pylist()
    assert rows
    for row in rows:
        assert len(row["vector"]) == dims
        np.testing.assert_allclose(row["vector"], fake_vector(str(row["text"]), dims), atol=1e-6)
    return len(rows)


@pytest.mark.parametrize("provider", ["acme", "deepinfra"])
def test_unknown_model_learns_its_vector_size_from_one_probe(
    tmp_path: Path, docs: Path, api: FakeBatchAPI, provider: str
) -> None:
    settings = settings_for(tmp_path, api, provider)
    with pytest.raises(ConfigError, match="vector size"):
        resolve_identity(settings)  # nothing learned yet: unknown, not a guess

    report = index(docs, settings, api_key="k")

    assert report.published and not report.failed and report.pending_files == 0
    assert report.probe is not None
    assert report.probe["dimensions"] == NATIVE and report.probe["requests"] == 1
    assert report.probe["tokens"] == 2  # the fake counts words: "corpusbatch probe"
    assert api.realtime_processed == {PROBE_TEXT: 1}  # one input, once
    rows = assert_table_has_server_vectors(settings, NATIVE)
    assert rows == report.chunks
    assert all("dimensions" not in body for body in uploaded_bodies(api))
    # the size is part of the index identity: recorded in the store and the table
    identity = resolve_identity(settings)
    assert (identity.dimensions, identity.request_dimensions) == (NATIVE, None)
    meta = open_table(settings).schema.metadata
    assert any(str(NATIVE).encode() in v for v in meta.values())

    # learned for good: the next run asks nothing and embeds nothing
    edited = docs / "guides" / "v60.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\n\nBloom for forty seconds.\n")
    again = index(docs, settings, api_key="k")
    assert again.probe is None and api.realtime_processed == {PROBE_TEXT: 1}
    assert 0 < again.embedded_vectors < report.embedded_vectors
    assert_table_has_server_vectors(settings, NATIVE)
    assert max(api.processed.values()) == 1


def test_declared_vector_size_needs_no_probe(tmp_path: Path, docs: Path, api: FakeBatchAPI) -> None:
    settings = settings_for(tmp_path, api, model_dimensions=NATIVE)
    report = index(docs, settings, api_key="k")
    assert report.probe is None and not api.realtime_processed
    assert_table_has_server_vectors(settings, NATIVE)


def test_dimensions_are_sent_to_a_model_that_accepts_them(
    tmp_path: Path, docs: Path, api: FakeBatchAPI
) -> None:
    settings = settings_for(tmp_path, api, dimensions=32)
    report = index(docs, settings, api_key="k")
    assert report.probe is not None and report.probe["accepts_dimensions"] is True
    bodies = uploaded_bodies(api)
    assert bodies and all(body.get("dimensions") == 32 for body in bodies)
    assert_table_has_server_vectors(settings, 32)
    assert with_learned(settings).learned is not None
    assert with_learned(settings).learned.accepts_dimensions is True  # type: ignore[union-attr]


def test_dimensions_are_never_sent_to_a_model_that_refuses_them(
    tmp_path: Path, docs: Path, api: FakeBatchAPI
) -> None:
    api.reject_dimensions = {MODEL}
    settings = settings_for(tmp_path, api, dimensions=32)
    with pytest.raises(ConfigError, match="does not accept --dimensions") as exc:
        index(docs, settings, api_key="k")
    assert str(NATIVE) in (exc.value.hint or "")  # the refusal taught the native size too
    assert api.requests["POST /v1/embeddings"] == 2  # with dimensions (400), then without
    assert api.requests["POST /v1/files"] == 0 and not api.batches  # nothing was sent

    # learned: the same mistake again costs no request at all
    with pytest.raises(ConfigError, match="does not accept --dimensions"):
        index(docs, settings, api_key="k")
    assert api.requests["POST /v1/embeddings"] == 2

    # asking for the model's own length sends no `dimensions` field and just works
    ok = index(docs, settings_for(tmp_path, api, dimensions=NATIVE), api_key="k")
    assert ok.published and not ok.failed
    assert all("dimensions" not in body for body in uploaded_bodies(api))
    assert_table_has_server_vectors(settings, NATIVE)


def test_declared_refusal_sends_no_dimensions_and_no_probe(
    tmp_path: Path, docs: Path, api: FakeBatchAPI
) -> None:
    settings = settings_for(
        tmp_path, api, dimensions=32, model_dimensions=NATIVE, model_accepts_dimensions=False
    )
    with pytest.raises(ConfigError, match="does not accept --dimensions"):
        index(docs, settings, api_key="k")
    assert not api.requests["POST /v1/embeddings"] and not api.batches


def cl100k_twice(text: str) -> int:
    return 2 * get_tokenizer("cl100k_base").count(text)


def test_reported_usage_above_the_estimate_is_warned_and_tightens_later_plans(
    tmp_path: Path, docs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a provider whose tokenizer counts twice what cl100k_base counts: beyond the margin
    with FakeBatchAPI(model_dims={MODEL: NATIVE}, count_tokens=cl100k_twice) as api:
        settings = settings_for(tmp_path, api, limits={"max_tokens_per_request": 4_000})
        with caplog.at_level(logging.WARNING, logger="corpusbatch"):
            report = index(docs, settings, api_key="k")
        assert report.published and not report.failed
        assert report.billed_tokens == 2 * report.to_embed_tokens
        warnings = [
            r.getMessage() for r in caplog.records if "the provider counted" in r.getMessage()
        ]
        assert warnings and "x2.00" in warnings[0]
        learned = with_learned(settings)
        assert learned.learned is not None and learned.learned.token_ratio == pytest.approx(2.0)
        tighter = TOKEN_HEADROOM / 2.0
        spec = learned.model_spec()
        assert spec.token_margin == pytest.approx(tighter) and tighter < TOKEN_MARGIN
        # an input of the largest size the chunker may now cut fits at twice its estimate
        assert 2 * spec.max_input_tokens <= 8_191 < 2 * int(8_191 * TOKEN_MARGIN)

        # the first plan kept each request line within 75% of 4,000 estimated tokens; the
        # next one, after the lesson, within 45% (so 2x the estimate stays under 4,000)
        assert uploaded_bodies(api)
        for body in uploaded_bodies(api):
            assert sum(cl100k_twice(t) for t in body["input"]) / 2 <= 4_000 * TOKEN_MARGIN
        shutil.copytree(SAMPLE / "reference", docs / "reference")
        before = {f.id for f in api.files.values()}
        index(docs, settings, api_key="k")
        new = [
            json.loads(raw)["body"]
            for f in api.files.values()
            if f.purpose == "batch" and f.id not in before
            for raw in f.data.splitlines()
        ]
        assert new
        cap = planning_limits(learned.profile().limits, spec.token_margin).max_tokens_per_request
        assert cap == int(4_000 * tighter)
        for body in new:
            real = sum(cl100k_twice(t) for t in body["input"])
            assert real / 2 <= cap and real <= 4_000  # the provider's count fits the limit


def test_usage_within_the_estimate_teaches_nothing(
    tmp_path: Path, docs: Path, api: FakeBatchAPI
) -> None:
    settings = settings_for(tmp_path, api, model_dimensions=NATIVE)
    report = index(docs, settings, api_key="k")
    assert 0 < report.billed_tokens <= report.to_embed_tokens  # the fake counts words
    learned = with_learned(settings).learned
    assert learned is not None and learned.token_ratio is None
    assert with_learned(settings).model_spec().token_margin == TOKEN_MARGIN


def test_plan_shows_estimated_tokens_and_what_is_still_unknown(
    tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["plan", str(docs), "--index-dir", str(tmp_path / "idx")]
    unknown = runner.invoke(
        main, [*base, "--provider", "acme", "--base-url", "http://127.0.0.1:9/v1", "--model", MODEL]
    )
    assert unknown.exit_code == 0, unknown.output
    line = next(x for x in unknown.output.splitlines() if x.startswith("to embed:"))
    assert re.search(r"inputs, ~[\d,]+ tokens \(estimated\)", line)
    assert "vector size of acme/embed-v1 is not known yet" in unknown.output
    assert not (tmp_path / "idx").exists()  # a plan leaves nothing behind, asks nothing

    as_json = runner.invoke(
        main,
        [
            *base,
            "--provider",
            "acme",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            MODEL,
            "--json",
        ],
    )
    assert json.loads(as_json.output)["tokens_estimated"] is True

    exact = runner.invoke(main, [*base, "--provider", "openai"])
    assert exact.exit_code == 0, exact.output
    line = next(x for x in exact.output.splitlines() if x.startswith("to embed:"))
    assert "~" not in line and "estimated)" not in line
