"""Pack embedding inputs into OpenAI Batch API JSONL files.

:func:`plan_files` streams :class:`~corpusbatch.types.EmbedItem` s into
``/v1/embeddings`` request lines (each line embeds an ``input`` array) and the lines into
JSONL files, honouring every limit of a provider's :class:`~corpusbatch.config.Limits` at
once. Each file gets a manifest mapping each line's ``custom_id`` to the vector keys of
its inputs, in order, so output lines are matched by id, never by position.

:func:`summarize` prices a plan and :func:`waves` groups its files so that each group fits
in the provider's enqueued-token and enqueued-request caps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .config import Limits, ModelSpec
from .errors import PlanningError
from .types import EmbedItem, PlannedFile

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/embeddings"
ENCODING_FORMATS = ("base64", "float")
CUSTOM_ID_PREFIX = "cb-"
_CUSTOM_ID_HEX = 40
_PLAN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HINT_TOKENS = "lower --chunk-tokens, or raise the limit in corpusbatch.toml ([limits])"


def make_custom_id(keys: Sequence[str]) -> str:
    """The ``custom_id`` of a request line embedding the inputs with these vector keys.

    ``"cb-"`` plus the first 40 hex digits of sha256 of the keys joined by newlines: 43
    ASCII characters, stable across runs, unique within a file (a file never repeats a key).
    """
    digest = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()
    return CUSTOM_ID_PREFIX + digest[:_CUSTOM_ID_HEX]


def file_name(plan_id: str, index: int) -> str:
    """Name of the ``index``-th JSONL file of a plan (``<plan_id>-00001.jsonl``)."""
    return f"{plan_id}-{index:05d}.jsonl"


def manifest_name(plan_id: str, index: int) -> str:
    """Name of the manifest next to :func:`file_name` (``<plan_id>-00001.manifest.jsonl``)."""
    return f"{plan_id}-{index:05d}.manifest.jsonl"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# JSON allows these raw inside strings, but str.splitlines() and some JSONL readers treat
# them as line breaks; escaped, a file's lines are exactly its b"\n"-separated records.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _encode_input(text: str) -> bytes:
    encoded = _dumps(text)
    for raw, escaped in _LINE_BREAKS:
        if raw in encoded:  # `in` is a fast scan; replace() only in the rare case
            encoded = encoded.replace(raw, escaped)
    return encoded.encode("utf-8")


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class _Caps:
    """The limits the packer enforces, with the enqueued caps folded in."""

    lines_per_file: int
    inputs_per_file: int
    bytes_per_file: int
    tokens_per_file: int | None
    inputs_per_request: int
    tokens_per_request: int
    tokens_per_input: int


def _min_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _caps(limits: Limits) -> _Caps:
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PlanningError(
                f"limit {f.name}={value!r} must be a positive integer",
                hint="fix it in corpusbatch.toml ([limits])",
            )
    # A file larger than the enqueued caps could never be submitted at all, so the caps
    # bound single files too; waves() then always succeeds on this planner's output.
    lines = _min_opt(limits.max_lines_per_file, limits.max_enqueued_requests)
    assert lines is not None
    return _Caps(
        lines_per_file=lines,
        inputs_per_file=limits.max_inputs_per_file,
        bytes_per_file=limits.max_bytes_per_file,
        tokens_per_file=_min_opt(limits.max_tokens_per_file, limits.max_enqueued_tokens),
        inputs_per_request=limits.max_inputs_per_request,
        tokens_per_request=limits.max_tokens_per_request,
        tokens_per_input=limits.max_tokens_per_input,
    )


# --------------------------------------------------------------------------- line format


@dataclass(frozen=True)
class _LineFormat:
    """Serialises request lines; the bytes of a line are known before it is built."""

    head_tail: tuple[str, str]  # text around the custom_id
    body_tail: str  # text after the input array, newline included

    @classmethod
    def create(
        cls, model: str, request_dimensions: int | None, encoding_format: str
    ) -> _LineFormat:
        tail = f'],"encoding_format":{_dumps(encoding_format)}'
        if request_dimensions is not None:
            tail += f',"dimensions":{request_dimensions}'
        return cls(
            head_tail=(
                '{"custom_id":"',
                f'","method":"POST","url":"{ENDPOINT}","body":{{"model":{_dumps(model)},"input":[',
            ),
            body_tail=tail + "}}\n",
        )

    @property
    def overhead(self) -> int:
        """Bytes of a line with an empty input array (custom_ids have a fixed length)."""
        fixed = self.head_tail[0] + self.head_tail[1] + self.body_tail
        return len(fixed.encode("utf-8")) + len(CUSTOM_ID_PREFIX) + _CUSTOM_ID_HEX

    def build(self, custom_id: str, inputs: Sequence[bytes]) -> bytes:
        head = (self.head_tail[0] + custom_id + self.head_tail[1]).encode("utf-8")
        return head + b",".join(inputs) + self.body_tail.encode("utf-8")


# --------------------------------------------------------------------------- writing


class _FileWriter:
    """Writes one JSONL file and its manifest under ``*.tmp`` names, then renames them."""

    def __init__(self, out_dir: Path, plan_id: str, index: int, model: str) -> None:
        self.name = file_name(plan_id, index)
        self.path = out_dir / self.name
        self.manifest_path = out_dir / manifest_name(plan_id, index)
        self.model = model
        self._tmp = self.path.with_name(self.name + ".tmp")
        self._manifest_tmp = self.manifest_path.with_name(self.manifest_path.name + ".tmp")
        self._fh: IO[bytes] = self._tmp.open("wb")
        self._mfh: IO[bytes] = self._manifest_tmp.open("wb")
        self._sha = hashlib.sha256()
        self.custom_ids: list[str] = []
        self._seen_ids: set[str] = set()
        self.n_inputs = 0
        self.n_tokens = 0
        self.n_bytes = 0

    def write_line(self, line: bytes, custom_id: str, keys: list[str], tokens: int) -> None:
        if custom_id in self._seen_ids:  # impossible unless sha256 collides: keys are unique
            raise PlanningError(f"duplicate custom_id {custom_id} in {self.name}")
        self._seen_ids.add(custom_id)
        self._fh.write(line)
        self._sha.update(line)
        manifest_line = _dumps({"custom_id": custom_id, "keys": keys}) + "\n"
        self._mfh.write(manifest_line.encode("utf-8"))
        self.custom_ids.append(custom_id)
        self.n_inputs += len(keys)
        self.n_tokens += tokens
        self.n_bytes += len(line)

    def commit(self) -> PlannedFile:
        for fh in (self._mfh, self._fh):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        # Manifest first: a JSONL file that exists always has its manifest beside it.
        os.replace(self._manifest_tmp, self.manifest_path)
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)
        return PlannedFile(
            name=self.name,
            path=self.path,
            manifest_path=self.manifest_path,
            sha256=self._sha.hexdigest(),
            n_lines=len(self.custom_ids),
            n_inputs=self.n_inputs,
            n_tokens=self.n_tokens,
            n_bytes=self.n_bytes,
            model=self.model,
            custom_ids=self.custom_ids,
        )

    def abort(self) -> None:
        for fh in (self._fh, self._mfh):
            fh.close()
        self._tmp.unlink(missing_ok=True)
        self._manifest_tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; not supported on every platform (e.g. Windows).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- packing


def _check_tokens(item: EmbedItem, caps: _Caps) -> None:
    where = f"item {item.key!r}"
    if not item.text:
        raise PlanningError(f"{where} has empty text", hint="drop empty chunks before planning")
    if item.n_tokens <= 0:
        raise PlanningError(
            f"{where} has n_tokens={item.n_tokens}",
            hint="count tokens with the model's tokenizer; every input needs at least one",
        )
    for name, cap in (
        ("max_tokens_per_input", caps.tokens_per_input),
        ("max_tokens_per_request", caps.tokens_per_request),
        ("max_tokens_per_file (or max_enqueued_tokens)", caps.tokens_per_file),
    ):
        if cap is not None and item.n_tokens > cap:
            raise PlanningError(
                f"{where} has {item.n_tokens} tokens, above {name}={cap}", hint=_HINT_TOKENS
            )


def _encode_item(item: EmbedItem) -> bytes:
    try:
        return _encode_input(item.text)
    except UnicodeEncodeError as exc:  # lone surrogates cannot be sent as UTF-8
        raise PlanningError(
            f"item {item.key!r} text is not valid Unicode ({exc.reason})",
            hint="re-read the source with the right encoding",
        ) from exc


@dataclass
class _OpenLine:
    keys: list[str]
    inputs: list[bytes]  # JSON-encoded input strings
    tokens: int
    size: int  # bytes of the finished line, newline included


@dataclass
class _Totals:
    """What the current file holds, the open line included."""

    lines: int = 0
    inputs: int = 0
    tokens: int = 0
    size: int = 0


class _Packer:
    """Greedy first-fit-in-order packing into the current line, then file."""

    def __init__(
        self, out_dir: Path, plan_id: str, model: str, caps: _Caps, fmt: _LineFormat, start: int
    ) -> None:
        self.out_dir, self.plan_id, self.model = out_dir, plan_id, model
        self.caps, self.fmt, self.index = caps, fmt, start
        self.writer: _FileWriter | None = None
        self.line: _OpenLine | None = None
        self.totals = _Totals()
        self.plan_keys: set[str] = set()

    def add(self, item: EmbedItem) -> PlannedFile | None:
        """Add one item; returns the file it closed, if adding it closed one."""
        encoded = self._validate(item)
        if self._fits_line(item, encoded):
            self._append(item, encoded)
            return None
        if self._fits_new_line(item, encoded):
            self._close_line()
            self._open_line(item, encoded)
            return None
        done = self.finish()
        self._open_line(item, encoded)
        return done

    def finish(self) -> PlannedFile | None:
        """Close the current file (if any) and return it."""
        if self.writer is None:
            return None
        self._close_line()
        planned = self.writer.commit()
        logger.debug(
            "planned %s: %d lines, %d inputs, %d tokens, %d bytes",
            planned.name,
            planned.n_lines,
            planned.n_inputs,
            planned.n_tokens,
            planned.n_bytes,
        )
        self.writer, self.totals = None, _Totals()
        self.index += 1
        return planned

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def _validate(self, item: EmbedItem) -> bytes:
        """Reject an item no file could hold; returns its JSON-encoded text."""
        _check_tokens(item, self.caps)
        if item.key in self.plan_keys:
            raise PlanningError(
                f"item {item.key!r} appears twice in plan {self.plan_id!r}",
                hint="deduplicate items by vector key before planning (this is a bug)",
            )
        self.plan_keys.add(item.key)
        encoded = _encode_item(item)
        size = self.fmt.overhead + len(encoded)
        if size > self.caps.bytes_per_file:
            raise PlanningError(
                f"item {item.key!r} needs a {size}-byte request line, above "
                f"max_bytes_per_file={self.caps.bytes_per_file}",
                hint="lower --chunk-tokens, or raise max_bytes_per_file in corpusbatch.toml",
            )
        return encoded

    def _fits_file(self, item: EmbedItem, extra_bytes: int) -> bool:
        caps, t = self.caps, self.totals
        return (
            t.inputs + 1 <= caps.inputs_per_file
            and (caps.tokens_per_file is None or t.tokens + item.n_tokens <= caps.tokens_per_file)
            and t.size + extra_bytes <= caps.bytes_per_file
        )

    def _fits_line(self, item: EmbedItem, encoded: bytes) -> bool:
        line = self.line
        if line is None:
            return False
        return (
            len(line.keys) + 1 <= self.caps.inputs_per_request
            and line.tokens + item.n_tokens <= self.caps.tokens_per_request
            and self._fits_file(item, len(encoded) + 1)  # +1: the comma
        )

    def _fits_new_line(self, item: EmbedItem, encoded: bytes) -> bool:
        if self.writer is None:
            return False
        return self.totals.lines + 1 <= self.caps.lines_per_file and self._fits_file(
            item, self.fmt.overhead + len(encoded)
        )

    def _append(self, item: EmbedItem, encoded: bytes) -> None:
        assert self.line is not None
        self.line.keys.append(item.key)
        self.line.inputs.append(encoded)
        self.line.tokens += item.n_tokens
        self.line.size += len(encoded) + 1
        self._count(item, len(encoded) + 1)

    def _open_line(self, item: EmbedItem, encoded: bytes) -> None:
        if self.writer is None:
            self.writer = _FileWriter(self.out_dir, self.plan_id, self.index, self.model)
        size = self.fmt.overhead + len(encoded)
        self.line = _OpenLine([item.key], [encoded], item.n_tokens, size)
        self.totals.lines += 1
        self._count(item, size)

    def _count(self, item: EmbedItem, size: int) -> None:
        self.totals.inputs += 1
        self.totals.tokens += item.n_tokens
        self.totals.size += size

    def _close_line(self) -> None:
        line, writer = self.line, self.writer
        if line is None or writer is None:
            return
        custom_id = make_custom_id(line.keys)
        data = self.fmt.build(custom_id, line.inputs)
        assert len(data) == line.size, "line size prediction is off"
        writer.write_line(data, custom_id, line.keys, line.tokens)
        self.line = None


def plan_files(
    items: Iterable[EmbedItem],
    *,
    out_dir: Path,
    plan_id: str,
    model: str,
    limits: Limits,
    request_dimensions: int | None = None,
    encoding_format: str = "base64",
    start_index: int = 1,
) -> Iterator[PlannedFile]:
    """Pack ``items`` into Batch API JSONL files in ``out_dir``, yielding each when complete.

    Items are packed greedily in the given order: an item joins the current request line
    if the line and file stay within every limit; otherwise it opens a new line in the
    same file if that fits; otherwise the file is closed and a new one begun. So a line
    or file is closed exactly when the next item would break a limit. Limits honoured at
    once: lines, inputs, bytes (exact serialized bytes, newlines included) and tokens per
    file; inputs and tokens per request line; tokens per input.

    The enqueued caps bound single files too: ``max_tokens_per_file`` is taken as
    ``min(max_tokens_per_file, max_enqueued_tokens)`` and ``max_lines_per_file`` as
    ``min(max_lines_per_file, max_enqueued_requests)``, so every file fits in a
    :func:`waves` group on its own.

    Files are named ``<plan_id>-<index:05d>.jsonl`` (index from ``start_index``) with a
    ``<plan_id>-<index:05d>.manifest.jsonl`` beside each, and written atomically (``*.tmp``,
    fsync, rename); if planning stops early no ``*.tmp`` file is left behind. Memory is
    bounded by one request line plus the set of keys seen (to reject duplicates).

    Raises :class:`~corpusbatch.errors.PlanningError` for an item with empty text,
    ``n_tokens <= 0``, more tokens than an input, line or file may hold, a request line
    too large for an empty file, or a key seen twice; files yielded before stay valid.
    """
    if encoding_format not in ENCODING_FORMATS:
        raise PlanningError(
            f"encoding_format {encoding_format!r} is not supported",
            hint=f"use one of {', '.join(ENCODING_FORMATS)}",
        )
    if request_dimensions is not None and request_dimensions < 1:
        raise PlanningError(f"dimensions={request_dimensions} must be positive")
    if not _PLAN_ID_RE.fullmatch(plan_id):
        raise PlanningError(
            f"plan_id {plan_id!r} is not usable in a file name",
            hint="use letters, digits, '.', '_' and '-' only",
        )
    caps = _caps(limits)
    fmt = _LineFormat.create(model, request_dimensions, encoding_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _run(items, _Packer(out_dir, plan_id, model, caps, fmt, start_index))


def _run(items: Iterable[EmbedItem], packer: _Packer) -> Iterator[PlannedFile]:
    try:
        for item in items:
            done = packer.add(item)
            if done is not None:
                yield done
        last = packer.finish()
        if last is not None:
            yield last
    finally:
        packer.abort()  # no-op after finish(); removes *.tmp on errors or early close


# --------------------------------------------------------------------------- manifests


def read_manifest(path: Path) -> dict[str, list[str]]:
    """Read a manifest: ``custom_id`` -> vector keys of that line's inputs, in order."""
    result: dict[str, list[str]] = {}
    with path.open("r", encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            custom_id, keys = _parse_manifest_line(path, number, raw)
            if custom_id in result:
                raise PlanningError(
                    f"{path}:{number}: custom_id {custom_id} appears twice",
                    hint="the manifest is corrupt; delete the plan and run again",
                )
            result[custom_id] = keys
    return result


def _parse_manifest_line(path: Path, number: int, raw: str) -> tuple[str, list[str]]:
    try:
        obj = json.loads(raw)
        custom_id, keys = obj["custom_id"], obj["keys"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanningError(
            f"{path}:{number}: not a manifest line ({exc})",
            hint="the manifest is corrupt; delete the plan and run again",
        ) from exc
    if not isinstance(custom_id, str) or not (
        isinstance(keys, list) and all(isinstance(k, str) for k in keys)
    ):
        raise PlanningError(
            f"{path}:{number}: expected a string custom_id and a list of string keys",
            hint="the manifest is corrupt; delete the plan and run again",
        )
    return custom_id, keys


# --------------------------------------------------------------------------- summary, waves


@dataclass
class PlanSummary:
    """Totals of a plan and what it costs at batch and at real-time prices (USD)."""

    files: int
    lines: int
    inputs: int
    tokens: int
    bytes: int
    batch_cost: float
    realtime_cost: float

    @property
    def savings(self) -> float:
        """USD saved by using the Batch API instead of real-time calls."""
        return self.realtime_cost - self.batch_cost


def summarize(files: Sequence[PlannedFile], spec: ModelSpec) -> PlanSummary:
    """Add up a plan's files and price its tokens with ``spec``'s per-1M-token prices."""
    tokens = sum(f.n_tokens for f in files)
    return PlanSummary(
        files=len(files),
        lines=sum(f.n_lines for f in files),
        inputs=sum(f.n_inputs for f in files),
        tokens=tokens,
        bytes=sum(f.n_bytes for f in files),
        batch_cost=tokens * spec.batch_price_per_mtok / 1_000_000,
        realtime_cost=tokens * spec.realtime_price_per_mtok / 1_000_000,
    )


def waves(files: Sequence[PlannedFile], limits: Limits) -> list[list[PlannedFile]]:
    """Group ``files``, in order, into waves that each fit the enqueued caps.

    A wave's total tokens stay within ``max_enqueued_tokens`` and its total lines within
    ``max_enqueued_requests`` (None = unlimited), so all files of a wave may be in the
    provider's queue at once. Files planned by :func:`plan_files` with the same limits
    always fit; a file larger than a cap on its own raises PlanningError.
    """
    token_cap, line_cap = limits.max_enqueued_tokens, limits.max_enqueued_requests
    groups: list[list[PlannedFile]] = []
    current: list[PlannedFile] = []
    tokens = lines = 0
    for f in files:
        _check_fits_queue(f, token_cap, line_cap)
        over_tokens = token_cap is not None and tokens + f.n_tokens > token_cap
        over_lines = line_cap is not None and lines + f.n_lines > line_cap
        if current and (over_tokens or over_lines):
            groups.append(current)
            current, tokens, lines = [], 0, 0
        current.append(f)
        tokens += f.n_tokens
        lines += f.n_lines
    if current:
        groups.append(current)
    return groups


def _check_fits_queue(f: PlannedFile, token_cap: int | None, line_cap: int | None) -> None:
    if token_cap is not None and f.n_tokens > token_cap:
        raise PlanningError(
            f"{f.name} has {f.n_tokens} tokens, above max_enqueued_tokens={token_cap}",
            hint="plan again with the same limits (the planner caps files by it)",
        )
    if line_cap is not None and f.n_lines > line_cap:
        raise PlanningError(
            f"{f.name} has {f.n_lines} lines, above max_enqueued_requests={line_cap}",
            hint="plan again with the same limits (the planner caps files by it)",
        )
