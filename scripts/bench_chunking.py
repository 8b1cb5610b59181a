"""Benchmark corpusbatch's chunker against raw tiktoken encoding and peer chunkers.

Usage: python scripts/bench_chunking.py [--corpora ../shared/corpora] [--repeat 3]

Corpora (read in place, never copied): Markdown = fastapi-docs + rust-book, reST =
python-peps. cl100k_base, 512-token chunks, one process, best of --repeat after a warm-up
(peers: best of --peer-repeat). Every chunk of every method is re-counted with the real
tokenizer afterwards (outside the timing) for mean/max/>512. Peers (chonkie, semchunk,
langchain-text-splitters) run only if importable. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corpusbatch.chunking import Chunker, ChunkerConfig
from corpusbatch.tokenizers import TiktokenTokenizer, get_tokenizer
from corpusbatch.types import Document

BUDGET = 512


def load_corpus(root: Path, kind: str) -> list[Document]:
    if kind == "md":
        files = sorted((root / "fastapi-docs").rglob("*.md")) + sorted(
            (root / "rust-book").rglob("*.md")
        )
    else:
        files = sorted((root / "python-peps").rglob("*.rst"))
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\r\n", "\n")
        docs.append(Document(str(f), text, "markdown" if kind == "md" else "rst", ""))
    return docs


CPU: dict[str, float] = {}  # best process CPU seconds of the last best_time() call


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time over `repeat` passes after a warm-up; best CPU time goes to CPU."""
    fn()  # warm-up
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    CPU["last"] = best_cpu
    return best, out


Splitter = Callable[[str], list[str]]


def peers(enc: Any) -> dict[str, Callable[[], Splitter]]:
    """Factories of peer chunkers (cl100k_base, 512 tokens), for those installed.

    A fresh instance per timed pass: semchunk memoizes counts, so a reused instance
    would time cache hits.
    """
    out: dict[str, Callable[[], Splitter]] = {}
    try:
        from chonkie import RecursiveChunker, TokenChunker

        def chonkie_token() -> Splitter:
            ch = TokenChunker(tokenizer=enc, chunk_size=BUDGET, chunk_overlap=0)
            return lambda t: [c.text for c in ch.chunk(t)]

        def chonkie_recursive() -> Splitter:
            ch = RecursiveChunker(tokenizer=enc, chunk_size=BUDGET)
            return lambda t: [c.text for c in ch.chunk(t)]

        out["chonkie_token"] = chonkie_token
        out["chonkie_recursive"] = chonkie_recursive
    except Exception as exc:  # any import/config failure just skips the peer
        print(f"skipping chonkie: {exc}")
    try:
        import semchunk

        def sem() -> Splitter:
            ch = semchunk.chunkerify(enc, BUDGET)
            return lambda t: list(ch(t))

        out["semchunk"] = sem
    except Exception as exc:
        print(f"skipping semchunk: {exc}")
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        def langchain() -> Splitter:
            return RecursiveCharacterTextSplitter(
                chunk_size=BUDGET,
                chunk_overlap=0,
                length_function=lambda s: len(enc.encode_ordinary(s)),
            ).split_text

        out["langchain_recursive"] = langchain
    except Exception as exc:
        print(f"skipping langchain: {exc}")
    return out


def row(name: str, seconds: float, n_bytes: int, counts: list[int] | None, extra: str) -> str:
    mbs = n_bytes / seconds / 1e6
    cpu = CPU["last"]
    head = f"| {name} | {seconds:.2f} | {mbs:.1f} | {cpu:.2f} | {n_bytes / cpu / 1e6:.1f} |"
    if counts is None:
        return f"{head} - | - | - | - | {extra} |"
    over = sum(c > BUDGET for c in counts)
    mean = statistics.fmean(counts) if counts else 0.0
    return f"{head} {len(counts):,} | {mean:.0f} | {max(counts)} | {over} | {extra} |"


def bench(docs: list[Document], label: str, repeat: int, peer_repeat: int) -> list[str]:
    tok = get_tokenizer("cl100k_base")
    assert isinstance(tok, TiktokenTokenizer)
    enc = tok._enc
    texts = [d.text for d in docs]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    lines = [f"\n### {label}: {len(docs)} files, {n_bytes / 1e6:.2f} MB\n"]
    lines.append(
        "| method | best wall s | MB/s (wall) | best CPU s | MB/s (CPU) | chunks | mean tok "
        "| max tok | >512 | notes |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    floor_s, _ = best_time(lambda: [enc.encode_ordinary(t) for t in texts], repeat)
    floor_cpu = CPU["last"]
    n_tokens = sum(len(enc.encode_ordinary(t)) for t in texts)
    lines.append(row("tiktoken encode_ordinary (floor)", floor_s, n_bytes, None, "1 encode/file"))

    def ours() -> tuple[list[Any], Chunker]:
        chunker = Chunker(tok, ChunkerConfig(max_tokens=BUDGET))
        return [c for d in docs for c in chunker.chunk(d)], chunker

    ours_s, (chunks, chunker) = best_time(ours, repeat)
    real = tok.count_many([c.text for c in chunks])
    exact = all(r == c.n_tokens for r, c in zip(real, chunks, strict=True))
    st = chunker.stats
    lines.append(
        row(
            "corpusbatch Chunker",
            ours_s,
            n_bytes,
            real,
            f"{ours_s / floor_s:.2f}x floor wall, {CPU['last'] / floor_cpu:.2f}x CPU; "
            f"re-encoded {st.reencode_fraction:.2%} of chars "
            f"in {st.reencode_calls:,} calls; {st.shrinks} shrinks; counts exact: {exact}; "
            f"Σchunk tok / corpus tok {sum(real) / n_tokens:.3f}",
        )
    )
    for name, factory in peers(enc).items():

        def run(factory: Callable[[], Splitter] = factory) -> list[str]:
            fn = factory()
            return [p for t in texts for p in fn(t)]

        try:
            peer_s, pieces = best_time(run, peer_repeat)
        except Exception as exc:
            lines.append(f"| {name} | failed: {type(exc).__name__}: {exc} | | | | | | |")
            continue
        counts = tok.count_many(pieces)
        lines.append(
            row(
                name,
                peer_s,
                n_bytes,
                counts,
                f"{peer_s / floor_s:.2f}x floor wall, {CPU['last'] / floor_cpu:.2f}x CPU; "
                f"Σchunk tok / corpus tok {sum(counts) / n_tokens:.3f}",
            )
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpora", type=Path, default=Path("../shared/corpora"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-repeat", type=int, default=1)
    args = ap.parse_args()
    out = []
    for kind, label in (("md", "Markdown (fastapi-docs + rust-book)"), ("rst", "reST (PEPs)")):
        out += bench(load_corpus(args.corpora, kind), label, args.repeat, args.peer_repeat)
    print("\n".join(out))


if __name__ == "__main__":
    main()
