"""corpusbatch.memory: glibc arenas limited by the CLI, free heap handed back."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from corpusbatch import memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_arenas_are_limited_unless_the_user_set_them() -> None:
    code = "from corpusbatch import memory; print(memory.limit_arenas())"
    assert run(code) == "True"
    assert run(code, MALLOC_ARENA_MAX="4") == "False", "the environment's choice wins"


def test_the_cli_limits_arenas_and_read_ahead_before_any_command_runs() -> None:
    code = """
        import os
        from corpusbatch import memory
        os.environ.pop("LANCE_DEFAULT_IO_BUFFER_SIZE", None)
        calls = []
        memory.limit_arenas = lambda *a: calls.append(a) or True
        from corpusbatch.cli import main
        try:
            main(["status", "--help"])
        except SystemExit:
            pass
        print(len(calls), os.environ.get("LANCE_DEFAULT_IO_BUFFER_SIZE"))
    """
    assert run(code).splitlines()[-1] == f"1 {memory.READ_BUFFER_BYTES}"


def test_the_read_ahead_cap_leaves_the_users_choice() -> None:
    code = """
        import os
        from corpusbatch import memory
        memory.bound_read_buffers()
        print(os.environ["LANCE_DEFAULT_IO_BUFFER_SIZE"])
    """
    assert run(code, LANCE_DEFAULT_IO_BUFFER_SIZE="1048576") == "1048576"
    assert run(code) == str(memory.READ_BUFFER_BYTES)


def test_rss_is_read_from_proc() -> None:
    from corpusbatch import memory

    got, peak = memory.rss_mb(), memory.peak_rss_mb()
    assert got is not None and peak is not None and 10 < got <= peak < 100_000


def test_release_hands_freed_heap_back() -> None:
    """In a fresh interpreter (a long test process's heap is full of other holes):
    240 MB of small blocks malloc'ed, touched and freed below a live one stay resident
    until :func:`memory.release`."""
    code = """
        import ctypes
        from corpusbatch import memory

        def rss_mb():
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(4096) for _ in range(60_000)]
        for b in blocks:
            ctypes.memset(b, 1, 4096)
        keep = libc.malloc(65536)  # a live block above them: the heap cannot just shrink
        ctypes.memset(keep, 1, 65536)
        for b in blocks:
            libc.free(b)
        before = rss_mb()
        memory.release()
        print(round(before), round(rss_mb()))
    """
    before, after = map(int, run(code).split())
    assert before - after > 100, f"RSS {before} MB -> {after} MB"
