"""Retrieval quality of a corpusbatch index: recall@1/5/10 and MRR@10 per mode and kind.

Builds (or reuses) an index of a corpus with the default local model, asks every labelled
question of a JSONL set in each search mode (vector, fts, hybrid) and prints, for each mode
and question kind, how often a relevant chunk is in the top 1, 5 and 10 and the mean
reciprocal rank of the first relevant chunk within the top 10.

    python scripts/eval_retrieval.py                       # rust-book set, ../shared corpus
    python scripts/eval_retrieval.py --corpus sample_corpus --questions eval/sample_corpus.jsonl
    python scripts/eval_retrieval.py --index-dir /tmp/rb --variants --json out.json

A question file has one JSON object per line::

    {"q": "...", "kind": "fact|paraphrase|deep", "source": "path/in/corpus.md",
     "section": "Heading text", "lines": [start, end]}

Relevance rule: a hit is relevant when its ``source`` equals the question's ``source`` and
its line range overlaps the expected line range. That range is ``lines`` when given
(1-based, inclusive); otherwise the section named by ``section``: the heading line whose
title equals it (or, failing that, contains it; ``"A > B"`` names B under A) through the
line before the next heading of the same or a higher level. Markdown ATX headings outside
fenced code and reStructuredText underlined titles count as headings. Without either,
the whole document is relevant. Each question has one expected section, so recall@n is the
share of questions with a relevant hit in the top n.

``--variants`` also scores fusions computed here from deeper vector and BM25 lists, to
compare fusion choices without changing corpusbatch. The test
``tests/test_retrieval_quality.py`` imports this file, so both share one implementation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "rust-book" / "src"
DEFAULT_QUESTIONS = REPO / "eval" / "rust-book.jsonl"
MODES = ("vector", "fts", "hybrid")
KINDS = ("fact", "paraphrase", "deep")
CUTOFFS = (1, 5, 10)

# ---------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    q: str
    kind: str
    source: str
    section: str | None = None
    lines: tuple[int, int] | None = None


def load_questions(path: Path) -> list[Question]:
    """Questions of a JSONL file; a malformed line stops with its line number."""
    out: list[Question] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            lines = obj.get("lines")
            out.append(
                Question(
                    q=str(obj["q"]),
                    kind=str(obj["kind"]),
                    source=str(obj["source"]),
                    section=obj.get("section"),
                    lines=(int(lines[0]), int(lines[1])) if lines else None,
                )
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise SystemExit(f"{path}:{n}: bad question line ({exc})") from exc
    return out


# ----------------------------------------------------------------------------- sections

_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")


@dataclass(frozen=True)
class Heading:
    level: int
    title: str
    line: int  # 1-based line of the title


def headings(text: str, suffix: str) -> list[Heading]:
    """Markdown ATX headings outside code fences, or reST titles for ``.rst``."""
    lines = text.split("\n")
    found: list[Heading] = []
    if suffix == ".rst":
        styles: list[tuple[str, bool]] = []
        for i in range(len(lines) - 1):
            title, under = lines[i].rstrip(), lines[i + 1].rstrip()
            if not title.strip() or _RST_ADORN.match(title) or not _RST_ADORN.match(under):
                continue
            if len(under) < len(title.strip()):
                continue
            over = i > 0 and lines[i - 1].rstrip() == under
            style = (under[0], over)
            if style not in styles:
                styles.append(style)
            found.append(Heading(styles.index(style) + 1, title.strip(), i + 1))
        return found
    fence: str | None = None
    for i, line in enumerate(lines, 1):
        m = _FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None:
            h = _ATX.match(line)
            if h:
                found.append(Heading(len(h.group(1)), h.group(2), i))
    return found


@dataclass
class Corpus:
    """Reads documents of the corpus on demand and resolves expected line ranges."""

    root: Path
    _cache: dict[str, tuple[int, list[Heading]]] = field(default_factory=dict)

    def _doc(self, source: str) -> tuple[int, list[Heading]]:
        if source not in self._cache:
            path = self.root / source
            if not path.is_file():
                raise SystemExit(f"question names {source!r}, which is not in {self.root}")
            text = path.read_text(encoding="utf-8", errors="replace")
            self._cache[source] = (text.count("\n") + 1, headings(text, path.suffix.lower()))
        return self._cache[source]

    def expected_lines(self, q: Question) -> tuple[int, int]:
        """The 1-based inclusive line range a relevant hit must overlap."""
        if q.lines:
            return q.lines
        n_lines, heads = self._doc(q.source)
        if not q.section:
            return (1, n_lines)
        *parents, last = [p.strip() for p in q.section.split(" > ")]
        for exact in (True, False):
            for j, h in enumerate(heads):
                if not (h.title == last if exact else last in h.title):
                    continue
                if parents and not _under(heads, j, parents):
                    continue
                end = next((g.line - 1 for g in heads[j + 1 :] if g.level <= h.level), n_lines)
                return (h.line, end)
        raise SystemExit(f"section {q.section!r} not found among the headings of {q.source}")


def _under(heads: Sequence[Heading], j: int, parents: list[str]) -> bool:
    """True when heading j sits (transitively) under headings containing ``parents``."""
    level, want = heads[j].level, list(parents)
    for h in reversed(heads[:j]):
        if h.level < level:
            level = h.level
            if want and want[-1] in h.title:
                want.pop()
    return not want


# ------------------------------------------------------------------------------ metrics

Hit = Any  # corpusbatch.search.Hit or anything with source/start_line/end_line
SearchFn = Callable[[str, str, int], Sequence[Hit]]  # (question, mode, k) -> hits


def first_relevant(hits: Iterable[Hit], q: Question, expected: tuple[int, int]) -> int | None:
    """1-based rank of the first relevant hit, or None."""
    lo, hi = expected
    for rank, h in enumerate(hits, 1):
        if h.source == q.source and h.start_line <= hi and h.end_line >= lo:
            return rank
    return None


def summarize(ranks: Sequence[int | None], k: int) -> dict[str, float]:
    """recall@n for each cutoff <= k and MRR@k of a list of first-relevant ranks."""
    n = max(len(ranks), 1)
    out = {
        f"recall@{c}": sum(1 for r in ranks if r is not None and r <= c) / n
        for c in CUTOFFS
        if c <= k
    }
    out[f"mrr@{k}"] = sum(1 / r for r in ranks if r is not None and r <= k) / n
    out["n"] = len(ranks)
    return out


@dataclass
class Evaluation:
    k: int
    ranks: dict[str, list[int | None]]  # mode -> rank per question
    seconds: dict[str, float]  # mode -> mean seconds per query
    questions: list[Question]

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        """mode -> kind (and "all") -> metrics."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        kinds = [k for k in KINDS if any(q.kind == k for q in self.questions)]
        kinds += sorted({q.kind for q in self.questions} - set(kinds))
        for mode, ranks in self.ranks.items():
            out[mode] = {
                kind: summarize(
                    [r for r, q in zip(ranks, self.questions, strict=True) if q.kind == kind],
                    self.k,
                )
                for kind in kinds
            }
            out[mode]["all"] = summarize(ranks, self.k)
        return out

    def mrr(self) -> dict[str, float]:
        return {mode: by_kind["all"][f"mrr@{self.k}"] for mode, by_kind in self.table().items()}


def evaluate(
    questions: Sequence[Question],
    corpus: Corpus,
    search_fn: SearchFn,
    modes: Sequence[str] = MODES,
    k: int = 10,
) -> Evaluation:
    """Ask every question in every mode and record the rank of the first relevant hit."""
    expected = [corpus.expected_lines(q) for q in questions]
    ranks: dict[str, list[int | None]] = {}
    seconds: dict[str, float] = {}
    for mode in modes:
        t0 = time.perf_counter()
        ranks[mode] = [
            first_relevant(search_fn(q.q, mode, k), q, e)
            for q, e in zip(questions, expected, strict=True)
        ]
        seconds[mode] = (time.perf_counter() - t0) / max(len(questions), 1)
    return Evaluation(k, ranks, seconds, list(questions))


# ------------------------------------------------------------------------------- index


def build_index(corpus: Path, index_dir: Path, *, rebuild: bool = True) -> dict[str, Any]:
    """Index ``corpus`` into ``index_dir`` with the default settings (local model)."""
    import corpusbatch
    from corpusbatch import Settings

    t0 = time.perf_counter()
    report = corpusbatch.index(corpus, Settings(index_dir=index_dir)) if rebuild else None
    info: dict[str, Any] = {"build_seconds": round(time.perf_counter() - t0, 1)}
    if report is not None:
        info.update(
            documents=report.documents,
            chunks=report.chunks,
            embedded=report.embedded_vectors,
            tokens=report.to_embed_tokens,
        )
    return info


def open_searcher(index_dir: Path) -> tuple[Any, SearchFn]:
    """The published table and a search function that loads the query model once.

    It calls :func:`corpusbatch.search.search`, the ranking code behind
    ``search_index`` and the CLI, with one embedder kept for all questions.
    """
    from corpusbatch import Settings
    from corpusbatch.local import LocalBackend
    from corpusbatch.search import search
    from corpusbatch.workspace import open_table, table_identity

    table = open_table(Settings(index_dir=index_dir))
    prefix = str(table_identity(table).get("input_prefix") or "")
    backend = LocalBackend()
    backend.embed(["warm-up"])  # load the model now, so query timings exclude the load

    def embed(texts: list[str]) -> Any:
        return backend.embed([prefix + t for t in texts])

    def run(question: str, mode: str, k: int) -> Sequence[Hit]:
        return search(table, question, embed=embed, k=k, mode=mode)

    return table, run


# ---------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class _Row:
    id: str
    source: str
    start_line: int
    end_line: int


def _rows(hits: Sequence[Hit]) -> list[_Row]:
    return [_Row(h.id, h.source, h.start_line, h.end_line) for h in hits]


def rrf(lists: Sequence[Sequence[_Row]], weights: Sequence[float], c: float = 60.0) -> list[_Row]:
    """Weighted reciprocal rank fusion: score = sum of w / (c + rank)."""
    score: dict[str, float] = {}
    row: dict[str, _Row] = {}
    for hits, w in zip(lists, weights, strict=True):
        for rank, h in enumerate(hits, 1):
            score[h.id] = score.get(h.id, 0.0) + w / (c + rank)
            row[h.id] = h
    return [row[i] for i in sorted(score, key=lambda i: -score[i])]


def linear(vec: Sequence[Hit], bm25: Sequence[Hit], w_vec: float, floor: float = 0.0) -> list[_Row]:
    """w*cosine + (1-w)*BM25/max(BM25): a convex mix of scores; missing counts as floor."""
    top = max((h.score for h in bm25), default=1.0) or 1.0
    v = {h.id: h.score for h in vec}
    b = {h.id: h.score / top for h in bm25}
    row = {h.id: h for h in [*bm25, *vec]}
    score = {i: w_vec * v.get(i, floor) + (1 - w_vec) * b.get(i, 0.0) for i in row}
    return _rows([row[i] for i in sorted(score, key=lambda i: -score[i])])


def variant_ranks(
    questions: Sequence[Question], corpus: Corpus, search_fn: SearchFn, k: int, depth: int
) -> Evaluation:
    """Fusions of vector and BM25 lists (each ``depth`` long) computed here, per question."""
    fusions: dict[str, Callable[[list[Hit], list[Hit]], list[_Row]]] = {
        f"rrf top{k} (=hybrid)": lambda v, b: rrf([_rows(v[:k]), _rows(b[:k])], [1, 1]),
        f"rrf top{depth}": lambda v, b: rrf([_rows(v), _rows(b)], [1, 1]),
        f"rrf top{depth} bm25x2": lambda v, b: rrf([_rows(v), _rows(b)], [1, 2]),
        f"rrf top{depth} vecx2": lambda v, b: rrf([_rows(v), _rows(b)], [2, 1]),
        f"rrf top{depth} c=10": lambda v, b: rrf([_rows(v), _rows(b)], [1, 1], c=10),
        f"linear top{depth} w=0.3": lambda v, b: linear(v, b, 0.3),
        f"linear top{depth} w=0.5": lambda v, b: linear(v, b, 0.5),
        f"linear top{depth} w=0.7": lambda v, b: linear(v, b, 0.7),
    }
    expected = [corpus.expected_lines(q) for q in questions]
    ranks: dict[str, list[int | None]] = {name: [] for name in fusions}
    for q, e in zip(questions, expected, strict=True):
        vec = list(search_fn(q.q, "vector", depth))
        bm25 = list(search_fn(q.q, "fts", depth))
        for name, fuse in fusions.items():
            ranks[name].append(first_relevant(fuse(vec, bm25)[:k], q, e))
    return Evaluation(k, ranks, dict.fromkeys(fusions, 0.0), list(questions))


# ------------------------------------------------------------------------------ output


def format_table(ev: Evaluation, title: str = "mode") -> str:
    """A Markdown table: one row per mode x kind."""
    cols = [f"recall@{c}" for c in CUTOFFS if c <= ev.k] + [f"mrr@{ev.k}"]
    width = max(len(title), *(len(m) for m in ev.ranks))
    head = f"| {title:<{width}} | kind       |  n | " + " | ".join(cols) + " |"
    rule = (
        "|"
        + "-" * (width + 2)
        + "|------------|---:|"
        + "|".join("-" * (len(c) + 1) + ":" for c in cols)
    )
    lines = [head, rule + "|"]
    for mode, by_kind in ev.table().items():
        for kind, m in by_kind.items():
            cells = " | ".join(f"{m[c]:>{len(c)}.3f}" for c in cols)
            name = f"**{kind}**" if kind == "all" else kind
            lines.append(f"| {mode:<{width}} | {name:<10} | {int(m['n']):>2} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder to index")
    ap.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="JSONL set")
    ap.add_argument(
        "--index-dir",
        type=Path,
        help="index directory; an existing index there is reused (not re-scanned) unless "
        "--rebuild; default: a temporary directory",
    )
    ap.add_argument("--rebuild", action="store_true", help="re-run indexing in --index-dir")
    ap.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    ap.add_argument("--variants", action="store_true", help="also score fusion variants")
    ap.add_argument("--depth", type=int, default=50, help="list depth for --variants")
    ap.add_argument("--json", metavar="FILE", help="write all figures as JSON ('-': stdout)")
    ap.add_argument("--write-baseline", metavar="FILE", help="write MRR per mode as baseline")
    args = ap.parse_args(argv)

    if not args.corpus.is_dir():
        print(
            f"corpus folder {args.corpus} does not exist. The default corpus lives in "
            "../shared/corpora/, which only the project's own machines have; pass "
            "--corpus PATH (and a matching --questions FILE), e.g. --corpus sample_corpus "
            "--questions eval/sample_corpus.jsonl",
            file=sys.stderr,
        )
        return 2
    if not args.questions.is_file():
        print(f"question file {args.questions} does not exist", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    questions = load_questions(args.questions)
    corpus = Corpus(args.corpus.resolve())
    for q in questions:  # fail on a bad label before spending minutes on embedding
        corpus.expected_lines(q)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="cb-eval-") as scratch:
        index_dir = args.index_dir or Path(scratch)
        reuse = (index_dir / "store.db").exists() and not args.rebuild
        print(
            f"{'reusing' if reuse else 'building'} index of {args.corpus} in {index_dir}",
            file=sys.stderr,
        )
        info = build_index(corpus.root, index_dir, rebuild=not reuse)
        table, search_fn = open_searcher(index_dir)
        info["rows"] = table.count_rows()
        ev = evaluate(questions, corpus, search_fn, modes, args.k)
        var = (
            variant_ranks(questions, corpus, search_fn, args.k, args.depth)
            if args.variants
            else None
        )

    print(
        f"\ncorpus {args.corpus} | {len(questions)} questions from {args.questions} | "
        f"{info['rows']} chunks | build {info['build_seconds']} s"
        + ("" if not reuse else " (reused)")
    )
    print(
        "mean query time: "
        + ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in ev.seconds.items())
        + "\n"
    )
    print(format_table(ev))
    if var is not None:
        print("\nFusion variants (computed in this script from vector and BM25 lists):\n")
        print(format_table(var, "fusion"))
    result = {
        "corpus": str(args.corpus),
        "questions": str(args.questions),
        "index": info,
        "k": args.k,
        "query_seconds": ev.seconds,
        "modes": ev.table(),
        "variants": var.table() if var else None,
        "per_question": [
            {"q": q.q, "kind": q.kind, **{m: ev.ranks[m][i] for m in ev.ranks}}
            for i, q in enumerate(questions)
        ],
    }
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.write_baseline:
        baseline = {
            "questions": args.questions.name,
            "k": args.k,
            "mrr": {m: round(v, 4) for m, v in ev.mrr().items()},
            "note": "written by scripts/eval_retrieval.py --write-baseline; "
            "tests/test_retrieval_quality.py fails when a mode drops more than 0.05",
        }
        Path(args.write_baseline).write_text(json.dumps(baseline, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
