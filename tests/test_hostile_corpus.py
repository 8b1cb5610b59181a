"""Issue #10 item 4: a corpus of troublesome files, indexed end to end.

One generated folder holds 30 kinds of trouble (encodings, line endings, huge and
degenerate files, odd names, symlinks, a FIFO, files that change or vanish during the
scan...). The real pipeline indexes it through the real ``openai`` SDK against the
loopback fake Batch API (fast: the fake embeds instantly; the local model would need
minutes for the 10 MB line). Every file must either land in the table with the right
text or be skipped with exactly one log line naming it and the reason; the run must
complete; the report must count skips by reason, in the library and in the CLI's
``--json`` and text output. Unreadable files have their own test (root reads anything,
so there the test drops the capability that lets it).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import string
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeapi import FakeBatchAPI

from corpusbatch import Settings, index, open_table
from corpusbatch.cli import main
from corpusbatch.pipeline import NullProgress
from corpusbatch.sources import MAX_FILE_BYTES, shown

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX file types and names")

DIMS = 16
LONG_LINE = 10 * 1024 * 1024
HUGE = 100 * 1024 * 1024
FRENCH = "Le café crème est très chaud; où est la bibliothèque? Ça va, merci. "
UNICODE = "Café crème, naïve résumé — «ünïcödé» ✓ 日本語. "


@dataclass
class Expect:
    """What must happen to one path: indexed (and its text contains ``has`` but none of
    ``lacks``), or skipped with a reason of ``kind``."""

    kind: str | None = None  # None: indexed
    has: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()


def _write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_corpus(root: Path, outside: Path) -> dict[str, Expect]:
    """Write the hostile corpus; return what must become of each path."""
    rng = random.Random(10)
    e: dict[str, Expect] = {}

    def w(rel: str, data: bytes | str) -> Path:
        return _write(root, rel, data)

    # -- encodings ------------------------------------------------------------------
    w("enc/utf16-bom.txt", ("UTF-16 with a BOM: " + UNICODE + "\r\n").encode("utf-16"))
    e["enc/utf16-bom.txt"] = Expect(has=("UTF-16 with a BOM", UNICODE.strip()))
    w("enc/utf16-be-bom.md", b"\xfe\xff" + ("# Big endian\n\n" + UNICODE).encode("utf-16-be"))
    e["enc/utf16-be-bom.md"] = Expect(has=("Big endian", UNICODE.strip()))
    w("enc/utf16-nobom.txt", ("Notepad without a BOM. " + FRENCH + "\r\n").encode("utf-16-le"))
    e["enc/utf16-nobom.txt"] = Expect(has=("Notepad without a BOM", FRENCH.strip()))
    w("enc/latin1.txt", (FRENCH * 5).encode("latin-1"))
    e["enc/latin1.txt"] = Expect(has=(FRENCH.strip(),), lacks=("Ã", "\ufffd"))
    w("enc/cp1251.txt", ("Привет, как дела? Это тест кодировки. " * 8).encode("cp1251"))
    e["enc/cp1251.txt"] = Expect(has=("Привет, как дела?",))
    bad = (UNICODE * 3).encode() + b"two bad bytes \xff\xfe here\n" + (UNICODE * 3).encode()
    w("enc/bad-utf8.md", bad)
    e["enc/bad-utf8.md"] = Expect(has=(UNICODE.strip(), "bytes \ufffd\ufffd here"), lacks=("Ã",))

    # -- line endings, NULs ---------------------------------------------------------
    w("lines/crlf.md", "# CRLF title\r\n\r\nfirst line\r\nsecond line\r\n")
    e["lines/crlf.md"] = Expect(has=("CRLF title", "first line\nsecond line"), lacks=("\r",))
    w("lines/lone-cr.txt", "classic mac\rline two\rline three\r")
    e["lines/lone-cr.txt"] = Expect(has=("classic mac\nline two\nline three",), lacks=("\r",))
    w("lines/late-nul.txt", b"plain text line\n" * 600 + b"late\x00nul\x00\n")
    e["lines/late-nul.txt"] = Expect(has=("latenul",), lacks=("\x00",))
    w("lines/nul-head.txt", b"NUL in the head\x00 of the file\n" * 10)
    e["lines/nul-head.txt"] = Expect("binary")

    # -- empty and binary -----------------------------------------------------------
    w("junk/empty.md", b"")
    e["junk/empty.md"] = Expect("empty")
    w("junk/blank.txt", " \n\t\n   \r\n")
    e["junk/blank.txt"] = Expect("empty")
    w("junk/image.md", b"\x89PNG\r\n\x1a\n" + rng.randbytes(6000))
    e["junk/image.md"] = Expect("binary")
    w("junk/program.txt", b"\x7fELF\x02\x01\x01" + bytes(400) + rng.randbytes(4000))
    e["junk/program.txt"] = Expect("binary")

    # -- sizes and degenerate structure -----------------------------------------------
    huge = root / "size/huge.txt"
    huge.parent.mkdir(parents=True)
    with huge.open("wb") as fh:  # sparse: 100 MB on paper, a few bytes on disk
        fh.write(b"a log file that grew far too large\n")
        fh.seek(HUGE - 10)
        fh.write(b"the end.\n\n")
    assert huge.stat().st_size == HUGE > MAX_FILE_BYTES
    e["size/huge.txt"] = Expect("too_large")
    alphabet = string.ascii_letters + string.digits + "+/=_-.,;:"
    block = "".join(rng.choice(alphabet) for _ in range(65_536))
    w("size/long-line.txt", (block * (LONG_LINE // len(block)))[:LONG_LINE])
    e["size/long-line.txt"] = Expect(has=(block[:200],))
    w("size/long-word.md", "# A long word\n\n" + "x" * 50_000 + "yz\n")
    e["size/long-word.md"] = Expect(has=("A long word", "xxxxyz"))
    headings = "".join(f"{'#' * k} Level {k}\n\nBody of level {k}.\n\n" for k in range(1, 401))
    w("size/headings.md", headings)
    e["size/headings.md"] = Expect(has=("Level 1", "Body of level 400."))

    # -- names ------------------------------------------------------------------------
    for rel in (
        'names/it\'s "quoted".md',
        "names/back\\slash.md",
        "names/new\nline.md",
        "names/  spaced  name .md",
        "names/naïve ünïcode 日本.md",
    ):
        w(rel, f"A document named {rel!r}.\n")
        e[rel] = Expect(has=(f"A document named {rel!r}.",))
    with open(os.fsencode(root / "names") + b"/caf\xe9-latin1-name.md", "wb") as fh:
        fh.write(b"a name that is not UTF-8\n")
    e[ascii("names/caf\udce9-latin1-name.md")] = Expect("bad_file_name")

    # -- symlinks, FIFO, .gitignore -------------------------------------------------------
    _write(outside, "secret.md", "outside the root: must never be read\n")
    _write(outside, "rules", "*.md\n")  # followed, it would ignore every Markdown file
    (root / ".gitignore").symlink_to(outside / "rules")
    e[".gitignore"] = Expect("gitignore_symlink")
    w("links/target.md", "the target of an inside link\n")
    e["links/target.md"] = Expect(has=("the target of an inside link",))
    (root / "links/inside.md").symlink_to(root / "links/target.md")
    e["links/inside.md"] = Expect(has=("the target of an inside link",))
    (root / "links/escape.md").symlink_to(outside / "secret.md")
    e["links/escape.md"] = Expect("symlink_outside_root")
    (root / "links/escape-dir").symlink_to(outside, target_is_directory=True)
    e["links/escape-dir/"] = Expect("symlink_outside_root")
    (root / "links/loop-a.md").symlink_to(root / "links/loop-b.md")
    (root / "links/loop-b.md").symlink_to(root / "links/loop-a.md")
    e["links/loop-a.md"] = Expect("symlink_loop")
    e["links/loop-b.md"] = Expect("symlink_loop")
    (root / "links/back-up").symlink_to(root, target_is_directory=True)
    e["links/back-up/"] = Expect("symlink_loop")
    (root / "links/broken.md").symlink_to(root / "links/missing.md")
    e["links/broken.md"] = Expect("broken_symlink")
    os.mkfifo(root / "links/pipe.md")  # opened for reading, it would block forever
    e["links/pipe.md"] = Expect("not_regular_file")

    # -- changed and vanished during the scan (see ChangeDuringScan) ------------------------
    w("zz/changes.md", "the version that was listed\n")
    e["zz/changes.md"] = Expect(has=("the version that was read",), lacks=("listed",))
    w("zz/vanishes.md", "here when listed\n")
    e["zz/vanishes.md"] = Expect("vanished")
    return e


class ChangeDuringScan(NullProgress):
    """After the scan has stat'ed every file and read the first one, change one file and
    delete another: both were listed and stat'ed, neither has been read yet (with one
    scan worker files are read one at a time, in path order; zz/ comes last)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stage = ""
        self.done = False

    def start(self, stage: str, total: int | None = None, unit: str = "it") -> None:
        self.stage = stage

    def advance(self, n: int = 1) -> None:
        if self.stage == "reading and chunking" and not self.done:
            self.done = True
            (self.root / "zz/changes.md").write_text("the version that was read, longer\n")
            (self.root / "zz/vanishes.md").unlink()


def settings_for(api: FakeBatchAPI, index_dir: Path) -> Settings:
    return Settings(
        index_dir=index_dir,
        provider="openai",
        base_url=api.base_url,
        dimensions=DIMS,
        poll_interval=0.005,
        scan_workers=1,
    )


def texts_by_source(settings: Settings) -> dict[str, str]:
    rows = open_table(settings).to_arrow().select(["source", "start_line", "text"]).to_pylist()
    by_source: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append((row["start_line"], row["text"]))
    return {s: "\n".join(t for _, t in sorted(parts)) for s, parts in by_source.items()}


def lines_naming(records: list[logging.LogRecord], path: str) -> list[str]:
    name = shown(path)
    return [r.getMessage() for r in records if name in r.getMessage()]


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS) as server:
        server.instant = True
        yield server


def test_every_kind_of_trouble_is_indexed_or_skipped_once(
    tmp_path: Path, api: FakeBatchAPI, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    root, outside = tmp_path / "docs", tmp_path / "outside"
    expect = make_corpus(root, outside)
    assert len(expect) >= 30
    settings = settings_for(api, tmp_path / "idx")
    with caplog.at_level(logging.INFO, logger="corpusbatch"):
        report = index(root, settings, api_key="k", progress=ChangeDuringScan(root))

    # the run completed and published everything it could
    assert report.published and not report.failed and report.pending_files == 0
    assert report.deferred == 0

    # skipped: exactly the expected paths, each once, with its kind, counted by kind
    skipped = {s["path"]: s for s in report.skipped}
    assert len(skipped) == len(report.skipped)
    wanted = {rel: x.kind for rel, x in expect.items() if x.kind is not None}
    assert {p: s["kind"] for p, s in skipped.items()} == wanted
    assert report.skipped_by_reason == dict(sorted(Counter(wanted.values()).items()))

    # one log line per skipped file, naming it and giving the reason (escaped names too)
    records = [r for r in caplog.records if r.name.startswith("corpusbatch")]
    for rel, skip in skipped.items():
        lines = lines_naming(records, rel)
        assert len(lines) == 1, (rel, lines)
        assert lines[0].endswith(skip["reason"]), (rel, lines)
    assert all("\n" not in r.getMessage() for r in records)

    # indexed: exactly the expected sources, each with the right text
    texts = texts_by_source(settings)
    indexed = {rel for rel, x in expect.items() if x.kind is None}
    assert set(texts) == indexed
    for rel in sorted(indexed):
        for part in expect[rel].has:
            assert part in texts[rel], (rel, part)
        for part in expect[rel].lacks:
            assert part not in texts[rel], (rel, part)
    assert all("outside the root" not in t for t in texts.values())

    # the 10 MB line is all there (cut without overlap, every cut is on line 1)
    line_rows = [
        r
        for r in open_table(settings).to_arrow().to_pylist()
        if r["source"] == "size/long-line.txt"
    ]
    assert sum(len(r["text"]) for r in line_rows) == LONG_LINE
    assert {(r["start_line"], r["end_line"]) for r in line_rows} == {(1, 1)}
    # 400 headings: the heading path keeps Markdown's six levels, not 400
    heads = [
        r["heading"]
        for r in open_table(settings).to_arrow().to_pylist()
        if r["source"] == "size/headings.md"
    ]
    assert heads and max(h.count(" > ") for h in heads) <= 5

    # decoding warnings name their file on one line each
    assert lines_naming(records, "enc/bad-utf8.md") == [
        "enc/bad-utf8.md is UTF-8 with 2 invalid bytes; replaced with U+FFFD"
    ]
    assert lines_naming(records, "enc/latin1.txt") == [
        "enc/latin1.txt is not UTF-8; decoded as cp1252"
    ]

    # a second run: the CLI, --json. Only the file that changed after it was stat'ed is
    # read again; the rest are unchanged and their skips are reported from memory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    flags = [
        "--index-dir",
        str(settings.index_dir),
        "--provider",
        "openai",
        "--base-url",
        api.base_url,
        "--dimensions",
        str(DIMS),
        "--workers",
        "1",
    ]
    runner = CliRunner()
    again = runner.invoke(main, ["index", str(root), *flags, "--json"])
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["documents_read"] == 1  # zz/changes.md: its stored stat was the old one
    del wanted["zz/vanishes.md"]  # deleted: no source any more
    assert {s["path"]: s["kind"] for s in data["skipped"]} == wanted
    assert data["skipped_by_reason"] == dict(sorted(Counter(wanted.values()).items()))
    assert texts_by_source(settings) == {**texts, "zz/changes.md": texts["zz/changes.md"]}

    # and the text report: one line of counts, one line per skipped file
    text = runner.invoke(main, ["index", str(root), *flags])
    assert text.exit_code == 0, text.output
    counts = ", ".join(f"{k} {n}" for k, n in sorted(Counter(wanted.values()).items()))
    assert f"skipped by reason: {counts}" in text.stdout
    skip_lines = [line for line in text.stdout.splitlines() if line.startswith("skipped ")]
    assert len(skip_lines) == len(wanted) + 1  # + the counts line
    assert f"skipped {'names/caf' + chr(0xDCE9) + '-latin1-name.md'!a}: " in text.stdout


# -- unreadable files ----------------------------------------------------------------------
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextmanager
def permissions_enforced() -> Iterator[None]:
    """Make file permissions bind this thread, even as root.

    Root reads a ``chmod 000`` file through CAP_DAC_OVERRIDE (and CAP_DAC_READ_SEARCH);
    they are dropped from this thread's effective set for the block and raised again
    after (they stay permitted). Capabilities are per thread on Linux, and the scan runs
    in this thread (one worker). Skips the test where that is impossible.
    """
    if os.geteuid() != 0:
        yield
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
        if libc.capget(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
    except (OSError, AttributeError) as exc:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here: {exc}")
    saved = data[0].effective
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip(f"running as root and capset failed (errno {ctypes.get_errno()})")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_an_unreadable_file_is_reported_once_and_read_when_fixed(
    tmp_path: Path, api: FakeBatchAPI, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "docs"
    _write(root, "open.md", "anyone can read this\n")
    locked = _write(root, "locked.md", "nobody may read this yet\n")
    settings = settings_for(api, tmp_path / "idx")
    locked.chmod(0)
    try:
        with permissions_enforced():
            with pytest.raises(PermissionError):
                locked.read_bytes()  # the premise: permissions really bind here
            with caplog.at_level(logging.INFO, logger="corpusbatch"):
                report = index(root, settings, api_key="k")
    finally:
        locked.chmod(0o644)
    assert report.published and report.skipped_by_reason == {"permission_denied": 1}
    (skip,) = report.skipped
    assert skip["path"] == "locked.md" and skip["reason"].startswith("permission denied")
    assert len(lines_naming(caplog.records, "locked.md")) == 1
    assert set(texts_by_source(settings)) == {"open.md"}
    fixed = index(root, settings, api_key="k")  # unreadable is not remembered as final
    assert fixed.skipped == [] and fixed.documents_read == 1
    assert set(texts_by_source(settings)) == {"open.md", "locked.md"}
