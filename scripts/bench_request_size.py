"""Benchmark: how many inputs one ``/v1/embeddings`` request line should carry.

Issue #10 item 3. A request line is the unit a provider fails or loses: when an output
line is dropped or fails, every input of that line is sent (and billed) again. Small
lines bound that loss; this script measures what they cost in bytes and time, so the
default ``max_inputs_per_request`` can be chosen from figures.

For each size N in ``--sizes`` (default 16, 64, 128, 256, 512, 2048) it indexes the
same synthetic corpus (unique paragraphs of random words, ``--chunks`` chunks of about
``--chunk-tokens`` cl100k tokens, written once) into a fresh index directory through
the loopback fake Batch API (``tests/fakeapi.py``, in this process, answering at once)
with the real openai SDK, and records:

* ``plan_s``: the planner's time (packing and writing the JSONL files and manifests);
* ``embed_s``: upload, batch create, poll, download *and* loading of the vectors (the
  loader runs as each file finishes), i.e. everything that depends on N besides planning;
* ``total_s``: the whole ``index()`` call (scan and publish included, which do not
  depend on N; shown to put the rest in proportion);
* ``in_bytes`` / ``out_bytes``: bytes of the uploaded batch files and of the output
  files the fake returned (vectors as base64, ``--dims`` dimensions);
* ``lines``: request lines, and ``overhead``: input bytes per input beyond the text;
* ``rt_s`` / ``rt_calls``: the same corpus through the real-time route
  (``--realtime-under``), where every request line is one HTTP call;
* ``lost_per_line``: inputs re-billed when one output line is lost (= N, the bound).

After one discarded warm-up run, runs are interleaved (every size once, then again)
``--repeat`` times and the median is shown, since the machine is shared. Not part of the
test suite. Usage::

    python scripts/bench_request_size.py                 # ~4,000 chunks, 3 repeats
    python scripts/bench_request_size.py --chunks 20000 --json > sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fakeapi import FakeBatchAPI  # noqa: E402

from corpusbatch import Settings, index  # noqa: E402

DEFAULT_SIZES = (16, 64, 128, 256, 512, 2048)


def write_corpus(dest: Path, chunks: int, chunk_tokens: int, seed: int = 7) -> None:
    """Markdown files of unique paragraphs, about one chunk each (random words)."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(4000)
    ]
    words = int(chunk_tokens * 0.55)  # random words are ~1.6 cl100k tokens each
    per_file = 40
    for f in range(0, chunks, per_file):
        paras = []
        for p in range(f, min(f + per_file, chunks)):
            body = " ".join(rng.choice(vocab) for _ in range(words))
            paras.append(f"## Section {p}\n\n{body} (p{p}).")
        (dest / f"doc{f // per_file:05d}.md").write_text("\n\n".join(paras) + "\n")


def one_run(corpus: Path, size: int, args: argparse.Namespace, realtime: bool) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-reqsize-") as tmp,
        FakeBatchAPI(default_dims=args.dims) as api,
    ):
        api.instant = True
        settings = Settings(
            index_dir=Path(tmp) / "idx",
            provider="openai",
            base_url=api.base_url,
            dimensions=args.dims,
            chunk_tokens=args.chunk_tokens,
            poll_interval=0.01,
            delete_remote_files=False,  # keep the files on the fake to count their bytes
            scan_workers=1,
            limits={"max_inputs_per_request": size},
            realtime_under=10**12 if realtime else None,
        )
        t0 = time.perf_counter()
        report = index(corpus, settings, api_key="bench-key")
        wall = time.perf_counter() - t0
        assert report.published and not report.failed, report
        by_purpose: dict[str, int] = {}
        lines = 0
        for f in api.files.values():
            by_purpose[f.purpose] = by_purpose.get(f.purpose, 0) + len(f.data)
            if f.purpose == "batch":
                lines += f.data.count(b"\n")
        texts = sum(len(t.encode()) for t in api.realtime_processed) if realtime else 0
        return {
            "inputs": report.to_embed_inputs,
            "plan_s": report.durations.get("plan", 0.0),
            "embed_s": report.durations.get("embed", 0.0),
            "total_s": wall,
            "in_bytes": by_purpose.get("batch", 0),
            "out_bytes": by_purpose.get("batch_output", 0),
            "calls": api.requests.get("POST /v1/embeddings", 0),
            "lines": lines,
            "text_bytes": texts,
        }


def plan_and_load(corpus: Path, size: int, args: argparse.Namespace) -> dict[str, float]:
    """The two steps that see every request line, alone: ``plan_files`` on the corpus's
    chunks, and ``load_output`` of the output file the fake makes for that plan."""
    from collections import Counter

    from corpusbatch.chunking import Chunker, ChunkerConfig
    from corpusbatch.config import Limits
    from corpusbatch.loading import RunStore, load_output
    from corpusbatch.planning import plan_files, read_manifest
    from corpusbatch.tokenizers import get_tokenizer
    from corpusbatch.types import Document, EmbeddingIdentity, EmbedItem, vector_key

    tok = get_tokenizer("cl100k_base")
    chunker = Chunker(tok, ChunkerConfig(max_tokens=args.chunk_tokens))
    ident = EmbeddingIdentity("text-embedding-3-small", args.dims, args.dims)
    items: dict[str, EmbedItem] = {}
    for path in sorted(corpus.glob("*.md")):
        doc = Document(path.name, path.read_text(encoding="utf-8"), "markdown", "-")
        for c in chunker.chunk(doc):
            key = vector_key(ident, c.text)
            items.setdefault(key, EmbedItem(key, c.text, c.n_tokens))
    limits = Limits(max_inputs_per_request=size)
    with tempfile.TemporaryDirectory(prefix="bench-reqsize-micro-") as tmp:
        t0 = time.perf_counter()
        files = list(
            plan_files(
                items.values(),
                out_dir=Path(tmp),
                plan_id="b",
                model=ident.model,
                limits=limits,
                request_dimensions=args.dims,
            )
        )
        plan_s = time.perf_counter() - t0
        api = FakeBatchAPI(default_dims=args.dims)
        load_s = 0.0
        store = RunStore(Path(tmp) / "store.db", args.dims, Path(tmp) / "staging")
        try:
            for f in files:
                out = Path(tmp) / (f.name + ".out")
                with out.open("wb") as fh:
                    for raw in f.path.read_bytes().splitlines():
                        line = json.loads(raw)
                        texts = line["body"]["input"]
                        body = api._embed(line["body"], texts, Counter())
                        result = {
                            "id": "r",
                            "custom_id": line["custom_id"],
                            "error": None,
                            "response": {"status_code": 200, "request_id": "q", "body": body},
                        }
                        fh.write(json.dumps(result).encode() + b"\n")
                manifest = read_manifest(f.manifest_path)
                t0 = time.perf_counter()
                load_output(store, file_name=f.name, manifest=manifest, output_path=out)
                load_s += time.perf_counter() - t0
        finally:
            store.close()
            api._server.server_close()  # never started: nothing to shut down
    return {"plan_s": plan_s, "load_s": load_s}


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=4000)
    ap.add_argument("--chunk-tokens", type=int, default=256)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    batch: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    micro: dict[int, list[dict[str, float]]] = {n: [] for n in args.sizes}
    rt: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    with tempfile.TemporaryDirectory(prefix="bench-reqsize-corpus-") as tmp:
        corpus = Path(tmp)
        write_corpus(corpus, args.chunks, args.chunk_tokens)
        # warm-up, discarded: imports, tokenizer and SDK set-up land in the first run
        one_run(corpus, args.sizes[-1], args, realtime=False)
        for rep in range(args.repeat):
            for n in args.sizes:
                batch[n].append(one_run(corpus, n, args, realtime=False))
                rt[n].append(one_run(corpus, n, args, realtime=True))
                micro[n].append(plan_and_load(corpus, n, args))
                print(f"repeat {rep + 1}/{args.repeat} size {n} done", file=sys.stderr)
    # the bytes of the text itself, to show each size's envelope overhead
    text_bytes = rt[args.sizes[0]][0]["text_bytes"]
    rows = []
    for n in args.sizes:
        b, r = batch[n], rt[n]
        inputs = b[0]["inputs"]
        rows.append(
            {
                "size": n,
                "inputs": inputs,
                "lines": b[0]["lines"],
                "plan_only_s": min(r["plan_s"] for r in micro[n]),
                "load_only_s": min(r["load_s"] for r in micro[n]),
                "plan_s": median(b, "plan_s"),
                "embed_s": median(b, "embed_s"),
                "total_s": median(b, "total_s"),
                "in_bytes": b[0]["in_bytes"],
                "out_bytes": b[0]["out_bytes"],
                "overhead_per_input": (b[0]["in_bytes"] - text_bytes) / inputs,
                "rt_s": median(r, "embed_s"),
                "rt_calls": r[0]["calls"],
                "lost_per_line": n,
            }
        )
    meta = {
        "chunks": args.chunks,
        "chunk_tokens": args.chunk_tokens,
        "dims": args.dims,
        "repeat": args.repeat,
        "load": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(
        f"{meta['chunks']} chunks of <= {meta['chunk_tokens']} tokens, {meta['dims']} dims, "
        f"median of {meta['repeat']}, load {meta['load']:.1f} on {meta['cpus']} CPUs"
    )
    print(
        "| inputs/request | lines | plan_files s | load_output s | plan s | batch embed+load s "
        "| index total s | input MB | output MB | envelope B/input | real-time s "
        "| real-time calls | re-billed per lost line |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['size']} | {row['lines']} | {row['plan_only_s']:.3f} "
            f"| {row['load_only_s']:.3f} | {row['plan_s']:.2f} | {row['embed_s']:.2f} "
            f"| {row['total_s']:.2f} | {row['in_bytes'] / 1e6:.2f} | {row['out_bytes'] / 1e6:.2f} "
            f"| {row['overhead_per_input']:.1f} | {row['rt_s']:.2f} | {row['rt_calls']} "
            f"| {row['lost_per_line']} |"
        )


if __name__ == "__main__":
    main()
