"""Find the documents under a folder and read them into :class:`Document` objects.

What is read
    Files whose path matches ``include`` (gitignore-style globs relative to the root;
    :data:`DEFAULT_INCLUDE` when none are given) and not ``exclude``. Exclude wins.

What is never read
    Hidden files and directories (name starts with ``.``, so ``.git`` and ``.corpusbatch``
    too), ``node_modules``, ``__pycache__``, virtualenvs (any directory holding a
    ``pyvenv.cfg``), build output (see :data:`PRUNED_DIRS`, plus ``*.egg-info``), and
    anything ignored by a ``.gitignore`` at the root or in a subdirectory (git's nested
    semantics: deeper files override shallower ones, ``!`` re-includes, a file inside an
    ignored directory cannot be re-included). ``.gitignore`` files above the root and
    ``.git/info/exclude`` are not consulted. Note that ``site/`` is treated as build output
    (MkDocs writes there).

    Files left out by these rules are *not* reported one by one: a ``node_modules`` can
    hold a hundred thousand of them. Pruned directories are logged at DEBUG level.

What is reported
    Files that matched but could not be used are passed to ``on_skip(path, reason)``
    and logged on ONE line that names the file (a name with a newline or another
    unprintable character is shown escaped, as a Python string literal): binary
    content, empty or whitespace-only files, files over :data:`MAX_FILE_BYTES`,
    symlinks that point outside the root or nowhere, symlink loops, FIFOs, sockets and
    devices (never opened, so a FIFO cannot hang the scan), names that are not valid
    UTF-8 (they cannot be stored or searched as text: rename them), unreadable files,
    files that vanish or keep changing while they are read, and a ``.gitignore`` that
    is a symlink (not followed, as git does not follow one either). Problems with a
    folder (a symlink out of the root, a loop) are reported with a trailing ``/``.
    Every reason starts with a fixed phrase; :func:`skip_kind` maps it to a short
    kind (``binary``, ``empty``, ``too_large``...) that run reports count by.

Size limit
    A file over :data:`MAX_FILE_BYTES` (50 MiB) is skipped from its size alone, without
    being read: at that size a "document" is a log, a dump or generated data, and it
    would cost millions of tokens (about 12 M for 50 MiB of English) or hours of local
    CPU. Split it, or exclude it.

Decoding
    1. A byte order mark decides: UTF-8, UTF-16 (LE/BE) or UTF-32 (LE/BE).
    2. Otherwise UTF-8, strictly: the fast path, taken by every valid UTF-8 file.
    3. UTF-16 without a BOM is recognised when its text is mostly Latin script (a NUL
       byte in every other position, as Notepad and PowerShell write it) and it
       decodes to printable text; without that it is binary.
    4. A file that is UTF-8 except for a few invalid bytes (no more invalid bytes than
       correctly encoded non-ASCII characters) is decoded as UTF-8 with each invalid
       sequence replaced by U+FFFD; a WARNING names the file and the number of bytes.
    5. Anything else is a legacy 8-bit or East Asian encoding, detected with
       charset-normalizer among the common Windows, ISO and CJK code pages. Western
       European text decodes the same in several of them; then cp1252 is chosen, as
       browsers do. A WARNING names the file and the codec.

    :attr:`Document.encoding` records the codec used. NUL characters after the first
    8 KiB (which would have made the file binary) are dropped from the text, warned.

Symlinks
    A symlink is never followed out of the root. Symlinked folders inside the root are
    followed, so their files also appear under the link's path (equal chunks share one
    vector, so this costs no extra tokens); a link back to one of its own parents is cut.

Documents are yielded in sorted order of their POSIX relative path, one file in memory
at a time, so two runs over the same tree give the same sequence.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pathspec

from corpusbatch.errors import SourceError
from corpusbatch.types import DocKind, Document

__all__ = [
    "DEFAULT_INCLUDE",
    "MAX_FILE_BYTES",
    "PRUNED_DIRS",
    "SkipCallback",
    "detect_kind",
    "html_to_text",
    "iter_documents",
    "list_files",
    "read_document",
    "shown",
    "skip_kind",
]

logger = logging.getLogger(__name__)

SkipCallback = Callable[[str, str], None]

#: Extensions read when no ``include`` is given. JSON, YAML and TOML are left out on
#: purpose: in a documentation folder they are mostly lock files, fixtures and configs
#: whose embeddings make noisy search hits. Pass ``include=["*.yaml"]`` to add them.
_KIND_BY_EXT: dict[str, DocKind] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
}

_LANGUAGE_BY_EXT: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".rs": "rust",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".r": "r",
    ".lua": "lua",
}

# Recognised when a user includes them explicitly; not in the default set (see above).
_EXTRA_LANGUAGES: dict[str, str] = {
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".css": "css",
}

DEFAULT_INCLUDE: tuple[str, ...] = tuple(
    f"*{ext}" for ext in sorted({*_KIND_BY_EXT, *_LANGUAGE_BY_EXT})
)

#: Directory names never descended into (build output, caches, dependencies).
PRUNED_DIRS: frozenset[str] = frozenset(
    {"node_modules", "__pycache__", "build", "dist", "target", "site", "_build", "venv", "env"}
)

#: Files larger than this are skipped (and reported) from their size alone, unread:
#: they are almost never prose (see "Size limit" in the module docstring).
MAX_FILE_BYTES = 50 * 1024 * 1024
#: A .gitignore larger than this is not read (a real one is a few KiB).
_MAX_GITIGNORE_BYTES = 1024 * 1024

_SNIFF_BYTES = 8192
# Control bytes other than \t \n \f \r and ESC; more than 10% of them means "not text".
_CONTROL = bytes(b for b in range(32) if b not in (8, 9, 10, 12, 13, 27)) + b"\x7f"
_CONTROL_RATIO = 0.10


def detect_kind(path: str | Path) -> tuple[DocKind, str | None]:
    """Kind and (for code) language of a file, from its extension.

    Unknown extensions are read as plain text.
    """
    ext = Path(path).suffix.lower()
    if ext in _KIND_BY_EXT:
        return _KIND_BY_EXT[ext], None
    language = _LANGUAGE_BY_EXT.get(ext) or _EXTRA_LANGUAGES.get(ext)
    if language is not None:
        return "code", language
    return "text", None


# --------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class _Rules:
    include: pathspec.PathSpec[Any]
    exclude: pathspec.PathSpec[Any]


@dataclass(frozen=True)
class _Ignore:
    """One .gitignore file: the directory it lives in (relative, "" for root) and its spec."""

    base: str
    spec: pathspec.GitIgnoreSpec


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise SourceError(
            f"corpus folder {root} does not exist",
            path=str(root),
            hint="check the path, or pass the folder that holds your documents",
        )
    if not root.is_dir():
        raise SourceError(
            f"corpus path {root} is a file, not a folder",
            path=str(root),
            hint="pass the folder that contains it; narrow with --include if needed",
        )
    return root.resolve()


def _rules(include: Sequence[str], exclude: Sequence[str]) -> _Rules:
    return _Rules(
        include=pathspec.GitIgnoreSpec.from_lines(include or DEFAULT_INCLUDE),
        exclude=pathspec.GitIgnoreSpec.from_lines(exclude),
    )


def _load_gitignore(
    directory: Path, rel_dir: str, on_skip: SkipCallback | None = None
) -> _Ignore | None:
    """The .gitignore of ``directory``, if it is a regular file.

    A symlinked .gitignore is not followed (git does not follow one in the work tree
    either, and following it could read a file outside the root, a FIFO or a device);
    it is reported. Other non-files (a folder, a FIFO) are ignored unread.
    """
    gitignore = directory / ".gitignore"
    rel = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
    try:
        st = os.lstat(gitignore)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        _skip(
            on_skip,
            rel,
            "symlinked .gitignore not followed (git does not follow one either); "
            "its rules do not apply, copy the file in instead of linking it",
        )
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_GITIGNORE_BYTES:
        return None
    try:
        lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return _Ignore(rel_dir, pathspec.GitIgnoreSpec.from_lines(lines))


def _gitignored(rel: str, ignores: Sequence[_Ignore], is_dir: bool) -> bool:
    """Whether git would ignore ``rel``; the deepest .gitignore with an opinion decides."""
    for ignore in reversed(ignores):
        sub = rel[len(ignore.base) + 1 :] if ignore.base else rel
        result = ignore.spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


def _is_pruned_dir(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name.endswith(".egg-info"):
        return True
    if name in PRUNED_DIRS and name not in ("venv", "env"):
        return True
    # Any virtualenv, whatever its name (venv/env included), is marked by pyvenv.cfg.
    return os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))


class _Walker:
    """Depth-first walk collecting candidate files; reports unusable symlinks."""

    def __init__(self, root: Path, rules: _Rules, on_skip: SkipCallback | None) -> None:
        self.root = root
        self.rules = rules
        self.on_skip = on_skip
        self.found: list[tuple[str, Path]] = []

    def walk(self) -> list[Path]:
        self._walk_dir(self.root, "", [], [str(self.root)])
        self.found.sort(key=lambda item: item[0])
        return [path for _, path in self.found]

    def _walk_dir(
        self, directory: Path, rel_dir: str, ignores: list[_Ignore], stack: list[str]
    ) -> None:
        own = _load_gitignore(directory, rel_dir, self.on_skip)
        if own is not None:
            ignores = [*ignores, own]
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            _skip(self.on_skip, rel_dir or ".", f"cannot list folder ({exc.strerror})")
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if not entry.name.isascii() and not _valid_name(entry.name):
                self._bad_name(entry, rel, ignores)
                continue
            self._visit(entry, rel, ignores, stack)

    def _bad_name(self, entry: os.DirEntry[str], rel: str, ignores: list[_Ignore]) -> None:
        """A name that is not valid UTF-8 (decoded with surrogate escapes): it cannot be
        stored or searched as text, so it is reported (under an escaped name) if it
        would have been read, never read."""
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if entry.name.startswith(".") or (is_dir and _is_pruned_dir(entry)):
            return
        shown_rel = ascii(rel)
        if is_dir:
            _skip(self.on_skip, shown_rel + "/", _BAD_NAME)
        elif self._wanted(rel, ignores):
            _skip(self.on_skip, shown_rel, _BAD_NAME)

    def _visit(
        self, entry: os.DirEntry[str], rel: str, ignores: list[_Ignore], stack: list[str]
    ) -> None:
        is_link = entry.is_symlink()
        real = os.path.realpath(entry.path) if is_link else entry.path
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            self._visit_dir(entry, rel, real, is_link, ignores, stack)
        elif entry.name.startswith(".") or not self._wanted(rel, ignores):
            return
        elif is_link and _is_loop(entry.path):
            _skip(self.on_skip, rel, "symlink loop (the link resolves to itself)")
        elif is_link and not os.path.exists(real):
            _skip(self.on_skip, rel, "broken symlink (target does not exist)")
        elif is_link and not _inside(real, str(self.root)):
            _skip(self.on_skip, rel, f"symlink points outside the root (to {real})")
        elif entry.is_file():
            self.found.append((rel, Path(entry.path)))
        else:
            what = _special_kind(entry)
            if what is not None:
                _skip(self.on_skip, rel, f"not a regular file ({what}); not read, exclude it")

    def _visit_dir(
        self,
        entry: os.DirEntry[str],
        rel: str,
        real: str,
        is_link: bool,
        ignores: list[_Ignore],
        stack: list[str],
    ) -> None:
        if _is_pruned_dir(entry) or _gitignored(rel, ignores, is_dir=True):
            logger.debug("not descending into %s (hidden, build output or ignored)", rel)
            return
        if self.rules.exclude.match_file(rel + "/"):
            return
        if is_link and not _inside(real, str(self.root)):
            _skip(self.on_skip, rel + "/", f"symlink points outside the root (to {real})")
            return
        real = os.path.realpath(entry.path)
        if real in stack:
            _skip(self.on_skip, rel + "/", "symlink loop (points to one of its parents)")
            return
        self._walk_dir(Path(entry.path), rel, ignores, [*stack, real])

    def _wanted(self, rel: str, ignores: list[_Ignore]) -> bool:
        if not self.rules.include.match_file(rel) or self.rules.exclude.match_file(rel):
            return False
        return not _gitignored(rel, ignores, is_dir=False)


_BAD_NAME = "file name is not valid UTF-8 (shown escaped); rename it to index it"


def _valid_name(name: str) -> bool:
    """Whether a non-ASCII name from the OS is real Unicode (no surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(entry: os.DirEntry[str] | os.stat_result) -> str | None:
    """What a non-regular, non-folder entry is; None if it cannot be stat'ed."""
    try:
        mode = entry.st_mode if isinstance(entry, os.stat_result) else entry.stat().st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def shown(rel: str) -> str:
    """``rel`` as it is written in log lines and reports meant for people: as is when
    every character is printable, else as an escaped Python string literal, so a name
    with a newline still makes one line."""
    return rel if rel.isprintable() else repr(rel)


def _skip(on_skip: SkipCallback | None, rel: str, reason: str) -> None:
    logger.info("skipping %s: %s", shown(rel), reason)
    if on_skip is not None:
        on_skip(rel, reason)


#: (first words of a reason, kind) in the order they are tried; see :func:`skip_kind`.
_KINDS: tuple[tuple[str, str], ...] = (
    ("binary file", "binary"),
    ("empty file", "empty"),
    ("file too large", "too_large"),
    ("broken symlink", "broken_symlink"),
    ("symlink points outside", "symlink_outside_root"),
    ("symlink loop", "symlink_loop"),
    ("symlinked .gitignore", "gitignore_symlink"),
    ("not a regular file", "not_regular_file"),
    ("file name is not valid", "bad_file_name"),
    ("permission denied", "permission_denied"),
    ("cannot read file: it vanished", "vanished"),
    ("cannot read file: it kept changing", "changed_while_read"),
    ("cannot read file (not a regular file", "not_regular_file"),
    ("cannot read file", "read_error"),
    ("cannot stat", "read_error"),
    ("cannot list folder", "unlistable_folder"),
    ("cannot be chunked", "chunking_error"),
)


def skip_kind(reason: str) -> str:
    """The short kind of a skip reason (``binary``, ``empty``, ``too_large``,
    ``permission_denied``...), for counting skips by reason; ``other`` if unknown."""
    return next((kind for start, kind in _KINDS if reason.startswith(start)), "other")


def list_files(
    root: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    on_skip: SkipCallback | None = None,
) -> list[Path]:
    """Candidate files under ``root``, sorted by relative path; nothing is read.

    Cheap enough to call first for a progress total. Binary or empty files are still in
    the list (finding them needs a read); :func:`iter_documents` skips them.

    Raises:
        SourceError: ``root`` does not exist or is not a folder.
    """
    resolved = _check_root(Path(root))
    return _Walker(resolved, _rules(include, exclude), on_skip).walk()


def iter_documents(
    root: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    on_skip: SkipCallback | None = None,
) -> Iterator[Document]:
    """Yield every readable document under ``root`` in sorted path order.

    ``on_skip(relative_path, reason)`` is called for each file that matched but cannot
    be used (binary, empty, unreadable, symlink out of the root...). See the module
    docstring for the full rules.

    The folder is walked when iteration starts; files are then read one at a time.

    Raises:
        SourceError: ``root`` does not exist or is not a folder (raised by this call,
            before any iteration).
    """
    resolved = _check_root(Path(root))
    return _read_all(resolved, _rules(include, exclude), on_skip)


def _read_all(root: Path, rules: _Rules, on_skip: SkipCallback | None) -> Iterator[Document]:
    for path in _Walker(root, rules, on_skip).walk():
        doc = read_document(root, path, on_skip=on_skip)
        if doc is not None:
            yield doc


# --------------------------------------------------------------------------- reading


def read_document(
    root: Path,
    path: Path,
    *,
    on_skip: SkipCallback | None = None,
    on_unreadable: SkipCallback | None = None,
) -> Document | None:
    """Read one file into a :class:`Document`, or return ``None`` if it must be skipped.

    ``path`` may be absolute or relative to ``root``. A file skipped for its content
    (binary, empty, too large) goes to ``on_skip``; a file that could not be read at all
    (permission denied, an I/O error, vanished, not a regular file any more, changing
    all the time it was read) goes to ``on_unreadable`` when given, else to ``on_skip``:
    its content is unknown, so a caller should not remember it as skipped for good but
    try it again next time. Both reasons are logged, on one line each.
    """
    root = Path(root).resolve()
    full = path if path.is_absolute() else root / path
    rel = _relative(root, full)
    raw = _read_bytes(full, rel, on_skip, on_unreadable or on_skip)
    if raw is None:
        return None
    text, encoding = _decode(raw, rel)
    if text is None:
        _skip(on_skip, rel, "binary file (NUL or control bytes); exclude it or fix its extension")
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kind, language = detect_kind(full)
    if kind == "html":
        text = html_to_text(text)
    if not text.strip():
        _skip(on_skip, rel, "empty file (no text)")
        return None
    digest = hashlib.sha256(raw).hexdigest()
    return Document(rel, text, kind, digest, language=language, encoding=encoding)


def _relative(root: Path, full: Path) -> str:
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        # A symlinked root or a path given through a link: fall back to the path as given.
        return full.as_posix()


#: Reads of one file whose size or mtime changed while it was read, before giving up.
_READ_TRIES = 3
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_bytes(
    full: Path, rel: str, on_skip: SkipCallback | None, on_unreadable: SkipCallback | None
) -> bytes | None:
    """The file's bytes, or None: too large goes to ``on_skip``, read errors to
    ``on_unreadable``.

    The file is opened non-blocking and checked to be a regular file before anything is
    read, so a FIFO or device that took a listed file's place cannot hang or flood the
    scan. A file whose size or mtime changes while it is read is read again (a torn
    read would mix two versions); after :data:`_READ_TRIES` reads it is unreadable for
    this run.
    """
    try:
        fd = os.open(full, _OPEN_FLAGS)
    except OSError as exc:
        _read_error(on_unreadable, rel, exc)
        return None
    try:
        with open(fd, "rb", buffering=0, closefd=True) as fh:
            before = os.fstat(fd)
            for _ in range(_READ_TRIES):
                if not stat.S_ISREG(before.st_mode):
                    what = _special_kind(before)
                    _unreadable(
                        on_unreadable,
                        rel,
                        f"cannot read file (not a regular file any more: {what}); "
                        "fix it or exclude it",
                    )
                    return None
                if before.st_size > MAX_FILE_BYTES:
                    _skip(
                        on_skip,
                        rel,
                        f"file too large ({before.st_size:,} bytes, over the "
                        f"{MAX_FILE_BYTES // (1024 * 1024)} MiB limit for one document); "
                        "split it or exclude it",
                    )
                    return None
                fh.seek(0)
                data = fh.read()
                after = os.fstat(fd)
                if _same_version(before, after) and len(data) == after.st_size:
                    return data
                before = after
    except OSError as exc:
        _read_error(on_unreadable, rel, exc)
        return None
    _unreadable(
        on_unreadable,
        rel,
        f"cannot read file: it kept changing while it was read ({_READ_TRIES} tries); "
        "it is read again next run",
    )
    return None


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _read_error(on_unreadable: SkipCallback | None, rel: str, exc: OSError) -> None:
    if isinstance(exc, PermissionError):
        reason = "permission denied; fix its permissions or exclude it"
    elif isinstance(exc, FileNotFoundError):
        reason = "cannot read file: it vanished after it was listed"
    elif isinstance(exc, IsADirectoryError):
        reason = "cannot read file (not a regular file any more: a directory); fix it or exclude it"
    else:
        reason = f"cannot read file ({exc.strerror or exc}); fix the error or exclude the file"
    _unreadable(on_unreadable, rel, reason)


def _unreadable(on_unreadable: SkipCallback | None, rel: str, reason: str) -> None:
    logger.warning("cannot read %s: %s", shown(rel), reason)
    if on_unreadable is not None:
        on_unreadable(rel, reason)


def _looks_binary(raw: bytes) -> bool:
    head = raw[:_SNIFF_BYTES]
    if b"\0" in head:
        return True
    if not head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL))
    return controls / len(head) > _CONTROL_RATIO


# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Characters that do not occur in text: controls other than whitespace, unassigned code
# points, private use, lone surrogates.
_NOT_TEXT = frozenset({"Cc", "Cn", "Co", "Cs"})
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1b")
# Decoded text with more than this share of such characters is not text.
_NOT_TEXT_RATIO = 0.01


def _decode(raw: bytes, rel: str) -> tuple[str | None, str]:
    """``(text, codec)``; text None when the bytes are not text (binary).

    The order is described under "Decoding" in the module docstring.
    """
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            if codec.startswith("utf-32") and len(raw) % 4:
                continue  # FF FE 00 00 at the start of an odd-sized UTF-16 file
            body = raw[len(bom) :]
            if codec == "utf-8" and _looks_binary(body):
                return None, codec
            text = _decode_replacing(body, codec, rel)
            if codec != "utf-8" and not _is_text(text):
                return None, codec
            return _drop_nul(text, rel), codec
    if _looks_binary(raw):
        return _utf16_without_bom(raw, rel)
    try:
        return _drop_nul(raw.decode("utf-8"), rel), "utf-8"  # the fast path
    except UnicodeDecodeError:
        pass
    escaped = raw.decode("utf-8", "surrogateescape")
    bad = len(_SURROGATES.findall(escaped))
    good = len(escaped) - len(escaped.encode("ascii", "ignore")) - bad  # non-ASCII chars
    if 0 < bad <= good:
        logger.warning(
            "%s is UTF-8 with %d invalid byte%s; replaced with U+FFFD",
            shown(rel),
            bad,
            "" if bad == 1 else "s",
        )
        return _drop_nul(raw.decode("utf-8", "replace"), rel), "utf-8"
    codec = _legacy_codec(raw)
    text = _decode_replacing(raw, codec, rel, warn=False)
    logger.warning("%s is not UTF-8; decoded as %s", shown(rel), codec)
    return _drop_nul(text, rel), codec


_SURROGATES = re.compile("[\udc80-\udcff]")


def _decode_replacing(raw: bytes, codec: str, rel: str, *, warn: bool = True) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        text = raw.decode(codec, "replace")
    if warn:
        logger.warning("%s has invalid %s; replaced with U+FFFD", shown(rel), codec)
    return text


def _drop_nul(text: str, rel: str) -> str:
    if "\0" not in text:
        return text
    logger.warning("%s: dropped %d NUL characters from the text", shown(rel), text.count("\0"))
    return text.replace("\0", "")


def _is_text(text: str) -> bool:
    sample = text[:_SNIFF_BYTES]
    if not sample:
        return True
    odd = sum(
        1
        for c in sample
        if c not in _TEXT_CONTROLS and unicodedata.category(c) in _NOT_TEXT and c != "\ufffd"
    )
    return "\0" not in sample and odd <= len(sample) * _NOT_TEXT_RATIO


# Share of 2-byte units with a zero high byte (characters below U+0100) that makes a
# file without a BOM a UTF-16 candidate: English, French or German text has 95-100%.
_UTF16_ZEROS = 0.7


def _utf16_without_bom(raw: bytes, rel: str) -> tuple[str | None, str]:
    """``(text, codec)`` of a UTF-16 file without a BOM; text None if ``raw`` is not one.

    Only text that is mostly Latin script can be recognised: most 2-byte units have a
    zero high byte, all on the same side. The decoded text must then be printable.
    """
    head = raw[: _SNIFF_BYTES * 2]
    if len(raw) % 2 or len(head) < 4:
        return None, "binary"
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if odd >= half * _UTF16_ZEROS and even <= odd * 0.02:
        codec = "utf-16-le"
    elif even >= half * _UTF16_ZEROS and odd <= even * 0.02:
        codec = "utf-16-be"
    else:
        return None, "binary"
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return None, "binary"
    if not _is_text(text):
        return None, "binary"
    logger.warning("%s has no byte order mark; decoded as %s", shown(rel), codec)
    return text, codec


# Legacy encodings considered, most common first. DOS and Mac code pages are left out:
# on short Western text they fit as well as cp1252 and would garble it.
_LEGACY = [
    "cp1252",
    "cp1250",
    "cp1251",
    "cp1253",
    "cp1254",
    "cp1255",
    "cp1256",
    "cp1257",
    "cp1258",
    "iso8859_2",
    "iso8859_5",
    "iso8859_7",
    "iso8859_15",
    "koi8_r",
    "koi8_u",
    "cp932",
    "shift_jis",
    "euc_jp",
    "gb18030",
    "big5",
    "cp949",
    "euc_kr",
]


def _legacy_codec(raw: bytes) -> str:
    """The legacy encoding of ``raw`` as charset-normalizer detects it; cp1252 when it
    is one of several that decode the text equally well, or when nothing fits."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw, cp_isolation=_LEGACY))
    if not matches:
        return "cp1252" if _decodes(raw, "cp1252") else "latin-1"
    best = matches[0]
    for match in matches:
        tied = match.chaos <= best.chaos + 0.01 and match.coherence >= best.coherence - 0.01
        if tied and "cp1252" in match.could_be_from_charset:
            return "cp1252"
    return str(best.encoding)


def _decodes(raw: bytes, codec: str) -> bool:
    try:
        raw.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- HTML

_DROP_TAGS = frozenset({"script", "style", "template", "noscript", "svg"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "details",
        "dialog",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
        "title",
        "option",
        "caption",
    ]
)
_SPACES = re.compile(r"[ \t\f\v]+")


class _LineKeepingHTML(HTMLParser):
    """HTML to text that keeps every source line on the same line number.

    Before emitting anything for an event, the output is padded with newlines up to the
    event's source line (``getpos``), so tags, comments and dropped script bodies that
    span lines leave exactly their newlines behind.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.newlines = 0
        self.drop_depth = 0
        self.pre_depth = 0
        self.heading: int | None = None
        self.heading_text: list[str] = []

    def _sync(self) -> None:
        line = self.getpos()[0]
        if self.heading is None and line - 1 > self.newlines:
            self.parts.append("\n" * (line - 1 - self.newlines))
            self.newlines = line - 1

    def _emit(self, text: str) -> None:
        if self.heading is not None:
            self.heading_text.append(text)
            return
        self.parts.append(text)
        self.newlines += text.count("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._sync()
        if tag in _DROP_TAGS:
            self.drop_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
        if tag in _HEADINGS and self.drop_depth == 0:
            self._end_heading()
            self._trim_line()
            self.heading = _HEADINGS[tag]
        elif tag in _BLOCK_TAGS:
            self._space()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._sync()
        if tag in _BLOCK_TAGS:
            self._space()

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS and self.drop_depth:
            self.drop_depth -= 1
        elif tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in _HEADINGS:
            self._end_heading()
        self._sync()
        if tag in _BLOCK_TAGS:
            self._space()

    def handle_data(self, data: str) -> None:
        self._sync()
        if self.drop_depth:
            return  # newlines inside are restored by the next _sync
        if self.heading is not None:
            self.heading_text.append(data)
        elif self.pre_depth:
            self._emit(data)
        else:
            self._emit(_SPACES.sub(" ", data))

    def _end_heading(self) -> None:
        if self.heading is None:
            return
        title = " ".join("".join(self.heading_text).split())
        level, self.heading, self.heading_text = self.heading, None, []
        self._emit("#" * level + " " + title if title else "")

    def _trim_line(self) -> None:
        """Drop whitespace before a heading so ``#`` starts its line."""
        for i in range(len(self.parts) - 1, -1, -1):
            head, sep, tail = self.parts[i].rpartition("\n")
            if tail.strip():
                return
            if sep:
                self.parts[i] = head + sep
                del self.parts[i + 1 :]
                return
        self.parts.clear()

    def _space(self) -> None:
        """Separate words across a block tag, without piling up spaces."""
        if self.heading is not None:
            self.heading_text.append(" ")
        elif self.parts and not self.parts[-1][-1:].isspace():
            self._emit(" ")

    def finish(self, n_newlines: int) -> str:
        self.close()
        self._end_heading()
        if n_newlines > self.newlines:
            self.parts.append("\n" * (n_newlines - self.newlines))
        lines = "".join(self.parts).split("\n")
        return "\n".join(line.rstrip() for line in lines)


def html_to_text(html: str) -> str:
    """Render HTML as text with the same number of lines as ``html``.

    Tags are removed, ``script``/``style``/``template`` bodies dropped, entities decoded,
    and ``<h1>``..``<h6>`` written as Markdown ``#`` headings on the line where they
    start (a heading that starts mid-line stays mid-line). Block tags become spaces so
    words on either side do not run together. ``html`` must already use ``\\n`` newlines.
    """
    parser = _LineKeepingHTML()
    parser.feed(html)
    return parser.finish(html.count("\n"))
