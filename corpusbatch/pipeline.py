"""The whole job: folder -> chunks -> batch files -> vectors -> published table.

:func:`index` runs the stages in order and can be re-run at any time: every stage is
keyed by content and recorded on disk, so a second run (after a crash, a ``--no-wait``
submit, or a night of edits) does only what is left. :func:`collect` finishes what a
``--no-wait`` run left in flight; :func:`batch_status` and :func:`cancel_batches` serve the
CLI's ``status`` and ``cancel``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from .chunking import Chunker, ChunkerConfig
from .config import Settings, remembered
from .errors import ChunkingError, ConfigError, CostLimitExceeded, IndexNotFound
from .journal import FileRecord, Journal
from .loading import (
    LoadResult,
    PublishResult,
    RunStore,
    SourceState,
    desired_rows,
    load_output,
    publish,
    table_schema,
)
from .planning import PlanSummary, plan_files, read_manifest, summarize, waves
from .sources import list_files, read_document
from .tokenizers import Tokenizer, get_tokenizer
from .types import EmbeddingIdentity, EmbedItem, PlannedFile
from .workspace import IndexPaths, connect, index_lock

log = logging.getLogger(__name__)

VECTOR_INDEX_MIN_ROWS = 50_000
_SKIPPED = "skipped: "  # marks a remembered skipped file in the store's sha256 column


class Progress(Protocol):
    """How the library reports progress; the CLI draws bars or log lines from it."""

    def start(self, stage: str, total: int | None = None, unit: str = "it") -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...
    def note(self, message: str) -> None: ...


class NullProgress:
    """Progress that reports nothing (the library default)."""

    def start(self, stage: str, total: int | None = None, unit: str = "it") -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        log.info("%s", message)


@dataclass
class RunReport:
    """Everything one run did; printed by ``--json``."""

    root: str = ""
    provider: str = ""
    model: str = ""
    documents: int = 0
    documents_read: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0
    distinct_vectors: int = 0
    to_embed_inputs: int = 0
    to_embed_tokens: int = 0
    files_planned: int = 0
    route: str = ""  # "local", "batch" or "realtime"
    estimated_cost_batch: float = 0.0
    estimated_cost_realtime: float = 0.0
    waves: int = 0
    embedded_vectors: int = 0
    billed_tokens: int = 0
    retried_inputs: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    pending_files: int = 0
    batch_ids: list[str] = field(default_factory=list)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    published: bool = False
    table_version: int | None = None
    deleted_sources: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Context:
    """What every stage of one run shares."""

    root: Path
    settings: Settings
    paths: IndexPaths
    identity: EmbeddingIdentity
    tokenizer: Tokenizer
    chunker: Chunker
    store: RunStore
    journal: Journal  # scoped to this run's model: other models' files are left alone
    base_journal: Journal
    report: RunReport
    progress: Progress

    @functools.cached_property
    def fingerprint(self) -> str:
        return f"{self.identity.fingerprint()}:{self.chunker.fingerprint()}"

    def table_meta(self) -> dict[str, Any]:
        return {
            "model": self.identity.model,
            "dimensions": self.identity.dimensions,
            "request_dimensions": self.identity.request_dimensions,
            "input_prefix": self.identity.input_prefix,
            "chunker": self.chunker.fingerprint(),
            "provider": self.settings.provider,
        }


def resolve_identity(settings: Settings) -> EmbeddingIdentity:
    """The embedding identity the settings describe."""
    spec = settings.model_spec()
    if settings.dimensions is not None and not spec.supports_dimensions:
        raise ConfigError(
            f"model {spec.name} does not accept --dimensions",
            hint="drop --dimensions or use a text-embedding-3 model",
        )
    dims = settings.dimensions or spec.dimensions
    if dims <= 0:
        raise ConfigError(
            f"the vector size of model {spec.name!r} is unknown",
            hint="pass --dimensions with the model's vector length",
        )
    return EmbeddingIdentity(
        model=spec.name,
        dimensions=dims,
        request_dimensions=settings.dimensions,
        input_prefix=settings.input_prefix,
    )


def _open_context(root: Path, settings: Settings, progress: Progress) -> _Context:
    spec = settings.model_spec()
    identity = resolve_identity(settings)
    tokenizer = get_tokenizer(spec.tokenizer)
    budget = settings.effective_chunk_tokens()
    if identity.input_prefix:
        budget -= tokenizer.count(identity.input_prefix) + 1
    chunker = Chunker(
        tokenizer, ChunkerConfig(max_tokens=budget, overlap_tokens=settings.overlap_tokens)
    )
    paths = IndexPaths(settings.index_dir)
    report = RunReport(root=str(root), provider=settings.provider, model=identity.model)
    journal = Journal(paths.journal)
    return _Context(
        root=root,
        settings=settings,
        paths=paths,
        identity=identity,
        tokenizer=tokenizer,
        chunker=chunker,
        store=RunStore(paths.store, identity.dimensions),
        journal=journal.scoped(identity.model),
        base_journal=journal,
        report=report,
        progress=progress,
    )


# -- stage 1: scan sources into desired rows -----------------------------------------
def _scan(ctx: _Context, *, full_scan: bool = False) -> None:
    """Bring the desired rows up to date with the folder, re-chunking changed files only."""
    report, progress, store = ctx.report, ctx.progress, ctx.store

    def on_skip(rel: str, reason: str) -> None:
        report.skipped.append({"path": rel, "reason": reason})

    files = list_files(ctx.root, ctx.settings.include, ctx.settings.exclude, on_skip=on_skip)
    root = ctx.root.resolve()
    seen: set[str] = set()
    progress.start("reading and chunking", total=len(files), unit="file")
    prefix = str(root) + os.sep
    with store.transaction():
        for path in files:
            full = str(path)
            rel = full[len(prefix) :] if full.startswith(prefix) else path.as_posix()
            if _scan_one(ctx, path, rel, full_scan, on_skip):
                seen.add(rel)
            progress.advance()
        report.deleted_sources = store.drop_sources(seen)
        store.set_meta("root", str(root))
        store.set_meta("fingerprint", ctx.fingerprint)
    progress.finish()
    report.documents = int(
        store.db.execute(
            "SELECT COUNT(*) FROM sources WHERE sha256 NOT LIKE ?", (_SKIPPED + "%",)
        ).fetchone()[0]
    )
    report.chunks = store.count("desired")


def _scan_one(
    ctx: _Context, path: Path, rel: str, full_scan: bool, on_skip: Callable[[str, str], None]
) -> bool:
    """Update one source's rows; returns whether the store should remember it.

    Skipped files (binary, empty, ...) are remembered too, with their reason, so that an
    unchanged skipped file is reported again without being read again.
    """
    store, fp = ctx.store, ctx.fingerprint
    try:
        st = path.stat()
    except OSError as exc:
        on_skip(rel, f"cannot stat ({exc.strerror})")
        return False
    prev = store.source_state(rel)
    if prev is not None and prev.fingerprint != fp:
        prev = None
    if prev is not None and _unchanged(path, st, prev, full_scan):
        if prev.sha256.startswith(_SKIPPED):
            on_skip(rel, prev.sha256.removeprefix(_SKIPPED))
        elif full_scan:  # same bytes, new stat: remember the stat, keep the rows
            store.put_source(rel, SourceState(prev.sha256, st.st_size, st.st_mtime_ns, fp), None)
        return True
    reasons: list[str] = []

    def remember(skipped: str, reason: str) -> None:
        reasons.append(reason)
        on_skip(skipped, reason)

    doc = read_document(ctx.root, path, on_skip=remember)
    ctx.report.documents_read += 1
    if doc is None:
        reason = reasons[-1] if reasons else "skipped"
        store.put_source(rel, SourceState(_SKIPPED + reason, st.st_size, st.st_mtime_ns, fp), [])
        return True
    state = SourceState(doc.sha256, st.st_size, st.st_mtime_ns, fp)
    if prev is not None and prev.sha256 == doc.sha256:
        store.put_source(rel, state, None)
        return True
    try:
        chunks = ctx.chunker.chunk(doc)
    except ChunkingError as exc:  # one bad document must not stop the run
        remember(rel, f"cannot be chunked: {exc}")
        store.put_source(
            rel, SourceState(_SKIPPED + reasons[-1], st.st_size, st.st_mtime_ns, fp), []
        )
        return True
    store.put_source(rel, state, desired_rows(chunks, ctx.identity))
    return True


def _unchanged(path: Path, st: os.stat_result, prev: SourceState, full_scan: bool) -> bool:
    """Same size and mtime as last time; with ``full_scan``, same bytes (hash only, no
    decoding, so a paranoid scan costs little more than reading the files)."""
    if not full_scan:
        return (prev.size, prev.mtime_ns) == (st.st_size, st.st_mtime_ns)
    if prev.sha256.startswith(_SKIPPED):
        return False
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == prev.sha256
    except OSError:
        return False  # read_document reports why


# -- stage 2: plan what is missing ---------------------------------------------------
def _pending_keys(journal: Journal) -> set[str]:
    keys: set[str] = set()
    for record in journal.pending():
        path = Path(record.manifest_path)
        if path.exists():
            for ks in read_manifest(path).values():
                keys.update(ks)
    return keys


def _embed_items(ctx: _Context, rows: Iterator[tuple[str, str, int]]) -> Iterator[EmbedItem]:
    prefix = ctx.identity.input_prefix
    for key, text, n_tokens in rows:
        if prefix:
            n_tokens = ctx.tokenizer.count(prefix + text)
        yield EmbedItem(key=key, text=prefix + text, n_tokens=n_tokens)


def _plan(ctx: _Context, items: Iterator[EmbedItem], plan_id: str) -> list[PlannedFile]:
    return list(
        plan_files(
            items,
            out_dir=ctx.paths.batches,
            plan_id=plan_id,
            model=ctx.identity.model,
            limits=ctx.settings.profile().limits,
            request_dimensions=ctx.identity.request_dimensions,
        )
    )


def _journal_files(
    ctx: _Context,
    files: list[PlannedFile],
    plan_id: str,
    attempt: int = 0,
    parent: str | None = None,
) -> None:
    for f in files:
        ctx.journal.add_file(
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
            attempt=attempt,
            parent=parent,
        )


def _discard(files: list[PlannedFile]) -> None:
    for f in files:
        f.path.unlink(missing_ok=True)
        f.manifest_path.unlink(missing_ok=True)


def plan_missing(ctx: _Context, *, dry_run: bool = False) -> PlanSummary:
    """Plan batch files for every desired vector that is neither stored nor in flight."""
    items = _embed_items(ctx, ctx.store.keys_to_embed(_pending_keys(ctx.journal)))
    # Unique per run (names of journal files must never repeat); sortable by time.
    plan_id = "p" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    files = _plan(ctx, items, plan_id)
    spec = ctx.settings.model_spec()
    summary = summarize(files, spec)
    report = ctx.report
    report.files_planned = len(files)
    report.to_embed_inputs = summary.inputs
    report.to_embed_tokens = summary.tokens
    report.estimated_cost_batch = summary.batch_cost
    report.estimated_cost_realtime = summary.realtime_cost
    report.waves = len(waves(files, ctx.settings.profile().limits)) if files else 0
    report.distinct_vectors = int(
        ctx.store.db.execute("SELECT COUNT(DISTINCT key) FROM desired").fetchone()[0]
    )
    report.route = _route(ctx.settings, summary)
    cost = summary.realtime_cost if report.route == "realtime" else summary.batch_cost
    max_cost = ctx.settings.max_cost
    if dry_run or (max_cost is not None and cost > max_cost):
        _discard(files)
        if not dry_run:
            raise CostLimitExceeded(
                f"estimated cost ${cost:.4f} ({report.route} price) for {summary.tokens:,} "
                f"tokens is above --max-cost ${max_cost:.4f}; nothing was sent",
                hint="raise --max-cost or index fewer files",
            )
        return summary
    _journal_files(ctx, files, plan_id)
    return summary


def _route(settings: Settings, summary: PlanSummary) -> str:
    if not settings.profile().remote:
        return "local"
    threshold = settings.realtime_under
    if threshold is not None and 0 < summary.tokens <= threshold:
        return "realtime"
    return "batch"


# -- stage 3: run the batch files and load their results -------------------------------
class _Loader:
    """The executors' ``on_output``: load a finished file, queue retries, mark loaded."""

    def __init__(self, ctx: _Context, *, advance: bool) -> None:
        self.ctx = ctx
        self.advance = advance  # the local backend reports progress per input itself

    def __call__(self, record: FileRecord) -> None:
        ctx = self.ctx
        manifest = read_manifest(Path(record.manifest_path))
        result = load_output(
            ctx.store,
            file_name=record.name,
            manifest=manifest,
            output_path=Path(record.output_path) if record.output_path else None,
            error_path=Path(record.error_path) if record.error_path else None,
        )
        self._handle_failures(record, result)
        ctx.report.embedded_vectors += result.vectors
        ctx.report.billed_tokens += result.tokens
        if record.batch_id:
            ctx.report.batch_ids.append(record.batch_id)
        ctx.journal.update(record.name, "loaded")
        if self.advance:
            ctx.progress.advance(record.n_inputs)

    def _handle_failures(self, record: FileRecord, result: LoadResult) -> None:
        ctx = self.ctx
        if not result.failed:
            return
        can_retry = record.attempt + 1 < ctx.settings.max_attempts
        retry_keys = {f.key for f in result.failed if f.retryable and can_retry}
        retry = sorted(retry_keys)
        permanent = [f for f in result.failed if f.key not in retry_keys]
        if retry:
            texts = ctx.store.texts_for(retry)
            rows = ((k, *texts[k]) for k in retry if k in texts)
            plan_id = f"{record.name.removesuffix('.jsonl')}-r{record.attempt + 1}"
            files = _plan(ctx, _embed_items(ctx, rows), plan_id)
            _journal_files(ctx, files, plan_id, attempt=record.attempt + 1, parent=record.name)
            ctx.report.retried_inputs += len(retry)
            log.warning("%s: %d inputs failed and were queued again", record.name, len(retry))
        if permanent:
            ctx.store.record_failures(permanent, record.name)
            log.warning("%s: %d inputs failed for good", record.name, len(permanent))


def _drive_local(ctx: _Context, wait: bool) -> None:
    from .local import LocalBackend

    LocalBackend().drive(
        ctx.journal,
        wait=wait,
        outputs_dir=ctx.paths.outputs,
        on_output=_Loader(ctx, advance=False),
        progress=ctx.progress.advance,
    )


def _drive_remote(ctx: _Context, api_key: str | None, wait: bool) -> None:
    submitter = _submitter(ctx, api_key)
    submitter.drive(
        ctx.journal, wait=wait, on_output=_Loader(ctx, advance=True), progress=ctx.progress.note
    )


def _client(ctx: _Context, api_key: str | None) -> Any:
    from .submitting import make_client

    if not api_key:
        env = ctx.settings.profile().api_key_env or "the API key variable"
        raise ConfigError(
            f"provider {ctx.settings.provider!r} needs an API key",
            hint=f"set {env} (or --api-key-env NAME) in the environment",
        )
    return make_client(ctx.settings.profile(), api_key)


def _submitter(ctx: _Context, api_key: str | None) -> Any:
    from .submitting import BatchSubmitter

    return BatchSubmitter(
        _client(ctx, api_key),
        profile=ctx.settings.profile(),
        outputs_dir=ctx.paths.outputs,
        poll_interval=ctx.settings.poll_interval,
        delete_remote_files=ctx.settings.delete_remote_files,
    )


def _execute(ctx: _Context, api_key: str | None, wait: bool) -> None:
    pending = ctx.journal.pending()
    if not pending:
        return
    total = sum(r.n_inputs for r in pending)
    ctx.progress.start("embedding", total=total, unit="input")
    if ctx.report.route == "realtime":
        from .submitting.realtime import RealtimeRunner

        runner = RealtimeRunner(_client(ctx, api_key), outputs_dir=ctx.paths.outputs)
        runner.drive(ctx.journal, on_output=_Loader(ctx, advance=True), progress=ctx.progress.note)
    if ctx.settings.profile().remote:
        _drive_remote(ctx, api_key, wait)  # earlier runs' batches still in flight
    else:
        _drive_local(ctx, wait)
    ctx.progress.finish()


# -- stage 4: publish ------------------------------------------------------------------
def _publish(ctx: _Context) -> PublishResult:
    db = connect(ctx.paths)
    schema = table_schema(ctx.identity, ctx.table_meta())
    ctx.progress.start("loading", total=ctx.store.count("desired"), unit="row")
    result = publish(
        db, ctx.settings.table, ctx.store, schema, ctx.identity.model, ctx.progress.advance
    )
    ctx.progress.finish()
    if result.inserted or result.updated or result.deleted:
        table = db.open_table(ctx.settings.table)
        _maintain(table)
        result.version = table.version
    return result


def _remove_loaded_files(ctx: _Context) -> None:
    """Delete local batch, manifest and output files whose results are published.

    Their vectors live in the run store now; keeping every night's JSONL (gigabytes for
    remote outputs) would grow the index directory without bound. Files of failed or
    pending batches are kept.
    """
    removed = 0
    for record in ctx.journal.files(states=("loaded",)):
        for name in (record.path, record.manifest_path, record.output_path, record.error_path):
            if name and Path(name).exists():
                Path(name).unlink()
                removed += 1
    if removed:
        log.info("removed %d local batch files whose results are published", removed)


def _table_exists(ctx: _Context) -> bool:
    try:
        connect(ctx.paths).open_table(ctx.settings.table)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _maintain(table: Any) -> None:
    """Indexes and compaction after a change, so reads stay fast and versions few."""
    from lancedb.index import FTS, IvfRq

    indexed = {tuple(i.columns) for i in table.list_indices()}
    if ("text",) not in indexed:
        table.create_index("text", config=FTS())
    rows = table.count_rows()
    if ("vector",) not in indexed and rows >= VECTOR_INDEX_MIN_ROWS:
        table.create_index("vector", config=IvfRq(distance_type="cosine"))
    table.optimize(cleanup_older_than=timedelta(days=1))


def _failures_report(ctx: _Context) -> list[dict[str, Any]]:
    out = []
    for key, file_name, code, message in ctx.store.failures():
        for source, start, end in ctx.store.where_used(key):
            out.append(
                {
                    "source": source,
                    "lines": f"{start}-{end}",
                    "code": code,
                    "message": message,
                    "file": file_name,
                }
            )
    out.extend(_failed_files_report(ctx))
    return out


def _failed_files_report(ctx: _Context) -> list[dict[str, Any]]:
    """Rows still missing because their whole batch file failed (e.g. validation).

    Their inputs are planned again by the next run; until then the table lacks them.
    """
    out: list[dict[str, Any]] = []
    for record in ctx.journal.files(states=("failed",)):
        path = Path(record.manifest_path)
        if not path.exists():
            continue
        keys = [k for ks in read_manifest(path).values() for k in ks]
        spans: dict[str, tuple[int, int]] = {}
        for key in ctx.store.missing_vectors(keys):
            for source, start, end in ctx.store.where_used(key):
                lo, hi = spans.get(source, (start, end))
                spans[source] = (min(lo, start), max(hi, end))
        out.extend(
            {
                "source": source,
                "lines": f"{lo}-{hi}",
                "code": "batch_failed",
                "message": record.error or "the batch failed",
                "file": record.name,
            }
            for source, (lo, hi) in sorted(spans.items())
        )
    return out


def index(
    root: Path,
    settings: Settings,
    *,
    api_key: str | None = None,
    wait: bool = True,
    dry_run: bool = False,
    full_scan: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Index ``root`` into ``settings.table``; safe to re-run at any time.

    Reads the folder (re-chunking only changed files), embeds every chunk whose vector is
    not stored yet (nothing twice), loads results as each batch file finishes, and then
    publishes the table in one commit. With ``wait=False`` it submits and returns;
    a later call collects and publishes. With ``dry_run`` it plans and prices only.
    Inputs that failed for good in earlier runs are not sent again (and not paid for
    again) unless ``retry_failed``. ``api_key`` is used only for remote providers and
    never stored.
    """
    progress = progress or NullProgress()
    t0 = time.monotonic()
    paths = IndexPaths(settings.index_dir)
    with index_lock(paths):
        ctx = _open_context(root, settings, progress)
        try:
            if retry_failed and not dry_run:
                log.info("forgot %d inputs that had failed for good", ctx.store.clear_failures())
            return _run(ctx, api_key, wait, dry_run, full_scan, t0)
        finally:
            ctx.store.close()
            ctx.base_journal.close()


def _run(
    ctx: _Context, api_key: str | None, wait: bool, dry_run: bool, full_scan: bool, t0: float
) -> RunReport:
    report = ctx.report
    _scan(ctx, full_scan=full_scan)
    t1 = time.monotonic()
    report.durations["scan"] = round(t1 - t0, 3)
    plan_missing(ctx, dry_run=dry_run)
    t2 = time.monotonic()
    report.durations["plan"] = round(t2 - t1, 3)
    if dry_run:
        report.pending_files = len(ctx.journal.pending())
        return report
    with ctx.store.transaction():
        ctx.store.set_meta("settings", json.dumps(remembered(ctx.settings)))
    _execute(ctx, api_key, wait)
    report.durations["embed"] = round(time.monotonic() - t2, 3)
    return _finish(ctx, t0)


def _finish(ctx: _Context, t0: float) -> RunReport:
    """Publish if nothing is in flight any more; fill in the report."""
    report = ctx.report
    t3 = time.monotonic()
    report.pending_files = len(ctx.journal.pending())
    others = [r for r in ctx.base_journal.pending() if r.model != ctx.identity.model]
    if others:
        models = ", ".join(sorted({r.model for r in others}))
        log.warning(
            "%d batch files of another model (%s) are still pending and were left alone; "
            "run `corpusbatch collect` with that provider and model, or `cancel` them",
            len(others),
            models,
        )
    report.failed = _failures_report(ctx)
    if ctx.store.get_meta("fingerprint") not in (None, ctx.fingerprint):
        # e.g. `collect` for another model's batches: their vectors are stored now, but
        # the desired rows belong to the last scan's model; `index` publishes those.
        log.warning("the last scan used other settings; not publishing (run `index` to)")
        report.durations["total"] = round(time.monotonic() - t0, 3)
        return report
    if report.pending_files == 0 and (ctx.store.is_dirty() or not _table_exists(ctx)):
        result = _publish(ctx)
        ctx.store.mark_clean()
        _remove_loaded_files(ctx)
        report.published = True
        report.new, report.changed = result.inserted, result.updated
        report.deleted, report.unchanged = result.deleted, result.unchanged
        report.table_version = result.version
    elif report.pending_files == 0:  # the table already is the desired state
        report.published = True
        report.unchanged = ctx.store.count("desired")
        report.table_version = connect(ctx.paths).open_table(ctx.settings.table).version
    report.durations["publish"] = round(time.monotonic() - t3, 3)
    report.durations["total"] = round(time.monotonic() - t0, 3)
    return report


def collect(
    settings: Settings,
    *,
    api_key: str | None = None,
    wait: bool = True,
    progress: Progress | None = None,
) -> RunReport:
    """Run and load what is in flight, then publish; the sources are not read."""
    progress = progress or NullProgress()
    t0 = time.monotonic()
    paths = IndexPaths(settings.index_dir)
    if not paths.journal.exists():
        raise IndexNotFound(f"no index in {paths.root}", hint="run `corpusbatch index DIR` first")
    with index_lock(paths):
        ctx = _open_context(Path("."), settings, progress)
        try:
            ctx.report.chunks = ctx.store.count("desired")
            _execute(ctx, api_key, wait)
            return _finish(ctx, t0)
        finally:
            ctx.store.close()
            ctx.base_journal.close()


def batch_status(settings: Settings, *, api_key: str | None = None) -> list[dict[str, Any]]:
    """Every journal file not yet loaded, with live provider status when a key is given."""
    paths = IndexPaths(settings.index_dir)
    if not paths.journal.exists():
        return []
    with Journal(paths.journal) as journal:
        if api_key and settings.profile().remote:
            from .submitting import make_client, status

            client = make_client(settings.profile(), api_key)
            return [
                s.to_dict() if hasattr(s, "to_dict") else asdict(s) for s in status(journal, client)
            ]
        now = time.time()
        return [
            {
                "file": r.name,
                "state": r.state,
                "batch_id": r.batch_id,
                "batch_status": r.batch_status,
                "inputs": r.n_inputs,
                "tokens": r.n_tokens,
                "age_s": round(now - r.created_at),
                "error": r.error,
            }
            for r in journal.pending()
        ]


def cancel_batches(settings: Settings, *, api_key: str | None = None) -> list[str]:
    """Ask the provider to cancel every in-flight batch; returns their ids."""
    profile = settings.profile()
    if not profile.remote:
        raise ConfigError(
            "the local backend has nothing to cancel",
            hint="pass the --provider the batches were sent to",
        )
    if not api_key:
        raise ConfigError(f"cancelling needs the API key in {profile.api_key_env}")
    from .submitting import cancel, make_client

    with Journal(IndexPaths(settings.index_dir).journal) as journal:
        return list(cancel(journal, make_client(profile, api_key)))
