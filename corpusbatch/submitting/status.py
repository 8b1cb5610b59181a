"""`corpusbatch status` and `cancel`: where each journal file stands at the provider."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import openai

from ..journal import Journal
from .adapter import ProviderAdapter, describe_error
from .executor import TERMINAL_STATUSES, _answer, counts_json, parse_counts

log = logging.getLogger(__name__)


# -- status and cancel for the CLI ------------------------------------------------------------
@dataclass(frozen=True)
class BatchStatus:
    """Where one journal file stands, for ``corpusbatch status``."""

    file: str
    state: str
    batch_id: str | None
    batch_status: str | None
    request_counts: dict[str, int] | None
    age_s: float
    waiting_to_load: bool
    inputs: int
    tokens: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(
    journal: Journal,
    client: openai.OpenAI,
    *,
    include_loaded: bool = False,
    adapter: ProviderAdapter | None = None,
    clock: Callable[[], float] = time.time,
) -> list[BatchStatus]:
    """Every file not yet loaded (optionally all), with live status of in-flight batches.

    The provider is asked only about batches in the ``created`` state; if it cannot be
    reached the last status recorded in the journal is shown instead.
    """
    adapter = adapter or ProviderAdapter()
    now = clock()
    out = []
    for rec in journal.files():
        if rec.state in ("loaded", "split") and not include_loaded:  # split: parts go on
            continue
        batch_status, counts = rec.batch_status, parse_counts(rec.request_counts)
        if rec.state == "created" and rec.batch_id:
            try:
                batch = _answer(client.batches.retrieve(rec.batch_id), "status", batch=True)
                batch_status = adapter.status(batch.status)
                counts = parse_counts(counts_json(batch))
            except openai.APIError as exc:  # GarbledAnswer (an HTML page) included
                log.info("status of %s unavailable (%s)", rec.batch_id, describe_error(exc))
        out.append(
            BatchStatus(
                file=rec.name,
                state=rec.state,
                batch_id=rec.batch_id,
                batch_status=batch_status,
                request_counts=counts,
                age_s=round(now - (rec.submitted_at or rec.created_at), 1),
                waiting_to_load=rec.state in ("finished", "downloaded")
                or (rec.state == "created" and batch_status in TERMINAL_STATUSES),
                inputs=rec.n_inputs,
                tokens=rec.n_tokens,
                error=rec.error,
            )
        )
    return out


def cancel(journal: Journal, client: openai.OpenAI) -> list[str]:
    """Ask the provider to cancel every batch of ours still in its queue; returns their ids.

    Cancelled batches keep their finished lines: the next ``index`` run downloads them,
    loads what was done and plans the rest again.
    """
    cancelled = []
    for rec in journal.files(states=("created",)):
        if not rec.batch_id:
            continue
        try:
            batch = client.batches.cancel(rec.batch_id)
        except (openai.BadRequestError, openai.NotFoundError, openai.ConflictError) as exc:
            log.info("%s: not cancelled (%s)", rec.batch_id, describe_error(exc))
            continue
        status = getattr(batch, "status", None)
        if isinstance(status, str) and status:  # not an HTML page answered with 200
            journal.update(rec.name, batch_status=status)
        cancelled.append(rec.batch_id)
    return cancelled
