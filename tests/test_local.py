"""The embedded local backend: real model, real tokenizer, real files and journal."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corpusbatch import local
from corpusbatch.errors import LocalModelUnavailable
from corpusbatch.journal import FileRecord, Journal
from corpusbatch.local import LocalBackend, cpu_has_fast_bf16, output_path_for

MODEL = "all-MiniLM-L6-v2"

PROSE = (
    "The harbour town woke slowly, fishermen hauling nets while gulls argued over scraps. "
    "A baker on the corner pulled loaves from an oven older than the church, and the smell "
    "drifted down to the quay where tourists queued for the morning ferry. Further inland "
    "the vineyards climbed terraced hills, their stone walls built by hand centuries ago. "
    "Engineers later laid a railway through the valley, tunnelling under the ridge so that "
    "wine barrels could reach the capital within a day instead of a week. The station "
    "still keeps its original clock, although nobody trusts it to show the correct time. "
    "In winter storms close the harbour and the town turns inward, to card games, long "
    "dinners and arguments about football that last until spring returns with the boats. "
    "Children learn to swim before they can read, and every family keeps a small boat "
    "tied somewhere along the seawall, painted in colours that fade a little each summer. "
    "Astronomers from the university built a small observatory above the vineyards, where "
    "the air is dry and the sky stays dark; on clear nights students photograph comets, "
    "measure the brightness of variable stars and argue about the expansion of the universe."
)


@pytest.fixture(scope="session")
def backend() -> LocalBackend:
    b = LocalBackend()
    b.load()
    return b


def _prefix(backend: LocalBackend, text: str, n_pieces: int) -> str:
    """The part of ``text`` covered by its first ``n_pieces`` word-pieces."""
    enc = backend._tokenizer.encode(text, add_special_tokens=False)
    assert len(enc.offsets) >= n_pieces
    return text[: enc.offsets[n_pieces - 1][1]]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _line(custom_id: str, inputs: Any, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": inputs, **body},
    }


def _write_jsonl(path: Path, lines: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for item in lines:
            fh.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _vector(item: dict[str, Any]) -> np.ndarray:
    emb = item["embedding"]
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4")
    return np.asarray(emb, dtype=np.float32)


def test_precision_is_validated() -> None:
    with pytest.raises(ValueError, match="precision"):
        LocalBackend(precision="fp16")


def test_missing_stack_raises_with_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import` fail exactly as if it were not installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(LocalModelUnavailable) as info:
        LocalBackend().load()
    assert "pip install torch==2.13.0 'corpusbatch[local]'" in str(info.value)


def test_properties_need_no_model() -> None:
    b = LocalBackend()
    assert (b.model, b.dimensions, b.precision_used) == (MODEL, 384, None)


@pytest.mark.slow
def test_embed_is_normalised_float32_and_semantic(backend: LocalBackend) -> None:
    texts = [
        "How do I reset my password?",
        "Steps to recover a forgotten account password",
        "The recipe needs two eggs and a cup of flour.",
    ]
    vecs = backend.embed(texts)
    assert vecs.dtype == np.float32 and vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.3
    assert backend.embed([]).shape == (0, 384)
    # Order of the result follows the input, whatever the internal length sort does.
    again = backend.embed([texts[2], texts[0]])
    # Batches of another shape (padding) take other CPU kernel paths: elements move by up
    # to ~2e-4 on some CPUs, while different texts differ by far more.
    assert np.allclose(again, vecs[[2, 0]], atol=1e-3)


@pytest.mark.slow
def test_inputs_up_to_256_pieces_are_read_in_full(backend: LocalBackend) -> None:
    text = _prefix(backend, PROSE, 200)
    assert backend.count_tokens([text]) == [200]  # not capped at the packaged 128
    full, cut126, cut120 = backend.embed(
        [text, _prefix(backend, text, 126), _prefix(backend, text, 120)]
    )
    # Cut at 128 (126 + [CLS]/[SEP]) the 200-piece text would embed like its first 126.
    assert _cos(full, cut126) < 0.99
    assert _cos(full, cut120) < 0.99
    # Longer queries are cut at 256 = 254 text pieces: equal to the 254-piece prefix.
    long_text = PROSE + " " + PROSE
    assert backend.count_tokens([long_text])[0] > 400
    long_vec, cut254 = backend.embed([long_text, _prefix(backend, long_text, 254)])
    assert _cos(long_vec, cut254) > 0.9999


@pytest.mark.slow
def test_auto_precision_follows_cpu_and_bf16_matches_fp32(backend: LocalBackend) -> None:
    assert backend.precision_used == ("bf16" if cpu_has_fast_bf16() else "fp32")
    fp32 = LocalBackend(precision="fp32")
    bf16 = LocalBackend(precision="bf16")
    texts = [_prefix(backend, PROSE, n) for n in (8, 40, 120, 200)] + ["a short query"]
    a, b = fp32.embed(texts), bf16.embed(texts)
    assert (fp32.precision_used, bf16.precision_used) == ("fp32", "bf16")
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.999, cos


@pytest.mark.slow
def test_run_file_writes_openai_output_lines(backend: LocalBackend, tmp_path: Path) -> None:
    from openai.types import CreateEmbeddingResponse

    texts = ["alpha beta", "a cat sat on the mat", _prefix(backend, PROSE, 150)]
    src = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            _line("cb-1", texts, encoding_format="base64"),
            _line("cb-2", texts[1]),  # a bare string, server-default float encoding
            _line("cb-3", [texts[2]], encoding_format="float"),
        ],
    )
    seen: list[int] = []
    out = tmp_path / "out" / "in.output.jsonl"
    stats = backend.run_file(src, out, progress=seen.append)
    assert not out.with_name(out.name + ".tmp").exists()
    lines = _read_jsonl(out)
    assert [x["custom_id"] for x in lines] == ["cb-1", "cb-2", "cb-3"]
    expected = backend.embed(texts)
    for line, idx in zip(lines, [[0, 1, 2], [1], [2]], strict=True):
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        resp = line["response"]
        assert resp["status_code"] == 200 and resp["request_id"].startswith("req_")
        # Validate against the SDK's own type (it holds floats: decode base64 as it does).
        decoded = [{**d, "embedding": _vector(d).tolist()} for d in resp["body"]["data"]]
        body = CreateEmbeddingResponse.model_validate({**resp["body"], "data": decoded})
        assert body.model == MODEL and body.object == "list"
        assert [d.index for d in body.data] == list(range(len(idx)))
        tokens = sum(backend.count_tokens([texts[i] for i in idx]))
        assert body.usage.prompt_tokens == body.usage.total_tokens == tokens
        for item, i in zip(resp["body"]["data"], idx, strict=True):
            vec = _vector(item)
            assert vec.shape == (384,)
            assert np.allclose(vec, expected[i], atol=1e-3)  # batch shape moves ~2e-4
    assert isinstance(lines[0]["response"]["body"]["data"][0]["embedding"], str)
    assert isinstance(lines[1]["response"]["body"]["data"][0]["embedding"], list)
    assert sum(seen) == stats["inputs"] == 5
    assert stats["lines"] == 3 and stats["errors"] == 0
    assert stats["tokens"] == sum(backend.count_tokens([*texts, texts[1], texts[2]]))


@pytest.mark.slow
def test_invalid_lines_get_400_and_the_rest_still_runs(
    backend: LocalBackend, tmp_path: Path
) -> None:
    too_long = PROSE + " " + PROSE
    bad = {
        "json": "{not json",
        "url": {**_line("cb-url", "x"), "url": "/v1/chat/completions"},
        "method": {**_line("cb-method", "x"), "method": "GET"},
        "model": _line("cb-model", "x")
        | {"body": {"model": "text-embedding-3-small", "input": "x"}},
        "empty": _line("cb-empty", ""),
        "empty-list": _line("cb-empty-list", []),
        "tokens": _line("cb-tokens", [[1, 2, 3]]),
        "mixed": _line("cb-mixed", ["ok", 7]),
        "long": _line("cb-long", ["fine", too_long]),
        "dims": _line("cb-dims", "x", dimensions=128),
        "format": _line("cb-format", "x", encoding_format="int8"),
        "no-id": {k: v for k, v in _line("cb-x", "x").items() if k != "custom_id"},
    }
    good = [_line("cb-ok-1", ["first good line"]), _line("cb-ok-2", "second good line")]
    src = _write_jsonl(tmp_path / "in.jsonl", [good[0], *bad.values(), good[1], ""])
    out = tmp_path / "out.jsonl"
    stats = backend.run_file(src, out)
    lines = _read_jsonl(out)
    assert len(lines) == len(bad) + 2  # the blank line is not a request
    assert stats["errors"] == len(bad) and stats["inputs"] == 2
    by_id = {x["custom_id"]: x for x in lines}
    assert by_id["cb-ok-1"]["response"]["status_code"] == 200
    assert by_id["cb-ok-2"]["response"]["status_code"] == 200
    errors = [x for x in lines if x["response"]["status_code"] != 200]
    assert len(errors) == len(bad)
    for line in errors:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 400
        err = line["response"]["body"]["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert by_id["cb-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert by_id["cb-model"]["response"]["body"]["error"]["param"] == "model"
    assert by_id["cb-url"]["response"]["body"]["error"]["param"] == "url"
    # Lines whose custom_id is unknown (bad JSON, missing) still get a line, with null.
    assert sum(1 for x in lines if x["custom_id"] is None) == 2


@pytest.mark.slow
def test_run_file_windows_keep_every_line_and_vector(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "WINDOW_INPUTS", 4)  # force many windows on a small file
    words = PROSE.split()
    texts = [" ".join(words[i : i + 1 + (i * 7) % 23]) for i in range(30)]
    lines = [
        _line(f"cb-{j}", texts[j * 3 : j * 3 + 3], encoding_format="base64") for j in range(10)
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", lines)
    seen: list[int] = []
    backend.run_file(src, tmp_path / "out.jsonl", progress=seen.append)
    out = _read_jsonl(tmp_path / "out.jsonl")
    assert [x["custom_id"] for x in out] == [f"cb-{j}" for j in range(10)]
    got = np.stack([_vector(d) for x in out for d in x["response"]["body"]["data"]])
    assert np.allclose(got, backend.embed(texts), atol=1e-3)  # batch shape moves ~2e-4
    assert seen == [6] * 5  # windows close at >= 4 inputs: 2 lines of 3 each


@pytest.fixture()
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "state.db") as j:
        yield j


def _plan_file(journal: Journal, tmp_path: Path, name: str, texts: list[str], **kw: Any) -> Path:
    path = _write_jsonl(tmp_path / name, [_line(f"{name}-{i}", [t]) for i, t in enumerate(texts)])
    journal.add_file(
        name=name,
        plan="p1",
        path=path,
        manifest_path=path.with_suffix(".manifest.jsonl"),
        sha256="0" * 64,
        model=MODEL,
        n_lines=len(texts),
        n_inputs=len(texts),
        n_tokens=0,
        n_bytes=path.stat().st_size,
        **kw,
    )
    return path


@pytest.mark.slow
def test_drive_runs_planned_files_and_picks_up_retries(
    backend: LocalBackend, journal: Journal, tmp_path: Path
) -> None:
    _plan_file(journal, tmp_path, "b-1.jsonl", ["one", "two"])
    _plan_file(journal, tmp_path, "b-2.jsonl", ["three"])
    loaded: list[str] = []

    def on_output(record: FileRecord) -> None:
        assert record.state == "downloaded" and record.output_path
        assert len(_read_jsonl(Path(record.output_path))) == record.n_lines
        loaded.append(record.name)
        if record.name == "b-1.jsonl":  # the loader asks for a retry file
            _plan_file(journal, tmp_path, "b-1-r1.jsonl", ["two"], attempt=1, parent="b-1.jsonl")
        journal.update(record.name, "loaded")

    seen: list[int] = []
    backend.drive(
        journal, outputs_dir=tmp_path / "outputs", on_output=on_output, progress=seen.append
    )
    assert sorted(loaded) == ["b-1-r1.jsonl", "b-1.jsonl", "b-2.jsonl"]
    assert sum(seen) == 4
    assert all(f.state == "loaded" for f in journal.files())
    rec = journal.get("b-2.jsonl")
    assert rec is not None and rec.output_path == str(tmp_path / "outputs" / "b-2.output.jsonl")


@pytest.mark.slow
def test_drive_does_not_rerun_complete_outputs(
    backend: LocalBackend, journal: Journal, tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    src = _plan_file(journal, tmp_path, "b-1.jsonl", ["one", "two"])
    # A crash after the output was renamed into place, before the journal was updated.
    out = output_path_for(outputs, "b-1.jsonl")
    backend.run_file(src, out)
    before = out.read_bytes()
    # And a file already downloaded by an earlier run: only needs loading.
    done_src = _plan_file(journal, tmp_path, "b-0.jsonl", ["zero"])
    done_out = output_path_for(outputs, "b-0.jsonl")
    backend.run_file(done_src, done_out)
    journal.update("b-0.jsonl", "downloaded", output_path=str(done_out))
    done_before = done_out.read_bytes()

    calls: list[str] = []

    def on_output(record: FileRecord) -> None:
        calls.append(record.name)
        journal.update(record.name, "loaded")

    backend.drive(journal, outputs_dir=outputs, on_output=on_output)
    assert sorted(calls) == ["b-0.jsonl", "b-1.jsonl"]
    # Line ids are random per run: identical bytes prove neither file ran again.
    assert out.read_bytes() == before and done_out.read_bytes() == done_before


@pytest.mark.slow
def test_drive_reruns_a_truncated_output(
    backend: LocalBackend, journal: Journal, tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    _plan_file(journal, tmp_path, "b-1.jsonl", ["one", "two"])
    out = output_path_for(outputs, "b-1.jsonl")
    out.parent.mkdir()
    out.write_text('{"partial": true}\n')
    backend.drive(
        journal, outputs_dir=outputs, on_output=lambda r: journal.update(r.name, "loaded")
    )
    assert [x["custom_id"] for x in _read_jsonl(out)] == ["b-1.jsonl-0", "b-1.jsonl-1"]


@pytest.mark.slow
def test_usage_tokens_match_the_chunkers_count(backend: LocalBackend, tmp_path: Path) -> None:
    from corpusbatch.tokenizers import get_tokenizer

    counter = get_tokenizer("local-minilm")
    texts = [_prefix(backend, PROSE + " " + PROSE, n) for n in (1, 37, 128, 254)]
    texts.append("naïve café — ok? 東京")
    assert backend.count_tokens(texts) == [counter.count(t) for t in texts]
    # 254 word-pieces is the chunker's budget for this model: accepted, not cut.
    src = _write_jsonl(tmp_path / "in.jsonl", [_line("cb-1", texts)])
    backend.run_file(src, tmp_path / "out.jsonl")
    (line,) = _read_jsonl(tmp_path / "out.jsonl")
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"]["usage"]["prompt_tokens"] == sum(map(counter.count, texts))
