"""Benchmark: ``corpusbatch index`` at 100k .. 1M chunks, as a user runs it.

Issue #8 item 4. Builds a synthetic corpus from copies of real Markdown documentation
(``../shared/corpora/rust-book`` and ``fastapi-docs``, read in place) in which every
paragraph is made unique (a per-copy, per-paragraph token is added to it, so nothing is
deduplicated away), sized by a target number of chunks at ``--chunk-tokens 256``. Then
it starts the loopback fake Batch API (``tests/fakeapi.py``) in its own process, set to
answer at once (``instant``) and to keep nothing per input (``lean``), and runs the real
CLI as a subprocess, three times into a fresh index directory:

1. ``first``: ``corpusbatch index CORPUS --provider openai --base-url FAKE
   --dimensions 256 --chunk-tokens 256 --json`` (key in an environment variable);
2. ``no-change``: the same command again;
3. ``edit``: the same command after one file was edited (one paragraph changed, one
   added).

For each run it records: the wall time of the process and the stage durations of its
JSON report (``scan``, ``plan``, ``embed`` (upload, batches, download *and* loading of
the vectors: the loader runs as each batch file finishes), ``publish``, ``total``); the
CPU seconds of the CLI and its workers (``wait4``); peak RSS (the largest single
process, exact from ``wait4``, and the sum over the process tree, sampled every
``--sample`` seconds from ``/proc``); the fake server's RSS and CPU separately; the
index directory's size by part (``store.db``, ``state.db``, ``lancedb/``, ``staging/``,
``batches/``, ``outputs/``; SQLite ``-wal`` files count with their database), the
published table's size (its directory, all versions kept, and the bytes of its latest
version) and the ratio of the index directory to the table.

With ``--db s3`` (issue #11 item 5) the table goes to ``s3://bench/tables`` on moto's S3
server (``tests/s3server.py``, the real S3 HTTP API on loopback, in its own process;
endpoint and credentials reach the CLI as ``AWS_*`` environment variables), and each run
also records the S3 requests it sent, by method and status, and the bytes each way.
Everything else stays as above, so the figures compare with a local-disk run
(``--db local``, the default) of the same size.

Linux only (``/proc``, ``wait4``); no network; not part of the test suite
(``tests/test_bench_scale.py`` runs it once at 2,000 chunks).

Usage::

    python scripts/bench_scale.py                      # 100k chunks
    python scripts/bench_scale.py --chunks 1000000 --json > scale-1m.json
    python scripts/bench_scale.py --at HEAD            # measure a commit, not the tree

Options: ``--chunks N`` (default 100000), ``--workdir DIR`` (default: a temporary
directory, removed afterwards unless ``--keep``), ``--keep``, ``--json`` (the figures
as JSON on stdout; the human lines go to stderr), ``--db-dims D`` (``--dimensions``
asked of the fake, i.e. the stored vector size, default 256), ``--at REV`` (measure
``git archive REV corpusbatch`` instead of the working tree), ``--corpus DIR``
(repeatable; default the two Markdown corpora), ``--workers N`` (passed to ``index``),
``--db local|s3`` (where the table goes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPORA = REPO.parent / "shared" / "corpora"
DEFAULT_CORPORA = [CORPORA / "rust-book", CORPORA / "fastapi-docs"]
KEY_ENV = "CORPUSBATCH_BENCH_KEY"
TABLE = "chunks"
S3_PREFIX = "tables"  # the table lives at s3://<bucket>/tables/chunks.lance
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
RUNS = ("first", "no-change", "edit")
MARK_EVERY = 4  # lines of a paragraph between two unique tokens
MARK_CHARS = 400  # characters of a long line between two unique tokens


# ----------------------------------------------------------------------- corpus ---
def uniquify(text: str, tag: str) -> str:
    """``text`` with a token ``[{tag}p{i}]`` added to every paragraph (block between
    blank lines) ``i``: at the end of its last line and of every ``MARK_EVERY``-th line
    (long lists, quotes and code blocks are cut inside), and inside lines longer than
    ``MARK_CHARS`` every ``MARK_CHARS`` characters (at a space). Fence lines are left
    alone, so the Markdown structure (headings, lists, code blocks) is kept."""
    blocks = text.split("\n\n")
    for i, block in enumerate(blocks):
        if not block.strip():
            continue
        mark = f"[{tag}p{i}]"
        lines = block.split("\n")
        last = max(j for j, line in enumerate(lines) if line.strip())
        for j, line in enumerate(lines):
            if not line.strip() or line.lstrip().startswith(("```", "~~~")):
                continue
            if len(line) > MARK_CHARS:
                line = _mark_long(line, mark)
            if j == last or j % MARK_EVERY == MARK_EVERY - 1:
                line = line.rstrip() + " " + mark
            lines[j] = line
        if lines[last].lstrip().startswith(("```", "~~~")) and last > 0:
            lines.insert(last, mark)  # the block ends with a closing fence: mark the code
        blocks[i] = "\n".join(lines)
    return "\n\n".join(blocks)


def _mark_long(line: str, mark: str) -> str:
    out, start = [], 0
    while len(line) - start > MARK_CHARS:
        cut = line.find(" ", start + MARK_CHARS)
        if cut < 0:
            break
        out.append(line[start:cut] + " " + mark)
        start = cut
    out.append(line[start:])
    return "".join(out)


def source_files(corpora: list[Path]) -> list[tuple[Path, str]]:
    """(file, path under a copy) of every Markdown file of the source corpora."""
    out = []
    for root in corpora:
        for path in sorted(root.rglob("*.md")):
            if path.is_file():
                out.append((path, f"{root.name}/{path.relative_to(root).as_posix()}"))
    if not out:
        raise SystemExit(f"no Markdown files under {', '.join(map(str, corpora))}")
    return out


def write_copy(files: list[tuple[Path, str]], texts: dict[Path, str], dest: Path, n: int) -> int:
    """Write copy ``n`` of the corpus under ``dest``; bytes written."""
    total = 0
    for path, rel in files:
        target = dest / f"copy{n:05d}" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = uniquify(texts[path], f"c{n}").encode("utf-8")
        target.write_bytes(data)
        total += len(data)
    return total


# -------------------------------------------------------------------- processes ---
def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes ({} if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from the parent pids in ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree (and each process's high-water mark)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.done = threading.Event()
        self.peak_sum = 0
        self.peak_procs = 1
        self.hwm: dict[int, int] = {}
        self.main_rss: list[tuple[float, int]] = []  # (perf_counter, RSS of the CLI)

    def run(self) -> None:
        while not self.done.is_set():
            pids = _descendants(self.pid)
            total = 0
            for p in pids:
                st = _status(p)
                total += st.get("VmRSS", 0)
                self.hwm[p] = max(self.hwm.get(p, 0), st.get("VmHWM", 0))
                if p == self.pid:
                    self.main_rss.append((time.perf_counter(), st.get("VmRSS", 0)))
            if total > self.peak_sum:
                self.peak_sum, self.peak_procs = total, len(pids)
            self.done.wait(self.interval)


def rss_by_stage(
    samples: list[tuple[float, int]], durations: dict[str, float], end: float
) -> dict[str, float]:
    """The CLI's largest sampled RSS (MB) within each stage. The stages ran one after the
    other in the report's order and the report was printed at the end, so each one's
    window is found by counting back from the process's end; what is before them is
    start-up and imports, what is after them the final report ("finish")."""
    stages: list[str] = [k for k in ("scan", "plan", "embed", "publish") if k in durations]
    windows: list[tuple[str, float, float]] = []
    stop = end - max(0.0, durations.get("total", 0.0) - sum(durations[k] for k in stages))
    windows.append(("finish", stop, end))
    for name in reversed(stages):
        windows.append((name, stop - durations[name], stop))
        stop -= durations[name]
    windows.append(("startup", float("-inf"), stop))
    out: dict[str, float] = {}
    for name, lo, hi in reversed(windows):
        inside = [rss for t, rss in samples if lo <= t < hi and rss > 0]
        if inside:
            out[name] = round(max(inside) / MB, 1)
    return out


class FakeServer:
    """tests/fakeapi.py in a process of its own (this script with ``--serve``)."""

    def __init__(self, dims: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--db-dims", str(dims)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise SystemExit(f"the fake server did not start: {self.base_url!r}")

    def snapshot(self) -> dict[str, float]:
        st = _status(self.proc.pid)
        return {
            "rss_mb": round(st.get("VmRSS", 0) / MB, 1),
            "peak_rss_mb": round(st.get("VmHWM", 0) / MB, 1),
            "cpu_s": round(_cpu_seconds(self.proc.pid), 2),
        }

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the server exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(dims: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from fakeapi import FakeBatchAPI

    api = FakeBatchAPI(default_dims=dims)
    api.instant = True
    api.lean = True
    with api:
        print(api.base_url, flush=True)
        sys.stdin.read()


class S3Process:
    """tests/s3server.py (moto's S3 on loopback) in a process of its own (this script
    with ``--serve-s3``): answers ``count`` (requests and bytes since the last count, as
    JSON) and ``size`` (bytes and objects of the table) on its stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-s3"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, command: str) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def snapshot(self) -> dict[str, float]:
        st = _status(self.proc.pid)
        return {
            "rss_mb": round(st.get("VmRSS", 0) / MB, 1),
            "cpu_s": round(_cpu_seconds(self.proc.pid), 2),
        }

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_s3() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from s3server import S3Server

    with S3Server(bucket="bench") as s3:
        print(json.dumps({"env": s3.env(), "uri": s3.uri(S3_PREFIX)}), flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(json.dumps(s3.reset()), flush=True)
            else:
                objects = s3.objects(f"{S3_PREFIX}/{TABLE}.lance/")
                print(json.dumps({"bytes": sum(objects.values()), "objects": len(objects)}))
                sys.stdout.flush()


# ------------------------------------------------------------------------ sizes ---
def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):  # removed while we walk
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def index_sizes(index_dir: Path) -> dict[str, float]:
    """MB of each part of the index directory (SQLite -wal/-shm files with their db)."""
    parts: dict[str, int] = {
        "store.db": 0,
        "state.db": 0,
        "lancedb": 0,
        "staging": 0,
        "batches": 0,
        "outputs": 0,
        "other": 0,
    }
    for entry in index_dir.iterdir():
        size = tree_bytes(entry)
        name = entry.name
        for db in ("store.db", "state.db"):
            if name.startswith(db):
                parts[db] += size
                break
        else:
            parts[name if name in parts else "other"] += size
    out = {k: round(v / MB, 2) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / MB, 2)
    return out


def table_sizes(index_dir: Path, s3: S3Process | None = None) -> dict[str, Any]:
    """The published table: its directory (every version LanceDB keeps; on S3 its
    objects) and, from ``Table.stats()``, the bytes and rows of its latest version."""
    out: dict[str, Any] = {}
    tdir = index_dir / "lancedb" / f"{TABLE}.lance"
    out["dir_mb"] = round(tree_bytes(tdir) / MB, 2) if tdir.exists() else 0.0
    if s3 is not None:
        size = s3.ask("size")
        out["dir_mb"], out["objects"] = round(size["bytes"] / MB, 2), size["objects"]
    try:
        import lancedb

        if s3 is None:
            db = lancedb.connect(str(index_dir / "lancedb"))
        else:
            env = s3.info["env"]
            db = lancedb.connect(
                s3.info["uri"],
                storage_options={
                    "aws_endpoint": env["AWS_ENDPOINT_URL"],
                    "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                    "aws_region": env["AWS_REGION"],
                    "allow_http": "true",
                },
            )
        table = db.open_table(TABLE)
        stats = table.stats()
        get = stats.get if isinstance(stats, dict) else lambda k: getattr(stats, k, None)
        out["latest_mb"] = round((get("total_bytes") or 0) / MB, 2)
        out["rows"] = get("num_rows")
        out["version"] = table.version
        out["versions"] = len(table.list_versions())
    except Exception as exc:  # the benchmark reports what it can
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# ------------------------------------------------------------------------- runs ---
REPORT_FIELDS = (
    "documents",
    "documents_read",
    "chunks",
    "distinct_vectors",
    "to_embed_inputs",
    "to_embed_tokens",
    "files_planned",
    "embedded_vectors",
    "new",
    "changed",
    "unchanged",
    "deleted",
    "published",
    "table_version",
    "deferred",
)


def run_index(
    name: str,
    corpus: Path,
    index_dir: Path,
    server: FakeServer,
    args: argparse.Namespace,
    src: Path,
    log: Any,
    s3: S3Process | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "corpusbatch",
        *["-v"] * args.cli_verbose,
        "index",
        str(corpus),
        "--index-dir",
        str(index_dir),
        "--provider",
        "openai",
        "--base-url",
        server.base_url,
        "--api-key-env",
        KEY_ENV,
        "--dimensions",
        str(args.db_dims),
        "--chunk-tokens",
        str(args.chunk_tokens),
        "--poll-interval",
        "0.05",
        "--json",
    ]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = dict(os.environ, PYTHONPATH=str(src), **{KEY_ENV: "fake-key"})
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"):
        env.pop(var, None)
    if s3 is not None:
        cmd += ["--db", s3.info["uri"]]
        env.update(s3.info["env"])
        s3.ask("count")  # count this run's requests only
        s3_before = s3.snapshot()
    out_path = index_dir.parent / f"{name}.stdout"
    err_path = index_dir.parent / f"{name}.stderr"
    server_before = server.snapshot()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=index_dir.parent, env=env, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid, args.sample)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_after = server.snapshot()
    stderr = err_path.read_text(errors="replace")
    try:
        report = json.loads(out_path.read_text())
    except ValueError:
        report = {}
    if proc.returncode != 0 or not report:
        log(f"{name}: exit {proc.returncode}\n{stderr[-3000:]}")
        raise SystemExit(f"`corpusbatch index` failed in run {name!r} (exit {proc.returncode})")
    s3_requests = s3.ask("count") if s3 is not None else None
    sizes = index_sizes(index_dir)
    table = table_sizes(index_dir, s3)
    result: dict[str, Any] = {
        "run": name,
        "wall_s": round(wall, 2),
        "durations": report.get("durations", {}),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        # ru_maxrss (KiB): the largest single process of the tree (the CLI or a worker)
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB, 1),
        "peak_rss_tree_mb": round(sampler.peak_sum / MB, 1),
        "tree_processes_at_peak": sampler.peak_procs,
        "peak_rss_mb_by_stage": rss_by_stage(
            sampler.main_rss, report.get("durations", {}), t0 + wall
        ),
        "report": {k: report.get(k) for k in REPORT_FIELDS},
        "index_mb": sizes,
        "table_mb": table,
        "ratio_index_to_table": (
            round(sizes["total"] / table["dir_mb"], 2) if table.get("dir_mb") else None
        ),
        "ratio_index_to_latest": (
            round(sizes["total"] / table["latest_mb"], 2) if table.get("latest_mb") else None
        ),
        "stderr_lines": len(stderr.splitlines()),
        "stderr_warn_lines": sum(1 for line in stderr.splitlines() if "WARN" in line),
        "server": {
            "rss_mb": server_after["rss_mb"],
            "peak_rss_mb_so_far": server_after["peak_rss_mb"],
            "cpu_s": round(server_after["cpu_s"] - server_before["cpu_s"], 2),
        },
    }
    if s3 is not None and s3_requests is not None:
        by_method: dict[str, int] = {}
        for key, n in s3_requests.items():
            if not key.startswith(("bytes", "part")):
                method = key.split()[0]
                by_method[method] = by_method.get(method, 0) + n
        s3_after = s3.snapshot()
        result["s3"] = {
            "requests": sum(by_method.values()),
            "by_method": by_method,
            "by_status": {
                k: n for k, n in s3_requests.items() if not k.startswith(("bytes", "part"))
            },
            # requests and MB (both ways) by the table part they are about
            "by_part": {
                k.removeprefix("part "): n for k, n in s3_requests.items() if k.startswith("part ")
            },
            "mb_by_part": {
                k.removeprefix("part-bytes "): round(n / MB, 2)
                for k, n in s3_requests.items()
                if k.startswith("part-bytes ")
            },
            "mb_in": round(s3_requests.get("bytes in", 0) / MB, 2),
            "mb_out": round(s3_requests.get("bytes out", 0) / MB, 2),
            "server_rss_mb": s3_after["rss_mb"],
            "server_cpu_s": round(s3_after["cpu_s"] - s3_before["cpu_s"], 2),
        }
        log(
            f"    S3: {result['s3']['requests']} requests {by_method}, "
            f"{result['s3']['mb_in']} MB up, {result['s3']['mb_out']} MB down; "
            f"moto {s3_after['rss_mb']:.0f} MB, cpu {result['s3']['server_cpu_s']:.0f} s\n"
            f"    S3 by part: {result['s3']['by_part']}, MB {result['s3']['mb_by_part']}"
        )
    log(_describe(result))
    return result


def _describe(r: dict[str, Any]) -> str:
    d = r["durations"]
    stages = "  ".join(
        f"{k} {d[k]:.1f}" for k in ("scan", "plan", "embed", "publish", "total") if k in d
    )
    s, t = r["index_mb"], r["table_mb"]
    rep = r["report"]
    return (
        f"[{r['run']}] wall {r['wall_s']:.1f} s ({stages}); cpu {r['cpu_s']:.0f} s; "
        f"peak RSS {r['peak_rss_mb']:.0f} MB (tree {r['peak_rss_tree_mb']:.0f} MB); "
        f"fake server {r['server']['rss_mb']:.0f} MB, cpu {r['server']['cpu_s']:.0f} s\n"
        f"    peak RSS by stage (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb_by_stage"].items())
        + "\n"
        f"    chunks {rep['chunks']}, embedded {rep['embedded_vectors']}, "
        f"new {rep['new']} changed {rep['changed']} deleted {rep['deleted']}; "
        f"stderr {r['stderr_lines']} lines ({r['stderr_warn_lines']} WARN)\n"
        f"    index {s['total']:.1f} MB = store.db {s['store.db']:.1f} + state.db "
        f"{s['state.db']:.1f} + lancedb {s['lancedb']:.1f} + staging {s['staging']:.1f} + "
        f"batches {s['batches']:.1f} + "
        f"outputs {s['outputs']:.1f} + other {s['other']:.1f}; table {t.get('dir_mb')} MB "
        f"on disk ({t.get('versions')} versions), latest {t.get('latest_mb')} MB, "
        f"{t.get('rows')} rows; index/table {r['ratio_index_to_table']}"
    )


def edit_one_file(corpus: Path) -> str:
    """Change one paragraph of a mid-sized file of the first copy and add one."""
    files = sorted((corpus / "copy00000").rglob("*.md"), key=lambda p: p.stat().st_size)
    path = files[len(files) // 2]
    text = path.read_text(encoding="utf-8")
    blocks = text.split("\n\n")
    i = min(3, len(blocks) - 1)
    blocks[i] += " Edited for the benchmark."
    blocks.append(f"A paragraph added by the benchmark at {time.time():.0f}.")
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path.relative_to(corpus).as_posix()


def calibrate(corpus_copy: Path, args: argparse.Namespace, src: Path) -> int:
    """Chunks of one copy, from ``corpusbatch plan --json`` (the real chunker)."""
    cmd = [
        sys.executable,
        "-m",
        "corpusbatch",
        "plan",
        str(corpus_copy),
        "--provider",
        "openai",
        "--dimensions",
        str(args.db_dims),
        "--chunk-tokens",
        str(args.chunk_tokens),
        "--index-dir",
        str(corpus_copy.parent.parent / "plan-index"),  # absent: plan uses a scratch dir
        "--json",
    ]
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        cmd, cwd=corpus_copy.parent.parent, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"`corpusbatch plan` failed:\n{out.stderr[-3000:]}")
    return int(json.loads(out.stdout)["chunks"])


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gb": round(mem / 1024**3, 1),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in load],
    }


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="target chunks")
    parser.add_argument("--workdir", type=Path, help="where corpus and index go (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--db-dims", type=int, default=256, help="vector size (--dimensions)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, help="--workers of index (default: its own)")
    parser.add_argument("--corpus", type=Path, action="append", help="Markdown corpus dir")
    parser.add_argument("--at", metavar="REV", help="measure this commit's corpusbatch/")
    parser.add_argument("--sample", type=float, default=0.1, help="RSS sampling interval (s)")
    parser.add_argument(
        "--cli-verbose",
        type=int,
        default=0,
        metavar="N",
        help="pass -v N times to the CLI (2: its RSS after each publish step, in NAME.stderr)",
    )
    parser.add_argument(
        "--db", choices=("local", "s3"), default="local", help="the table on disk or on S3"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-s3", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.db_dims)
        return
    if args.serve_s3:
        serve_s3()
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.time()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))).resolve()
    made = [work / name for name in ("src", "corpus", "index", "plan-index")]
    made += [work / f"{run}.{out}" for run in RUNS for out in ("stdout", "stderr")]
    if any(p.exists() for p in made):
        raise SystemExit(f"{work} already holds a benchmark's files: pick a fresh --workdir")
    work.mkdir(parents=True, exist_ok=True)
    server = None
    s3 = None
    try:
        if args.at:
            commit = git("rev-parse", args.at)
            if not commit:
                raise SystemExit(f"unknown revision {args.at!r}")
            src = work / "src"
            src.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", commit, "corpusbatch"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            dirty = False
        else:
            src = REPO
            commit = git("rev-parse", "HEAD")
            dirty = bool(git("status", "--porcelain", "--", "corpusbatch"))
        log(
            f"measuring corpusbatch at {commit[:12]}{' + uncommitted changes' if dirty else ''}"
            f" ({src}); work directory {work}"
        )

        corpora = [p.resolve() for p in (args.corpus or DEFAULT_CORPORA)]
        files = source_files(corpora)
        texts = {path: path.read_text(encoding="utf-8", errors="replace") for path, _ in files}
        corpus = work / "corpus"
        t0 = time.perf_counter()
        copy_bytes = write_copy(files, texts, corpus, 0)
        per_copy = calibrate(corpus / "copy00000", args, src)
        copies = max(1, math.ceil(args.chunks / per_copy))
        total_bytes = copy_bytes
        for n in range(1, copies):
            total_bytes += write_copy(files, texts, corpus, n)
        log(
            f"corpus: {copies} copies x {len(files)} files of {', '.join(p.name for p in corpora)}"
            f" ({per_copy} chunks, {copy_bytes / MB:.2f} MB a copy) = {total_bytes / MB:.1f} MB,"
            f" ~{copies * per_copy:,} chunks; built in {time.perf_counter() - t0:.1f} s"
        )

        server = FakeServer(args.db_dims)
        if args.db == "s3":
            s3 = S3Process()
            log(f"table on {s3.info['uri']} (moto at {s3.info['env']['AWS_ENDPOINT_URL']})")
        index_dir = work / "index"
        runs, edited = [], ""
        for name in RUNS:
            if name == "edit":
                edited = edit_one_file(corpus)
                log(f"edited {edited}")
            runs.append(run_index(name, corpus, index_dir, server, args, src, log, s3))
        first = runs[0]
        result = {
            "date": time.strftime("%Y-%m-%d", time.localtime(started)),
            "commit": commit,
            "uncommitted_changes": dirty,
            "machine": machine(),
            "settings": {
                "chunks_target": args.chunks,
                "chunk_tokens": args.chunk_tokens,
                "dimensions": args.db_dims,
                "workers": args.workers,
                "provider": "openai (loopback fake, instant)",
                "db": args.db if args.db == "local" else "s3 (moto server on loopback)",
            },
            "corpus": {
                "sources": [p.name for p in corpora],
                "copies": copies,
                "files": copies * len(files),
                "mb": round(total_bytes / MB, 1),
                "chunks_per_copy": per_copy,
                "chunks": first["report"]["chunks"],
                "edited_file": edited,
            },
            "runs": runs,
            "server_peak_rss_mb": server.snapshot()["peak_rss_mb"],
            "elapsed_s": round(time.time() - started, 1),
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            log(f"done in {result['elapsed_s']:.0f} s")
    finally:
        if server is not None:
            server.close()
        if s3 is not None:
            s3.close()
        if args.keep:
            log(f"kept {work}")
        elif args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:  # the caller's directory: remove only what this run made
            for path in made:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()


if __name__ == "__main__":
    main()
