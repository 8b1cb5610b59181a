"""Benchmark: a no-change re-index vs reading and hashing the corpus.

Target (issue: nightly re-index): a no-change ``index`` takes at most 2x the time of
reading and sha256-hashing every file of the corpus, and submits zero tokens.

The first (full) index goes through the loopback fake Batch API from ``tests/fakeapi.py``
with the real openai SDK, so the table is real and the run needs no network. Then it
times, best of N, with a warm page cache:

* ``read+hash``: list the files and sha256 each one (the floor the target is set by);
* ``no-change index``: ``corpusbatch.index`` again (stat-based skip, nothing read);
* ``no-change --full-scan``: every file read and hashed, none re-chunked.

Usage: python scripts/bench_reindex.py [CORPUS_DIR] [--repeat 3]
Default corpus: ../shared/corpora/python-peps (751 reST files, 16 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakeapi import FakeBatchAPI  # noqa: E402

from corpusbatch import Settings, index  # noqa: E402
from corpusbatch.sources import list_files  # noqa: E402


def read_and_hash(root: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    files = list_files(root)
    total = 0
    for path in files:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        total += len(data)
    return time.perf_counter() - t0, len(files), total


def best(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    results = [fn() for _ in range(repeat)]
    times = [r[0] if isinstance(r, tuple) else r.durations["total"] for r in results]
    i = min(range(repeat), key=lambda j: times[j])
    return times[i], results[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "corpus", nargs="?", default=str(REPO.parent / "shared/corpora/python-peps")
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.corpus)
    with FakeBatchAPI(default_dims=256) as api, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            index_dir=Path(tmp) / "idx",
            provider="openai",
            base_url=api.base_url,
            dimensions=256,
            poll_interval=0.01,
        )
        t0 = time.perf_counter()
        first = index(root, settings, api_key="bench")
        full = time.perf_counter() - t0
        print(
            f"corpus {root}: {first.documents} documents, {first.chunks} chunks, "
            f"{first.to_embed_tokens:,} tokens; first index {full:.2f} s "
            f"(scan {first.durations['scan']:.2f} s)"
        )
        floor, (_, n_files, n_bytes) = best(lambda: read_and_hash(root), args.repeat)
        print(f"read+hash         {floor:7.3f} s  ({n_files} files, {n_bytes / 1e6:.1f} MB)")
        quiet, report = best(lambda: index(root, settings, api_key="bench"), args.repeat)
        assert report.to_embed_tokens == 0 and report.files_planned == 0  # type: ignore[attr-defined]
        print(
            f"no-change index   {quiet:7.3f} s  = {quiet / floor:.2f}x read+hash; "
            f"tokens submitted {report.to_embed_tokens}, "  # type: ignore[attr-defined]
            f"documents read {report.documents_read}"
        )  # type: ignore[attr-defined]
        scan, report = best(
            lambda: index(root, settings, api_key="bench", full_scan=True), args.repeat
        )
        print(
            f"no-change --full-scan {scan:7.3f} s  = {scan / floor:.2f}x read+hash; "
            f"tokens submitted {report.to_embed_tokens}"
        )  # type: ignore[attr-defined]
        print(
            f"server processed {sum(api.processed.values())} inputs in total "
            f"(= {first.distinct_vectors} distinct chunks)"
        )


if __name__ == "__main__":
    main()
