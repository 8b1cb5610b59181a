"""Run batch files through any OpenAI-compatible Batch API, resumably and never twice.

:class:`BatchSubmitter` is the remote executor: ``drive(journal, wait=..., on_output=...)``
moves every pending journal file through::

    planned -> uploading -> uploaded -> creating -> created -> finished -> downloaded
            -> (on_output) loaded

``uploading`` and ``creating`` are intents, committed *before* the network call. A
crash, a dropped connection or a 5xx answer after the call leaves the intent behind, and
the next attempt looks the upload up by file name and size, or the batch up by its
metadata, before it would call again. Batch creation is sent without SDK retries: the
OpenAI API has no idempotency key, so a blind retry could create (and bill) a second
batch.

Files are sent in queue waves: the tokens and request lines of our batches in the
provider's queue never exceed ``profile.limits.max_enqueued_tokens/requests`` (tightened
by limits learned at run time, kept in the journal). A batch the provider still fails
with ``token_limit_exceeded`` while other batches of ours are queued is not a data error:
its uploaded file is kept and the batch is created again once capacity frees up. Refused
with nothing else of ours in flight, or bigger than the limit the message states, the
file itself is too big: the limit is learned, and the file is split (its inputs planned
again into files that fit, see :mod:`corpusbatch.splitting`). Per-file line, byte and
input limits that a provider reports when it validates a batch are handled the same way.
Every path that gives a file up deletes what was uploaded for it.

What differs between providers (upload purpose, status names, create options, error
line shapes) lives in :class:`ProviderAdapter`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai

from ..config import Limits, Profile
from ..errors import BackendError, redact
from ..journal import FileRecord, Journal
from ..splitting import (
    Refusal,
    Unsplittable,
    effective_limits,
    measure_of,
    refusal,
    split_cap,
    split_file,
)
from .adapter import ProviderAdapter, adapter_for, convert_lines, describe_error

log = logging.getLogger(__name__)

IN_FLIGHT = ("creating", "created")  # states whose batch may sit in the provider's queue
TERMINAL_STATUSES = ("completed", "expired", "cancelled")  # have output and/or error files


# -- error classification ---------------------------------------------------------------
def _transient(exc: BaseException) -> bool:
    """A failure worth trying again later: connection trouble, 429, 5xx."""
    if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _fatal_auth(exc: BaseException) -> BackendError | None:
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return BackendError(
            f"the provider refused the API key ({exc.status_code})",
            hint="check the key in the provider's environment variable and its permissions",
        )
    return None


# -- the executor -------------------------------------------------------------------------
@dataclass
class _Round:
    """What one pass over the journal did."""

    changed: bool = False
    loaded: int = 0


class BatchSubmitter:
    """The remote executor: runs journal files through a provider's Batch API."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        profile: Profile,
        outputs_dir: Path,
        poll_interval: float = 30.0,
        delete_remote_files: bool = True,
        output_expires_after: int | None = 7 * 24 * 3600,
        adapter: ProviderAdapter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        download_attempts: int = 5,
        list_pages: int = 20,
        max_capacity_retries: int = 20,
        vanished_after: int = 3,
        missing_grace: float = 3600.0,
        unreachable_after: float = 900.0,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.client = client
        # Never retry a POST that creates something billable: reconcile instead.
        self._once = client.with_options(max_retries=0)
        self.profile = profile
        self.outputs_dir = outputs_dir
        self.poll_interval = poll_interval
        self.delete_remote_files = delete_remote_files
        self.output_expires_after = output_expires_after
        self.adapter = adapter or adapter_for(profile)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.download_attempts = download_attempts
        self.list_pages = list_pages
        self.max_capacity_retries = max_capacity_retries
        # A batch that answers 404 is looked up in the provider's batch list (by its
        # metadata and by its input file) after ``vanished_after`` consecutive 404s; only
        # when it is not there and has been missing for ``missing_grace`` seconds is it
        # created again (which costs money if the first one was merely hidden). Both
        # counts live in the journal, so they add up across `--no-wait` runs.
        self.vanished_after = vanished_after
        self.missing_grace = missing_grace
        # seconds without progress after which the provider is probed, and the run stops
        # if it does not answer (a cron job must not hang on a dead network)
        self.unreachable_after = unreachable_after
        # the tokenizer the files were planned with, to split a file that is too big
        # (None: estimate each input's tokens from its share of the file's bytes)
        self.count_tokens = count_tokens
        self._hold_until = 0.0  # no new batches before this (provider queue full)
        self._capacity_failures = 0
        self._emit: Callable[[str], None] = lambda _msg: None
        self._swept = False  # provider files of earlier runs' loaded batches cleaned up
        self._round_limits: dict[str, Limits] = {}  # per model, for this round's waves

    # -- main loop ------------------------------------------------------------------------
    def drive(
        self,
        journal: Journal,
        *,
        wait: bool,
        on_output: Callable[[FileRecord], None],
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Advance every pending file; load each one through ``on_output`` as it finishes.

        With ``wait=True`` returns when nothing is pending. With ``wait=False`` does one
        pass (submit what the queue allows, collect what already finished) and returns.
        Raises :class:`BackendError` only for problems a retry cannot fix (bad API key);
        per-file failures end in the journal as ``failed`` with the provider's message.
        """
        self._emit = progress or (lambda _msg: None)
        self._swept = False
        delay = self._min_delay()
        idle_since = self._clock()
        while True:
            step = self._round(journal, on_output)
            if not wait or not journal.pending():
                return
            if step.changed:
                idle_since = self._clock()
            elif self._clock() - idle_since > self.unreachable_after:
                self._probe(self._clock() - idle_since)
                idle_since = self._clock()
            delay = self._min_delay() if step.changed else min(self.poll_interval, delay * 2)
            self._sleep(delay * (0.5 + 0.5 * self._rng.random()))

    def _probe(self, idle: float) -> None:
        """After a long stretch without progress: is the provider there at all?

        Batches may legitimately run for hours, so silence alone is no error; a provider
        that does not answer a cheap list call is. The journal keeps everything, so the
        next run resumes where this one stopped.
        """
        try:
            self.client.batches.list(limit=1)
        except (AttributeError, TypeError, ValueError):
            return  # an answer, if not JSON (an HTML page): the provider is there
        except (openai.APIConnectionError, httpx2.HTTPError) as exc:
            raise BackendError(
                f"cannot reach {self.client.base_url} (no progress for {idle:.0f} s): "
                f"{describe_error(exc)}",
                hint="nothing is lost; check the network or --base-url, then run again to resume",
            ) from exc

    def _min_delay(self) -> float:
        return self.poll_interval / 16

    def _round(self, journal: Journal, on_output: Callable[[FileRecord], None]) -> _Round:
        step = _Round()
        self._reconcile_uploads(journal, step)
        self._collect(journal, on_output, step)
        self._cleanup(journal)
        self._submit(journal, step)
        return step

    # -- upload ---------------------------------------------------------------------------
    def _upload(self, journal: Journal, rec: FileRecord, step: _Round) -> bool:
        """Upload one planned file; False if it must wait for a later round."""
        path = Path(rec.path)
        if not self._check_local(journal, rec, path):
            step.changed = True
            return True
        journal.update(rec.name, "uploading")
        path = self._upload_source(path)
        try:
            with path.open("rb") as fh:
                # Some clones use another purpose string ("batch-api"); the SDK's Literal
                # type lists OpenAI's only.
                purpose: Any = self.adapter.upload_purpose
                obj = _answer(
                    self._once.files.create(file=(rec.name, fh), purpose=purpose), "upload"
                )
        except openai.APIError as exc:
            return self._upload_failed(journal, rec, exc)
        journal.update(rec.name, "uploaded", input_file_id=obj.id)
        self._emit(f"{rec.name}: uploaded as {obj.id}")
        step.changed = True
        return True

    def _upload_source(self, path: Path) -> Path:
        """The file to upload: the planned one, or its copy in the provider's line shape."""
        if not self.adapter.rewrites_lines:
            return path
        converted = path.with_name(f"{path.stem}.{self.adapter.name}.jsonl")
        if not converted.exists():
            convert_lines(path, converted, self.adapter.input_line)
        return converted

    def _upload_size(self, rec: FileRecord) -> int:
        if not self.adapter.rewrites_lines:
            return rec.n_bytes
        source = self._upload_source(Path(rec.path))
        return source.stat().st_size

    def _check_local(self, journal: Journal, rec: FileRecord, path: Path) -> bool:
        """The planned file is on disk and unchanged; otherwise fail it."""
        try:
            digest = _sha256(path)
        except OSError as exc:
            journal.update(rec.name, "failed", error=f"cannot read batch file {path}: {exc}")
            return False
        if digest != rec.sha256:
            journal.update(
                rec.name,
                "failed",
                error=f"batch file {path} changed since it was planned; run index again to "
                "re-plan it",
            )
            return False
        return True

    def _upload_failed(self, journal: Journal, rec: FileRecord, exc: openai.APIError) -> bool:
        fatal = _fatal_auth(exc)
        if fatal:
            raise fatal from exc
        if _transient(exc):
            # The file may have arrived anyway: stay in `uploading` and reconcile next round.
            log.warning(
                "%s: upload did not complete (%s); will check and retry",
                rec.name,
                describe_error(exc),
            )
            return False
        if _too_large(exc):
            ref = Refusal(
                "max_bytes_per_file",
                "bytes",
                _stated_bytes(exc),
                _error_code(exc) or "file_too_large",
                describe_error(exc),
            )
            if self._refused_for_limit(journal, rec, ref):
                return True
        journal.update(rec.name, "failed", error=f"upload rejected: {describe_error(exc)}")
        return True

    def _reconcile_uploads(self, journal: Journal, step: _Round) -> None:
        """Files left in ``uploading``: adopt the upload if it arrived, else plan it again."""
        # As with creates, give the provider's file list a moment to show a fresh upload.
        now = self._clock()
        stuck = [
            r
            for r in journal.files(states=("uploading",))
            if now - r.updated_at >= self.poll_interval
        ]
        if not stuck:
            return
        try:
            found = self._uploaded_files({r.name for r in stuck})
        except openai.APIError as exc:
            self._raise_unless_transient(exc, "listing uploaded files")
            log.warning("cannot list uploaded files yet (%s)", describe_error(exc))
            return
        for rec in stuck:
            match = found.get((rec.name, self._upload_size(rec)))
            if match:
                journal.update(rec.name, "uploaded", input_file_id=match)
                self._emit(f"{rec.name}: found earlier upload {match}")
            else:
                journal.update(rec.name, "planned")
            step.changed = True

    def _uploaded_files(self, names: set[str]) -> dict[tuple[str, int], str]:
        found: dict[tuple[str, int], str] = {}
        page = _listed(lambda: self.client.files.list(purpose=self.adapter.upload_purpose))
        for n, obj in enumerate(_pages(page)):
            if n >= self.list_pages * 10_000:
                break
            if obj.filename in names:
                found.setdefault((obj.filename, obj.bytes), obj.id)
        return found

    # -- create ---------------------------------------------------------------------------
    def _submit(self, journal: Journal, step: _Round) -> None:
        """Upload and create batches while the queue caps allow, oldest files first.

        Unconfirmed creates (``creating``) come first: they already count against the
        queue, and each is looked up among the provider's batches before it is retried.
        """
        candidates = journal.files(states=("creating",))
        candidates += journal.files(states=("uploaded", "planned"))
        self._round_limits = {m: self.limits(journal, m) for m in {r.model for r in candidates}}
        index: dict[tuple[str, ...], Any] | None = None
        tokens, requests = self._enqueued(journal)
        for rec in candidates:
            verdict = self._verdict(rec, tokens, requests)
            if verdict == "skip":
                continue
            if verdict == "wait":
                break  # keep file order; later files go out as earlier ones finish
            if verdict == "fail":
                self._too_big_for_queue(journal, rec)
                step.changed = True
                continue
            if rec.state == "planned":
                if not self._upload(journal, rec, step):
                    return
                rec = journal.get(rec.name) or rec
                if rec.state != "uploaded":
                    continue
            if index is None:
                index = self._remote_batches(journal)
                if index is None:
                    return  # cannot tell what exists: create nothing this round
            if rec.state != "creating":
                tokens, requests = tokens + rec.n_tokens, requests + rec.n_lines
            if not self._create(journal, rec, index, step):
                return

    def _verdict(self, rec: FileRecord, tokens: int, requests: int) -> str:
        """``go``, ``skip`` (not yet), ``wait`` (queue full) or ``fail`` (never fits)."""
        now = self._clock()
        if rec.state == "creating":
            # Give the provider's batch list time to show a batch that was created
            # although the answer was lost, before deciding it does not exist.
            return "skip" if now - rec.updated_at < self.poll_interval else "go"
        if now < self._hold_until or now < (rec.not_before or 0.0):
            return "skip"
        return self._fits(rec, tokens, requests)

    def _enqueued(self, journal: Journal) -> tuple[int, int]:
        flying = journal.files(states=IN_FLIGHT)
        return sum(r.n_tokens for r in flying), sum(r.n_lines for r in flying)

    def limits(self, journal: Journal, model: str) -> Limits:
        """The profile's limits, tightened by those learned at run time for ``model``."""
        return effective_limits(self.profile.limits, journal.learned_limits(journal.target, model))

    def _fits(self, rec: FileRecord, tokens: int, requests: int) -> str:
        """Whether a file may go now: ``go``, ``wait`` (queue full) or ``fail`` (never fits)."""
        limits = self._round_limits.get(rec.model) or self.profile.limits
        caps = (
            (limits.max_enqueued_tokens, tokens, rec.n_tokens),
            (limits.max_enqueued_requests, requests, rec.n_lines),
        )
        for cap, used, need in caps:
            if cap is not None and used + need > cap:
                return "fail" if need > cap else "wait"
        return "go"

    def _too_big_for_queue(self, journal: Journal, rec: FileRecord) -> None:
        """A file bigger than the enqueued caps (planned before a limit was learned, or
        with other limits) can never go as it is: split it, or fail it with advice."""
        limits = self.limits(journal, rec.model)
        caps = (
            ("tokens", limits.max_enqueued_tokens, rec.n_tokens),
            ("lines", limits.max_enqueued_requests, rec.n_lines),
        )
        measure, cap = next((m, c) for m, c, have in caps if c is not None and have > c)
        assert cap is not None
        reason = (
            f"{rec.n_tokens:,} tokens / {rec.n_lines:,} requests exceed the provider's "
            f"enqueued limit ({limits.max_enqueued_tokens} tokens, "
            f"{limits.max_enqueued_requests} requests)"
        )
        self._split(journal, rec, measure, cap, reason)

    def _split(
        self, journal: Journal, rec: FileRecord, measure: str, cap: int, reason: str
    ) -> None:
        """Plan ``rec``'s inputs again into files of at most ``cap`` ``measure`` each.

        The parts are journaled (as children, same attempt) before ``rec`` moves to
        ``split``; a crash in between splits again into the same names, which the journal
        already knows. A file that cannot be split (one input alone is too big) is failed
        with advice. Either way the provider's copy of ``rec`` is deleted.
        """
        plan_id = f"{rec.name.removesuffix('.jsonl')}-s{rec.create_seq}"
        parts = journal.files(plan=plan_id)
        if not parts:
            try:
                planned = split_file(
                    path=Path(rec.path),
                    manifest_path=Path(rec.manifest_path),
                    n_tokens=rec.n_tokens,
                    limits=self.limits(journal, rec.model),
                    measure=measure,
                    cap=cap,
                    plan_id=plan_id,
                    count_tokens=self.count_tokens,
                )
            except (Unsplittable, OSError, ValueError) as exc:
                self._give_up(
                    journal,
                    rec,
                    f"{reason}; cannot split it: {exc}; lower max_tokens_per_file or "
                    "--chunk-tokens, or raise the limit with the provider, then run index again",
                )
                return
            for f in planned:
                journal.add_file(
                    name=f.name,
                    plan=plan_id,
                    path=f.path,
                    manifest_path=f.manifest_path,
                    sha256=f.sha256,
                    model=f.model,
                    n_lines=f.n_lines,
                    n_inputs=f.n_inputs,
                    n_tokens=f.n_tokens,
                    n_bytes=f.n_bytes,
                    attempt=rec.attempt,
                    parent=rec.name,
                    identity=rec.identity,
                    target=rec.target,
                    route=rec.route,
                )
            parts = journal.files(plan=plan_id)
        note = f"split into {len(parts)} files of at most {cap:,} {measure}"
        journal.update(rec.name, "split", error=f"{reason}; {note}")
        self._emit(f"{rec.name}: {note}")
        log.warning("%s: %s; %s", rec.name, reason, note)
        self._delete_remote(journal, journal.get(rec.name) or rec)
        # nothing reads a split file again: its parts carry its inputs
        path = Path(rec.path)
        converted = path.with_name(f"{path.stem}.{self.adapter.name}.jsonl")
        for stale in (path, Path(rec.manifest_path), converted):
            stale.unlink(missing_ok=True)

    def _refused_for_limit(
        self, journal: Journal, rec: FileRecord, ref: Refusal, who: str = "the provider"
    ) -> bool:
        """A batch refused for a limit: learn it, and split the file if it is too big.

        Returns False when the refusal is about a queue that our own other batches fill
        (wait for room instead). A queue limit refused with nothing else of ours in
        flight, or a file bigger than the stated limit, means the file itself is too big.
        """
        have = measure_of(
            ref.measure,
            tokens=rec.n_tokens,
            lines=rec.n_lines,
            inputs=rec.n_inputs,
            size=rec.n_bytes,
        )
        if ref.stated is not None:
            journal.learn_limit(journal.target, rec.model, ref.field, ref.stated)
        others = [r for r in journal.files(states=IN_FLIGHT) if r.name != rec.name]
        if ref.queue and others and (ref.stated is None or have <= ref.stated):
            return False
        cap = split_cap(have, ref.stated)
        learned = journal.learn_limit(journal.target, rec.model, ref.field, cap)
        reason = f"{who} refused it: {ref.code}: {ref.message}"
        log.warning("%s: learned %s = %s from the provider", rec.name, ref.field, f"{learned:,}")
        self._split(journal, rec, ref.measure, cap, reason)
        return True

    def _give_up(self, journal: Journal, rec: FileRecord, error: str) -> None:
        """Fail a file for good and delete what was uploaded for it."""
        journal.update(rec.name, "failed", error=error)
        self._delete_remote(journal, journal.get(rec.name) or rec)

    def _metadata(self, rec: FileRecord) -> dict[str, str]:
        return {
            "corpusbatch_file": rec.name[:512],
            "corpusbatch_sha256": rec.sha256[:32],
            "corpusbatch_plan": rec.plan[:512],
            "corpusbatch_seq": str(rec.create_seq),
        }

    def _remote_batches(self, journal: Journal) -> dict[tuple[str, ...], Any] | None:
        """Recent provider batches by their corpusbatch metadata (newest wins)."""
        pending = journal.files(states=("creating", "uploaded", "planned"))
        oldest = min((r.created_at for r in pending), default=self._clock()) - 86_400
        found: dict[tuple[str, ...], Any] = {}
        try:
            page = _listed(lambda: self.client.batches.list(limit=100))
            for n, batch in enumerate(_pages(page)):
                if n >= self.list_pages * 100 or (batch.created_at or 0) < oldest:
                    break
                key = _meta_key(batch.metadata or {})
                if key:
                    found.setdefault(key, batch)
        except openai.APIError as exc:
            self._raise_unless_transient(exc, "listing batches")
            log.warning("cannot list batches to reconcile (%s); will retry", describe_error(exc))
            return None
        return found

    def _create(
        self, journal: Journal, rec: FileRecord, index: dict[tuple[str, ...], Any], step: _Round
    ) -> bool:
        """Adopt or create the batch for one uploaded file; False stops this round."""
        meta = self._metadata(rec)
        existing = index.get(_meta_key(meta) or ())
        if existing is not None:
            self._created(journal, rec, existing, adopted=True)
            step.changed = True
            return True
        assert rec.input_file_id is not None, rec.name
        # the intent (again, after an unconfirmed create that the list did not show)
        journal.update(rec.name, "creating" if rec.state != "creating" else None)
        kwargs = self.adapter.create_kwargs(
            input_file_id=rec.input_file_id,
            metadata=meta,
            output_expires_after=self.output_expires_after,
        )
        try:
            batch = _answer(self._once.batches.create(**kwargs), "batch create", batch=True)
        except openai.APIError as exc:
            return self._create_failed(journal, rec, exc, step)
        self._created(journal, rec, batch, adopted=False)
        step.changed = True
        return True

    def _created(self, journal: Journal, rec: FileRecord, batch: Any, *, adopted: bool) -> None:
        journal.update(
            rec.name,
            "created",
            batch_id=batch.id,
            batch_status=self.adapter.status(batch.status),
            submitted_at=float(batch.created_at or self._clock()),
            not_before=None,
        )
        verb = "adopted existing" if adopted else "created"
        self._emit(f"{rec.name}: {verb} batch {batch.id}")

    def _create_failed(
        self, journal: Journal, rec: FileRecord, exc: openai.APIError, step: _Round
    ) -> bool:
        self._raise_if_fatal(exc)
        if _transient(exc):
            # A 5xx or a dropped connection may come after the batch was made: stay in
            # `creating`; the next round lists batches before it would create again.
            log.warning(
                "%s: batch create unconfirmed (%s); will reconcile", rec.name, describe_error(exc)
            )
            return False
        ref = refusal([(_error_code(exc), describe_error(exc), None)])
        if ref is not None and self._refused_for_limit(journal, rec, ref):
            pass
        elif self._input_missing(rec):
            journal.update(rec.name, "planned", input_file_id=None)
            log.warning(
                "%s: uploaded file %s is gone; uploading again", rec.name, rec.input_file_id
            )
        elif ref is not None:  # a queue limit while our other batches fill it: wait
            journal.update(rec.name, "uploaded", not_before=self._clock() + self.poll_interval)
        else:
            reason = describe_error(exc)
            self._give_up(journal, rec, f"batch create rejected: {reason}")
        step.changed = True
        return True

    def _input_missing(self, rec: FileRecord) -> bool:
        try:
            self.client.files.retrieve(rec.input_file_id or "")
        except openai.NotFoundError:
            return True
        except openai.APIError:
            return False
        return False

    # -- poll, download, load ---------------------------------------------------------------
    def _collect(
        self, journal: Journal, on_output: Callable[[FileRecord], None], step: _Round
    ) -> None:
        """Finish what a crash interrupted, then poll each batch and load it when done."""
        for rec in journal.files(states=("finished", "downloaded")):
            self._finish_file(journal, rec, on_output, step)
        for rec in journal.files(states=("created",)):
            batch = self._poll(journal, rec, step)
            if batch is None:
                continue
            status = self.adapter.status(batch.status)
            if status in TERMINAL_STATUSES:
                journal.update(
                    rec.name,
                    "finished",
                    batch_status=status,
                    output_file_id=batch.output_file_id,
                    error_file_id=batch.error_file_id,
                )
                self._emit(f"{rec.name}: batch {batch.id} {status} {_counts_text(batch)}")
                self._hold_until = 0.0  # our queue share shrank: try waiting files again
                self._capacity_failures = 0
                self._finish_file(journal, journal.get(rec.name) or rec, on_output, step)
            elif status == "failed":
                self._batch_failed(journal, rec, batch)
                step.changed = True

    def _poll(self, journal: Journal, rec: FileRecord, step: _Round) -> Any | None:
        assert rec.batch_id is not None, rec.name
        try:
            batch = _answer(self.client.batches.retrieve(rec.batch_id), "batch poll", batch=True)
        except openai.NotFoundError:
            self._batch_missing(journal, rec, step)
            return None
        except openai.APIError as exc:
            self._raise_if_fatal(exc)
            log.info("%s: poll failed (%s); will retry", rec.name, describe_error(exc))
            return None
        status = self.adapter.status(batch.status)
        counts = counts_json(batch)
        if status != rec.batch_status or counts != rec.request_counts or rec.missing_polls:
            journal.update(
                rec.name,
                batch_status=status,
                request_counts=counts,
                missing_polls=0,
                missing_since=None,
            )
        if status != rec.batch_status and status not in (*TERMINAL_STATUSES, "failed"):
            self._emit(f"{rec.name}: batch {batch.id} {status} {_counts_text(batch)}".rstrip())
        return batch

    def _batch_missing(self, journal: Journal, rec: FileRecord, step: _Round) -> None:
        """The provider answered 404 for our batch (it happens, and passes).

        Each 404 is counted in the journal. Once there have been ``vanished_after`` in a
        row, the batch is looked up by metadata and input file (it may live on under
        another id); only if it is nowhere and has been missing for ``missing_grace``
        seconds is the file sent to be created again: a second batch costs money.
        """
        now = self._clock()
        polls, since = rec.missing_polls + 1, rec.missing_since or now
        journal.update(rec.name, missing_polls=polls, missing_since=since)
        if polls < self.vanished_after:
            return
        found = self._find_batch(rec)
        if found is _UNKNOWN:
            return
        if found is not None and found.id != rec.batch_id:
            journal.update(
                rec.name, batch_id=found.id, batch_status=None, missing_polls=0, missing_since=None
            )
            self._emit(f"{rec.name}: batch {rec.batch_id} answers 404; following {found.id}")
            step.changed = True
            return
        if found is not None or now - since < self.missing_grace:
            return  # listed although retrieve fails, or not missing for long: wait
        log.warning(
            "%s: batch %s missing for %.0f s and not in the provider's list; creating it again",
            rec.name,
            rec.batch_id,
            now - since,
        )
        journal.update(rec.name, "uploaded", create_seq=rec.create_seq + 1)
        step.changed = True

    def _find_batch(self, rec: FileRecord) -> Any:
        """Our batch for ``rec`` in the provider's list, by metadata or input file.

        Returns the batch, None when it is not listed, or ``_UNKNOWN`` when the list
        cannot be read now.
        """
        ours = _meta_key(self._metadata(rec))
        try:
            page = _listed(lambda: self.client.batches.list(limit=100))
            for n, batch in enumerate(_pages(page)):
                if n >= self.list_pages * 100 or (batch.created_at or 0) < rec.created_at - 60:
                    break
                same_input = bool(rec.input_file_id) and batch.input_file_id == rec.input_file_id
                if (
                    batch.id == rec.batch_id
                    or _meta_key(batch.metadata or {}) == ours
                    or (same_input and self.adapter.status(batch.status) != "failed")
                ):
                    return batch
        except openai.APIError as exc:
            self._raise_unless_transient(exc, "listing batches")
            log.warning(
                "cannot list batches to look for %s (%s)", rec.batch_id, describe_error(exc)
            )
            return _UNKNOWN
        return None

    def _batch_failed(self, journal: Journal, rec: FileRecord, batch: Any) -> None:
        ref = refusal(self.adapter.batch_errors(batch))
        # a queue limit counts only where this provider says it is about its queue
        usable = ref is not None and (not ref.queue or self.adapter.is_capacity_failure(batch))
        if usable and ref and self._refused_for_limit(journal, rec, ref, f"batch {batch.id}"):
            return
        if self.adapter.is_capacity_failure(batch) and rec.create_seq < self.max_capacity_retries:
            self._capacity_failures += 1
            wait = min(self.poll_interval * 2**self._capacity_failures, 20 * self.poll_interval)
            self._hold_until = self._clock() + wait
            journal.update(
                rec.name,
                "uploaded",
                batch_id=None,
                batch_status=None,
                create_seq=rec.create_seq + 1,
                not_before=self._hold_until,
            )
            self._emit(f"{rec.name}: provider queue full; will create the batch again later")
            return
        errors = self.adapter.batch_errors(batch) or [(None, "no error details given", None)]
        text = redact(
            "; ".join(
                f"{code or 'error'}{f' at line {line}' if line else ''}: {msg}"
                for code, msg, line in errors
            )
        )
        if self.adapter.is_capacity_failure(batch):
            text += (
                f" (refused {rec.create_seq + 1} times; lower max_tokens_per_file or "
                "max_enqueued_tokens in corpusbatch.toml, or wait for other work to finish)"
            )
        journal.update(rec.name, batch_status="failed")
        self._give_up(journal, rec, f"batch {batch.id} failed: {text}")
        self._emit(f"{rec.name}: batch {batch.id} failed: {text}")

    def _finish_file(
        self,
        journal: Journal,
        rec: FileRecord,
        on_output: Callable[[FileRecord], None],
        step: _Round,
    ) -> None:
        if rec.state == "finished" and not self._download(journal, rec):
            return
        rec = journal.get(rec.name) or rec
        if rec.state != "downloaded":
            return
        on_output(rec)
        after = journal.get(rec.name)
        if after is not None and after.state == "downloaded":
            raise BackendError(
                f"on_output did not mark {rec.name} loaded or failed", file_name=rec.name
            )
        step.changed = True
        step.loaded += 1
        if after is not None and after.state == "loaded":
            self._delete_remote(journal, after)

    def _download(self, journal: Journal, rec: FileRecord) -> bool:
        """Fetch output and error files to disk; False if it must wait for a later round."""
        stem = rec.name.removesuffix(".jsonl")
        paths: dict[str, str | None] = {"output_path": None, "error_path": None}
        wanted = (
            ("output_path", "output", rec.output_file_id),
            ("error_path", "errors", rec.error_file_id),
        )
        for field, kind, file_id in wanted:
            if file_id is None:
                continue
            dest = self.outputs_dir / f"{stem}.{rec.batch_id}.{kind}.jsonl"
            try:
                self._fetch(file_id, dest)
            except openai.NotFoundError:
                self._give_up(
                    journal,
                    rec,
                    f"{kind} file {file_id} of batch {rec.batch_id} expired or was "
                    "deleted before download; run index again to re-embed its chunks",
                )
                return False
            except OSError as exc:
                raise BackendError(
                    f"cannot write {dest}: {exc}",
                    batch_id=rec.batch_id,
                    file_name=rec.name,
                    hint="free disk space or fix permissions, then run index again to resume",
                ) from exc
            except (openai.APIError, httpx2.HTTPError, _Incomplete) as exc:
                self._raise_if_fatal(exc)
                log.warning(
                    "%s: download of %s failed (%s); will retry",
                    rec.name,
                    file_id,
                    describe_error(exc),
                )
                return False
            if self.adapter.rewrites_lines:
                convert_lines(dest, dest, self.adapter.output_line)
            paths[field] = str(dest)
        journal.update(rec.name, "downloaded", **paths)
        self._emit(f"{rec.name}: downloaded results of batch {rec.batch_id}")
        return True

    def _fetch(self, file_id: str, dest: Path) -> None:
        """Stream one provider file to ``dest`` (via ``.part``), retrying dropped transfers."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        for attempt in range(1, self.download_attempts + 1):
            try:
                self._fetch_once(file_id, part)
                break
            except (openai.APIError, httpx2.HTTPError, _Incomplete) as exc:
                if not (_transient(exc) or isinstance(exc, _Incomplete)):
                    raise
                if attempt == self.download_attempts:
                    raise
                log.info("download of %s interrupted (%s); retrying", file_id, describe_error(exc))
                self._sleep(min(self.poll_interval, 0.5 * 2**attempt) * self._rng.random())
        os.replace(part, dest)
        _fsync_dir(dest.parent)

    def _fetch_once(self, file_id: str, part: Path) -> None:
        with self.client.files.with_streaming_response.content(file_id) as resp:
            if "html" in resp.headers.get("content-type", "").lower():
                raise _Incomplete("the provider sent an HTML page instead of the file")
            expected = resp.headers.get("content-length")
            written = 0
            with part.open("wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
                    written += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        if expected is not None and written != int(expected):
            raise _Incomplete(f"got {written} of {expected} bytes")

    # -- cleanup ----------------------------------------------------------------------------
    def _cleanup(self, journal: Journal) -> None:
        """Delete provider files of settled files (loaded, split or given up) that a crash
        or a failed delete left behind (once a drive)."""
        if not self.delete_remote_files or self._swept:
            return
        self._swept = True
        for rec in journal.files(states=("loaded", "split", "failed")):
            if not rec.remote_deleted and (rec.input_file_id or rec.output_file_id):
                self._delete_remote(journal, rec)

    def _delete_remote(self, journal: Journal, rec: FileRecord) -> None:
        if not self.delete_remote_files:
            return
        ids = [i for i in (rec.input_file_id, rec.output_file_id, rec.error_file_id) if i]
        if not ids:
            return
        for file_id in ids:
            try:
                self.client.files.delete(file_id)
            except openai.NotFoundError:
                pass  # already gone (expired, or deleted before a crash)
            except openai.APIError as exc:
                # Cleanup is a courtesy (files expire anyway): never stop a run for it.
                log.info("%s: could not delete %s (%s)", rec.name, file_id, describe_error(exc))
                return
        journal.update(rec.name, remote_deleted=1)

    def _raise_if_fatal(self, exc: BaseException) -> None:
        fatal = _fatal_auth(exc)
        if fatal:
            raise fatal from exc

    def _raise_unless_transient(self, exc: BaseException, doing: str) -> None:
        """A call every file depends on failed for good: stop instead of looping."""
        self._raise_if_fatal(exc)
        if not _transient(exc):
            raise BackendError(
                f"{doing} failed: {describe_error(exc)}",
                hint=f"check that {self.client.base_url} serves an OpenAI-compatible Batch API",
            ) from exc


_UNKNOWN: Any = object()  # "cannot tell now", as opposed to "not there"


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    return str(code) if code else None


def _too_large(exc: openai.APIError) -> bool:
    """An upload refused for its size (413, or a message saying the file is too large)."""
    status = getattr(exc, "status_code", None)
    text = describe_error(exc).lower()
    return status == 413 or _error_code(exc) == "file_too_large" or "too large" in text


def _stated_bytes(exc: openai.APIError) -> int | None:
    from ..splitting import stated_limit

    return stated_limit(describe_error(exc))


class _Incomplete(Exception):
    """A download ended before Content-Length bytes arrived."""


def _meta_key(meta: Mapping[str, str]) -> tuple[str, ...] | None:
    keys = ("corpusbatch_file", "corpusbatch_sha256", "corpusbatch_plan", "corpusbatch_seq")
    if not all(k in meta for k in keys):
        return None
    return tuple(meta[k] for k in keys)


def _pages(page: Any) -> Iterator[Any]:
    """Items across cursor pages (the SDK's auto-pagination, made explicit for typing).

    A page that is not a list of objects (an HTML error page answered with 200) raises
    :class:`GarbledAnswer`, a transient error, instead of being iterated as text."""
    if isinstance(page, str | bytes) or not hasattr(page, "__iter__"):
        raise GarbledAnswer("list", page)
    items = iter(page)
    while True:
        try:  # fetching the next page may meet an HTML page too
            item = next(items)
        except StopIteration:
            return
        except (AttributeError, TypeError, ValueError) as exc:
            raise GarbledAnswer("list", exc) from exc
        yield _answer(item, "list")


def _listed(call: Callable[[], Any]) -> Any:
    """The first page of a list call; an answer the SDK cannot page through (it fails
    inside on a 200 HTML page) becomes :class:`GarbledAnswer`."""
    try:
        return call()
    except (AttributeError, TypeError, ValueError) as exc:
        raise GarbledAnswer("list", exc) from exc


class GarbledAnswer(openai.APIConnectionError):
    """A 200 answer that is not the JSON object asked for: an HTML error page of a proxy,
    a truncated body, an ``{"error": ...}`` object. Transient: the call is tried (or the
    state reconciled) again later, like a dropped connection."""

    def __init__(self, what: str, answer: Any) -> None:
        snippet = " ".join(str(answer)[:80].split())
        super().__init__(
            message=f"{what}: the provider's answer is not the expected JSON object ({snippet!r})",
            request=httpx2.Request("GET", "http://answer.invalid/"),
        )


def _answer(obj: Any, what: str, *, batch: bool = False) -> Any:
    """``obj`` if it is an API object with an id (and, for a batch, a status)."""
    ok = isinstance(getattr(obj, "id", None), str) and bool(obj.id)
    if ok and batch:
        ok = isinstance(getattr(obj, "status", None), str) and bool(obj.status)
    if not ok:
        raise GarbledAnswer(what, obj)
    return obj


def counts_json(batch: Any) -> str | None:
    counts = getattr(batch, "request_counts", None)
    if counts is None:
        return None
    return json.dumps(
        {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
    )


def parse_counts(raw: str | None) -> dict[str, int] | None:
    return dict(json.loads(raw)) if raw else None


def _counts_text(batch: Any) -> str:
    counts = getattr(batch, "request_counts", None)
    if counts is None:
        return ""
    return f"({counts.completed}/{counts.total} requests done, {counts.failed} failed)"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
