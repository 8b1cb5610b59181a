"""How one provider differs from OpenAI's Batch API, the SDK client, and real-time
embeddings for queries."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai

from ..config import Profile
from ..errors import BackendError, redact, register_secret
from ..loading import FailureKind, classify_error

log = logging.getLogger(__name__)


# -- provider differences ---------------------------------------------------------------
@dataclass(frozen=True)
class LineResult:
    """One output- or error-file line, whichever shape the provider used."""

    custom_id: str | None
    ok: bool
    body: dict[str, Any] | None  # the /v1/embeddings response body when ok
    status_code: int | None
    code: str | None
    message: str | None
    kind: FailureKind | None  # who is at fault, for a failed line (loading.classify_error)

    @property
    def retryable(self) -> bool:
        return self.kind == "retry"


DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ProviderAdapter:
    """How one provider's Batch API differs from OpenAI's. The default *is* OpenAI's.

    DeepInfra and other clones that copy OpenAI's shapes use this class as is; a provider
    with another line shape or status spelling subclasses it and overrides a method, with
    no change to the planner or the loader.
    """

    name = "openai"
    upload_purpose = "batch"
    endpoint = "/v1/embeddings"
    completion_window = "24h"
    supports_output_expiry = True  # accepts `output_expires_after` on batch create
    capacity_codes = frozenset({"token_limit_exceeded", "request_limit_exceeded"})
    # provider status (lower-cased) -> corpusbatch's canonical status
    statuses: Mapping[str, str] = {
        s: s
        for s in (
            "validating",
            "in_progress",
            "finalizing",
            "completed",
            "failed",
            "expired",
            "cancelling",
            "cancelled",
        )
    }

    def status(self, raw: str | None) -> str:
        """Canonical status name for a provider's status string."""
        key = (raw or "").lower()
        return self.statuses.get(key, key)

    def create_kwargs(
        self, *, input_file_id: str, metadata: dict[str, str], output_expires_after: int | None
    ) -> dict[str, Any]:
        """Keyword arguments for ``client.batches.create``."""
        kwargs: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": self.endpoint,
            "completion_window": self.completion_window,
            "metadata": metadata,
        }
        if output_expires_after and self.supports_output_expiry:
            kwargs["output_expires_after"] = {
                "anchor": "created_at",
                "seconds": output_expires_after,
            }
        return kwargs

    def batch_errors(self, batch: Any) -> list[tuple[str | None, str | None, int | None]]:
        """``(code, message, line)`` of a failed batch's validation errors."""
        errors = getattr(batch, "errors", None)
        data = getattr(errors, "data", None) or []
        return [(e.code, e.message, e.line) for e in data]

    def is_capacity_failure(self, batch: Any) -> bool:
        """Did the batch fail only because the provider's queue was full?"""
        return any(code in self.capacity_codes for code, _, _ in self.batch_errors(batch))

    # Line shapes. corpusbatch plans input files and loads output files in OpenAI's
    # shapes; a provider with other shapes overrides these two hooks and sets
    # `rewrites_lines`, and the submitter converts each file on its way out and in.
    rewrites_lines = False

    def input_line(self, line: dict[str, Any]) -> dict[str, Any]:
        """One planned (OpenAI-shaped) input line, as this provider wants it."""
        return line

    def output_line(self, line: dict[str, Any]) -> dict[str, Any]:
        """One of this provider's output or error lines, in OpenAI's shape."""
        return line

    def parse_line(self, obj: Mapping[str, Any]) -> LineResult:
        """Classify one output/error line (both of OpenAI's error shapes)."""
        obj = self.output_line(dict(obj))
        cid = obj.get("custom_id")
        response = obj.get("response")
        if isinstance(response, Mapping) and not obj.get("error"):
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, Mapping):
                return LineResult(cid, True, dict(body), 200, None, None, None)
            error = body.get("error") if isinstance(body, Mapping) else None
            code, message, kind = classify_error(status, error or {})
            return LineResult(cid, False, None, status, code, message, kind)
        code, message, kind = classify_error(None, obj.get("error") or {})
        return LineResult(cid, False, None, None, code, message, kind)


def convert_lines(
    src: Path, dest: Path, convert: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Stream ``src`` to ``dest`` one JSON line at a time through ``convert`` (atomic)."""
    part = dest.with_name(dest.name + ".part")
    with src.open("rb") as fin, part.open("wb") as fout:
        for raw in fin:
            if raw.strip():
                obj = convert(json.loads(raw))
                fout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
                fout.write(b"\n")
    part.replace(dest)


def adapter_for(profile: Profile) -> ProviderAdapter:
    """The adapter for a provider profile (OpenAI's shapes unless known otherwise).

    DeepInfra's Batch API copies OpenAI's (same purpose, line format, statuses and
    ``output_expires_after``), so it needs no adapter of its own.
    """
    adapter = ProviderAdapter()
    adapter.name = profile.name
    return adapter


def make_client(profile: Profile, api_key: str, *, timeout: float = 600.0) -> openai.OpenAI:
    """An OpenAI SDK client for ``profile``; the key lives only in this object (and is
    registered so that error texts echoing it are redacted)."""
    register_secret(api_key)
    return openai.OpenAI(
        api_key=api_key,
        base_url=profile.base_url or DEFAULT_BASE_URL,
        timeout=timeout,
        max_retries=2,
    )


# -- real-time embeddings for queries ---------------------------------------------------------
class RemoteEmbedder:
    """Embed a few texts (search queries) through the real-time ``/v1/embeddings``."""

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        dimensions: int | None = None,
        *,
        max_inputs: int = 2_048,
    ) -> None:
        self.client = client
        self.model = model
        self.dimensions = dimensions
        self.max_inputs = max_inputs

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, shape ``(len(texts), dims)``, float32, input order."""
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), self.max_inputs):
            rows.extend(self._embed_some(list(texts[start : start + self.max_inputs])))
        if not rows:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        return np.vstack(rows).astype(np.float32, copy=False)

    def _embed_some(self, texts: list[str]) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {}
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        try:
            resp = self.client.embeddings.create(
                model=self.model, input=texts, encoding_format="base64", **kwargs
            )
        except openai.APIError as exc:
            raise BackendError(
                f"embedding the query with {self.model} failed: {describe_error(exc)}",
                hint="check the provider, model name and API key",
            ) from exc
        return [_decode(d.embedding) for d in sorted(resp.data, key=lambda d: d.index)]


def _decode(embedding: Any) -> np.ndarray:
    """A vector from base64 (little-endian float32) or a list of floats."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def describe_error(exc: BaseException) -> str:
    """One line for an SDK error, with any API key it echoes redacted."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, Mapping) else {}
        err = body.get("error", body) if isinstance(body, Mapping) else {}
        message = err.get("message") if isinstance(err, Mapping) else None
        return redact(f"HTTP {exc.status_code}: {message or exc.message}")
    return redact(str(exc))


# -- learning an unknown model: a one-input probe -------------------------------------------
PROBE_TEXT = "corpusbatch probe"


@dataclass(frozen=True)
class ProbeResult:
    """What one real-time request with one short input says about a model."""

    dimensions: int | None  # length of the vector returned (None: refused)
    accepts_dimensions: bool | None  # None: `dimensions` was not sent
    tokens: int  # the provider's usage.prompt_tokens (0 if it reported none)
    refusal: str | None = None  # the provider's message when it refused `dimensions`


def probe_model(client: openai.OpenAI, model: str, dimensions: int | None = None) -> ProbeResult:
    """Embed :data:`PROBE_TEXT` once with ``model`` (and ``dimensions``, if given).

    Tells the vector length and, when ``dimensions`` is sent, whether the model takes
    it: a vector of that length says yes; a vector of another length (the field was
    ignored: that is the native length) or a 400/422 about ``dimensions`` says no. Any
    other refusal raises :class:`BackendError` with the provider's message.
    """
    kwargs: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
    try:
        resp = client.embeddings.create(
            model=model, input=[PROBE_TEXT], encoding_format="base64", **kwargs
        )
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, Mapping) else {}
        error = body.get("error", body) if isinstance(body, Mapping) else {}
        _, message, _ = classify_error(exc.status_code, error)
        param = error.get("param") if isinstance(error, Mapping) else None
        about = param == "dimensions" or "dimension" in message.lower()
        if dimensions is not None and exc.status_code in (400, 422) and about:
            return ProbeResult(None, False, 0, message)
        raise BackendError(
            f"asking {model} for one vector (to learn its size) failed: {describe_error(exc)}",
            hint="check --model, --base-url and the API key",
        ) from exc
    except openai.APIError as exc:
        raise BackendError(
            f"asking {model} for one vector (to learn its size) failed: {describe_error(exc)}",
            hint="check --base-url and the network",
        ) from exc
    data = sorted(resp.data or [], key=lambda d: d.index)
    if not data:
        raise BackendError(f"{model} answered the probe without a vector")
    size = int(_decode(data[0].embedding).shape[0])
    usage = getattr(resp, "usage", None)
    tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    accepts = None if dimensions is None else size == dimensions
    return ProbeResult(size, accepts, tokens)
