"""The scan gives the same store, report, logs and table with one worker or several.

Two identical copies of a corpus (sample_corpus plus ~60 generated files, with a binary
file, an empty file, a cp1252 file and listed files that turn into folders before they
are read) are indexed through the openai provider against the loopback fake, one with
``scan_workers=1`` and one with a pool, over two runs (the second with edits, a touch,
a deletion and a previously indexed file that became unreadable). After each run the
``desired`` and ``sources`` tables (rowids included), the reports and the published
tables must be identical.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeBatchAPI

from corpusbatch import Settings, index, open_table, pipeline, scanning
from corpusbatch.scanning import FileTask, ScanJob, read_files
from corpusbatch.sources import list_files

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"
MTIME = 1_700_000_000_000_000_000


def _generated(root: Path) -> None:
    gen = root / "gen"
    gen.mkdir()
    for i in range(60):
        body = "\n\n".join(
            f"Paragraph {j} of document {i}: "
            + " ".join(f"word{(i * j + k) % 97}" for k in range(40))
            for j in range(3 + i % 9)
        )
        if i % 4 == 0:
            text = f"# Title {i}\n\n## Part A\n\n{body}\n\n## Part B\n\n{body[::-1]}\n"
            (gen / f"doc{i:02d}.md").write_text(text, encoding="utf-8")
        elif i % 4 == 1:
            text = f"Title {i}\n========\n\nSection\n-------\n\n{body}\n"
            (gen / f"doc{i:02d}.rst").write_text(text, encoding="utf-8")
        elif i % 4 == 2:
            defs = "\n\n".join(
                f"def f{i}_{j}(x):\n    return x + {j}  # {body[j * 50 : j * 50 + 60]}"
                for j in range(20)
            )
            (gen / f"mod{i:02d}.py").write_text(f"class C{i}:\n    pass\n\n\n{defs}\n")
        else:
            (gen / f"note{i:02d}.txt").write_text(body + "\n")
    (gen / "dup_a.md").write_text("# Same\n\nsame text twice\n\n# Same\n\nsame text twice\n")
    (gen / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    (gen / "empty.md").write_text("")
    (gen / "blank.txt").write_text("   \n\n  \n")
    (gen / "latin.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve\n".encode("cp1252"))
    (gen / "victim.md").write_text("# Victim\n\nlisted, then a folder before it is read\n")
    (gen / "victim2.md").write_text("# Victim two\n\nread in run one, a folder in run two\n")


def _corpus(root: Path) -> Path:
    root.mkdir()
    for part in ("guides", "reference", "notes", "drafts", "tools", "web"):
        if (SAMPLE / part).is_dir():
            shutil.copytree(SAMPLE / part, root / part)
    _generated(root)
    _fix_mtimes(root)
    return root


def _fix_mtimes(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(Path(dirpath) / name, ns=(MTIME, MTIME))


def _edit(root: Path) -> None:
    """The same night of edits in either copy."""
    (root / "gen" / "doc00.md").write_text("# Rewritten\n\nall new text\n")
    (root / "gen" / "note03.txt").write_text("a short note now\n")
    (root / "gen" / "mod02.py").unlink()
    (root / "gen" / "new.md").write_text("# New\n\nadded between runs\n")
    _fix_mtimes(root)
    os.utime(root / "gen" / "doc01.rst", ns=(MTIME + 10**9, MTIME + 10**9))  # touch only


def _swapping_list_files(victims: list[str]) -> Callable[..., list[Path]]:
    """list_files, after which the named listed files become folders (unreadable)."""

    def wrapped(root: Path, *args: Any, **kwargs: Any) -> list[Path]:
        files = list_files(root, *args, **kwargs)
        for rel in victims:
            path = Path(root) / rel
            if path.is_file():
                path.unlink()
                path.mkdir()
        return files

    return wrapped


def _store_tables(index_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(index_dir / "store.db")
    try:
        return {
            t: db.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall()
            for t in ("desired", "sources", "changed")
        }
    finally:
        db.close()


def _run(
    root: Path,
    settings: Settings,
    victims: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> dict[str, Any]:
    monkeypatch.setattr(pipeline, "list_files", _swapping_list_files(victims))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="corpusbatch.sources"):
        report = index(root, settings, api_key="k")
    logs = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if "sources" in r.name]
    rows = open_table(settings).to_arrow().to_pylist()
    return {
        "store": _store_tables(settings.index_dir),
        "skipped": report.skipped,
        "counts": (report.documents, report.documents_read, report.chunks),
        "deleted": report.deleted_sources,
        "logs": logs,
        "table": sorted(rows, key=lambda r: str(r["id"])),
    }


@pytest.mark.parametrize("method", ["default", "fork", "spawn"])
def test_workers_give_identical_store_report_and_table(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
    method: str,
) -> None:
    """("default" is forkserver here: this process has loaded LanceDB.)"""
    monkeypatch.setattr(scanning, "MIN_POOL_BYTES", 0)  # use the pool on a small corpus
    monkeypatch.setattr(scanning, "TASK_FILES", 7)  # many tasks, several in flight
    if method != "default":
        monkeypatch.setattr(scanning, "_start_method", lambda: method)
    results: dict[int, list[dict[str, Any]]] = {}
    with FakeBatchAPI(default_dims=16) as api:
        for workers in (1, 2):
            root = _corpus(tmp_path / f"corpus{workers}")
            settings = Settings(
                index_dir=tmp_path / f"idx{workers}",
                provider="openai",
                base_url=api.base_url,
                dimensions=16,
                poll_interval=0.002,
                scan_workers=workers,
            )
            first = _run(root, settings, ["gen/victim.md"], monkeypatch, caplog)
            _edit(root)
            second = _run(root, settings, ["gen/victim2.md"], monkeypatch, caplog)
            results[workers] = [first, second]
    if method == "default":  # LanceDB's and Lance's "not fork-safe" warnings
        assert not [w for w in recwarn if "fork" in str(w.message)]
    one, two = results[1], results[2]
    for run in (0, 1):
        for key in ("store", "skipped", "counts", "deleted", "logs", "table"):
            assert one[run][key] == two[run][key], (run, key)
    first, second = one
    reasons = {s["path"]: s["reason"] for s in first["skipped"]}
    assert "binary" in reasons["gen/binary.txt"]
    assert "empty" in reasons["gen/empty.md"]
    assert "gen/victim.md" in reasons
    assert any("not UTF-8" in m for _, _, m in first["logs"])
    assert "gen/victim2.md" in {s["path"] for s in second["skipped"]}
    # victim2 keeps its rows (read again next run); mod02.py is gone
    sources = {row[1] for row in second["store"]["sources"]}
    assert "gen/victim2.md" in sources and "gen/mod02.py" not in sources
    assert len(first["store"]["desired"]) > 200


def test_read_files_streams_in_order_with_bounded_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results come back in task order whatever finishes first; one result per task."""
    root = _corpus(tmp_path / "c")
    from corpusbatch.chunking import ChunkerConfig
    from corpusbatch.pipeline import resolve_identity

    settings = Settings(provider="openai", dimensions=16)
    job = ScanJob(
        root=str(root.resolve()),
        tokenizer="cl100k_base",
        chunker=ChunkerConfig(max_tokens=200),
        identity=resolve_identity(settings),
    )
    paths = list_files(root)
    tasks = [
        FileTask(p.relative_to(root.resolve()).as_posix(), str(p), p.stat().st_size, None)
        for p in paths
    ]
    monkeypatch.setattr(scanning, "MIN_POOL_BYTES", 0)
    monkeypatch.setattr(scanning, "TASK_FILES", 3)
    serial = list(read_files(job, tasks, 1))
    parallel = list(read_files(job, tasks, 2))
    assert [r.rel for r in parallel] == [t.rel for t in tasks]
    assert [(r.rel, r.events, r.sha256, r.rows, r.chunk_error) for r in serial] == [
        (r.rel, r.events, r.sha256, r.rows, r.chunk_error) for r in parallel
    ]
    # closing early cancels the rest without hanging
    gen = read_files(job, tasks, 2)
    next(gen)
    gen.close()


def test_tiny_scans_and_one_worker_stay_in_process() -> None:
    tasks = [FileTask(f"f{i}", f"/x/f{i}", 10_000, None) for i in range(5)]
    assert scanning.pool_workers(1, tasks) == 1
    assert scanning.pool_workers(8, tasks) == 1  # fewer files than workers
    assert scanning.pool_workers(2, tasks) == 1  # < 1 MB to read
    big = [FileTask(f"f{i}", f"/x/f{i}", 600_000, None) for i in range(5)]
    assert scanning.pool_workers(2, big) == 2
    assert scanning.default_workers() >= 1


def test_the_pool_forks_only_before_lancedb_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lancedb", "lance"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert scanning._start_method() == "fork"
    monkeypatch.setitem(sys.modules, "lance", types.ModuleType("lance"))
    assert scanning._start_method() == "forkserver"
