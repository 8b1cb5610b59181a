"""Benchmark: the scan stage with one worker and with N, against raw tiktoken.

Targets (issue: the scan uses every core): one worker scans at >= 0.6x the throughput
of raw ``encode_ordinary`` over the same files, and N workers (the cores available)
reach >= 1.8x one worker on 2 cores.

Measured side by side, interleaved, in one process, ``--repeat`` times each (best and
median reported), with a warm page cache:

* ``raw encode_ordinary``: tiktoken cl100k_base ``encode_ordinary`` of every file's text
  (files read and decoded beforehand, not timed): the floor;
* ``scan, 1 worker`` and ``scan, N workers``: ``report.durations["scan"]`` of
  ``index(dry_run=True)`` with provider openai (cl100k_base) into a fresh index
  directory each time: list, stat, read, decode, chunk, hash and write the store (the
  dry run rolls it back afterwards).

The machine's load average is printed before and after, since other processes on a
shared machine skew every figure; ratios measured in one run are the ones to compare.

Usage: python scripts/bench_scan.py [CORPUS_DIR] [--repeat 3] [--workers N] [--write]
Default corpus: ../shared/corpora/python-peps/peps (751 files, 14.4 MB).
``--write`` writes the figures to docs/benchmarks/scan.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from corpusbatch import Settings, index, pipeline
from corpusbatch.scanning import default_workers
from corpusbatch.sources import list_files
from corpusbatch.tokenizers import get_tokenizer

_scan = pipeline._scan
REPO = Path(__file__).resolve().parent.parent
NOTES = "<!-- notes: kept by --write -->"
DEFAULT = REPO.parent / "shared/corpora/python-peps/peps"


def raw_encode(texts: list[str]) -> float:
    enc = get_tokenizer("cl100k_base")._enc  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for text in texts:
        enc.encode_ordinary(text)
    return time.perf_counter() - t0


CPU: dict[str, float] = {}


def _timed_scan(*args: Any, **kwargs: Any) -> None:
    """pipeline._scan, noting the CPU seconds of this process and of its worker processes
    (reaped when the pool shuts down, inside the scan)."""
    parent0 = time.process_time()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    _scan(*args, **kwargs)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["parent"] = time.process_time() - parent0
    CPU["workers"] = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)


pipeline._scan = _timed_scan


def scan(root: Path, workers: int) -> tuple[float, float, float]:
    """(wall seconds, parent CPU seconds, worker CPU seconds) of one scan."""
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as d:
        settings = Settings(index_dir=Path(d) / "idx", provider="openai", scan_workers=workers)
        report = index(root, settings, dry_run=True)
        return float(report.durations["scan"]), CPU["parent"], CPU["workers"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks/scan.md")
    args = parser.parse_args()
    root = Path(args.corpus)
    if not root.is_dir():
        sys.exit(
            f"corpus folder {root} not found; pass a folder of documents, e.g. a checkout of "
            "https://github.com/python/peps (its peps/ folder)"
        )
    files = list_files(root)
    raw = [p.read_bytes() for p in files]
    mb = sum(map(len, raw)) / 1e6
    texts = [b.decode("utf-8", errors="replace") for b in raw]
    del raw
    cores = default_workers()
    print(f"{root}: {len(files)} files, {mb:.1f} MB; {cores} cores; workers {args.workers}")
    load_before = load()
    print(f"load average before: {load_before}")
    times: dict[str, list[float]] = {"raw": [], "one": [], "many": []}
    cpu: dict[str, list[tuple[float, float]]] = {"one": [], "many": []}
    scan(root, 1)  # warm the page cache and the tokenizer
    for i in range(args.repeat):
        times["raw"].append(raw_encode(texts))
        for key, workers in (("one", 1), ("many", args.workers)):
            wall, parent, kids = scan(root, workers)
            times[key].append(wall)
            cpu[key].append((parent, kids))
        print(
            f"  round {i + 1}: "
            + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items())
            + "; CPU s (parent + workers): "
            + ", ".join(
                f"{k} {p:.2f} + {w:.2f}" for k, ((p, w),) in ((k, v[-1:]) for k, v in cpu.items())
            )
        )
    load_after = load()
    print(f"load average after: {load_after}")
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for label, key in (
        ("raw `encode_ordinary`", "raw"),
        ("scan, 1 worker", "one"),
        (f"scan, {args.workers} workers", "many"),
    ):
        rows.append(
            f"| {label} | {best[key]:.3f} | {median[key]:.3f} | {mb / best[key]:.2f} "
            f"| {mb / median[key]:.2f} |"
        )
    ratios = [
        (
            "1 worker / raw encode_ordinary (target >= 0.6)",
            best["raw"] / best["one"],
            median["raw"] / median["one"],
        ),
        (
            f"{args.workers} workers / 1 worker (target >= 1.8)",
            best["one"] / best["many"],
            median["one"] / median["many"],
        ),
    ]
    table = "\n".join(
        ["| what | best s | median s | best MB/s | median MB/s |", "|---|---|---|---|---|", *rows]
    )
    ratio_table = "\n".join(
        ["| ratio | best | median |", "|---|---|---|"]
        + [f"| {name} | {b:.2f}x | {m:.2f}x |" for name, b, m in ratios]
    )
    cpu_rows = [
        "| scan | parent CPU s | worker CPU s | total CPU s | cores it got (CPU / wall) |",
        "|---|---|---|---|---|",
    ]
    totals: dict[str, float] = {}
    for label, key in (("1 worker", "one"), (f"{args.workers} workers", "many")):
        parent = statistics.median(p for p, _ in cpu[key])
        kids = statistics.median(w for _, w in cpu[key])
        totals[key] = parent + kids
        got = statistics.median((p + w) / t for (p, w), t in zip(cpu[key], times[key], strict=True))
        cpu_rows.append(
            f"| {label} | {parent:.2f} | {kids:.2f} | {parent + kids:.2f} | {got:.2f} |"
        )
    cpu_table = "\n".join(cpu_rows)
    many_parent = statistics.median(p for p, _ in cpu["many"])
    floor = max(totals["many"] / min(args.workers, cores), many_parent)
    ratio_table += (
        f"\n| {args.workers} workers / 1 worker, estimated for an idle machine from CPU time "
        f"(1-worker CPU / max(N-worker CPU / cores, parent CPU)) | {totals['one'] / floor:.2f}x | |"
    )
    table = table + "\n\nCPU time (medians):\n\n" + cpu_table
    print(table)
    print(ratio_table)
    if args.write:
        out = REPO / "docs/benchmarks/scan.md"
        old = out.read_text() if out.exists() else ""
        notes = old[old.index(NOTES) :] if NOTES in old else ""  # hand-written, kept
        doc = _doc(root, len(files), mb, cores, args, load_before, load_after, table, ratio_table)
        out.write_text(doc + ("\n" + notes if notes else ""))
        print(f"wrote {out}")


def _doc(
    root: Path,
    n_files: int,
    mb: float,
    cores: int,
    args: argparse.Namespace,
    load_before: str,
    load_after: str,
    table: str,
    ratio_table: str,
) -> str:
    return f"""# Scan benchmark

`python scripts/bench_scan.py --repeat {args.repeat} --write` on {date.today().isoformat()}:
`{root.name}` ({n_files} files, {mb:.1f} MB), Python {sys.version.split()[0]},
{cores} cores available, scan with 1 and {args.workers} worker processes.

**Machine load.** The machine was shared: load average {load_before} before the run and
{load_after} after it, on {cores} cores, so every process, the benchmark's included, got
only part of a core at times. Absolute figures are low and noisy; compare the ratios,
which were measured interleaved in the same run.

What is timed (warm page cache, best and median of {args.repeat} interleaved rounds):

* raw `encode_ordinary`: tiktoken cl100k_base over every file's text, read and decoded
  beforehand (not timed);
* scan: `report.durations["scan"]` of `index(dry_run=True)` with provider openai into a
  fresh index directory: list, stat, read, decode, chunk (exact token bounds), compute
  row ids/keys/hashes and write the store inside the scan's transaction.

{table}

"Cores it got" is CPU seconds over wall seconds: with the machine to itself a scan with
N workers would get close to N. CPU time counts this process (parent) and its worker
processes (reaped when the pool shuts down, inside the scan).

{ratio_table}

The estimate assumes the cores are free: the N-worker scan then takes at least its total
CPU time spread over the cores, and at least the parent's own CPU time (which runs
alongside the workers: it stats files and writes the store while they read and chunk).
"""


if __name__ == "__main__":
    main()
