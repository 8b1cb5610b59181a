"""Chunker invariants on generated and hand-written documents, with real tokenizers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpusbatch.chunking import Chunker, ChunkerConfig
from corpusbatch.errors import ChunkingError
from corpusbatch.tokenizers import Tokenizer, get_tokenizer
from corpusbatch.types import Chunk, DocKind, Document

TOKENIZERS = ["cl100k_base", "local-minilm"]
SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_corpus"


def make_doc(text: str, kind: DocKind = "markdown", language: str | None = None) -> Document:
    return Document(path="doc.md", text=text, kind=kind, sha256="0" * 64, language=language)


def check_invariants(
    doc: Document, chunks: list[Chunk], tok: Tokenizer, cfg: ChunkerConfig
) -> None:
    """Everything a chunk list must satisfy, whatever the document."""
    text = doc.text
    covered = [False] * len(text)
    prev: Chunk | None = None
    for c in chunks:
        assert c.source == doc.path
        assert c.text == text[c.start_char : c.end_char]
        assert c.text and c.text == c.text.strip() and not c.text.isspace()
        assert c.n_tokens == tok.count(c.text) <= cfg.max_tokens
        assert c.start_line == text.count("\n", 0, c.start_char) + 1
        assert c.end_line == text.count("\n", 0, c.end_char - 1) + 1
        if prev is not None:
            assert prev.start_char < c.start_char and prev.end_char < c.end_char
            if cfg.overlap_tokens == 0:
                assert c.start_char >= prev.end_char
            elif c.start_char < prev.end_char:  # overlap never exceeds the setting
                assert tok.count(text[c.start_char : prev.end_char]) <= cfg.overlap_tokens
        covered[c.start_char : c.end_char] = [True] * len(c.text)
        prev = c
    lost = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not lost, f"text lost at {lost[:5]}: {text[lost[0] : lost[0] + 20]!r}"


# --- generated documents -----------------------------------------------------------

WORD = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12),
    st.sampled_from(
        [
            "café",
            "naïve",
            "e\u0301",
            "日本語の文章",
            "中文。",
            "😀",
            "🏳️‍🌈",
            "👩‍👩‍👧",
            "x²",
            "١٢٣",
            "end.",
            "(paren)",
            "'quote'",
            "it's",
            "--",
            "...",
            "1234567",
            "`code`",
            "<|endoftext|>",
        ]
    ),
)
LINE = st.lists(WORD, min_size=1, max_size=25).map(" ".join)
LONG_RUN = st.text(alphabet="ab1😀日-", min_size=50, max_size=400)  # no spaces at all
BLOCK = st.one_of(
    LINE.map(lambda s: "# " + s),
    LINE.map(lambda s: "### " + s),
    LINE.map(lambda s: s + "\n" + "=" * max(3, len(s))),
    st.lists(LINE, min_size=1, max_size=6).map("\n".join),
    LONG_RUN,
    st.lists(LINE, min_size=1, max_size=3).map(
        lambda ls: "```\n# not a heading\n" + "\n".join(ls) + "\n```"
    ),
    st.lists(LINE, min_size=1, max_size=3).map(lambda ls: "\n".join("    " + x for x in ls)),
    st.sampled_from(["", " ", "\t", "  \n  "]),
)
SEPARATOR = st.sampled_from(["\n", "\n\n", "\n\n\n", " \n", "\n  \n"])
DOCUMENT = st.tuples(st.lists(BLOCK, max_size=25), SEPARATOR).map(lambda t: t[1].join(t[0]))


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@settings(max_examples=60, deadline=None)
@given(
    text=DOCUMENT,
    budget=st.integers(min_value=6, max_value=80),
    overlap_frac=st.sampled_from([0.0, 0.0, 0.2, 0.5]),
    kind=st.sampled_from(["markdown", "rst", "text", "code"]),
)
def test_invariants_on_generated_documents(
    tok_name: str, text: str, budget: int, overlap_frac: float, kind: DocKind
) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=budget, overlap_tokens=int(budget * overlap_frac))
    doc = make_doc(text, kind, "python" if kind == "code" else None)
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    assert chunks == Chunker(tok, cfg).chunk(doc)  # deterministic


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@settings(max_examples=80, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=400),
    budget=st.integers(min_value=4, max_value=40),
    overlap=st.sampled_from([0, 0, 1, 3]),
)
def test_invariants_on_arbitrary_unicode(
    tok_name: str, text: str, budget: int, overlap: int
) -> None:
    """Any code points, including control and odd whitespace characters."""
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=budget, overlap_tokens=overlap)
    doc = make_doc(text, "text")
    check_invariants(doc, Chunker(tok, cfg).chunk(doc), tok, cfg)


# --- hand-written documents ---------------------------------------------------------

COFFEE = """\
# Brewing

Good coffee starts with fresh beans. Grind them just before you brew, because ground
coffee loses its aroma within minutes.

## Pour-over

A pour-over gives a clean cup. Rinse the paper filter first so it does not taste of
paper, then add the grounds and level the bed.

### Water temperature

Use water between 92 and 96 degrees Celsius. Water that is too hot extracts bitter
compounds; water that is too cold leaves the cup sour and thin. If you have no
thermometer, let boiling water rest for thirty seconds before pouring.

```bash
# heat the kettle (this line is not a heading)
kettle --target 94
```

Pour in slow circles and keep the bed wet. The whole brew should take three minutes.

## French press

Coarse grounds, four minutes, then press gently. Decant at once so it does not stew.

Storage
-------

Keep beans in an airtight tin, away from light. Do not freeze beans you will use this week.
"""

PEP = """\
PEP: 9999
Title: Chunking Documents

==================
Chunking Documents
==================

Abstract
========

This document proposes cutting text into pieces that fit an embedding model.

Motivation
==========

Models read a bounded number of tokens. Longer inputs are truncated or rejected.

Details
-------

Cuts prefer headings, then paragraphs, then lines, then sentences.

Rationale
=========

Structure-aware cuts keep related sentences together.
"""

CODE = '''\
"""A module."""

import os


@decorator
def first(x):
    """Return x."""
    y = x + 1
    return y


class Store:
    """Keeps things."""

    def put(self, key, value):
        self.items[key] = value
        return value

    async def get(self, key):
        return self.items.get(key)


def last():
    return os.getcwd()
'''


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("budget", [12, 30, 60, 512])
def test_markdown_headings_and_packing(tok_name: str, budget: int) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=budget)
    doc = make_doc(COFFEE)
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    by_start = {c.text.split("\n")[0]: c.heading for c in chunks}
    if budget == 512:  # the whole document fits: one chunk, not one per heading
        assert len(chunks) == 1 and chunks[0].heading == ("Brewing",)
        return
    for c in chunks:
        if COFFEE.index("### Water") <= c.start_char < COFFEE.index("## French"):
            assert c.heading == ("Brewing", "Pour-over", "Water temperature")
        if c.start_char >= COFFEE.index("Storage\n"):
            assert c.heading == ("Brewing", "Storage")
        assert "this line is not a heading" not in "".join(c.heading)
    assert by_start.get("# Brewing", ("Brewing",)) == ("Brewing",)


def test_heading_cut_preferred_when_chunk_is_full_enough() -> None:
    tok = get_tokenizer("cl100k_base")
    doc = make_doc(COFFEE)
    # "# Brewing" and its paragraph are 28 tokens: 70% of 40, full enough to end there.
    chunks = Chunker(tok, ChunkerConfig(max_tokens=40)).chunk(doc)
    starts = [c.text.split("\n")[0] for c in chunks]
    assert starts[:2] == ["# Brewing", "## Pour-over"]
    assert "## French press" in starts


def test_small_sections_are_packed_not_one_chunk_per_heading() -> None:
    tok = get_tokenizer("cl100k_base")
    text = "\n\n".join(f"## Section {i}\n\nShort body {i}." for i in range(40))
    chunks = Chunker(tok, ChunkerConfig(max_tokens=100)).chunk(make_doc(text))
    assert len(chunks) < 12
    assert all(c.text.startswith("## Section") for c in chunks)
    assert sum(c.n_tokens for c in chunks) >= tok.count(text) - len(chunks)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_rst_titles(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=24)
    doc = make_doc(PEP, "rst")
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    for c in chunks:
        if PEP.index("Details\n") <= c.start_char < PEP.index("Rationale\n"):
            assert c.heading == ("Chunking Documents", "Motivation", "Details")
        if c.start_char >= PEP.index("Rationale\n"):
            assert c.heading == ("Chunking Documents", "Rationale")
        if PEP.index("Abstract\n") <= c.start_char < PEP.index("Motivation\n"):
            assert c.heading == ("Chunking Documents", "Abstract")


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_python_code_cuts_at_definitions(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=40)
    doc = make_doc(CODE, "code", "python")
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    starts = {c.text.split("\n")[0]: c.heading for c in chunks}
    assert "def first(x):" not in starts  # a decorator stays with its function
    assert "class Store:" in starts and starts["class Store:"] == ("Store",)
    for c in chunks:
        if c.text.startswith("async def get"):
            assert c.heading == ("Store", "get")
        if c.text.startswith("def last"):
            assert c.heading == ("last",)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_overlap_is_bounded_and_present(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    text = " ".join(f"Sentence number {i} talks about coffee." for i in range(200))
    cfg = ChunkerConfig(max_tokens=50, overlap_tokens=10)
    doc = make_doc(text, "text")
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    overlapping = sum(1 for p, c in itertools.pairwise(chunks) if c.start_char < p.end_char)
    assert overlapping >= len(chunks) // 2


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_unbreakable_runs_are_cut_on_token_boundaries(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    text = "😀日本" * 300 + "\n\n" + "x" * 3000 + "\n" + "🏳️‍🌈" * 100
    cfg = ChunkerConfig(max_tokens=16)
    doc = make_doc(text, "text")
    chunker = Chunker(tok, cfg)
    chunks = chunker.chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    assert "\ufffd" not in "".join(c.text for c in chunks)
    assert chunker.stats.chunks == len(chunks)


def test_whitespace_only_and_empty_documents_give_no_chunks() -> None:
    tok = get_tokenizer("cl100k_base")
    chunker = Chunker(tok, ChunkerConfig(max_tokens=8))
    assert chunker.chunk(make_doc("")) == []
    assert chunker.chunk(make_doc(" \n\n\t ")) == []


def test_config_validation_and_fingerprint() -> None:
    with pytest.raises(ChunkingError):
        ChunkerConfig(max_tokens=0)
    with pytest.raises(ChunkingError):
        ChunkerConfig(max_tokens=10, overlap_tokens=10)
    a, b = ChunkerConfig(512), ChunkerConfig(512, 64)
    assert a.fingerprint() == ChunkerConfig(512).fingerprint() != b.fingerprint()
    tok = get_tokenizer("cl100k_base")
    assert Chunker(tok, a).fingerprint() != Chunker(get_tokenizer("local-minilm"), a).fingerprint()


_KINDS: dict[str, tuple[DocKind, str | None]] = {
    ".md": ("markdown", None),
    ".rst": ("rst", None),
    ".txt": ("text", None),
    ".py": ("code", "python"),
    ".rs": ("code", "rust"),
    ".js": ("code", "javascript"),
    ".ts": ("code", "typescript"),
    ".go": ("code", "go"),
}


@pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample_corpus/ not present")
@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_sample_corpus(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=254 if tok_name == "local-minilm" else 512)
    chunker = Chunker(tok, cfg)
    n_files = 0
    for path in sorted(SAMPLE_CORPUS.rglob("*")):
        if path.suffix not in _KINDS or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError:
            continue
        kind, language = _KINDS[path.suffix]
        doc = Document(str(path), text, kind, "0" * 64, language)
        check_invariants(doc, chunker.chunk(doc), tok, cfg)
        n_files += 1
    assert chunker.stats.documents == n_files


RUST = """\
use std::fmt;

/// A point.
#[derive(Debug)]
pub struct Point {
    x: i32,
    y: i32,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

pub fn origin() -> Point {
    Point { x: 0, y: 0 }
}
"""


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_rust_code_cuts_before_items_with_their_attributes(tok_name: str) -> None:
    tok = get_tokenizer(tok_name)
    cfg = ChunkerConfig(max_tokens=30)
    doc = make_doc(RUST, "code", "rust")
    chunks = Chunker(tok, cfg).chunk(doc)
    check_invariants(doc, chunks, tok, cfg)
    starts = {c.text.split("\n")[0]: c.heading for c in chunks}
    assert "pub struct Point {" not in starts  # doc comment and attribute stay attached
    assert starts.get("pub fn origin() -> Point {", ("origin",)) == ("origin",)
    for c in chunks:
        if c.text.startswith("fn fmt") or c.text.startswith("write!"):
            assert c.heading[-1] == "fmt"
