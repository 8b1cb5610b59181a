"""corpusbatch.memory: glibc arenas limited by the CLI, free heap handed back."""

from __future__ import annotations

import ctypes
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


def test_the_cli_limits_arenas_before_any_command_runs() -> None:
    code = """
        import os
        from corpusbatch import memory
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
    mine = run(code, LANCE_DEFAULT_IO_BUFFER_SIZE="1000").splitlines()[-1]
    assert mine == "1 1000", "the environment's choice wins"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_release_hands_freed_heap_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(60_000)]  # ~240 MB of small blocks
    for b in blocks:
        ctypes.memset(b, 1, 4096)  # touched: resident
    keep = libc.malloc(64)  # a live block above them: the heap cannot simply shrink
    for b in blocks:
        libc.free(b)
    before = rss_mb()
    memory.release()
    after = rss_mb()
    libc.free(keep)
    assert before - after > 100, f"RSS {before:.0f} MB -> {after:.0f} MB"
