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
    (and logged at INFO): binary content, empty or whitespace-only files, symlinks that
    point outside the root or nowhere, symlink loops, unreadable files, files over
    :data:`MAX_FILE_BYTES`. Problems with a folder (a symlink out of the root, a loop)
    are reported with a trailing ``/``. A file that is not UTF-8 is *not* skipped: it is decoded as
    cp1252 (or latin-1 when cp1252 fails), a WARNING names the file and codec, and
    :attr:`Document.encoding` records it.

Symlinks
    A symlink is never followed out of the root. Symlinked folders inside the root are
    followed, so their files also appear under the link's path (equal chunks share one
    vector, so this costs no extra tokens); a link back to one of its own parents is cut.

Documents are yielded in sorted order of their POSIX relative path, one file in memory
at a time, so two runs over the same tree give the same sequence.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
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

#: Files larger than this are skipped (and reported): they are almost never prose.
MAX_FILE_BYTES = 50 * 1024 * 1024

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


def _load_gitignore(directory: Path, rel_dir: str) -> _Ignore | None:
    gitignore = directory / ".gitignore"
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
        own = _load_gitignore(directory, rel_dir)
        if own is not None:
            ignores = [*ignores, own]
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            _skip(self.on_skip, rel_dir or ".", f"cannot list folder ({exc.strerror})")
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            self._visit(entry, rel, ignores, stack)

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
        elif is_link and not os.path.exists(real):
            _skip(self.on_skip, rel, "broken symlink (target does not exist)")
        elif is_link and not _inside(real, str(self.root)):
            _skip(self.on_skip, rel, f"symlink points outside the root (to {real})")
        elif entry.is_file():
            self.found.append((rel, Path(entry.path)))

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


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _skip(on_skip: SkipCallback | None, rel: str, reason: str) -> None:
    logger.info("skipping %s: %s", rel, reason)
    if on_skip is not None:
        on_skip(rel, reason)


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
    (permission denied, an I/O error, vanished, not a regular file any more) goes to
    ``on_unreadable`` when given, else to ``on_skip``: its content is unknown, so a
    caller should not remember it as skipped for good but try it again next time.
    Both reasons are logged.
    """
    root = Path(root).resolve()
    full = path if path.is_absolute() else root / path
    rel = _relative(root, full)
    raw = _read_bytes(full, rel, on_skip, on_unreadable or on_skip)
    if raw is None:
        return None
    if _looks_binary(raw):
        _skip(on_skip, rel, "binary file (NUL or control bytes); exclude it or fix its extension")
        return None
    text, encoding = _decode(raw, rel)
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


def _read_bytes(
    full: Path, rel: str, on_skip: SkipCallback | None, on_unreadable: SkipCallback | None
) -> bytes | None:
    """The file's bytes, or None: too large goes to ``on_skip``, read errors to
    ``on_unreadable``."""
    try:
        size = full.stat().st_size
        if size > MAX_FILE_BYTES:
            _skip(on_skip, rel, f"file too large ({size} bytes > {MAX_FILE_BYTES})")
            return None
        return full.read_bytes()
    except PermissionError:
        _unreadable(on_unreadable, rel, "permission denied; fix its permissions or exclude it")
    except FileNotFoundError:
        _unreadable(on_unreadable, rel, "cannot read file: it vanished after it was listed")
    except OSError as exc:
        _unreadable(
            on_unreadable,
            rel,
            f"cannot read file ({exc.strerror or exc}); fix the error or exclude the file",
        )
    return None


def _unreadable(on_unreadable: SkipCallback | None, rel: str, reason: str) -> None:
    logger.warning("cannot read %s: %s", rel, reason)
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


def _decode(raw: bytes, rel: str) -> tuple[str, str]:
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    for codec in ("cp1252", "latin-1"):
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        logger.warning("%s is not UTF-8; decoded as %s", rel, codec)
        return text, codec
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


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
