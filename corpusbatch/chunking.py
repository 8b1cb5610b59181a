"""Cut documents into token-bounded chunks: encode once, cut on token offsets.

Each document is encoded once with the target tokenizer (:meth:`Tokenizer.bounds`).
Cuts are chosen among token boundaries, preferring structure: headings, then blank
lines, then line ends, then sentence ends, then whitespace, then any boundary (for code:
top-level definitions, then blank lines, then line ends). Small sibling sections are
packed greedily up to the budget; a heading cut wins over a later paragraph cut once the
chunk is reasonably full.

Token counts are exact without re-encoding whole chunks. A position right after a
newline, whose character is not whitespace, starts a pre-token for both tokenizers (no
pre-token of cl100k_base's pattern runs past a newline into non-whitespace, and
word-pieces split on whitespace), so between two such "sync" positions the tokens of a
chunk are exactly the document's tokens there, and the count is an index difference.
Only the pieces of a chunk before its first sync position and after its last one are
re-encoded (none when a chunk starts on a line start and ends in a word followed by
whitespace, the common case); :attr:`Chunker.stats` reports how much that was.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import ChunkingError
from .tokenizers import Tokenizer
from .types import Chunk, Document

__all__ = ["CHUNKER_VERSION", "Chunker", "ChunkerConfig", "ChunkerStats"]

log = logging.getLogger(__name__)

CHUNKER_VERSION = "1"

# Unicode White_Space, which is what the tokenizers' patterns treat as whitespace
# (str.isspace also accepts \x1c-\x1f, which they do not).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS = frozenset(WHITESPACE)
# What BERT's normalizer and pre-tokenizer split words on (other Unicode White_Space
# characters are control characters to it and are dropped, joining their neighbours).
_WORDPIECE_WS = frozenset(
    " \t\n\r\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
# Chunk edges are trimmed with str.strip() semantics (re's \s is str.isspace()).
_NON_SPACE = re.compile(r"\S")

# How full (fraction of max_tokens) a chunk must be before a cut of this kind is taken;
# a higher-priority kind is taken at its last occurrence inside the window.
_FILL_TOP_HEADING = 0.6
_FILL_HEADING = 0.75
_FILL_OTHER = 0.8
_FILL_CODE_DEF = 0.3

_SENTENCE_END = re.compile(r"(?:[.!?…][\"'”’)\]]*[ \t]+|[。！？])(?=\S)")


@dataclass(frozen=True)
class ChunkerConfig:
    """Chunk size and overlap, in tokens of the target tokenizer."""

    max_tokens: int
    overlap_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ChunkingError(
                f"max_tokens must be >= 1, got {self.max_tokens}", hint="raise --chunk-tokens"
            )
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ChunkingError(
                f"overlap_tokens {self.overlap_tokens} must be >= 0 and below max_tokens "
                f"{self.max_tokens}",
                hint="lower --overlap",
            )

    def fingerprint(self) -> str:
        """Stable short hash of everything that decides where chunks are cut."""
        blob = json.dumps([CHUNKER_VERSION, self.max_tokens, self.overlap_tokens])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ChunkerStats:
    """Work counters of one :class:`Chunker` (cumulative over its documents)."""

    documents: int = 0
    chunks: int = 0
    chars: int = 0  # characters of the documents encoded once
    reencoded_chars: int = 0  # characters encoded a second time to make counts exact
    reencode_calls: int = 0
    shrinks: int = 0  # cuts moved back because an exact count exceeded the budget

    @property
    def reencode_fraction(self) -> float:
        return self.reencoded_chars / self.chars if self.chars else 0.0


class _Heading(NamedTuple):
    pos: int  # char offset of the heading's first line
    level: int
    title: str


@dataclass
class _Structure:
    """Cut candidates and heading paths of one document."""

    top: list[int] = field(default_factory=list)  # preferred cuts (top headings / defs)
    headings: list[int] = field(default_factory=list)  # all heading cuts
    path_pos: list[int] = field(default_factory=list)
    paths: list[tuple[str, ...]] = field(default_factory=list)
    indents: list[tuple[int, ...]] = field(default_factory=list)  # code only
    code: bool = False


class Chunker:
    """Cuts :class:`Document`s into :class:`Chunk`s of at most ``config.max_tokens``.

    Deterministic and stateless across documents (apart from :attr:`stats`), so it can
    be fed a stream of documents; memory is bounded by the largest document.
    """

    def __init__(self, tokenizer: Tokenizer, config: ChunkerConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.stats = ChunkerStats()

    def fingerprint(self) -> str:
        """Hash of tokenizer name and config: equal fingerprints cut equal chunks."""
        blob = f"{self.tokenizer.name}\0{self.config.fingerprint()}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def chunk(self, doc: Document) -> list[Chunk]:
        """Cut one document; chunks are in document order and cover all its text."""
        self.stats.documents += 1
        self.stats.chars += len(doc.text)
        if not _NON_SPACE.search(doc.text):
            return []
        return _DocChunker(self, doc).run()


class _DocChunker:
    """The state of chunking one document."""

    def __init__(self, owner: Chunker, doc: Document) -> None:
        self.tok = owner.tokenizer
        self.cfg = owner.config
        self.stats = owner.stats
        self.doc = doc
        self.text = doc.text
        bounds = self.tok.bounds(doc.text)
        valid = np.flatnonzero(bounds >= 0)
        self.idx: npt.NDArray[np.intp] = valid  # token indices usable as cuts
        self.pos: npt.NDArray[np.int64] = bounds[valid]  # their char offsets
        self.n = len(bounds) - 1
        self.structure = _find_structure(doc)
        self._line_pos = 0  # line_of() cache: char offset and its 1-based line
        self._line_no = 1

    # --- token index <-> char offset -------------------------------------------------

    def char_of(self, k: int) -> int:
        """Char offset of valid token boundary ``k``."""
        if k >= self.n:
            return len(self.text)
        j = int(self.idx.searchsorted(k))
        return int(self.pos[j])

    def boundary_at_or_before(self, c: int) -> int:
        """Largest valid token index whose char offset is <= c."""
        j = int(self.pos.searchsorted(c, side="right")) - 1
        return int(self.idx[max(j, 0)])

    def valid_at_or_before(self, k: int) -> int:
        """Largest valid token index <= k."""
        j = int(self.idx.searchsorted(k, side="right")) - 1
        return int(self.idx[max(j, 0)])

    def valid_at_or_after(self, k: int) -> int:
        j = int(self.idx.searchsorted(k, side="left"))
        return int(self.idx[j]) if j < len(self.idx) else self.n

    def exact_index(self, c: int) -> int | None:
        """Token index whose boundary is exactly at char offset c, if any."""
        j = int(self.pos.searchsorted(c, side="left"))
        if j < len(self.pos) and self.pos[j] == c:
            return int(self.idx[j])
        return None

    def word_end_index(self, e: int) -> int | None:
        """Number of tokens before char offset e, where e ends a word (ws follows)."""
        if e >= len(self.text):
            return self.n
        if not self.tok.whitespace_joins_previous:
            return self.exact_index(e)
        j = int(self.pos.searchsorted(e, side="left"))
        nxt = int(self.pos[j]) if j < len(self.pos) else len(self.text)
        if self.text[e:nxt].strip(WHITESPACE):
            return None
        return int(self.idx[j]) if j < len(self.idx) else self.n

    # --- exact counts ----------------------------------------------------------------

    def is_sync(self, c: int) -> bool:
        """Whether a pre-token starts at c in the document and in any chunk from c."""
        if c == 0:
            return True
        if self.tok.whitespace_joins_previous:  # word-pieces: every word start
            return self.text[c - 1] in _WORDPIECE_WS
        return self.text[c - 1] == "\n" and self.text[c] not in _WS

    def next_sync(self, lo: int, hi: int) -> int | None:
        """First sync position in (lo, hi)."""
        text = self.text
        m = text.find("\n", lo, hi)
        while m != -1 and m + 1 < hi:
            if text[m + 1] not in _WS:
                return m + 1
            m = text.find("\n", m + 1, hi)
        return None

    def prev_sync(self, lo: int, hi: int) -> int | None:
        """Last sync position in (lo, hi)."""
        text = self.text
        m = text.rfind("\n", lo, hi - 1)
        while m != -1 and m + 1 > lo:
            if text[m + 1] not in _WS:
                return m + 1
            m = text.rfind("\n", lo, m)
        return None

    def reencode(self, s: int, e: int) -> int:
        self.stats.reencoded_chars += e - s
        self.stats.reencode_calls += 1
        return self.tok.count(self.text[s:e])

    def exact_count(self, s: int, e: int) -> int:
        """Exact token count of text[s:e] (s, e non-whitespace edges of a chunk)."""
        head, i_head, head_count = self.head_part(s, e)
        if head is None or i_head is None:
            return self.reencode(s, e)
        tail, i_tail, tail_count = self.tail_part(head, e)
        if tail is None or i_tail is None or tail < head:
            return self.reencode(s, e)
        return head_count + (i_tail - i_head) + tail_count

    def head_part(self, s: int, e: int) -> tuple[int | None, int | None, int]:
        """(h, token index at h, exact count of text[s:h]) with h a sync point."""
        text = self.text
        if self.is_sync(s):
            return s, self.exact_index(s), 0
        if not self.tok.whitespace_joins_previous and text[s - 1] == " " and text[s].isalpha():
            # cl100k: " Word" in the document, "Word" in the chunk; both pre-tokens end
            # where the letters end, and the document's tokens resume from there.
            w = s + 1
            while w < e and text[w].isalpha():
                w += 1
            if w < e:
                return w, self.exact_index(w), self.reencode(s, w)
        h = self.next_sync(s, e)
        if h is None:
            return None, None, 0
        return h, self.exact_index(h), self.reencode(s, h)

    def tail_part(self, head: int, e: int) -> tuple[int | None, int | None, int]:
        """(t, token index at t, exact count of text[t:e]) for the end of a chunk."""
        text = self.text
        if e >= len(text):
            return e, self.n, 0
        if self.tok.whitespace_joins_previous and text[e] in _WORDPIECE_WS:
            return e, self.word_end_index(e), 0
        if not self.tok.whitespace_joins_previous and text[e] in _WS:
            if text[e - 1].isalnum():  # a letter/digit pre-token ends at e in both texts
                return e, self.exact_index(e), 0
            # A run of punctuation (with an optional leading space) is one pre-token
            # that in the document also swallows the newlines after it: count it alone.
            q = e - 1
            while q > head and not text[q - 1].isalnum() and text[q - 1] not in _WS:
                q -= 1
            if q > head and text[q - 1] == " ":
                q -= 1
            if q >= head:
                return q, self.exact_index(q), self.reencode(q, e)
        t = self.prev_sync(head, e)
        if t is None:
            return None, None, 0
        return t, self.exact_index(t), self.reencode(t, e)

    def trimmed(self, a: int, t: int) -> tuple[int, int] | None:
        """Char span of tokens [a, t) without leading/trailing whitespace."""
        c0, c1 = self.char_of(a), self.char_of(t)
        m = _NON_SPACE.search(self.text, c0, c1)
        if m is None:
            return None
        s = m.start()
        e = len(self.text[s:c1].rstrip()) + s
        return s, e

    # --- choosing cuts ---------------------------------------------------------------

    def choose_cut(self, a: int, limit: int) -> int:
        """Best token index in (a, limit] to end the chunk starting at token a."""
        budget = self.cfg.max_tokens

        def lo_char(frac: float) -> int:
            return self.char_of(self.valid_at_or_after(a + max(1, int(frac * budget))))

        hi = self.char_of(limit)
        st = self.structure
        first_fill = _FILL_CODE_DEF if st.code else _FILL_TOP_HEADING
        for cands, frac in ((st.top, first_fill), (st.headings, _FILL_HEADING)):
            t = self._last_in(cands, lo_char(frac), hi, a, limit) if cands else None
            if t is not None:
                return t
        lo = lo_char(_FILL_OTHER)
        for finder in (self._blank_line, self._line_end, self._sentence_end, self._space):
            if finder is self._sentence_end and st.code:
                continue
            c = finder(lo, hi)
            if c is not None:
                t = self.boundary_at_or_before(c)
                if a < t <= limit:
                    return t
        return limit

    def _last_in(self, cands: list[int], lo: int, hi: int, a: int, limit: int) -> int | None:
        j = bisect.bisect_right(cands, hi) - 1
        while j >= 0 and cands[j] >= lo:
            t = self.boundary_at_or_before(cands[j])
            if a < t <= limit:
                return t
            j -= 1
        return None

    def _blank_line(self, lo: int, hi: int) -> int | None:
        m = self.text.rfind("\n\n", lo, hi)
        if m == -1:
            return None
        nxt = _NON_SPACE.search(self.text, m, hi)
        return nxt.start() if nxt else None

    def _line_end(self, lo: int, hi: int) -> int | None:
        m = self.text.rfind("\n", lo, hi)
        return m + 1 if m != -1 else None

    def _sentence_end(self, lo: int, hi: int) -> int | None:
        last = None
        for last in _SENTENCE_END.finditer(self.text, lo, hi):  # noqa: B007
            pass
        return last.end() if last else None

    def _space(self, lo: int, hi: int) -> int | None:
        m = max(self.text.rfind(" ", lo, hi), self.text.rfind("\t", lo, hi))
        return m + 1 if m != -1 else None

    # --- main loop -------------------------------------------------------------------

    def run(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        a = floor = 0  # start token of the next chunk; its end must pass floor
        prev_end = -1
        while floor < self.n:
            span = self.emit_from(a, floor) if a < floor else None
            if span is None or span[2] <= prev_end:  # overlap start added nothing new
                span = self.emit_from(floor, floor)
            if span is None:
                break
            t, s, e, count = span
            chunks.append(self.make_chunk(s, e, count))
            prev_end, floor = e, t
            a = self.next_start(a, t, s, prev_end)
        if not chunks and self.n == 0:  # text with no tokens at all (dropped chars only)
            s, e = self.trimmed_chars(0, len(self.text))
            chunks.append(self.make_chunk(s, e, self.reencode(s, e)))
        self.stats.chunks += len(chunks)
        return chunks

    def trimmed_chars(self, c0: int, c1: int) -> tuple[int, int]:
        piece = self.text[c0:c1]
        s = c0 + len(piece) - len(piece.lstrip())
        e = c0 + len(piece.rstrip())
        return s, e

    def limit_for(self, a: int) -> int:
        budget = self.cfg.max_tokens
        return self.n if a + budget >= self.n else self.valid_at_or_before(a + budget)

    def emit_from(self, a: int, floor: int) -> tuple[int, int, int, int] | None:
        """Choose the chunk starting at token a and ending after token floor.

        Returns (cut token t, start char, end char, exact count), or None when only
        whitespace is left or (when a < floor) no such chunk fits the budget.
        """
        budget = self.cfg.max_tokens
        limit = self.limit_for(a)
        while True:
            if limit <= max(a, floor):
                if a < floor:
                    return None
                raise ChunkingError(
                    f"cannot cut {self.doc.path} near char {self.char_of(a)} within "
                    f"{budget} tokens",
                    path=self.doc.path,
                    hint="raise --chunk-tokens",
                )
            t = limit if limit == self.n else self.choose_cut(max(a, floor), limit)
            span = self.trimmed(a, t)
            if span is None:
                if t >= self.n:
                    return None
                a = floor = t  # whitespace only: skip it
                limit = self.limit_for(a)
                continue
            s, e = span
            count = self.exact_count(s, e)
            if count <= budget:
                return t, s, e, count
            # Re-encoded edges came out longer than their share of the document's
            # tokens: move the cut back by the excess and choose again.
            self.stats.shrinks += 1
            limit = self.valid_at_or_before(min(limit, t) - (count - budget))

    def next_start(self, a: int, t: int, prev_start: int, prev_end: int) -> int:
        """Token index where the next chunk starts (before t when overlapping)."""
        overlap = self.cfg.overlap_tokens
        if overlap == 0 or t >= self.n:
            return t
        # Start strictly after the previous chunk's first character.
        after_prev = self.valid_at_or_after(self.boundary_at_or_before(prev_start) + 1)
        lo = max(a + 1, t - overlap, after_prev)
        if lo >= t:
            return t
        k = self.valid_at_or_after(lo)
        c_lo, c_t = self.char_of(k), self.char_of(t)
        # Prefer starting the overlap on a line start, then after a space.
        c = self.next_sync(c_lo - 1, c_t) if c_lo > 0 else None
        if c is None:
            sp = self.text.find(" ", c_lo, c_t)
            c = sp + 1 if sp != -1 else None
        if c is not None and c < c_t:
            k = max(k, self.boundary_at_or_before(c))
        while k < t:
            span = self.trimmed(k, self.n)
            if span is None or span[0] >= prev_end:
                return k
            if self.tok.count(self.text[span[0] : prev_end]) <= overlap:
                return k
            k = self.valid_at_or_after(k + 1)
        return t

    def make_chunk(self, s: int, e: int, count: int) -> Chunk:
        start_line = self.line_of(s)
        end_line = self.line_of(e - 1)
        return Chunk(
            source=self.doc.path,
            text=self.text[s:e],
            start_char=s,
            end_char=e,
            start_line=start_line,
            end_line=end_line,
            heading=self.heading_at(s),
            n_tokens=count,
        )

    def line_of(self, c: int) -> int:
        """1-based line of char offset c; cheap for the nearly monotone calls we make."""
        if c >= self._line_pos:
            self._line_no += self.text.count("\n", self._line_pos, c)
        else:
            self._line_no -= self.text.count("\n", c, self._line_pos)
        self._line_pos = c
        return self._line_no

    def heading_at(self, s: int) -> tuple[str, ...]:
        st = self.structure
        j = bisect.bisect_right(st.path_pos, s) - 1
        if j < 0:
            return ()
        if not st.code:
            return st.paths[j]
        # Code: keep the definitions the line at s is indented under, plus the
        # definition that starts on that very line.
        line_start = self.text.rfind("\n", 0, s) + 1
        prefix = self.text[line_start:s]
        indent = len(prefix) - len(prefix.lstrip(" \t"))
        at_def = st.path_pos[j] == line_start
        names, indents = st.paths[j], st.indents[j]
        last = len(names) - 1
        return tuple(
            name
            for i, (name, ind) in enumerate(zip(names, indents, strict=True))
            if ind < indent or (at_def and i == last)
        )


# --- structure -------------------------------------------------------------------------

# Block patterns match "\n" + line on "\n" + text: a literal first character lets the
# regex engine skip ahead fast, and match.start() is then the line's offset in text.
_FENCE = re.compile(r"\n {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"\n {0,3}(#{1,6})[ \t]+([^\n]*)")
_ATX_CLOSE = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
_UNDERLINE = re.compile(r"\n {0,3}(=+|-+)[ \t]*(?=\n|\Z)")
_RST_ADORN = re.compile(r"\n([!-/:-@\[-`{-~])\1{2,}[ \t]*(?=\n|\Z)")
_NOT_SETEXT_TITLE = ("#", "-", "*", "+", ">", "|", "```", "~~~")

_DEFS: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"^([ \t]*)(?:async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)", re.M),
    "rust": re.compile(
        r"^([ \t]*)(?:pub(?:\([^)\n]*\))?[ \t]+)?(?:(?:async|const|unsafe|extern)[ \t]+)*"
        r"(?:fn|struct|enum|trait|mod|union|impl(?:<[^>\n]*>)?(?:[ \t]+[\w:]+[ \t]+for)?)"
        r"[ \t]+([A-Za-z_]\w*)",
        re.M,
    ),
    "javascript": re.compile(
        r"^([ \t]*)(?:export[ \t]+)?(?:default[ \t]+)?(?:async[ \t]+)?"
        r"(?:function\*?|class|interface|enum)[ \t]+([A-Za-z_$][\w$]*)",
        re.M,
    ),
    "go": re.compile(r"^()(?:func(?:[ \t]*\([^)\n]*\))?|type)[ \t]+([A-Za-z_]\w*)", re.M),
}
_DEFS["typescript"] = _DEFS["javascript"]
_DECORATOR = re.compile(r"[ \t]*(?:@|#\[|///|//|#(?!\[))")


def _find_structure(doc: Document) -> _Structure:
    if doc.kind == "code":
        return _code_structure(doc.text, (doc.language or "").lower())
    if doc.kind == "rst":
        heads = _rst_headings(doc.text)
    elif doc.kind in ("markdown", "html"):
        heads = _markdown_headings(doc.text)
    else:
        heads = []
    st = _Structure()
    stack: list[_Heading] = []
    for h in heads:
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
        st.path_pos.append(h.pos)
        st.paths.append(tuple(x.title for x in stack))
        st.headings.append(h.pos)
        if h.level <= 2:
            st.top.append(h.pos)
    return st


def _fenced_ranges(padded: str) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    open_at, marker = -1, ""
    for m in _FENCE.finditer(padded):
        fence = m.group(1)
        if open_at < 0:
            open_at, marker = m.start(), fence
        elif fence[0] == marker[0] and len(fence) >= len(marker):
            ranges.append((open_at, m.end() - 1))
            open_at = -1
    if open_at >= 0:
        ranges.append((open_at, len(padded) - 1))
    return ranges


def _line_before(text: str, line_start: int) -> tuple[int, str]:
    """(start, content) of the line before the one starting at line_start (> 0)."""
    start = text.rfind("\n", 0, line_start - 1) + 1
    return start, text[start : line_start - 1]


def _blank_before(text: str, line_start: int) -> bool:
    return line_start == 0 or not _line_before(text, line_start)[1].strip()


def _markdown_headings(text: str) -> list[_Heading]:
    padded = "\n" + text
    fences = _fenced_ranges(padded)
    starts = [r[0] for r in fences]

    def fenced(pos: int) -> bool:
        j = bisect.bisect_right(starts, pos) - 1
        return j >= 0 and pos < fences[j][1]

    heads: list[_Heading] = []
    for m in _ATX.finditer(padded):
        title = _ATX_CLOSE.sub("", m.group(2)).strip()
        if title and not fenced(m.start()):
            heads.append(_Heading(m.start(), len(m.group(1)), title))
    for m in _UNDERLINE.finditer(padded):
        if m.start() == 0:
            continue
        ts, title = _line_before(text, m.start())
        title = title.strip()
        if not title or title.startswith(_NOT_SETEXT_TITLE) or fenced(ts):
            continue
        if not _blank_before(text, ts):
            continue  # a paragraph's last line, not a heading on its own
        heads.append(_Heading(ts, 1 if m.group(1)[0] == "=" else 2, title))
    heads.sort()
    return heads


def _rst_headings(text: str) -> list[_Heading]:
    """Section titles; levels follow the order in which adornment styles first appear."""
    padded = "\n" + text
    adorn = {m.start(): (m.group(1), len(m.group(0).strip())) for m in _RST_ADORN.finditer(padded)}
    styles: dict[tuple[str, bool], int] = {}
    heads: list[_Heading] = []
    closing: set[int] = set()
    for u, (ch, length) in adorn.items():
        if u in closing:
            continue
        nxt_start = text.find("\n", u) + 1
        nxt_end = text.find("\n", nxt_start) + 1 if nxt_start else 0
        under = adorn.get(nxt_end) if nxt_start and nxt_end else None
        over_title = text[nxt_start : nxt_end - 1].strip() if under else ""
        if under and under[0] == ch and over_title and _blank_before(text, u):
            closing.add(nxt_end)  # overline, title, underline
            level = styles.setdefault((ch, True), len(styles) + 1)
            heads.append(_Heading(u, level, over_title))
            continue
        if u == 0:
            continue
        ts, title = _line_before(text, u)
        if not title or title[0] in _WS or ts in adorn or len(title.rstrip()) > length:
            continue
        if not _blank_before(text, ts):
            continue  # the last line of a paragraph
        level = styles.setdefault((ch, False), len(styles) + 1)
        heads.append(_Heading(ts, level, title.strip()))
    return heads


def _code_structure(text: str, language: str) -> _Structure:
    st = _Structure(code=True)
    pattern = _DEFS.get(language)
    if pattern is None:
        return st
    stack: list[tuple[str, int]] = []
    for m in pattern.finditer(text):
        indent = len(m.group(1).expandtabs(4))
        while stack and stack[-1][1] >= indent:
            stack.pop()
        stack.append((m.group(2), indent))
        st.path_pos.append(m.start())
        st.paths.append(tuple(n for n, _ in stack))
        st.indents.append(tuple(i for _, i in stack))
        if indent == 0:
            st.top.append(_before_decorators(text, m.start()))
    return st


def _before_decorators(text: str, pos: int) -> int:
    """Move a top-level definition's cut up over its decorators/attributes/comments."""
    while pos > 0:
        prev = text.rfind("\n", 0, pos - 1) + 1
        if not _DECORATOR.match(text, prev, pos):
            break
        pos = prev
    return pos
