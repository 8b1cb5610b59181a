"""Keep a long run's resident memory near what it uses (glibc's allocator only).

LanceDB and Lance allocate from many threads, and glibc gives threads arenas of their
own (up to eight per core) from which freed memory goes back to the system late or never.
After a first index writes and indexes a large table, the process then holds far more
than it uses: at 100k rows the peak RSS fell from 837 MB to 692 MB with two arenas, at
no measurable cost in time (``docs/benchmarks/scale.md``).

Lance also reads ahead of a scan into an I/O buffer of up to 2 GiB by default. When the
reader is slower than the disk, as when the first publish streams the staging table into
the new table, that buffer fills: reading a million staged vectors peaked 570 MB above
the process's start, 330 MB with a 64 MiB buffer, and a compacted staging table of a
million 1 KiB vectors read alone +216 MB with 64 MiB and +145 MB with 16 MiB
(:func:`bound_read_buffers`). Index builds read the whole table the same way: on 1M rows
the vector index peaked 387 MB above its start with the default buffer and 192 MB with
64 MiB, the full-text index 634 MB and 483 MB, in the same time. With 16 MiB the first
publish of 1M chunks peaked at 704-732 MB instead of 944 MB, no slower
(``docs/benchmarks/scale.md``).

The CLI calls :func:`limit_arenas` and :func:`bound_read_buffers` when it starts; the
library itself only calls :func:`release` between stages, which hands free memory back
and changes nothing else. An application embedding the library gets the same with
``MALLOC_ARENA_MAX=2`` and ``LANCE_DEFAULT_IO_BUFFER_SIZE=16777216`` in its
environment. (A cap was once suspected of changing ANN results: 60 queries against
index builds of the same table, with and without it, found recall@5 of 0.977 to 0.990
either way; one query's exact top 5 depends on the build, not on the cap.) On other
C libraries (musl, macOS) the allocator functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
ARENAS = 2
READ_BUFFER_BYTES = 16 << 20


@functools.cache
def _glibc() -> Any | None:
    """glibc, if this process runs on it (it has ``mallopt`` and ``malloc_trim``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (absent outside glibc)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc use at most ``arenas`` malloc arenas; call before threads start.

    Returns whether the limit was set: not when ``MALLOC_ARENA_MAX`` is in the
    environment (glibc read it already: the user's choice wins), nor off glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(M_ARENA_MAX, arenas))
    log.debug("malloc arenas limited to %d: %s", arenas, done)
    return done


def bound_read_buffers(nbytes: int = READ_BUFFER_BYTES) -> None:
    """Cap Lance's read-ahead per scan at ``nbytes`` unless the environment sets it;
    call before LanceDB is first used."""
    os.environ.setdefault("LANCE_DEFAULT_IO_BUFFER_SIZE", str(nbytes))


def rss_mb() -> int | None:
    """This process's resident memory in MB (None where ``/proc`` is not there)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> int | None:
    """The largest resident memory this process has had, in MB (None off Unix)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # (KiB on Linux)


def release() -> None:
    """Give free heap memory back to the system (after a stage that allocated much)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
