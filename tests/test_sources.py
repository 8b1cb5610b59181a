"""Tests for corpusbatch.sources: walking, ignoring, decoding and HTML rendering."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpusbatch.errors import SourceError
from corpusbatch.sources import (
    DEFAULT_INCLUDE,
    MAX_FILE_BYTES,
    detect_kind,
    html_to_text,
    iter_documents,
    list_files,
    read_document,
    shown,
    skip_kind,
)
from corpusbatch.types import Document

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def collect(root: Path, **kwargs: object) -> tuple[list[Document], dict[str, str]]:
    skips: dict[str, str] = {}
    docs = list(iter_documents(root, on_skip=skips.__setitem__, **kwargs))  # type: ignore[arg-type]
    return docs, skips


def paths(docs: list[Document]) -> list[str]:
    return [d.path for d in docs]


# --------------------------------------------------------------------------- walking


def test_default_pruning(tmp_path: Path) -> None:
    write(tmp_path, "keep.md", "# kept\n")
    write(tmp_path, "node_modules/pkg/readme.md", "dep\n")
    write(tmp_path, "__pycache__/x.py", "x = 1\n")
    write(tmp_path, "build/out.html", "<p>built</p>\n")
    write(tmp_path, "dist/a.txt", "dist\n")
    write(tmp_path, "target/t.rs", "fn main() {}\n")
    write(tmp_path, "site/index.html", "<p>site</p>\n")
    write(tmp_path, "_build/html.txt", "x\n")
    write(tmp_path, "pkg.egg-info/PKG-INFO.txt", "x\n")
    write(tmp_path, ".hidden/secret.md", "hidden\n")
    write(tmp_path, ".dotfile.md", "hidden\n")
    write(tmp_path, ".corpusbatch/state.txt", "index\n")
    write(tmp_path, ".tox/py/log.txt", "x\n")
    write(tmp_path, "myenv/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "myenv/lib/site.py", "x = 1\n")
    write(tmp_path, "venv/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "venv/lib/a.py", "x = 1\n")
    # A folder called env without pyvenv.cfg is ordinary content.
    write(tmp_path, "env/notes.md", "# environment notes\n")
    docs, skips = collect(tmp_path)
    assert paths(docs) == ["env/notes.md", "keep.md"]
    assert skips == {}


def test_nested_gitignore_with_negation(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.txt\n!important.txt\ndrafts/\n")
    write(tmp_path, "a.txt", "ignored\n")
    write(tmp_path, "important.txt", "kept\n")
    write(tmp_path, "drafts/d.md", "ignored dir\n")
    write(tmp_path, "sub/.gitignore", "!*.txt\nlocal.md\n")
    write(tmp_path, "sub/b.txt", "re-included by the deeper file\n")
    write(tmp_path, "sub/local.md", "ignored by the deeper file\n")
    write(tmp_path, "sub/deeper/c.txt", "deeper file still applies\n")
    write(tmp_path, "other/local.md", "the deeper rule is scoped to sub/\n")
    # A file inside an ignored directory cannot be re-included (git semantics).
    write(tmp_path, "drafts/.gitignore", "!d.md\n")
    docs, _ = collect(tmp_path)
    assert paths(docs) == [
        "important.txt",
        "other/local.md",
        "sub/b.txt",
        "sub/deeper/c.txt",
    ]


def test_anchored_gitignore_pattern_is_relative_to_its_folder(tmp_path: Path) -> None:
    write(tmp_path, "sub/.gitignore", "/top.md\n")
    write(tmp_path, "sub/top.md", "ignored\n")
    write(tmp_path, "sub/inner/top.md", "not anchored here\n")
    docs, _ = collect(tmp_path)
    assert paths(docs) == ["sub/inner/top.md"]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ((), (), ["a.md", "docs/b.md", "docs/c.py", "docs/old/d.md"]),
        (("*.md",), (), ["a.md", "docs/b.md", "docs/old/d.md"]),
        (("docs/**",), ("*.py",), ["docs/b.md", "docs/old/d.md"]),
        (("*.md",), ("docs/old/",), ["a.md", "docs/b.md"]),
        # exclude wins over include even when both name the same file
        (("a.md",), ("a.md",), []),
        (("*.yaml",), (), ["conf.yaml"]),
    ],
)
def test_include_exclude(
    tmp_path: Path, include: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]
) -> None:
    for rel in ["a.md", "docs/b.md", "docs/c.py", "docs/old/d.md"]:
        write(tmp_path, rel, f"content of {rel}\n")
    write(tmp_path, "conf.yaml", "a: 1\n")
    docs, _ = collect(tmp_path, include=include, exclude=exclude)
    assert paths(docs) == expected
    assert [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path, include, exclude)] == (
        expected
    )


def test_sorted_and_deterministic(tmp_path: Path) -> None:
    for rel in ["b.md", "a.md", "a/z.md", "a.b/c.md", "A.md", "a-b.md"]:
        write(tmp_path, rel, f"# {rel}\n")
    first = paths(collect(tmp_path)[0])
    assert first == sorted(first)
    assert first == paths(collect(tmp_path)[0])


def test_default_include_covers_documented_extensions() -> None:
    for ext in ["md", "markdown", "mdx", "rst", "txt", "text", "html", "htm", "py", "rs", "go"]:
        assert f"*.{ext}" in DEFAULT_INCLUDE
    assert "*.json" not in DEFAULT_INCLUDE


# --------------------------------------------------------------------------- symlinks


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    write(outside, "secret.md", "outside the root\n")
    write(root, "real/doc.md", "# inside\n")
    (root / "out_file.md").symlink_to(outside / "secret.md")
    (root / "out_dir").symlink_to(outside, target_is_directory=True)
    (root / "in_file.md").symlink_to(root / "real" / "doc.md")
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    (root / "broken.md").symlink_to(root / "missing.md")
    docs, skips = collect(root)
    assert paths(docs) == ["in_file.md", "real/doc.md"]
    assert "outside the root" in skips["out_file.md"]
    assert "outside the root" in skips["out_dir/"]
    assert "loop" in skips["real/loop/"]
    assert "broken" in skips["broken.md"]
    assert all("secret" not in d.text for d in docs)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file types")
def test_fifos_loops_and_bad_names_are_reported_never_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "ok.md", "fine\n")
    os.mkfifo(tmp_path / "pipe.md")  # opening it for reading would block forever
    (tmp_path / "a.md").symlink_to(tmp_path / "b.md")
    (tmp_path / "b.md").symlink_to(tmp_path / "a.md")
    write(tmp_path, "new\nline.md", "a name with a newline\n")
    raw_name = os.fsencode(tmp_path) + b"/caf\xe9.md"  # latin-1 bytes: not UTF-8
    with open(raw_name, "wb") as fh:
        fh.write(b"content\n")
    with caplog.at_level(logging.INFO, logger="corpusbatch.sources"):
        docs, skips = collect(tmp_path)
    assert paths(docs) == ["new\nline.md", "ok.md"]
    assert skips["pipe.md"] == "not a regular file (a FIFO); not read, exclude it"
    assert skips["a.md"].startswith("symlink loop") and skips["b.md"].startswith("symlink loop")
    assert skips["'caf\\udce9.md'"].startswith("file name is not valid UTF-8")
    assert {skip_kind(r) for r in skips.values()} == {
        "not_regular_file",
        "symlink_loop",
        "bad_file_name",
    }
    for record in caplog.records:  # one line each, naming the file
        assert "\n" not in record.getMessage()
    assert shown("new\nline.md") == "'new\\nline.md'"
    assert shown("with space & 'quotes' ünï.md") == "with space & 'quotes' ünï.md"


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_symlinked_gitignore_is_not_followed(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", "rules", "*.md\n")
    root = tmp_path / "root"
    write(root, "doc.md", "kept: the linked rules do not apply\n")
    write(root, "sub/.gitignore", "*.txt\n")
    write(root, "sub/note.txt", "ignored by a real .gitignore\n")
    (root / ".gitignore").symlink_to(outside)
    docs, skips = collect(root)
    assert paths(docs) == ["doc.md"]
    assert skips == {
        ".gitignore": "symlinked .gitignore not followed (git does not follow one either); "
        "its rules do not apply, copy the file in instead of linking it"
    }


def test_skip_kinds_name_every_reason_sources_give() -> None:
    reasons = {
        "binary file (NUL or control bytes); exclude it": "binary",
        "empty file (no text)": "empty",
        "file too large (104,857,600 bytes, over the 50 MiB limit)": "too_large",
        "broken symlink (target does not exist)": "broken_symlink",
        "symlink points outside the root (to /etc)": "symlink_outside_root",
        "symlink loop (points to one of its parents)": "symlink_loop",
        "permission denied; fix its permissions or exclude it": "permission_denied",
        "cannot read file: it vanished after it was listed": "vanished",
        "cannot read file: it kept changing while it was read (3 tries)": "changed_while_read",
        "cannot read file (not a regular file any more: a directory)": "not_regular_file",
        "cannot read file (Input/output error); fix the error": "read_error",
        "cannot be chunked: too long": "chunking_error",
        "something new": "other",
    }
    assert {r: skip_kind(r) for r in reasons} == reasons


def test_a_file_over_the_size_limit_is_skipped_unread(tmp_path: Path) -> None:
    big = tmp_path / "huge.txt"
    with big.open("wb") as fh:  # sparse: no 50 MiB written
        fh.write(b"text at the start\n")
        fh.truncate(MAX_FILE_BYTES + 1)
    docs, skips = collect(tmp_path)
    assert docs == []
    assert skips["huge.txt"] == (
        f"file too large ({MAX_FILE_BYTES + 1:,} bytes, over the 50 MiB limit for one "
        "document); split it or exclude it"
    )


# --------------------------------------------------------------------------- reading


def test_binary_and_empty_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "blob.txt", b"abc\x00\x01\x02" * 100)
    write(tmp_path, "controls.txt", bytes([1, 2, 3, 4, 5, 6, 7, 65]) * 200)
    write(tmp_path, "empty.md", "")
    write(tmp_path, "blank.md", "  \n\t\n")
    write(tmp_path, "ok.md", "text\n")
    docs, skips = collect(tmp_path)
    assert paths(docs) == ["ok.md"]
    assert set(skips) == {"blob.txt", "controls.txt", "empty.md", "blank.md"}
    assert "binary" in skips["blob.txt"] and "binary" in skips["controls.txt"]
    assert "empty" in skips["empty.md"] and "empty" in skips["blank.md"]


def test_cp1252_fallback_logs_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = "Caf\u00e9 \u201cspecial\u201d \u20ac3.50\r\n".encode("cp1252")
    write(tmp_path, "menu.txt", raw)
    with caplog.at_level(logging.WARNING, logger="corpusbatch.sources"):
        docs, skips = collect(tmp_path)
    (doc,) = docs
    assert doc.encoding == "cp1252"
    assert doc.text == "Caf\u00e9 \u201cspecial\u201d \u20ac3.50\n"
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()
    assert skips == {}
    assert any("menu.txt" in r.getMessage() and "cp1252" in r.getMessage() for r in caplog.records)


def test_a_byte_cp1252_lacks_still_decodes_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 0x81 is undefined in cp1252: some other legacy code page (or latin-1) takes it.
    write(tmp_path, "odd.txt", b"abc \x81 def\n")
    with caplog.at_level(logging.WARNING, logger="corpusbatch.sources"):
        (doc,) = collect(tmp_path)[0]
    assert doc.encoding not in ("utf-8", "cp1252")
    assert doc.text.startswith("abc ") and doc.text.endswith(" def\n") and len(doc.text) == 10
    assert any("odd.txt is not UTF-8; decoded as" in r.getMessage() for r in caplog.records)


def test_utf8_with_a_few_bad_bytes_keeps_every_good_character(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = "Café crème, naïve résumé — «ünïcödé» ✓\n" * 20
    raw = good.encode("utf-8") + b"broken \xff\xfe and cut \xc3\n" + good.encode("utf-8")
    write(tmp_path, "notes.md", raw)
    with caplog.at_level(logging.WARNING, logger="corpusbatch.sources"):
        (doc,) = collect(tmp_path)[0]
    assert doc.encoding == "utf-8"
    assert doc.text == good + "broken \ufffd\ufffd and cut \ufffd\n" + good
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "notes.md is UTF-8 with 3 invalid bytes; replaced with U+FFFD"


@pytest.mark.parametrize(
    ("codec", "bom", "expected"),
    [
        ("utf-16-le", b"\xff\xfe", "utf-16-le"),
        ("utf-16-be", b"\xfe\xff", "utf-16-be"),
        ("utf-32-le", b"\xff\xfe\x00\x00", "utf-32-le"),
        ("utf-32-be", b"\x00\x00\xfe\xff", "utf-32-be"),
        ("utf-16-le", b"", "utf-16-le"),  # Notepad/PowerShell without a BOM
        ("utf-16-be", b"", "utf-16-be"),
    ],
)
def test_utf16_and_utf32_are_text(tmp_path: Path, codec: str, bom: bytes, expected: str) -> None:
    text = "# Título\r\nWörds in UTF, naïve café, 3 € and 日本\r\n" * 30
    write(tmp_path, "wide.md", bom + text.encode(codec))
    docs, skips = collect(tmp_path)
    assert skips == {}
    (doc,) = docs
    assert doc.encoding == expected
    assert doc.text == text.replace("\r\n", "\n")


def test_binary_with_a_bom_or_a_utf16_look_is_still_binary(tmp_path: Path) -> None:
    import random

    noise = random.Random(3).randbytes(4096)
    write(tmp_path, "bom-then-noise.txt", b"\xff\xfe" + noise)
    write(tmp_path, "zeros-every-other.txt", bytes(b for c in noise[:2000] for b in (c, 0)))
    write(tmp_path, "elf.md", b"\x7fELF\x02\x01\x01" + bytes(300) + noise)
    docs, skips = collect(tmp_path)
    assert docs == []
    assert set(skips) == {"bom-then-noise.txt", "zeros-every-other.txt", "elf.md"}
    assert all(r.startswith("binary file") for r in skips.values())


@pytest.mark.parametrize(
    ("text", "codec", "expected"),
    [
        ("Le café est très chaud. Où est la bibliothèque? Ça va. " * 10, "latin-1", "cp1252"),
        ("Größe und Übermaß, schön für Bäcker. „Gut“ – 5 € " * 10, "cp1252", "cp1252"),
        ("Привет, как дела? Это тест кодировки, ёлка. " * 10, "cp1251", "cp1251"),
        ("日本語のテキストです。これはテストです。" * 10, "shift_jis", "cp932"),
        ("这是一个中文测试文件。我们需要检测编码。" * 10, "gbk", "gb18030"),
        ("Καλημέρα κόσμε, αυτό είναι ένα δοκιμαστικό κείμενο. " * 10, "cp1253", "cp1253"),
    ],
)
def test_legacy_encodings_are_detected(
    tmp_path: Path, text: str, codec: str, expected: str
) -> None:
    write(tmp_path, "legacy.txt", text.encode(codec))
    (doc,) = collect(tmp_path)[0]
    assert doc.encoding == expected
    assert doc.text == text


def test_nul_bytes_make_a_file_binary_only_in_its_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "head.txt", b"text\0 with a NUL early\n" * 10)
    write(tmp_path, "tail.txt", b"plain text line\n" * 1000 + b"late\0NUL\0\n")
    with caplog.at_level(logging.WARNING, logger="corpusbatch.sources"):
        docs, skips = collect(tmp_path)
    assert skips["head.txt"].startswith("binary file")
    (doc,) = docs
    assert doc.path == "tail.txt" and doc.text.endswith("lateNUL\n") and "\0" not in doc.text
    assert "tail.txt: dropped 2 NUL characters from the text" in caplog.text


def test_bom_and_newlines_normalised(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf# Title\r\nline two\rline three\n"
    write(tmp_path, "bom.md", raw)
    (doc,) = collect(tmp_path)[0]
    assert doc.text == "# Title\nline two\nline three\n"
    assert doc.encoding == "utf-8"
    assert doc.kind == "markdown"
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.md", "secret\n")
    write(tmp_path, "open.md", "fine\n")
    path.chmod(0)
    try:
        docs, skips = collect(tmp_path)
    finally:
        path.chmod(0o644)
    assert paths(docs) == ["open.md"]
    assert "permission" in skips["locked.md"]


def test_file_vanishing_after_listing_is_reported(tmp_path: Path) -> None:
    gone = write(tmp_path, "gone.md", "here for the listing\n")
    listed = list_files(tmp_path)
    gone.unlink()
    skips: dict[str, str] = {}
    assert [read_document(tmp_path, p, on_skip=skips.__setitem__) for p in listed] == [None]
    assert "cannot read" in skips["gone.md"]


def test_read_errors_go_to_on_unreadable_and_content_skips_to_on_skip(tmp_path: Path) -> None:
    write(tmp_path, "blob.txt", b"abc\x00" * 100)
    write(tmp_path, "empty.md", "")
    write(tmp_path, "ok.md", "text\n")
    gone = write(tmp_path, "gone.md", "here for the listing\n")
    swapped = write(tmp_path, "swapped.md", "a file when listed\n")
    listed = list_files(tmp_path)
    gone.unlink()
    swapped.unlink()
    swapped.mkdir()  # read_bytes() now fails with IsADirectoryError, a real OSError
    skipped: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    docs = [
        read_document(
            tmp_path, p, on_skip=skipped.__setitem__, on_unreadable=unreadable.__setitem__
        )
        for p in listed
    ]
    assert [d.path for d in docs if d is not None] == ["ok.md"]
    assert set(skipped) == {"blob.txt", "empty.md"}  # known content: skip for good
    assert set(unreadable) == {"gone.md", "swapped.md"}  # unknown content: try again
    assert "vanished" in unreadable["gone.md"]
    assert "cannot read" in unreadable["swapped.md"] and "directory" in unreadable["swapped.md"]
    assert "fix" in unreadable["swapped.md"]  # says what to do


def test_read_errors_still_go_to_on_skip_without_on_unreadable(tmp_path: Path) -> None:
    swapped = write(tmp_path, "swapped.md", "a file when listed\n")
    (listed,) = list_files(tmp_path)
    swapped.unlink()
    swapped.mkdir()
    skipped: dict[str, str] = {}
    assert read_document(tmp_path, listed, on_skip=skipped.__setitem__) is None
    assert "cannot read" in skipped["swapped.md"]


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root can read anything")
def test_permission_denied_goes_to_on_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.md", "secret\n")
    path.chmod(0)
    skipped: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    try:
        doc = read_document(
            tmp_path, path, on_skip=skipped.__setitem__, on_unreadable=unreadable.__setitem__
        )
    finally:
        path.chmod(0o644)
    assert doc is None and not skipped
    assert "permission" in unreadable["locked.md"]


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as info:
        iter_documents(tmp_path / "nope")  # raised by the call, not on first next()
    assert info.value.path == str(tmp_path / "nope")
    file = write(tmp_path, "f.md", "x\n")
    with pytest.raises(SourceError, match="not a folder"):
        list_files(file)


def test_read_document_relative_and_absolute(tmp_path: Path) -> None:
    write(tmp_path, "dir/code.rs", "fn main() {}\n")
    by_rel = read_document(tmp_path, Path("dir/code.rs"))
    by_abs = read_document(tmp_path, tmp_path / "dir" / "code.rs")
    assert by_rel == by_abs
    assert by_rel is not None
    assert (by_rel.path, by_rel.kind, by_rel.language) == ("dir/code.rs", "code", "rust")


@pytest.mark.parametrize(
    ("name", "kind", "language"),
    [
        ("a.md", "markdown", None),
        ("a.MDX", "markdown", None),
        ("a.rst", "rst", None),
        ("a.txt", "text", None),
        ("a.htm", "html", None),
        ("a.py", "code", "python"),
        ("a.ts", "code", "typescript"),
        ("a.h", "code", "c"),
        ("a.yml", "code", "yaml"),
        ("README", "text", None),
    ],
)
def test_detect_kind(name: str, kind: str, language: str | None) -> None:
    assert detect_kind(name) == (kind, language)


# --------------------------------------------------------------------------- HTML

HTML = """<!DOCTYPE html>
<html>
<head>
  <title>Brew &amp; Co</title>
  <style>
    h1 { color: brown; }
  </style>
</head>
<body>
  <h1>Pour-over
      basics</h1>
  <p>Water at 94&nbsp;&deg;C.<br>Then <b>bloom</b> for 30 s.</p><div>next</div>
  <script type="text/javascript">
    var hidden = "never shown";
  </script>
  <!-- a comment
       over two lines -->
  <a href="x"
     class="long">link text</a>
      <h3 id="ratio">Ratio</h3>
  <template><p>template body</p></template>
  <pre>
  x  =  1
  </pre>
</body>
</html>
"""


def test_html_keeps_every_line() -> None:
    text = html_to_text(HTML)
    src_lines = HTML.split("\n")
    out_lines = text.split("\n")
    assert len(out_lines) == len(src_lines)
    assert out_lines[3].strip() == "Brew & Co"
    assert out_lines[9] == "# Pour-over basics"  # source line 10, where <h1> starts
    assert out_lines[10] == ""
    assert "Water at 94\u00a0\u00b0C. Then bloom for 30 s. next" in out_lines[11]
    assert out_lines[18].strip() == "link text"
    assert out_lines[19] == "### Ratio"  # leading indentation removed
    assert "  x  =  1" in out_lines[22]  # <pre> spacing kept
    for dropped in ("color", "never shown", "comment", "template body", "href"):
        assert dropped not in text


_HTML_PIECES = st.sampled_from(
    [
        *("<p>", "</p>", "<h2>", "</h2>", "<h1 class='a'\n>", "</h1>", "<script>", "</script>"),
        *("<style>", "</style>", "<!--", "-->", "<br>", "<pre>", "</pre>", "<div\n>", "</div>"),
        *("<template>", "</template>", "<", ">", "&", "&amp;", "<!DOCTYPE html>", "<?x?>"),
        *("\n", " ", "\t", "word", "é"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_HTML_PIECES, max_size=40))
def test_html_line_count_is_preserved(parts: list[str]) -> None:
    html = "".join(parts)
    text = html_to_text(html)
    assert text.count("\n") == html.count("\n")
    for line in text.split("\n"):
        assert line == line.rstrip()


def test_html_document_kind(tmp_path: Path) -> None:
    write(tmp_path, "page.html", HTML.replace("\n", "\r\n"))
    (doc,) = collect(tmp_path)[0]
    assert doc.kind == "html"
    assert doc.text.count("\n") == HTML.count("\n")
    assert doc.text.split("\n")[9] == "# Pour-over basics"


def test_html_with_only_markup_is_empty(tmp_path: Path) -> None:
    write(tmp_path, "blank.html", "<html>\n<script>x()</script>\n</html>\n")
    docs, skips = collect(tmp_path)
    assert docs == []
    assert "empty" in skips["blank.html"]


# --------------------------------------------------------------------------- sample corpus


@pytest.fixture(scope="module")
def sample() -> tuple[list[Document], dict[str, str]]:
    skips: dict[str, str] = {}
    docs = list(iter_documents(SAMPLE, on_skip=skips.__setitem__))
    return docs, skips


def test_sample_corpus_documents(sample: tuple[list[Document], dict[str, str]]) -> None:
    docs, skips = sample
    by_path = {d.path: d for d in docs}
    assert len(docs) >= 40
    assert paths(docs) == sorted(paths(docs))
    # Exactly the two special files that cannot be used are reported, with their reason.
    assert set(skips) == {"notes/empty.txt", "notes/scale-firmware.txt"}
    assert "empty" in skips["notes/empty.txt"]
    assert "binary" in skips["notes/scale-firmware.txt"]
    # Ignored (.gitignore'd drafts/) and hidden (.obsidian/) files never appear.
    assert not any(p.startswith(("drafts/", ".")) or "/." in p for p in by_path)
    assert {d.kind for d in docs} == {"markdown", "rst", "text", "html", "code"}
    assert {d.language for d in docs if d.kind == "code"} == {"python"}
    menu = by_path["notes/old-cafe-menu.txt"]
    assert menu.encoding == "cp1252"
    assert "Café" in menu.text and "€" in menu.text and "\r" not in menu.text
    assert all(d.encoding == "utf-8" for d in docs if d is not menu)


def test_sample_corpus_html_headings_on_source_lines(
    sample: tuple[list[Document], dict[str, str]],
) -> None:
    for doc in sample[0]:
        if doc.kind != "html":
            continue
        source = (SAMPLE / doc.path).read_text(encoding="utf-8")
        assert doc.text.count("\n") == source.count("\n")
        for src_line, out_line in zip(source.split("\n"), doc.text.split("\n"), strict=True):
            if src_line.lstrip().startswith("<h1"):
                assert out_line.startswith("# "), (doc.path, src_line)
            if "<" in out_line and ">" in out_line:
                pytest.fail(f"tag left in {doc.path}: {out_line!r}")


def test_sample_corpus_has_three_long_documents(
    sample: tuple[list[Document], dict[str, str]],
) -> None:
    from corpusbatch.tokenizers import get_tokenizer

    tok = get_tokenizer("cl100k_base")
    long_docs = {d.path for d in sample[0] if tok.count(d.text) >= 20_000}
    assert long_docs >= {
        "guides/troubleshooting-handbook.md",
        "reference/glossary.rst",
        "tools/brewlab.py",
    }
