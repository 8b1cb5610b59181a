"""The small types that flow between the pipeline stages.

sources -> :class:`Document` -> chunking -> :class:`Chunk` -> planning ->
:class:`PlannedFile` (JSONL + manifest) -> a backend runs it -> output JSONL ->
loading -> LanceDB rows.

Identity is content-addressed:

* ``vector_key`` names a vector: a hash of the exact string sent to the model plus
  everything else that shapes the vector (model, dimensions, input prefix). Two chunks
  with the same key share one embedding, whatever file they are in.
* ``row_id`` names a table row: the vector key plus the chunk's source and its
  occurrence number among equal chunks in that source. A renamed file gets new row ids
  but the same vector keys, so it costs no tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DocKind = Literal["markdown", "rst", "text", "html", "code"]


@dataclass(frozen=True, slots=True)
class Document:
    """One decoded source file.

    ``text`` has newlines normalised to ``\\n``. For HTML it is a line-preserving text
    rendering (tags removed, headings written as ``#`` lines on their original line), so
    line numbers still point into the original file.
    """

    path: str  # POSIX path relative to the corpus root; becomes each chunk's `source`
    text: str
    kind: DocKind
    sha256: str  # hex digest of the raw bytes on disk
    language: str | None = None  # for kind == "code": "python", "rust", ...
    encoding: str = "utf-8"  # codec actually used to decode


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document, bounded by the target tokenizer.

    ``text == document.text[start_char:end_char]`` always holds, and ``n_tokens`` is
    exactly ``len(tokenizer.encode(text))`` (no special tokens), which is what a provider
    will count for this input.
    """

    source: str
    text: str
    start_char: int
    end_char: int
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive
    heading: tuple[str, ...]  # heading path, outermost first
    n_tokens: int

    @property
    def heading_path(self) -> str:
        return " > ".join(self.heading)


@dataclass(frozen=True, slots=True)
class EmbeddingIdentity:
    """Everything besides the text that shapes a vector."""

    model: str
    dimensions: int  # length of the vectors stored
    request_dimensions: int | None = None  # `dimensions` sent to the API, if any
    input_prefix: str = ""  # prepended to every chunk text before embedding

    def fingerprint(self) -> str:
        """Short stable hash of this identity (part of every vector key)."""
        return _fingerprint(self)

    def embed_text(self, chunk_text: str) -> str:
        """The exact string sent to the model for a chunk."""
        return self.input_prefix + chunk_text


@functools.lru_cache(maxsize=16)
def _fingerprint(identity: EmbeddingIdentity) -> str:
    # cached: vector_key() needs it once per chunk, and it never changes for an identity
    blob = json.dumps(
        [identity.model, identity.dimensions, identity.request_dimensions, identity.input_prefix]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def vector_key(identity: EmbeddingIdentity, chunk_text: str) -> str:
    """Cache key of the vector for ``chunk_text`` under ``identity`` (hex, 32 chars)."""
    h = hashlib.sha256(identity.fingerprint().encode())
    h.update(b"\0")
    h.update(identity.embed_text(chunk_text).encode("utf-8"))
    return h.hexdigest()[:32]


def content_hash(text: str) -> str:
    """sha256 of a chunk's text (hex, 32 chars); independent of the model."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def row_id(key: str, source: str, occurrence: int) -> str:
    """Stable table key of one chunk row (hex, 32 chars)."""
    h = hashlib.sha256(f"{key}\0{source}\0{occurrence}".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EmbedItem:
    """One distinct string to embed: what the planner packs."""

    key: str  # vector_key
    text: str  # exact string to send (prefix included)
    n_tokens: int


@dataclass(slots=True)
class PlannedFile:
    """A JSONL batch input file plus its manifest, as written by the planner.

    The manifest (``manifest_path``) has one JSON object per request line:
    ``{"custom_id": "...", "keys": ["<vector_key>", ...]}`` where ``keys[i]`` is the
    vector key of ``body.input[i]``. Output lines are matched through it, never by order.
    """

    name: str  # file name, e.g. "b-3f2a9c1e0d4b-00001.jsonl"
    path: Path
    manifest_path: Path
    sha256: str  # of the JSONL bytes; also sent as batch metadata
    n_lines: int
    n_inputs: int
    n_tokens: int
    n_bytes: int
    model: str
    custom_ids: list[str] = field(default_factory=list, repr=False)
