"""The reading side of the scan, run in-process or in a pool of worker processes.

The parent (``pipeline._scan``) walks and stats the folder and decides which files must
be read; each of those becomes a :class:`FileTask`. :func:`read_file` reads, decodes,
chunks and computes the desired rows (ids, keys, hashes) of one task and returns a
:class:`FileResult`: plain data, so it crosses a process boundary as one pickle. The
parent writes the store from the results in file order, so what it writes does not
depend on the number of workers.

Workers never get live objects: :class:`ScanJob` carries the root, the tokenizer *name*,
the chunker config and the embedding identity, and :func:`_init_worker` builds the
tokenizer and chunker once per worker (``get_tokenizer`` caches per process, so under
``fork`` the parent's tokenizer is simply inherited). What a worker logs is collected and
replayed by the parent in file order, through the parent's logging configuration.

The pool uses the ``fork`` start method where the platform has it. At scan time the
parent has imported numpy and tiktoken and built the cl100k_base tables (~0.6 s per
process, measured); a forked worker starts in milliseconds and shares those pages
copy-on-write, while a ``spawn``/``forkserver`` worker pays that start-up again, which
on a corpus that takes 2 s to scan costs most of the gain of a second core. The forked
child inherits the store's SQLite connection but never touches it, and pool workers
leave through ``os._exit``, so it is not even finalised. Elsewhere (macOS, Windows)
``spawn`` is used and the same code builds the tokenizer from its name in each worker,
and so is ``forkserver`` once LanceDB is loaded (see :func:`_start_method`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .chunking import Chunker, ChunkerConfig
from .errors import ChunkingError
from .loading import desired_rows
from .sources import read_document, shown
from .tokenizers import get_tokenizer
from .types import EmbeddingIdentity

__all__ = [
    "FileResult",
    "FileTask",
    "ScanJob",
    "default_workers",
    "read_file",
    "read_files",
]

#: Below this many bytes to read (or fewer files than workers) the scan runs in-process:
#: starting a pool costs more than it saves.
MIN_POOL_BYTES = 1 << 20
#: A pool task holds consecutive files up to this many bytes or files, so small files do
#: not pay one round trip each; results come back per task.
TASK_BYTES = 256 * 1024
TASK_FILES = 64
#: Tasks in flight per worker: enough to keep workers busy while the parent writes,
#: few enough that memory stays bounded (a few tasks' texts and rows per worker).
IN_FLIGHT_PER_WORKER = 3

_LOGGER = "corpusbatch"
_log = logging.getLogger(__name__)
_Log = tuple[str, int, str, str, int]  # logger name, level, message, pathname, line


def default_workers() -> int:
    """The cores this process may run on."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return max(1, int(count() or 1))
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ScanJob:
    """What a worker needs to read any file of one scan; plain, picklable data."""

    root: str  # resolved
    tokenizer: str  # name for get_tokenizer
    chunker: ChunkerConfig
    identity: EmbeddingIdentity


@dataclass(frozen=True, slots=True)
class FileTask:
    """One file to read; ``prev_sha256`` is the content hash its rows were cut from."""

    rel: str
    path: str
    size: int
    prev_sha256: str | None


@dataclass(slots=True)
class FileResult:
    """What reading one file found, for the parent to record.

    ``events`` are the ``(kind, path, reason)`` reports of :func:`read_document` in the
    order it made them, kind ``"skip"`` (content unusable) or ``"unreadable"``.
    ``sha256`` is None when no document came out. ``rows`` is None when the file was not
    chunked (no document, the same bytes as before, or a chunking error in
    ``chunk_error``).
    """

    rel: str
    events: list[tuple[str, str, str]] = field(default_factory=list)
    sha256: str | None = None
    rows: list[tuple[Any, ...]] | None = None
    chunk_error: str | None = None
    logs: list[_Log] = field(default_factory=list)  # collected in a worker process


class _Reader:
    """Tokenizer, chunker and root of one process, built once."""

    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.root = Path(job.root)
        self.chunker = Chunker(get_tokenizer(job.tokenizer), job.chunker)

    def read(self, task: FileTask) -> FileResult:
        result = FileResult(task.rel)
        events = result.events

        def skipped(path: str, reason: str) -> None:
            events.append(("skip", path, reason))

        def unreadable(path: str, reason: str) -> None:
            events.append(("unreadable", path, reason))

        doc = read_document(self.root, Path(task.path), on_skip=skipped, on_unreadable=unreadable)
        if doc is None:
            return result
        result.sha256 = doc.sha256
        if task.prev_sha256 == doc.sha256:
            return result
        if doc.path != task.rel:  # a writer's namespace: NAME/path is the rows' source
            doc = replace(doc, path=task.rel)
        try:
            chunks = self.chunker.chunk(doc)
        except ChunkingError as exc:  # one bad document must not stop the run
            result.chunk_error = f"cannot be chunked: {exc}"
            _log.warning("skipping %s: %s", shown(task.rel), result.chunk_error)
            return result
        result.rows = list(desired_rows(chunks, self.job.identity))
        return result


def read_file(reader: _Reader, task: FileTask) -> FileResult:
    return reader.read(task)


# -- the worker side ------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[_Log] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            (record.name, record.levelno, record.getMessage(), record.pathname, record.lineno)
        )


_worker: _Reader | None = None
_collect: _Collect | None = None


def _init_worker(job: ScanJob) -> None:
    global _worker, _collect
    # Whatever handlers the parent had (forked) are not ours to write to: collect.
    collect = _Collect()
    logger = logging.getLogger(_LOGGER)
    logger.handlers = [collect]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)  # the parent's loggers filter when replaying
    _worker, _collect = _Reader(job), collect


def _read_task(tasks: list[FileTask]) -> list[FileResult]:
    assert _worker is not None and _collect is not None
    out = []
    for task in tasks:
        result = _worker.read(task)
        result.logs, _collect.records = _collect.records, []
        out.append(result)
    return out


def _replay(result: FileResult) -> None:
    for name, level, message, pathname, lineno in result.logs:
        logger = logging.getLogger(name)
        if logger.isEnabledFor(level):
            logger.handle(logger.makeRecord(name, level, pathname, lineno, message, (), None))


def _groups(tasks: Iterable[FileTask]) -> Iterator[list[FileTask]]:
    group: list[FileTask] = []
    size = 0
    for task in tasks:
        group.append(task)
        size += task.size
        if size >= TASK_BYTES or len(group) >= TASK_FILES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _start_method() -> str:
    """``fork`` while this process has not loaded LanceDB or Lance, whose runtime threads
    make a forked child unsafe (both warn then); ``forkserver`` after (an application
    that indexes twice in one process), ``spawn`` where neither exists."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not any(m in sys.modules for m in _FORK_UNSAFE):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


_FORK_UNSAFE = ("lancedb", "lance")


def pool_workers(workers: int, tasks: Sequence[FileTask]) -> int:
    """How many processes to read ``tasks`` with: 1 (in-process) for tiny scans."""
    if workers <= 1 or len(tasks) < workers:
        return 1
    if sum(t.size for t in tasks) < MIN_POOL_BYTES:
        return 1
    return workers


def read_files(
    job: ScanJob, tasks: Sequence[FileTask], workers: int, *, start_method: str | None = None
) -> Generator[FileResult, None, None]:
    """The results of ``tasks``, in their order, read by ``workers`` processes.

    With one worker they are read here, one at a time. Otherwise at most
    ``IN_FLIGHT_PER_WORKER * workers`` tasks are in flight, so memory stays bounded
    whatever the corpus. Closing the iterator early cancels what has not started.
    """
    if pool_workers(workers, tasks) == 1:
        reader = _Reader(job)
        for task in tasks:
            yield reader.read(task)
        return
    context = multiprocessing.get_context(start_method or _start_method())
    groups = _groups(tasks)
    in_flight: deque[Future[list[FileResult]]] = deque()
    limit = IN_FLIGHT_PER_WORKER * workers
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(job,)
    ) as pool:
        try:
            for group in groups:
                in_flight.append(pool.submit(_read_task, group))
                if len(in_flight) >= limit:
                    yield from _drain(in_flight.popleft())
            while in_flight:
                yield from _drain(in_flight.popleft())
        finally:
            for future in in_flight:
                future.cancel()


def _drain(future: Future[list[FileResult]]) -> Iterator[FileResult]:
    for result in future.result():
        _replay(result)
        yield result
