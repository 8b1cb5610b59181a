"""Limits learned at run time, and splitting a batch file that is too big for one.

A provider may enforce smaller limits than its profile says: the enqueued-token limit of
an organisation (OpenAI's ``token_limit_exceeded``: "... Limit: 30,000 enqueued tokens
..."), or per-file line, byte or input limits that a clone reports when it validates a
batch. When a batch is refused for one of these, :func:`refusal` reads which limit it
was and the number the provider stated (if any), :func:`split_cap` decides how small the
parts must be, and :func:`split_file` plans the file's own inputs again, with
:func:`corpusbatch.planning.plan_files`, into files that fit. The learned limit is kept
in the journal (:meth:`corpusbatch.journal.Journal.learn_limit`) and
:func:`effective_limits` applies it to every later plan and queue wave.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Limits
from .errors import PlanningError
from .planning import plan_files, read_manifest
from .types import EmbedItem, PlannedFile

# batch error code -> the Limits field it is about, and the file measure it limits
LIMIT_CODES: Mapping[str, tuple[str, str]] = {
    "token_limit_exceeded": ("max_enqueued_tokens", "tokens"),
    "request_limit_exceeded": ("max_enqueued_requests", "lines"),
    "too_many_tasks": ("max_lines_per_file", "lines"),
    "too_many_requests": ("max_lines_per_file", "lines"),
    "too_many_inputs": ("max_inputs_per_file", "inputs"),
    "file_too_large": ("max_bytes_per_file", "bytes"),
}
# Limits that depend on what else sits in the provider's queue.
QUEUE_LIMITS = frozenset({"max_enqueued_tokens", "max_enqueued_requests"})
# The Limits field that caps one file by each measure, when splitting.
_FILE_FIELD = {
    "tokens": "max_tokens_per_file",
    "lines": "max_lines_per_file",
    "inputs": "max_inputs_per_file",
    "bytes": "max_bytes_per_file",
}

# "Limit: 30,000 enqueued tokens", "the limit is 50000", "larger than the 209715200
# maximum", "More than 50000 requests", "at most 100 MB" (a number after such a phrase)
_STATED = re.compile(
    r"(?:\blimit\b(?:\s+is|\s+of)?\s*:?|\bmaximum(?:\s+is|\s+of)?\s*:?|\bmore than|\blarger than"
    r"(?:\s+the)?|\bat most|\bexceeds?(?:\s+the)?(?:\s+limit)?(?:\s+of)?|\bup to)"
    r"\s*([0-9][0-9,_]*)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Refusal:
    """A batch refused for a limit: which one, the provider's number, its words."""

    field: str  # a Limits field, e.g. "max_enqueued_tokens"
    measure: str  # "tokens", "lines", "inputs" or "bytes" of one file
    stated: int | None  # the limit the message states, if it states one
    code: str
    message: str

    @property
    def queue(self) -> bool:
        """Whether the limit is on the provider's queue (other batches count too)."""
        return self.field in QUEUE_LIMITS


def stated_limit(message: str | None) -> int | None:
    """The limit a provider's message states ("Limit: 30,000 enqueued tokens"), or None."""
    for match in _STATED.finditer(message or ""):
        digits = match.group(1).replace(",", "").replace("_", "")
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return None


def refusal(errors: list[tuple[str | None, str | None, int | None]]) -> Refusal | None:
    """The limit a failed batch's errors (``(code, message, line)``) report, if any."""
    for code, message, _line in errors:
        if code is not None and code in LIMIT_CODES:
            field, measure = LIMIT_CODES[code]
            return Refusal(field, measure, stated_limit(message), code, message or "")
    return None


def measure_of(measure: str, *, tokens: int, lines: int, inputs: int, size: int) -> int:
    return {"tokens": tokens, "lines": lines, "inputs": inputs, "bytes": size}[measure]


def split_cap(have: int, stated: int | None) -> int:
    """How big each part of a file of ``have`` (tokens, lines, ...) may be.

    The provider's number when it states one below ``have``; when our count says the file
    fits that number yet it was refused, 90% of our count (the provider counts
    differently); with no number, half. Always below ``have``, so splitting ends.
    """
    if stated is not None and stated < have:
        return stated
    if stated is not None:
        return max(1, min(stated, have * 9 // 10, have - 1))
    return max(1, have // 2)


def effective_limits(limits: Limits, learned: Mapping[str, int]) -> Limits:
    """``limits`` tightened by limits learned at run time (a limit never loosens).

    Plans never go below what one input of the largest allowed size needs (tokens, and
    bytes at 64 per token), so a tiny limit cannot make every later plan impossible: a
    file over it is refused and split (the split itself uses the provider's number).
    """
    changes: dict[str, int] = {}
    names = {f.name for f in dataclasses.fields(limits)}
    floors = {
        "max_enqueued_tokens": limits.max_tokens_per_input,
        "max_tokens_per_file": limits.max_tokens_per_input,
        "max_bytes_per_file": 64 * limits.max_tokens_per_input,
    }
    for name, learned_value in learned.items():
        if name not in names or learned_value < 1:
            continue
        value = max(learned_value, floors.get(name, 1))
        current = getattr(limits, name)
        if current is None or value < current:
            changes[name] = value
    return dataclasses.replace(limits, **changes) if changes else limits


class Unsplittable(Exception):
    """The file cannot be cut into parts that fit (one input alone is too big)."""


def split_file(
    *,
    path: Path,
    manifest_path: Path,
    n_tokens: int,
    limits: Limits,
    measure: str,
    cap: int,
    plan_id: str,
    count_tokens: Callable[[str], int] | None = None,
) -> list[PlannedFile]:
    """Plan the inputs of one batch file again into files of at most ``cap`` ``measure``.

    The file's own request lines are read (the exact strings sent, prefix included) and
    matched to its manifest's vector keys; tokens are counted with ``count_tokens`` (the
    tokenizer the file was planned with), or estimated from ``n_tokens`` (the file's
    total) by each input's share of the bytes. The parts are written next to the file
    as ``<plan_id>-NNNNN.jsonl``; planning them again gives the same files, so a crash
    between writing them and recording the split repeats the same split.

    Raises :class:`Unsplittable` when one input (or one request line) alone exceeds the
    cap, or the file has a single input; nothing is left on disk then.
    """
    items = list(_items(path, manifest_path, n_tokens, count_tokens))
    if len(items) < 2:
        raise Unsplittable(f"{path.name} holds a single input")
    if measure == "tokens" and max(i.n_tokens for i in items) > cap:
        raise Unsplittable(f"one input of {path.name} alone has more than {cap:,} tokens")
    tight = dataclasses.replace(limits, **{_FILE_FIELD[measure]: cap})
    model, dims, encoding = _format(path)
    parts: list[PlannedFile] = []
    try:
        for part in plan_files(
            items,
            out_dir=path.parent,
            plan_id=plan_id,
            model=model,
            limits=tight,
            request_dimensions=dims,
            encoding_format=encoding,
        ):
            parts.append(part)
    except PlanningError as exc:
        for part in parts:
            part.path.unlink(missing_ok=True)
            part.manifest_path.unlink(missing_ok=True)
        raise Unsplittable(exc.message) from exc
    return parts


def _format(path: Path) -> tuple[str, int | None, str]:
    """(model, requested dimensions, encoding_format) of a planned file's lines."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                body = json.loads(raw).get("body") or {}
                dims = body.get("dimensions")
                return (
                    str(body.get("model")),
                    int(dims) if dims is not None else None,
                    str(body.get("encoding_format") or "float"),
                )
    raise Unsplittable(f"{path.name} is empty")


def _items(
    path: Path,
    manifest_path: Path,
    n_tokens: int,
    count_tokens: Callable[[str], int] | None,
) -> Iterator[EmbedItem]:
    manifest = read_manifest(manifest_path)
    pairs: list[tuple[str, str]] = []
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            line: dict[str, Any] = json.loads(raw)
            texts = (line.get("body") or {}).get("input")
            keys = manifest.get(str(line.get("custom_id")))
            if not isinstance(texts, list) or keys is None or len(keys) != len(texts):
                raise Unsplittable(f"{path.name} does not match its manifest")
            pairs.extend(zip(keys, (str(t) for t in texts), strict=True))
    if count_tokens is not None:
        for key, text in pairs:
            yield EmbedItem(key=key, text=text, n_tokens=max(1, count_tokens(text)))
        return
    total = sum(len(t.encode("utf-8")) for _, t in pairs) or 1
    for key, text in pairs:
        share = n_tokens * len(text.encode("utf-8")) / total
        yield EmbedItem(key=key, text=text, n_tokens=max(1, math.ceil(share)))
