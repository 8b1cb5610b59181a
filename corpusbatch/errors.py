"""One error hierarchy for corpusbatch.

Every error a user can cause or fix derives from :class:`CorpusbatchError`. Messages
say what happened *and what to do next*; context (path, line, batch id, custom id)
is kept as attributes so callers can act on it without parsing text. The CLI turns
these into one-line messages and an exit code; anything else is a bug and shows a
traceback.
"""

from __future__ import annotations

import contextlib
import re


class CorpusbatchError(Exception):
    """Root of every error corpusbatch raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ConfigError(CorpusbatchError):
    """A flag, config file or environment setting is missing or wrong."""

    exit_code = 2


class SourceError(CorpusbatchError):
    """A document could not be found or read."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class ChunkingError(CorpusbatchError):
    """A document could not be cut into chunks within the token budget."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class PlanningError(CorpusbatchError):
    """Chunks could not be packed into batch files within the provider's limits."""


class BackendError(CorpusbatchError):
    """The embedding backend (local model or remote Batch API) failed."""

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None = None,
        file_name: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.batch_id = batch_id
        self.file_name = file_name


class LocalModelUnavailable(BackendError):
    """The local embedding model stack is not installed."""


class CostLimitExceeded(CorpusbatchError):
    """The estimated cost is above ``--max-cost``; nothing was sent."""

    exit_code = 3


class LoadError(CorpusbatchError):
    """An output file line could not be loaded into the table."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        custom_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.line = line
        self.custom_id = custom_id


class StateError(CorpusbatchError):
    """The index's own state is inconsistent: an illegal journal transition, or a row
    naming a file outside the index directory. Nothing was written."""


class MassDeleteRefused(CorpusbatchError):
    """A scan would delete most (or all) of the table at once; nothing was changed.

    Usually an unmounted share, a failed checkout or a wrong path. Pass
    ``--allow-mass-delete`` when the deletion is meant.
    """

    exit_code = 6


class IndexNotFound(CorpusbatchError):
    """There is no index (table) where one was expected."""


class LockedError(CorpusbatchError):
    """Another corpusbatch run holds the lock on this index directory."""

    exit_code = 75  # EX_TEMPFAIL: try again later


# -- secrets: never stored, logged or printed ------------------------------------------
# Provider error bodies can echo the key, whole or masked ("Incorrect API key provided:
# sk-abc...wxyz"). Every error text corpusbatch stores, logs or prints goes through
# redact(); the key of the running process is registered by make_client().
_SECRETS: set[str] = set()
_KEY_CHARS = r"[A-Za-z0-9_\-]"
_MASK = r"(?:\.{3}|…|\*{3,})"
_KEYLIKE = (
    # masked keys of OpenAI's form and full keys: sk-..., sk-proj-..., rk-..., pk-...
    rf"\b(?:sk|rk|pk)-{_KEY_CHARS}*{_MASK}{_KEY_CHARS}*",
    rf"\b(?:sk|rk|pk)-{_KEY_CHARS}{{16,}}",
    r"(?i)\bbearer\s+\S+",
)
REDACTED = "[redacted]"


def register_secret(value: str | None) -> None:
    """Remember a secret (the API key) so that :func:`redact` hides it and its masks."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with API keys removed: registered secrets, whole or masked (first or
    last characters around ``...``, ``…`` or ``***``), and anything shaped like one."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        head, tail = re.escape(secret[:4]), re.escape(secret[-4:])
        text = re.sub(rf"{head}{_KEY_CHARS}*{_MASK}{_KEY_CHARS}*", REDACTED, text)
        text = re.sub(rf"{_KEY_CHARS}*{_MASK}{_KEY_CHARS}*{tail}", REDACTED, text)
    for pattern in _KEYLIKE:
        text = re.sub(pattern, REDACTED, text)
    return text


def redact_obj(value: object) -> object:
    """A JSON-like value with every string redacted (for error bodies kept on disk)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_obj(v) for v in value]
    return value


def redact_exception(exc: BaseException) -> None:
    """Redact, in place, the messages of ``exc`` and every exception it was raised from
    or during, so a traceback (``--debug``) shows no key either."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        for name in ("message", "body"):
            value = getattr(current, name, None)
            if value is not None:
                with contextlib.suppress(AttributeError):
                    setattr(current, name, redact_obj(value))
        current = current.__cause__ or current.__context__
