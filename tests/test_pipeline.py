"""End to end on the local default: sample_corpus -> real MiniLM -> real LanceDB -> search."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from corpusbatch import Settings, index, open_table, search_index
from corpusbatch.errors import CostLimitExceeded, LockedError
from corpusbatch.workspace import IndexPaths, index_lock

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_corpus"

pytestmark = pytest.mark.slow

# (question, the document that answers it); see docs/sample_corpus.md
QUESTIONS = [
    ("How hot should the water be for pour-over?", "guides/water-temperature.md"),
    (
        "What gear should I bring when hosting a group coffee tasting for about ten people?",
        "web/brew-day-checklist.html",
    ),
    (
        "How does the chemical-free Canadian decaf method take out caffeine without solvents?",
        "reference/decaf-processes.rst",
    ),
]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, object]:
    settings = Settings(index_dir=tmp_path_factory.mktemp("idx"))
    report = index(SAMPLE_CORPUS, settings)
    return settings, report


def test_every_chunk_is_published_exactly_once(indexed: tuple[Settings, object]) -> None:
    settings, report = indexed
    table = open_table(settings)
    rows = table.to_arrow().to_pylist()
    assert report.published and report.pending_files == 0 and not report.failed
    assert len(rows) == report.chunks == report.new
    assert len({r["id"] for r in rows}) == len(rows)
    assert report.embedded_vectors == report.distinct_vectors <= len(rows)
    vectors = np.array([r["vector"] for r in rows], dtype=np.float32)
    assert vectors.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert max(r["n_tokens"] for r in rows) <= 254
    assert {r["model"] for r in rows} == {"all-MiniLM-L6-v2"}


def test_rows_point_at_their_source_lines(indexed: tuple[Settings, object]) -> None:
    settings, _ = indexed
    for row in open_table(settings).to_arrow().to_pylist()[:200]:
        path = SAMPLE_CORPUS / row["source"]
        if path.suffix in (".html", ".htm"):
            continue  # HTML rows hold text rendered from the markup
        raw = path.read_bytes()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            lines = raw.decode("cp1252").splitlines()  # the sample's one legacy file
        span = "\n".join(lines[row["start_line"] - 1 : row["end_line"]])
        assert row["text"] in span, row["source"]


def test_bad_files_are_reported_not_fatal(indexed: tuple[Settings, object]) -> None:
    _, report = indexed
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert any("binary" in r for r in reasons.values())
    assert any("empty" in r for r in reasons.values())
    assert report.documents >= 40


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_questions_find_their_document(
    indexed: tuple[Settings, object], question: str, expected: str
) -> None:
    settings, _ = indexed
    hits = search_index(question, settings, k=3)
    assert hits[0].source == expected
    assert hits[0].score >= hits[-1].score


def test_second_run_embeds_nothing_and_writes_nothing(indexed: tuple[Settings, object]) -> None:
    settings, first = indexed
    again = index(SAMPLE_CORPUS, settings)
    assert again.files_planned == 0 and again.embedded_vectors == 0
    assert again.documents_read == 0  # unchanged stat: not even read
    assert again.skipped == first.skipped  # skipped files are still reported
    assert (again.new, again.changed, again.deleted) == (0, 0, 0)
    assert again.table_version == first.table_version


def small_corpus(root: Path) -> Path:
    for rel in ("guides/aeropress.md", "guides/moka-pot.md", "reference/roast-levels.rst"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, root / rel)
    return root


def test_max_cost_aborts_before_anything_is_queued(tmp_path: Path) -> None:
    settings = Settings(index_dir=tmp_path / "idx", max_cost=-1.0)
    with pytest.raises(CostLimitExceeded):
        index(small_corpus(tmp_path / "docs"), settings)
    assert not list((tmp_path / "idx" / "batches").glob("*.jsonl"))


def test_plan_is_a_dry_run(tmp_path: Path) -> None:
    settings = Settings(index_dir=tmp_path / "idx")
    report = index(small_corpus(tmp_path / "docs"), settings, dry_run=True)
    assert report.files_planned >= 1 and report.to_embed_tokens > 0
    assert report.pending_files == 0 and not report.published
    assert not list((tmp_path / "idx" / "batches").glob("*.jsonl"))


def test_a_second_run_on_a_locked_index_fails_fast(tmp_path: Path) -> None:
    settings = Settings(index_dir=tmp_path / "idx")
    with index_lock(IndexPaths(settings.index_dir)), pytest.raises(LockedError):
        index(small_corpus(tmp_path / "docs"), settings)
