"""Retrieval quality on the sample corpus must not drop: MRR@10 per search mode.

Builds the sample_corpus index once with the local model, asks the labelled questions of
``eval/sample_corpus.jsonl`` in every mode with the code of ``scripts/eval_retrieval.py``
and compares MRR@10 with ``eval/sample_corpus.baseline.json``. A mode more than
``TOLERANCE`` below its baseline fails. After a deliberate change, rewrite the baseline:

    python scripts/eval_retrieval.py --corpus sample_corpus \\
        --questions eval/sample_corpus.jsonl --write-baseline eval/sample_corpus.baseline.json
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO / "eval" / "sample_corpus.jsonl"
BASELINE = REPO / "eval" / "sample_corpus.baseline.json"
TOLERANCE = 0.05

pytestmark = pytest.mark.slow


def _load_script() -> ModuleType:
    path = REPO / "scripts" / "eval_retrieval.py"
    spec = importlib.util.spec_from_file_location("eval_retrieval", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while decorating
    spec.loader.exec_module(module)
    return module


ev = _load_script()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("sentence_transformers")
    index_dir = tmp_path_factory.mktemp("retrieval-quality")
    corpus = ev.Corpus((REPO / "sample_corpus").resolve())
    questions = ev.load_questions(QUESTIONS)
    ev.build_index(corpus.root, index_dir)
    _, search_fn = ev.open_searcher(index_dir)
    return ev.evaluate(questions, corpus, search_fn, ev.MODES, k=10)


def test_question_set_is_labelled_consistently() -> None:
    questions = ev.load_questions(QUESTIONS)
    corpus = ev.Corpus((REPO / "sample_corpus").resolve())
    assert len(questions) >= 20
    assert {q.kind for q in questions} == set(ev.KINDS)
    for q in questions:
        lo, hi = corpus.expected_lines(q)  # raises when a section is not found
        assert 1 <= lo <= hi


def test_relevance_rule_uses_source_and_overlapping_lines() -> None:
    q = ev.Question("q", "fact", "a.md", lines=(10, 20))

    class H:
        def __init__(self, source: str, start: int, end: int) -> None:
            self.source, self.start_line, self.end_line = source, start, end

    hits = [H("b.md", 10, 20), H("a.md", 1, 9), H("a.md", 20, 30)]
    assert ev.first_relevant(hits, q, (10, 20)) == 3
    assert ev.first_relevant(hits[:2], q, (10, 20)) is None
    assert ev.summarize([1, 3, None, 11], 10) == {
        "recall@1": 0.25,
        "recall@5": 0.5,
        "recall@10": 0.5,
        "mrr@10": pytest.approx((1 + 1 / 3) / 4),
        "n": 4,
    }


def test_section_ranges_follow_heading_levels() -> None:
    md = "# T\nintro\n## A\na\n### A1\n```\n# not a heading\n```\n## B\nb\n"
    heads = ev.headings(md, ".md")
    assert [(h.level, h.title, h.line) for h in heads] == [
        (1, "T", 1),
        (2, "A", 3),
        (3, "A1", 5),
        (2, "B", 9),
    ]
    rst = "Title\n=====\n\nPart\n----\ntext\n\nOther\n-----\n"
    assert [(h.level, h.title) for h in ev.headings(rst, ".rst")] == [
        (1, "Title"),
        (2, "Part"),
        (2, "Other"),
    ]


@pytest.mark.parametrize("mode", ["vector", "fts", "hybrid"])
def test_mrr_at_10_does_not_drop(evaluation: Any, mode: str) -> None:
    baseline = json.loads(BASELINE.read_text(encoding="utf-8"))["mrr"]
    got = evaluation.mrr()[mode]
    assert got >= baseline[mode] - TOLERANCE, (
        f"{mode} MRR@10 on the sample corpus fell to {got:.3f} "
        f"(baseline {baseline[mode]:.3f}, tolerance {TOLERANCE}).\n" + ev.format_table(evaluation)
    )
