"""Tests for corpusbatch.planning: every limit splits exactly where it should."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpusbatch.config import PROFILES, Limits, ModelSpec
from corpusbatch.errors import PlanningError
from corpusbatch.planning import (
    make_custom_id,
    plan_files,
    read_manifest,
    summarize,
    waves,
)
from corpusbatch.types import EmbedItem, PlannedFile

CUSTOM_ID_RE = re.compile(r"^cb-[0-9a-f]{40}$")
# No limit gets in the way unless a test lowers it.
WIDE = Limits(
    max_lines_per_file=10**9,
    max_inputs_per_file=10**9,
    max_bytes_per_file=10**12,
    max_tokens_per_file=None,
    max_inputs_per_request=10**9,
    max_tokens_per_request=10**12,
    max_tokens_per_input=10**9,
    max_enqueued_tokens=None,
    max_enqueued_requests=None,
)


def make_items(n: int, tokens: int = 3, prefix: str = "chunk") -> list[EmbedItem]:
    return [EmbedItem(f"{i:032x}", f"{prefix} {i}", tokens) for i in range(n)]


def plan(items: Sequence[EmbedItem], out: Path, limits: Limits, **kw: Any) -> list[PlannedFile]:
    return list(plan_files(items, out_dir=out, plan_id="p", model="m", limits=limits, **kw))


def lines_of(f: PlannedFile) -> list[dict[str, Any]]:
    data = f.path.read_bytes()
    return [json.loads(raw) for raw in data.split(b"\n")[:-1]]


def line_shape(f: PlannedFile) -> list[int]:
    """Number of inputs of each line of a file."""
    return [len(line["body"]["input"]) for line in lines_of(f)]


def _file_token_cap(limits: Limits) -> int | None:
    caps = [c for c in (limits.max_tokens_per_file, limits.max_enqueued_tokens) if c is not None]
    return min(caps) if caps else None


def check_plan(files: Sequence[PlannedFile], items: Sequence[EmbedItem], limits: Limits) -> None:
    """Every invariant of a plan: order, completeness, limits, counts, manifests, shape."""
    by_key = {item.key: item for item in items}
    seen: list[str] = []
    tok_cap = _file_token_cap(limits)
    for f in files:
        data = f.path.read_bytes()
        assert f.n_bytes == len(data) <= limits.max_bytes_per_file
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert data.endswith(b"\n") and b"\n\n" not in data
        manifest = read_manifest(f.manifest_path)
        lines = lines_of(f)
        assert f.n_lines == len(lines) == len(manifest) <= limits.max_lines_per_file
        assert f.custom_ids == [line["custom_id"] for line in lines] == list(manifest)
        assert len(set(f.custom_ids)) == len(f.custom_ids)
        file_tokens = 0
        for line in lines:
            keys = manifest[line["custom_id"]]
            inputs = line["body"]["input"]
            assert inputs == [by_key[k].text for k in keys]
            assert line["custom_id"] == make_custom_id(keys)
            assert CUSTOM_ID_RE.match(line["custom_id"])
            assert 1 <= len(inputs) <= limits.max_inputs_per_request
            line_tokens = sum(by_key[k].n_tokens for k in keys)
            assert line_tokens <= limits.max_tokens_per_request
            file_tokens += line_tokens
            seen.extend(keys)
        assert f.n_inputs == sum(len(manifest[c]) for c in manifest) <= limits.max_inputs_per_file
        assert f.n_tokens == file_tokens
        if tok_cap is not None:
            assert file_tokens <= tok_cap
    assert seen == [item.key for item in items]  # nothing lost, duplicated or reordered


# --------------------------------------------------------------------------- each limit


def test_lines_per_file_splits_3_3_1(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_lines_per_file=3, max_inputs_per_request=1)
    items = make_items(7)
    files = plan(items, tmp_path, limits)
    assert [f.n_lines for f in files] == [3, 3, 1]
    assert [f.name for f in files] == ["p-00001.jsonl", "p-00002.jsonl", "p-00003.jsonl"]
    check_plan(files, items, limits)


def test_inputs_per_file(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=5, max_inputs_per_request=2)
    items = make_items(12)
    files = plan(items, tmp_path, limits)
    assert [f.n_inputs for f in files] == [5, 5, 2]
    assert [line_shape(f) for f in files] == [[2, 2, 1], [2, 2, 1], [2]]
    check_plan(files, items, limits)


def test_inputs_per_request(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_request=4)
    items = make_items(10)
    files = plan(items, tmp_path, limits)
    assert len(files) == 1
    assert line_shape(files[0]) == [4, 4, 2]
    check_plan(files, items, limits)


def test_tokens_per_request(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_request=7)
    items = make_items(5, tokens=3)
    files = plan(items, tmp_path, limits)
    assert len(files) == 1
    assert line_shape(files[0]) == [2, 2, 1]  # 6 tokens fit, 9 would not
    check_plan(files, items, limits)


def test_tokens_per_request_exact_fit(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_request=6)
    files = plan(make_items(5, tokens=3), tmp_path, limits)
    assert line_shape(files[0]) == [2, 2, 1]  # exactly 6 is allowed


def test_tokens_per_file(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_file=10)
    items = make_items(5, tokens=4)
    files = plan(items, tmp_path, limits)
    assert [f.n_tokens for f in files] == [8, 8, 4]
    check_plan(files, items, limits)


def test_enqueued_tokens_caps_files(tmp_path: Path) -> None:
    """max_tokens_per_file=None with an enqueued cap: files are cut at the cap."""
    limits = dataclasses.replace(WIDE, max_tokens_per_file=None, max_enqueued_tokens=12)
    items = make_items(10, tokens=4)
    files = plan(items, tmp_path, limits)
    assert [f.n_tokens for f in files] == [12, 12, 12, 4]
    check_plan(files, items, limits)
    groups = waves(files, limits)
    assert [[f.name for f in g] for g in groups] == [[f.name] for f in files]


def test_enqueued_tokens_below_file_cap(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_file=100, max_enqueued_tokens=8)
    files = plan(make_items(5, tokens=4), tmp_path, limits)
    assert [f.n_tokens for f in files] == [8, 8, 4]


def test_enqueued_requests_caps_lines(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_request=1, max_enqueued_requests=2)
    files = plan(make_items(5), tmp_path, limits)
    assert [f.n_lines for f in files] == [2, 2, 1]
    assert len(waves(files, limits)) == 3


def _one_file_size(items: Sequence[EmbedItem], out: Path, limits: Limits) -> int:
    files = plan(items, out, limits)
    assert len(files) == 1
    return files[0].n_bytes


@pytest.mark.parametrize("per_request", [1, 3, 100])
def test_bytes_per_file_boundary(tmp_path: Path, per_request: int) -> None:
    """A file of exactly max bytes is allowed; one byte less cap forces a split."""
    base = dataclasses.replace(WIDE, max_inputs_per_request=per_request)
    items = make_items(6, prefix='naïve ☃ "quoted"\\')
    size = _one_file_size(items, tmp_path / "ref", base)

    exact = dataclasses.replace(base, max_bytes_per_file=size)
    files = plan(items, tmp_path / "exact", exact)
    assert len(files) == 1 and files[0].n_bytes == size
    check_plan(files, items, exact)

    tight = dataclasses.replace(base, max_bytes_per_file=size - 1)
    files = plan(items, tmp_path / "tight", tight)
    assert [f.n_inputs for f in files] == [5, 1]
    check_plan(files, items, tight)
    # and the first file is as full as it could be: its 5 items alone make exactly that file
    alone = _one_file_size(items[:5], tmp_path / "five", base)
    assert files[0].n_bytes == alone


def test_bytes_counts_utf8_not_chars(tmp_path: Path) -> None:
    items = [EmbedItem("a" * 32, "日本語のテキスト", 5)]
    files = plan(items, tmp_path, WIDE)
    assert files[0].n_bytes == len(files[0].path.read_bytes())
    assert "日本語" in files[0].path.read_text(encoding="utf-8")  # not \\u-escaped


# --------------------------------------------------------------------------- shape, ids


def test_line_shape_exact(tmp_path: Path) -> None:
    items = [EmbedItem("k1", "first", 1), EmbedItem("k2", 'se"cond\n', 2)]
    files = list(
        plan_files(
            items, out_dir=tmp_path, plan_id="run", model="text-embedding-3-small", limits=WIDE
        )
    )
    raw = files[0].path.read_bytes().decode("utf-8")
    cid = make_custom_id(["k1", "k2"])
    assert raw == (
        f'{{"custom_id":"{cid}","method":"POST","url":"/v1/embeddings","body":'
        '{"model":"text-embedding-3-small","input":["first","se\\"cond\\n"],'
        '"encoding_format":"base64"}}\n'
    )
    manifest = files[0].manifest_path.read_text(encoding="utf-8")
    assert manifest == f'{{"custom_id":"{cid}","keys":["k1","k2"]}}\n'
    assert files[0].manifest_path.name == "run-00001.manifest.jsonl"


def test_dimensions_only_when_requested(tmp_path: Path) -> None:
    items = make_items(2)
    without = lines_of(plan(items, tmp_path / "a", WIDE)[0])
    assert all("dimensions" not in line["body"] for line in without)
    with_dims = plan(items, tmp_path / "b", WIDE, request_dimensions=256, encoding_format="float")
    for line in lines_of(with_dims[0]):
        assert list(line) == ["custom_id", "method", "url", "body"]
        assert line["body"] == {
            "model": "m",
            "input": line["body"]["input"],
            "encoding_format": "float",
            "dimensions": 256,
        }
        assert list(line["body"]) == ["model", "input", "encoding_format", "dimensions"]


def test_lines_are_canonical_compact_json(tmp_path: Path) -> None:
    texts = ["a b", "tab\there", "é€😀", "\\", "ctl\x00\x1f"]
    items = [EmbedItem(f"k{i}", t, 1) for i, t in enumerate(texts)]
    files = plan(items, tmp_path, dataclasses.replace(WIDE, max_inputs_per_request=3))
    for raw in files[0].path.read_bytes().decode("utf-8").splitlines():
        assert raw == json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)


def test_unicode_line_separators_are_escaped(tmp_path: Path) -> None:
    """U+2028/U+2029/U+0085 are escaped so str.splitlines() sees one record per line."""
    texts = ["a\u2028b", "c\u2029d", "e\x85f"]
    items = [EmbedItem(f"k{i}", t, 1) for i, t in enumerate(texts)]
    files = plan(items, tmp_path, dataclasses.replace(WIDE, max_inputs_per_request=2))
    text = files[0].path.read_text(encoding="utf-8")
    assert text.splitlines() == text.split("\n")[:-1]
    assert [i for line in lines_of(files[0]) for i in line["body"]["input"]] == texts
    assert files[0].n_bytes == len(files[0].path.read_bytes())


def test_custom_id_formula() -> None:
    cid = make_custom_id(["a", "b"])
    assert cid == "cb-" + hashlib.sha256(b"a\nb").hexdigest()[:40]
    assert len(cid) <= 64 and re.fullmatch(r"[A-Za-z0-9_.:-]+", cid)


def test_start_index(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=1)
    files = plan(make_items(2), tmp_path, limits, start_index=41)
    assert [f.name for f in files] == ["p-00041.jsonl", "p-00042.jsonl"]
    assert files[1].manifest_path == tmp_path / "p-00042.manifest.jsonl"


def test_deterministic(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_request=3, max_inputs_per_file=7)
    items = make_items(20)
    a = plan(items, tmp_path / "a", limits)
    b = plan(items, tmp_path / "b", limits)
    assert [f.name for f in a] == [f.name for f in b]
    for fa, fb in zip(a, b, strict=True):
        assert fa.path.read_bytes() == fb.path.read_bytes()
        assert fa.manifest_path.read_bytes() == fb.manifest_path.read_bytes()
        assert fa.sha256 == fb.sha256


def test_streams_files_as_they_complete(tmp_path: Path) -> None:
    """The first file is on disk before the items for the second are even produced."""
    limits = dataclasses.replace(WIDE, max_inputs_per_file=2)
    produced: list[int] = []

    def gen() -> Any:
        for i, item in enumerate(make_items(6)):
            produced.append(i)
            yield item

    it = plan_files(gen(), out_dir=tmp_path, plan_id="p", model="m", limits=limits)
    first = next(it)
    assert first.path.exists() and first.n_inputs == 2
    assert produced == [0, 1, 2]  # item 2 closed file 1; nothing more was pulled
    assert len(list(it)) == 2


# --------------------------------------------------------------------------- atomicity


def test_no_tmp_files_after_success(tmp_path: Path) -> None:
    plan(make_items(10), tmp_path, dataclasses.replace(WIDE, max_inputs_per_file=3))
    assert not list(tmp_path.glob("*.tmp"))
    assert len(list(tmp_path.glob("*.manifest.jsonl"))) == 4


def test_no_tmp_files_after_error(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=3, max_tokens_per_input=5)
    items = [*make_items(4), EmbedItem("f" * 32, "too long", 6)]
    done: list[PlannedFile] = []
    with pytest.raises(PlanningError):
        for f in plan_files(items, out_dir=tmp_path, plan_id="p", model="m", limits=limits):
            done.append(f)
    assert [f.n_inputs for f in done] == [3]  # the finished file stays valid
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "p-00001.jsonl",
        "p-00001.manifest.jsonl",
    ]


def test_no_tmp_files_after_early_close(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=3)
    it = plan_files(make_items(10), out_dir=tmp_path, plan_id="p", model="m", limits=limits)
    next(it)
    it.close()  # type: ignore[attr-defined]
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("item", "words"),
    [
        (EmbedItem("kbig", "x", 9), ["kbig", "max_tokens_per_input=8", "--chunk-tokens"]),
        (EmbedItem("kzero", "x", 0), ["kzero", "n_tokens=0"]),
        (EmbedItem("kneg", "x", -1), ["kneg", "n_tokens=-1"]),
        (EmbedItem("kempty", "", 1), ["kempty", "empty"]),
    ],
)
def test_invalid_items(tmp_path: Path, item: EmbedItem, words: list[str]) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_input=8)
    with pytest.raises(PlanningError) as info:
        plan([item], tmp_path, limits)
    for word in words:
        assert word in str(info.value)


def test_item_over_request_token_limit(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_tokens_per_request=4)
    with pytest.raises(PlanningError, match="max_tokens_per_request=4"):
        plan([EmbedItem("k", "x", 5)], tmp_path, limits)


def test_line_too_big_for_empty_file(tmp_path: Path) -> None:
    item = EmbedItem("kbytes", "y" * 50, 1)
    size = _one_file_size([item], tmp_path / "ref", WIDE)
    plan([item], tmp_path / "ok", dataclasses.replace(WIDE, max_bytes_per_file=size))
    with pytest.raises(PlanningError) as info:
        plan([item], tmp_path / "bad", dataclasses.replace(WIDE, max_bytes_per_file=size - 1))
    assert "kbytes" in str(info.value) and "max_bytes_per_file" in str(info.value)
    assert "--chunk-tokens" in str(info.value)


@pytest.mark.parametrize("gap", [0, 1, 5])
def test_duplicate_key_in_plan(tmp_path: Path, gap: int) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=2)
    items = make_items(6)
    dup = [*items[: gap + 1], items[0]]
    with pytest.raises(PlanningError, match="twice"):
        plan(dup, tmp_path, limits)


def test_lone_surrogate_is_a_planning_error(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match=r"ksur.*not valid Unicode"):
        plan([EmbedItem("ksur", "bad \ud800 text", 2)], tmp_path, WIDE)
    assert not list(tmp_path.iterdir())


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="plan_id"):
        list(plan_files([], out_dir=tmp_path, plan_id="../x", model="m", limits=WIDE))
    with pytest.raises(PlanningError, match="encoding_format"):
        plan(make_items(1), tmp_path, WIDE, encoding_format="binary")
    with pytest.raises(PlanningError, match="max_lines_per_file"):
        plan(make_items(1), tmp_path, dataclasses.replace(WIDE, max_lines_per_file=0))


def test_empty_input_plans_nothing(tmp_path: Path) -> None:
    assert plan([], tmp_path, WIDE) == []
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- manifests


def test_read_manifest_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.manifest.jsonl"
    path.write_text('{"custom_id":"cb-1","keys":["a"]}\n\n', encoding="utf-8")
    assert read_manifest(path) == {"cb-1": ["a"]}
    path.write_text('{"custom_id":"cb-1","keys":["a"]}\nnot json\n', encoding="utf-8")
    with pytest.raises(PlanningError, match=r"x\.manifest\.jsonl:2"):
        read_manifest(path)
    path.write_text('{"custom_id":"cb-1","keys":"a"}\n', encoding="utf-8")
    with pytest.raises(PlanningError, match=":1"):
        read_manifest(path)
    path.write_text('{"custom_id":"c","keys":[]}\n{"custom_id":"c","keys":[]}\n', encoding="utf-8")
    with pytest.raises(PlanningError, match="twice"):
        read_manifest(path)


# --------------------------------------------------------------------------- property test


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[EmbedItem], Limits]:
    texts = draw(
        st.lists(
            st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40),
            min_size=0,
            max_size=60,
        )
    )
    tokens = draw(st.lists(st.integers(1, 12), min_size=len(texts), max_size=len(texts)))
    items = [
        EmbedItem(f"{i:032x}", t, n) for i, (t, n) in enumerate(zip(texts, tokens, strict=True))
    ]
    limits = Limits(
        max_lines_per_file=draw(st.integers(1, 8)),
        max_inputs_per_file=draw(st.integers(1, 20)),
        # big enough for any single line: overhead ~140 B + 40 chars × ≤6 B (escapes)
        max_bytes_per_file=draw(st.integers(400, 3000)),
        max_tokens_per_file=draw(st.one_of(st.none(), st.integers(12, 60))),
        max_inputs_per_request=draw(st.integers(1, 6)),
        max_tokens_per_request=draw(st.integers(12, 40)),
        max_tokens_per_input=12,
        max_enqueued_tokens=draw(st.one_of(st.none(), st.integers(12, 80))),
        max_enqueued_requests=draw(st.one_of(st.none(), st.integers(1, 10))),
    )
    return items, limits


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=plans(), dims=st.one_of(st.none(), st.integers(1, 4096)))
def test_property_every_item_once_within_limits(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[list[EmbedItem], Limits], dims: int | None
) -> None:
    items, limits = case
    out = tmp_path_factory.mktemp("plan")
    files = plan(items, out, limits, request_dimensions=dims)
    check_plan(files, items, limits)
    enq = limits.max_enqueued_requests
    for f in files:
        assert enq is None or f.n_lines <= enq
    groups = waves(files, limits)
    assert [f for g in groups for f in g] == files
    for g in groups:
        if limits.max_enqueued_tokens is not None:
            assert sum(f.n_tokens for f in g) <= limits.max_enqueued_tokens
        if enq is not None:
            assert sum(f.n_lines for f in g) <= enq
    assert not list(out.glob("*.tmp"))
    _check_greedy(files, items, limits, tmp_path_factory.mktemp("greedy"), dims)


def _check_greedy(
    files: Sequence[PlannedFile],
    items: Sequence[EmbedItem],
    limits: Limits,
    scratch: Path,
    dims: int | None,
) -> None:
    """Each file was closed only because the next item fit neither its last line nor a new line."""
    by_key = {item.key: item for item in items}
    tok_cap = _file_token_cap(limits)
    line_cap = min(c for c in (limits.max_lines_per_file, limits.max_enqueued_requests) if c)
    done = 0
    for i, f in enumerate(files[:-1]):
        done += f.n_inputs
        nxt = items[done]
        last = read_manifest(f.manifest_path)[f.custom_ids[-1]]
        enc = len(json.dumps(nxt.text, ensure_ascii=False).encode("utf-8"))
        alone = plan([nxt], scratch / f"{i}", WIDE, request_dimensions=dims)[0].n_bytes
        file_ok = f.n_inputs + 1 <= limits.max_inputs_per_file and (
            tok_cap is None or f.n_tokens + nxt.n_tokens <= tok_cap
        )
        fits_line = (
            file_ok
            and len(last) + 1 <= limits.max_inputs_per_request
            and sum(by_key[k].n_tokens for k in last) + nxt.n_tokens
            <= limits.max_tokens_per_request
            and f.n_bytes + enc + 1 <= limits.max_bytes_per_file
        )
        fits_new_line = (
            file_ok and f.n_lines + 1 <= line_cap and f.n_bytes + alone <= limits.max_bytes_per_file
        )
        assert not fits_line and not fits_new_line, f"{f.name} was closed too early"
    for f in files:
        _check_lines_greedy(f, by_key, limits)


def _check_lines_greedy(f: PlannedFile, by_key: dict[str, EmbedItem], limits: Limits) -> None:
    """Within a file, a line is closed only when the next item breaks a per-request limit."""
    groups = list(read_manifest(f.manifest_path).values())
    for keys, after in itertools.pairwise(groups):
        tokens = sum(by_key[k].n_tokens for k in keys) + by_key[after[0]].n_tokens
        assert (
            len(keys) + 1 > limits.max_inputs_per_request or tokens > limits.max_tokens_per_request
        ), f"a line of {f.name} was closed too early"


# --------------------------------------------------------------------------- summary, waves


def _fake_file(name: str, lines: int, tokens: int) -> PlannedFile:
    return PlannedFile(
        name=name,
        path=Path(name),
        manifest_path=Path(name + ".m"),
        sha256="0" * 64,
        n_lines=lines,
        n_inputs=lines * 2,
        n_tokens=tokens,
        n_bytes=lines * 100,
        model="m",
    )


def test_summarize(tmp_path: Path) -> None:
    limits = dataclasses.replace(WIDE, max_inputs_per_file=4, max_inputs_per_request=3)
    files = plan(make_items(10, tokens=100_000), tmp_path, limits)
    spec = ModelSpec("m", "cl100k_base", 8191, 1536, 512, 0.01, 0.02, True)
    s = summarize(files, spec)
    assert (s.files, s.lines, s.inputs, s.tokens) == (3, 5, 10, 1_000_000)  # lines [3,1],[3,1],[2]
    assert s.bytes == sum(len(f.path.read_bytes()) for f in files)
    assert s.batch_cost == pytest.approx(0.01)
    assert s.realtime_cost == pytest.approx(0.02)
    assert s.savings == pytest.approx(0.01)
    assert summarize([], spec).tokens == 0


def test_waves_grouping() -> None:
    files = [_fake_file(f"f{i}", lines=2, tokens=t) for i, t in enumerate([4, 4, 2, 5, 1, 1])]
    limits = dataclasses.replace(WIDE, max_enqueued_tokens=10, max_enqueued_requests=None)
    assert [[f.name for f in w] for w in waves(files, limits)] == [
        ["f0", "f1", "f2"],
        ["f3", "f4", "f5"],
    ]
    by_lines = dataclasses.replace(WIDE, max_enqueued_tokens=None, max_enqueued_requests=5)
    assert [len(w) for w in waves(files, by_lines)] == [2, 2, 2]
    assert [len(w) for w in waves(files, WIDE)] == [6]  # unlimited: one wave
    assert waves([], limits) == []


def test_waves_rejects_oversize_file() -> None:
    limits = dataclasses.replace(WIDE, max_enqueued_tokens=10)
    with pytest.raises(PlanningError, match="f1"):
        waves([_fake_file("f0", 1, 3), _fake_file("f1", 1, 11)], limits)
    limits = dataclasses.replace(WIDE, max_enqueued_requests=1)
    with pytest.raises(PlanningError, match="max_enqueued_requests"):
        waves([_fake_file("f0", 2, 3)], limits)


# --------------------------------------------------------------------------- real defaults


def test_openai_defaults_split_by_inputs_per_file(tmp_path: Path) -> None:
    """~120k small items under OpenAI's default limits: 3 files, cut at 50k inputs each."""
    limits = PROFILES["openai"].limits
    assert limits.max_inputs_per_file == 50_000
    items = [EmbedItem(f"{i:032x}", f"small chunk number {i}", 5) for i in range(120_000)]
    files = plan(items, tmp_path, limits)
    assert [f.n_inputs for f in files] == [50_000, 50_000, 20_000]
    assert limits.max_inputs_per_request == 128  # a lost line re-bills little
    assert [f.n_lines for f in files] == [391, 391, 157]  # 128 inputs per line
    assert all(f.n_bytes < limits.max_bytes_per_file for f in files)
    check_plan(files, items, limits)
    assert len(waves(files, limits)) == 1  # 600k tokens < 3M enqueued
