"""The whole job: folder -> chunks -> batch files -> vectors -> published table.

:func:`index` runs the stages in order and can be re-run at any time: every stage is
keyed by content and recorded on disk, so a second run (after a crash, a ``--no-wait``
submit, or a night of edits) does only what is left. :func:`collect` finishes what a
``--no-wait`` run left in flight; :func:`batch_status` and :func:`cancel_batches` serve the
CLI's ``status`` and ``cancel``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from . import memory
from .chunking import Chunker, ChunkerConfig
from .config import Limits, ModelFacts, Settings, planning_limits, remembered
from .errors import (
    BackendError,
    ConfigError,
    CostLimitExceeded,
    IndexNotFound,
    LoadError,
    MassDeleteRefused,
)
from .journal import FileRecord, Journal
from .loading import (
    TABLE_SCHEMA_VERSION,
    FailedInput,
    LoadResult,
    PublishResult,
    RunStore,
    SourceState,
    identity_meta,
    is_commit_conflict,
    load_output,
    publish,
    retry_conflicts,
    same_identity,
    table_schema,
)
from .planning import PlanSummary, plan_files, read_manifest, summarize, waves
from .scanning import FileResult, FileTask, ScanJob, default_workers, read_files
from .sources import list_files, shown, skip_kind
from .splitting import effective_limits
from .tokenizers import Tokenizer, get_tokenizer, usage_ratio
from .types import EmbeddingIdentity, EmbedItem, PlannedFile
from .workspace import IndexPaths, connect, index_lock, is_local, table_uri

log = logging.getLogger(__name__)

VECTOR_INDEX_MIN_ROWS = 50_000
# MiB the full-text index build may hold before it writes a partition out. LanceDB's
# default let the build of a 1M-row table peak 483 MB above its start, 64 MiB 334 MB
# (with the 64 MiB read-ahead of corpusbatch.memory), in the same time; the index is
# 9% larger and its queries score the same (docs/benchmarks/scale.md).
FTS_BUILD_MIB = 64
# optimize() once this many rows were written, or publishes made, since the last time
OPTIMIZE_ROWS = 100_000
OPTIMIZE_COMMITS = 20
# A scan that finds no document where the last one found some, or that would delete more
# than MASS_DELETE_SHARE of at least MASS_DELETE_MIN_SOURCES sources at once, is refused
# (an unmounted share, a failed checkout, a wrong path) unless allow_mass_delete.
MASS_DELETE_SHARE = 0.5
MASS_DELETE_MIN_SOURCES = 10
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
    # every file skipped: {"path", "reason", "kind"}; kind is sources.skip_kind(reason)
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # kind -> files
    chunks: int = 0
    distinct_vectors: int = 0
    to_embed_inputs: int = 0
    to_embed_tokens: int = 0
    files_planned: int = 0
    route: str = ""  # "local", "batch" or "realtime"
    # token counts are estimates (the model's own tokenizer is not available offline)
    tokens_estimated: bool = False
    # what this run learned about a model corpusbatch does not know, or still has to
    probe: dict[str, Any] | None = None  # the one-input probe: tokens, cost, what it said
    model_notes: list[str] = field(default_factory=list)
    estimated_cost_batch: float = 0.0
    estimated_cost_realtime: float = 0.0
    waves: int = 0
    embedded_vectors: int = 0
    billed_tokens: int = 0
    retried_inputs: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    # inputs of the current sources with no vector yet that nothing is running for
    # (provider trouble: expiry, outages, a batch that failed whole); the next run sends
    # them again, no flag needed
    deferred: int = 0
    deferred_reasons: list[str] = field(default_factory=list)
    # sources whose new rows are not all embedded yet: the table keeps their last
    # published rows until they are
    incomplete_sources: list[str] = field(default_factory=list)
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
    journal: Journal  # scoped to this run's target: other providers' files are left alone
    base_journal: Journal
    report: RunReport
    progress: Progress

    @functools.cached_property
    def fingerprint(self) -> str:
        return f"{self.identity.fingerprint()}:{self.chunker.fingerprint()}"

    @functools.cached_property
    def target(self) -> str:
        return run_target(self.settings)

    @functools.cached_property
    def identity_json(self) -> str:
        return json.dumps(dataclasses.asdict(self.identity), sort_keys=True)

    def routed(self, route: str) -> Journal:
        """The journal as the executor of ``route`` must see it."""
        return self.base_journal.scoped(self.target, (route,))

    def table_meta(self) -> dict[str, Any]:
        return {
            "model": self.identity.model,
            "dimensions": self.identity.dimensions,
            "request_dimensions": self.identity.request_dimensions,
            "input_prefix": self.identity.input_prefix,
            "chunker": self.chunker.fingerprint(),
            "provider": self.settings.provider,
        }


def resolve_identity(settings: Settings, *, unknown_ok: bool = False) -> EmbeddingIdentity:
    """The embedding identity the settings describe.

    A model corpusbatch does not know has its vector length and ``dimensions`` support
    from the flags or from what the index learned (:func:`with_learned`). ``dimensions``
    is sent only to a model that accepts it; asking a model that does not for its own
    native length sends nothing. With ``unknown_ok`` (a dry run) what is not learned yet
    stays unknown (vector length 0) instead of raising.
    """
    settings = with_learned(settings)
    spec = settings.model_spec()
    requested = settings.dimensions
    if requested is not None and not spec.supports_dimensions:
        if requested == spec.dimensions:
            requested = None  # the model's own length: nothing to ask for
        elif spec.supports_dimensions is False:
            how = "" if spec.builtin else " (its provider refused the field, or it is set so)"
            raise ConfigError(
                f"model {spec.name} does not accept --dimensions{how}",
                hint="drop --dimensions"
                + (f" (its vectors have {spec.dimensions})" if spec.dimensions else ""),
            )
        elif not unknown_ok:
            raise ConfigError(
                f"whether model {spec.name} accepts --dimensions is not known yet",
                hint="run `corpusbatch index` (it asks the provider once), or set "
                "model_accepts_dimensions in corpusbatch.toml",
            )
    dims = requested or spec.dimensions
    if dims <= 0 and not unknown_ok:
        raise ConfigError(
            f"the vector size of model {spec.name!r} is unknown",
            hint="run `corpusbatch index` (it asks the provider for one vector), or pass "
            "--model-dimensions with the model's vector length",
        )
    return EmbeddingIdentity(
        model=spec.name,
        dimensions=max(dims, 0),
        request_dimensions=requested,
        input_prefix=settings.input_prefix,
    )


def _facts_key(settings: Settings, model: str) -> str:
    return f"model\x1f{run_target(settings)}\x1f{model}"


def with_learned(settings: Settings) -> Settings:
    """``settings`` with what its index learned about the model (``settings.learned``).

    Only models that are not built in, or whose token counts are estimates, have
    anything to learn; the facts live in ``state.db`` per target and model.
    """
    if settings.learned is not None:
        return settings
    spec = settings.profile().model(settings.model)
    if spec.builtin and not spec.estimated_tokens:
        return settings
    facts = ModelFacts()
    journal_path = IndexPaths(settings.index_dir).journal
    if journal_path.exists():
        with Journal(journal_path) as journal:
            facts = ModelFacts.from_json(journal.get_meta(_facts_key(settings, spec.name)))
    return replace(settings, learned=facts)


def _learn(settings: Settings, facts: ModelFacts) -> Settings:
    """Remember ``facts`` about the settings' model in its index; the merged settings."""
    settings = with_learned(settings)
    name = settings.profile().model(settings.model).name
    paths = IndexPaths(settings.index_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    with Journal(paths.journal) as journal:
        key = _facts_key(settings, name)
        merged = ModelFacts.from_json(journal.get_meta(key)).merged(facts)
        journal.set_meta(key, merged.to_json())
    return replace(settings, learned=merged)


def probe_model_if_needed(settings: Settings, api_key: str | None) -> dict[str, Any] | None:
    """Learn what a model not built in needs before anything is planned for it.

    Its vector length (unless ``--model-dimensions`` says it or the index knows it) and,
    with ``--dimensions``, whether the model accepts that field: one real-time request
    with one short input (a few tokens, priced at the real-time price). What it says is
    kept in the index, so later runs send nothing. Returns what the probe found and
    cost, or None when nothing had to be asked.
    """
    settings = with_learned(settings)
    profile, spec = settings.profile(), settings.model_spec()
    if spec.builtin or not profile.remote:
        return None
    asked = settings.dimensions
    need_size = spec.dimensions <= 0 and (asked is None or spec.supports_dimensions is False)
    need_accepts = (
        asked is not None and spec.supports_dimensions is None and asked != spec.dimensions
    )
    if not (need_size or need_accepts):
        return None
    from .submitting import make_client
    from .submitting.adapter import probe_model

    if not api_key:
        raise ConfigError(
            f"provider {settings.provider!r} needs an API key",
            hint=f"set {profile.api_key_env or 'the API key variable'} (or --api-key-env NAME)",
        )
    client = make_client(profile, api_key)
    results = [probe_model(client, spec.name, asked if need_accepts else None)]
    first = results[0]
    facts = ModelFacts(accepts_dimensions=first.accepts_dimensions)
    if first.accepts_dimensions is False and first.dimensions is None:
        results.append(probe_model(client, spec.name))  # refused: learn the native size
    native = [r.dimensions for r in results if not r.accepts_dimensions and r.dimensions]
    facts = replace(facts, dimensions=native[0] if native else None)
    _learn(settings, facts)
    tokens = sum(r.tokens for r in results)
    cost = tokens * spec.realtime_price_per_mtok / 1_000_000
    said = []
    if facts.dimensions:
        said.append(f"{facts.dimensions}-dimensional vectors")
    if facts.accepts_dimensions is not None:
        said.append(f"`dimensions` {'accepted' if facts.accepts_dimensions else 'refused'}")
    refusal = next((r.refusal for r in results if r.refusal), None)
    return {
        "model": spec.name,
        "requests": len(results),
        "tokens": tokens,
        "cost": cost,
        "priced": spec.realtime_price_per_mtok > 0,
        "dimensions": facts.dimensions,
        "accepts_dimensions": facts.accepts_dimensions,
        "refusal": refusal,
        "note": f"probed {spec.name} with {len(results)} one-input request(s): "
        + ", ".join(said)
        + f"; {tokens} tokens, ${cost:.6f}"
        + ("" if spec.realtime_price_per_mtok > 0 else " (no price known for this model)"),
    }


def run_target(settings: Settings) -> str:
    """Who runs this index's batch files: ``local``, or a provider at its base URL."""
    profile = settings.profile()
    if not profile.remote:
        return "local"
    return f"{profile.name}@{profile.base_url or 'default'}"


def _open_context(
    root: Path, settings: Settings, progress: Progress, *, dry_run: bool = False
) -> _Context:
    settings = with_learned(settings)
    spec = settings.model_spec()
    identity = resolve_identity(settings, unknown_ok=dry_run)
    tokenizer = get_tokenizer(spec.tokenizer)
    budget = settings.effective_chunk_tokens()
    if identity.input_prefix:
        budget -= tokenizer.count(identity.input_prefix) + 1
    chunker = Chunker(
        tokenizer, ChunkerConfig(max_tokens=budget, overlap_tokens=settings.overlap_tokens)
    )
    # absolute, so the journal names the same files whatever the next run's working dir
    paths = IndexPaths(settings.index_dir.resolve())
    report = RunReport(root=str(root), provider=settings.provider, model=identity.model)
    report.tokens_estimated = spec.estimated_tokens
    report.model_notes += _model_notes(settings, identity)
    journal = Journal(paths.journal)
    return _Context(
        root=root,
        settings=settings,
        paths=paths,
        identity=identity,
        tokenizer=tokenizer,
        chunker=chunker,
        store=RunStore(paths.store, identity.dimensions, paths.staging),
        journal=journal.scoped(run_target(settings)),
        base_journal=journal,
        report=report,
        progress=progress,
    )


def _model_notes(settings: Settings, identity: EmbeddingIdentity) -> list[str]:
    spec = settings.model_spec()
    notes = []
    if spec.estimated_tokens:
        notes.append(
            f"token counts are estimates: cl100k_base stands in for {spec.name}'s tokenizer; "
            f"plans keep to {spec.token_margin:.0%} of each token limit"
        )
    if identity.dimensions <= 0:
        notes.append(
            f"the vector size of {spec.name} is not known yet: `index` learns it with a "
            "one-input request (a few tokens at the real-time price)"
        )
    elif (
        settings.dimensions is not None
        and not spec.supports_dimensions
        and (identity.request_dimensions is not None)
    ):
        notes.append(
            f"whether {spec.name} accepts --dimensions is not known yet: `index` asks the "
            "provider once (one input)"
        )
    return notes


# -- stage 1: scan sources into desired rows -----------------------------------------
def _scan(
    ctx: _Context,
    *,
    full_scan: bool = False,
    allow_mass_delete: bool = False,
    in_transaction: bool = False,
) -> None:
    """Bring the desired rows up to date with the folder, re-chunking changed files only.

    The scan commits as one transaction, so a refused or killed scan changes nothing.
    With ``in_transaction`` the caller holds (and ends) the transaction, as a dry run
    does to throw the scan away afterwards.

    Files are stat'ed here; those that must be read are read, decoded, chunked and
    hashed by ``settings.scan_workers`` processes (:mod:`corpusbatch.scanning`, default:
    the cores available) and their results written here in file order, so the store
    and the report do not depend on the number of workers.
    """
    report, progress, store = ctx.report, ctx.progress, ctx.store
    t0 = time.monotonic()

    def on_skip(rel: str, reason: str) -> None:
        report.skipped.append({"path": rel, "reason": reason, "kind": skip_kind(reason)})

    namespace = _namespace(ctx)
    files = list_files(ctx.root, ctx.settings.include, ctx.settings.exclude, on_skip=on_skip)
    root = ctx.root.resolve()
    seen: set[str] = set()
    progress.start("reading and chunking", total=len(files), unit="file")
    prefix = str(root) + os.sep
    tx = contextlib.nullcontext() if in_transaction else store.transaction()
    with tx:
        before = _known_sources(store)
        steps: list[_Step] = []
        tasks: list[FileTask] = []
        for path in files:
            full = str(path)
            rel = full[len(prefix) :] if full.startswith(prefix) else path.as_posix()
            rel = namespace + rel
            step = _Step(rel, path, *_stat_and_check(ctx, path, rel, full_scan))
            if step.read:
                prev_sha = step.prev.sha256 if step.prev is not None else None
                tasks.append(FileTask(rel, full, step.st.st_size if step.st else 0, prev_sha))
            steps.append(step)
        workers = ctx.settings.scan_workers or default_workers()
        results = read_files(_scan_job(ctx, root), tasks, workers)
        try:
            for step in steps:
                result = next(results) if step.read else None
                if _scan_one(ctx, step, result, full_scan, on_skip):
                    seen.add(step.rel)
                progress.advance()
        finally:
            results.close()
        seen |= _not_files_any_more(ctx, before - seen, on_skip)
        _guard_mass_delete(ctx, before, seen, allow_mass_delete or in_transaction)
        report.deleted_sources = store.drop_sources(seen)
        store.set_meta("namespace", ctx.settings.namespace)
        store.set_meta("root", str(root))
        store.set_meta("fingerprint", ctx.fingerprint)
        store.set_meta("identity", ctx.identity_json)
        store.set_meta("table_identity", identity_meta(ctx.table_meta()))
        report.documents = _document_count(store)
    progress.finish()
    report.skipped_by_reason = dict(sorted(Counter(s["kind"] for s in report.skipped).items()))
    report.chunks = store.count("desired")
    report.durations["scan"] = round(time.monotonic() - t0, 3)


def _namespace(ctx: _Context) -> str:
    """The source prefix of this run (``NAME/``, or '' without a namespace); refuses a
    namespace other than the one the index directory's sources were published under:
    renaming every source would delete this writer's rows and publish them again, and
    without a namespace the writer would take the whole shared table for its own."""
    mine = ctx.settings.namespace
    known = ctx.store.get_meta("namespace")
    if known is None and ctx.store.db.execute("SELECT 1 FROM sources LIMIT 1").fetchone():
        known = ""  # an index from before namespaces
    if known is not None and known != mine:

        def name(ns: str) -> str:
            return f"namespace {ns!r}" if ns else "no namespace"

        raise ConfigError(
            f"{ctx.paths.root} publishes its files under {name(known)}, not {name(mine)}",
            hint=f"pass --namespace {known} (or set namespace in corpusbatch.toml)"
            if known
            else "drop --namespace, or index into a new --index-dir",
        )
    return ctx.settings.source_prefix


def _source_prefix(store: RunStore) -> str:
    """The namespace prefix of the sources in ``store`` ('' for none)."""
    namespace = store.get_meta("namespace") or ""
    return f"{namespace}/" if namespace else ""


@dataclass
class _Step:
    """One listed file: what its stat said, and whether it must be read."""

    rel: str
    path: Path
    st: os.stat_result | None  # None: stat failed, ``stat_error`` says why
    stat_error: str
    prev: SourceState | None  # the last scan's state, under this fingerprint
    read: bool


def _stat_and_check(
    ctx: _Context, path: Path, rel: str, full_scan: bool
) -> tuple[os.stat_result | None, str, SourceState | None, bool]:
    """(stat, stat error, previous state, must read) of one file; writes nothing."""
    try:
        st = path.stat()
    except OSError as exc:
        return None, str(exc.strerror), None, False
    prev = ctx.store.source_state(rel)
    if prev is not None and prev.fingerprint != ctx.fingerprint:
        prev = None
    if prev is not None and _unchanged(path, st, prev, full_scan):
        return st, "", prev, False
    return st, "", prev, True


def _scan_job(ctx: _Context, root: Path) -> ScanJob:
    return ScanJob(
        root=str(root),
        tokenizer=ctx.chunker.tokenizer.name,
        chunker=ctx.chunker.config,
        identity=ctx.identity,
    )


def _not_files_any_more(
    ctx: _Context, unlisted: set[str], on_skip: Callable[[str, str], None]
) -> set[str]:
    """Known sources that were not listed although their path still exists.

    A path that is there but is no regular file now (a folder, a socket, a mount that
    answers oddly) cannot be read; like any read error it keeps its last rows and is
    looked at again next run. Only a path that is gone deletes its rows.
    """
    kept: set[str] = set()
    namespace = _source_prefix(ctx.store)
    for rel in sorted(unlisted):
        path = ctx.root / rel.removeprefix(namespace)
        if not os.path.lexists(path) or path.is_symlink() or path.is_file():
            continue  # gone, a symlink the walk refused, or a file now excluded
        reason = "cannot read file (not a regular file any more); fix it or delete it"
        log.warning("cannot read %s: %s", shown(rel), reason)
        on_skip(rel, reason)
        if _keep_unreadable(ctx.store, rel, ctx.fingerprint):
            kept.add(rel)
    return kept


def _document_count(store: RunStore) -> int:
    return int(
        store.db.execute(
            "SELECT COUNT(*) FROM sources WHERE sha256 NOT LIKE ?", (_SKIPPED + "%",)
        ).fetchone()[0]
    )


def _guard_mass_delete(ctx: _Context, before: set[str], seen: set[str], allowed: bool) -> None:
    """Refuse a scan that would empty (or mostly empty) the table at once.

    ``before`` are the sources the last scan knew, ``seen`` those this one found. Called
    inside the scan's transaction: raising rolls the whole scan back, so the table and
    the store stay exactly as the last run left them.
    """
    if allowed or not before:
        return
    documents = {
        s
        for (s,) in ctx.store.db.execute(
            "SELECT source FROM sources WHERE sha256 NOT LIKE ?", (_SKIPPED + "%",)
        )
    }
    had_documents = bool(documents & before)
    lost_all = had_documents and not documents & seen
    gone = len(before - seen)
    lost_most = len(before) >= MASS_DELETE_MIN_SOURCES and gone > len(before) * MASS_DELETE_SHARE
    if lost_all or lost_most:
        what = "no documents" if lost_all else f"{gone} of {len(before)} sources gone"
        raise MassDeleteRefused(
            f"the scan of {ctx.root} found {what}; publishing that would delete "
            f"{'every row' if lost_all else 'most rows'} of the table, so nothing was changed",
            hint="check that the folder is mounted and complete; if the deletion is meant, "
            "run again with --allow-mass-delete",
        )


def _known_sources(store: RunStore) -> set[str]:
    return {s for (s,) in store.db.execute("SELECT source FROM sources")}


def _scan_one(
    ctx: _Context,
    step: _Step,
    result: FileResult | None,
    full_scan: bool,
    on_skip: Callable[[str, str], None],
) -> bool:
    """Record one source from its stat and (if it was read) what reading it found;
    returns whether the store should remember it.

    Skipped files (binary, empty, ...) are remembered too, with their reason, so that an
    unchanged skipped file is reported again without being read again. A file that
    cannot be read now (permissions, I/O error) keeps its last rows and is read again
    next time: a passing error must not delete rows, nor be remembered as final.
    """
    store, fp, rel, prev, st = ctx.store, ctx.fingerprint, step.rel, step.prev, step.st
    if st is None:
        log.warning("cannot read %s: cannot stat (%s)", shown(rel), step.stat_error)
        on_skip(rel, f"cannot stat ({step.stat_error})")
        return _keep_unreadable(store, rel, fp)
    if result is None:  # unchanged
        assert prev is not None
        if prev.sha256.startswith(_SKIPPED):
            on_skip(rel, prev.sha256.removeprefix(_SKIPPED))
        elif full_scan:  # same bytes, new stat: remember the stat, keep the rows
            store.put_source(rel, SourceState(prev.sha256, st.st_size, st.st_mtime_ns, fp), None)
        return True
    reasons: list[str] = []
    unreadable: list[str] = []
    for kind, path, reason in result.events:
        (unreadable if kind == "unreadable" else reasons).append(reason)
        on_skip(path, reason)
    ctx.report.documents_read += 1
    if result.sha256 is None and unreadable:
        return _keep_unreadable(store, rel, fp)
    if result.sha256 is None:
        reason = reasons[-1] if reasons else "skipped"
        store.put_source(rel, SourceState(_SKIPPED + reason, st.st_size, st.st_mtime_ns, fp), [])
        return True
    state = SourceState(result.sha256, st.st_size, st.st_mtime_ns, fp)
    if prev is not None and prev.sha256 == result.sha256:
        store.put_source(rel, state, None)
        return True
    if result.chunk_error is not None:
        on_skip(rel, result.chunk_error)
        store.put_source(
            rel, SourceState(_SKIPPED + result.chunk_error, st.st_size, st.st_mtime_ns, fp), []
        )
        return True
    store.put_source(rel, state, result.rows or [])
    return True


def _keep_unreadable(store: RunStore, rel: str, fp: str) -> bool:
    """Keep the last rows of a source that cannot be read now; read it next run.

    The remembered stat is cleared, so the next scan reads the file whatever its mtime
    (``chmod`` does not change it). A source never read before, or read under other
    settings, has nothing worth keeping.
    """
    prev = store.source_state(rel)
    if prev is None or prev.fingerprint != fp:
        return False
    store.put_source(rel, SourceState(prev.sha256, -1, -1, fp), None)
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


def _limits(ctx: _Context) -> Limits:
    """The provider's limits, tightened by those it reported at run time (journal), with
    the token limits cut to the model's margin when token counts are estimates."""
    learned = ctx.base_journal.learned_limits(ctx.target, ctx.identity.model)
    limits = effective_limits(ctx.settings.profile().limits, learned)
    return planning_limits(limits, ctx.settings.model_spec().token_margin)


def _plan(ctx: _Context, items: Iterator[EmbedItem], plan_id: str) -> list[PlannedFile]:
    return list(
        plan_files(
            items,
            out_dir=ctx.paths.batches,
            plan_id=plan_id,
            model=ctx.identity.model,
            limits=_limits(ctx),
            request_dimensions=ctx.identity.request_dimensions,
        )
    )


def _journal_files(
    ctx: _Context,
    files: list[PlannedFile],
    plan_id: str,
    *,
    route: str,
    attempt: int = 0,
    parent: FileRecord | None = None,
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
            parent=parent.name if parent else None,
            identity=parent.identity if parent and parent.identity else ctx.identity_json,
            target=ctx.target,
            route=route,
        )


def _discard(files: list[PlannedFile]) -> None:
    for f in files:
        f.path.unlink(missing_ok=True)
        f.manifest_path.unlink(missing_ok=True)


def plan_missing(ctx: _Context, *, dry_run: bool = False) -> PlanSummary:
    """Plan batch files for every desired vector that is neither stored nor in flight."""
    _adopt_published(ctx)
    items = _embed_items(ctx, _keys_to_embed(ctx))
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
    report.waves = len(waves(files, _limits(ctx))) if files else 0
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
    _journal_files(ctx, files, plan_id, route=report.route)
    return summary


def _keys_to_embed(ctx: _Context) -> Iterator[tuple[str, str, int]]:
    """Texts with no vector, no failure and no file in flight. Only sources marked
    changed can have such texts (unless a full check is due), so a nightly run on a
    large index reads just those rows of store.db."""
    store = ctx.store
    return store.keys_to_embed(_pending_keys(ctx.base_journal), among_changed=not store.is_dirty())


def _adopt_published(ctx: _Context) -> None:
    """Texts to embed whose vectors the published table already holds cost nothing.

    The table is the cache of every published vector: a text that comes back (a
    reverted edit, a copied file) after its store entry was collected is found there.
    """
    local = Path(table_uri(ctx.settings)) / f"{ctx.settings.table}.lance"
    if is_local(ctx.settings) and not local.exists():
        return  # no table yet (a first index): nothing to look up, no key list to build
    keys = [k for k, _, _ in _keys_to_embed(ctx)]
    if not keys:
        return  # (nothing to look up: spare the import of lancedb)
    try:
        table = connect(ctx.settings).open_table(ctx.settings.table)
    except (FileNotFoundError, ValueError):
        return
    if not same_identity(table, table_schema(ctx.identity, ctx.table_meta())):
        return
    if n := ctx.store.adopt(table, keys):
        log.info("%d texts to embed are in the published table already", n)


def _route(settings: Settings, summary: PlanSummary) -> str:
    if not settings.profile().remote:
        return "local"
    threshold = settings.realtime_under
    if threshold is not None and 0 < summary.tokens <= threshold:
        return "realtime"
    return "batch"


# -- stage 3: run the batch files and load their results -------------------------------
class _Loader:
    """The executors' ``on_output``: load a finished file, queue retries, mark loaded.

    Each failed input is handled by who is at fault (see ``loading.classify_error``):
    ``input`` failures are recorded for good; ``retry`` failures go into a new file while
    attempts last, and are otherwise left for the next run (nothing recorded, so it sends
    them again without a flag); ``stop`` failures (key, quota, model, dimensions) stop
    the run once the file's good vectors are stored.
    """

    def __init__(self, ctx: _Context, *, advance: bool) -> None:
        self.ctx = ctx
        self.advance = advance  # the local backend reports progress per input itself

    def __call__(self, record: FileRecord) -> None:
        ctx = self.ctx
        try:
            result = self._load(record)
        except LoadError as exc:
            self._refetch(record, exc)
            return
        stop = self._handle_failures(record, result)
        self._check_usage(record, result)
        ctx.report.embedded_vectors += result.vectors
        ctx.report.billed_tokens += result.tokens
        if record.batch_id:
            ctx.report.batch_ids.append(record.batch_id)
        ctx.journal.update(record.name, "loaded")
        _remove_files(record)  # the vectors are stored: the JSONL is only disk space now
        if self.advance:
            ctx.progress.advance(record.n_inputs)
        if stop:
            first = stop[0]
            raise BackendError(
                f"{record.name}: the provider refused {len(stop)} inputs for a reason that is "
                f"not about the inputs ({first.code or first.status_code}: {first.message})",
                file_name=record.name,
                hint="fix the key, quota, --model or --dimensions; the results already "
                "returned are kept and the next run sends only the rest",
            )

    def _check_usage(self, record: FileRecord, result: LoadResult) -> None:
        """Compare the provider's reported tokens with our estimate for the inputs that
        came back; warn when it counted more, and remember a ratio that says the token
        margin is too thin, so later plans keep further under the limits."""
        ctx = self.ctx
        spec = ctx.settings.model_spec()
        if not spec.estimated_tokens or record.model != spec.name or not result.vectors:
            return
        estimated = record.n_tokens
        failed = sorted({f.key for f in result.failed})
        if failed:
            extra = (
                ctx.tokenizer.count(ctx.identity.input_prefix) if ctx.identity.input_prefix else 0
            )
            estimated -= sum(n + extra for _, n in ctx.store.texts_for(failed).values())
        ratio = usage_ratio(result.tokens, estimated)
        if ratio is None or ratio <= 1.0:
            return
        log.warning(
            "%s: the provider counted %d tokens where corpusbatch estimated %d (x%.2f; the "
            "margin covers x%.2f)",
            record.name,
            result.tokens,
            estimated,
            ratio,
            1 / spec.token_margin,
        )
        known = (ctx.settings.learned or ModelFacts()).token_ratio or 0.0
        if ratio > known:
            ctx.settings = _learn(ctx.settings, ModelFacts(token_ratio=round(ratio, 4)))
            tighter = ctx.settings.model_spec().token_margin
            if tighter < spec.token_margin:
                log.warning(
                    "%s: later plans keep to %.0f%% of each token limit (was %.0f%%)",
                    spec.name,
                    100 * tighter,
                    100 * spec.token_margin,
                )

    def _load(self, record: FileRecord) -> LoadResult:
        identity = record.identity_dict()
        return load_output(
            self.ctx.store,
            file_name=record.name,
            manifest=read_manifest(Path(record.manifest_path)),
            output_path=Path(record.output_path) if record.output_path else None,
            error_path=Path(record.error_path) if record.error_path else None,
            # checked against the identity the file was planned for, not this run's
            dimensions=int(identity["dimensions"]) if identity else None,
        )

    def _refetch(self, record: FileRecord, exc: LoadError) -> None:
        """The output file vanished from disk before it was loaded: get it again."""
        again = "finished" if record.batch_id and record.route == "batch" else "planned"
        log.warning("%s: %s; fetching it again", record.name, exc.message)
        self.ctx.journal.update(record.name, again)

    def _handle_failures(self, record: FileRecord, result: LoadResult) -> list[FailedInput]:
        ctx = self.ctx
        failed = result.failed
        retry = sorted({f.key for f in failed if f.kind == "retry"})
        bad_input = [f for f in failed if f.kind == "input"]
        if retry:
            self._retry(record, retry, failed)
        if bad_input:
            ctx.store.record_failures(bad_input, record.name)
            log.warning("%s: %d inputs rejected as invalid", record.name, len(bad_input))
        return [f for f in failed if f.kind == "stop"]

    def _retry(self, record: FileRecord, keys: list[str], failed: list[FailedInput]) -> None:
        ctx = self.ctx
        reason = next(f for f in failed if f.kind == "retry")
        if record.attempt + 1 >= ctx.settings.max_attempts:
            ctx.report.deferred_reasons.append(
                f"{record.name}: {len(keys)} inputs not embedded after {record.attempt + 1} "
                f"attempts ({reason.code or 'error'}: {reason.message}); the next run sends "
                "them again"
            )
            log.warning("%s", ctx.report.deferred_reasons[-1])
            return
        texts = ctx.store.texts_for(keys)  # only keys the current sources still use
        rows = ((k, *texts[k]) for k in keys if k in texts)
        plan_id = f"{record.name.removesuffix('.jsonl')}-r{record.attempt + 1}"
        files = _plan(ctx, _embed_items(ctx, rows), plan_id)
        _journal_files(
            ctx,
            files,
            plan_id,
            route=record.route or "batch",
            attempt=record.attempt + 1,
            parent=record,
        )
        ctx.report.retried_inputs += sum(f.n_inputs for f in files)
        log.warning("%s: %d inputs failed and were queued again", record.name, len(keys))


def _drive_local(ctx: _Context, wait: bool) -> None:
    from .local import LocalBackend

    LocalBackend().drive(
        ctx.routed("local"),
        wait=wait,
        outputs_dir=ctx.paths.outputs,
        on_output=_Loader(ctx, advance=False),
        progress=ctx.progress.advance,
    )


def _drive_remote(ctx: _Context, api_key: str | None, wait: bool) -> None:
    submitter = _submitter(ctx, api_key)
    submitter.drive(
        ctx.routed("batch"),
        wait=wait,
        on_output=_Loader(ctx, advance=True),
        progress=ctx.progress.note,
    )


def _drive_realtime(ctx: _Context, api_key: str | None) -> None:
    from .submitting.realtime import RealtimeRunner

    runner = RealtimeRunner(_client(ctx, api_key), outputs_dir=ctx.paths.outputs)
    runner.drive(
        ctx.routed("realtime"), on_output=_Loader(ctx, advance=True), progress=ctx.progress.note
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

    profile = ctx.settings.profile()
    margin = ctx.settings.model_spec().token_margin  # estimated token counts: queue by it
    return BatchSubmitter(
        _client(ctx, api_key),
        profile=replace(profile, limits=planning_limits(profile.limits, margin)),
        outputs_dir=ctx.paths.outputs,
        poll_interval=ctx.settings.poll_interval,
        delete_remote_files=ctx.settings.delete_remote_files,
        missing_grace=ctx.settings.missing_batch_grace,
        count_tokens=ctx.tokenizer.count,  # to split a file too big for a learned limit
    )


def _execute(ctx: _Context, api_key: str | None, wait: bool) -> None:
    """Run every pending file of this run's target, each on the route it was priced for.

    Files planned for the real-time API (small plans under ``--realtime-under``) go
    through it; every other remote file through the Batch API, whatever this run's
    route; the local model runs local files.
    """
    pending = ctx.journal.pending()
    if not pending:
        return
    total = sum(r.n_inputs for r in pending)
    ctx.progress.start("embedding", total=total, unit="input")
    if not ctx.settings.profile().remote:
        _drive_local(ctx, wait)
    else:
        if any(r.route == "realtime" for r in pending):
            _drive_realtime(ctx, api_key)
        if ctx.routed("batch").pending():
            _drive_remote(ctx, api_key, wait)
    ctx.progress.finish()


# -- stage 4: publish ------------------------------------------------------------------
def _publish(ctx: _Context) -> PublishResult:
    ctx.store.release_memory()  # (the plan's page cache: 66 MB of a 1M-row nightly edit)
    ctx.store.staging.maintain()  # a key index and few fragments make its lookups cheap
    _step_done("staging maintained")  # (what compacting freed: the table write needs room)
    db = connect(ctx.settings)
    schema = table_schema(ctx.identity, ctx.table_meta())
    ctx.progress.start("loading", total=ctx.store.count("desired"), unit="row")
    result = publish(
        db,
        ctx.settings.table,
        ctx.store,
        schema,
        ctx.identity.model,
        ctx.progress.advance,
        namespace=_source_prefix(ctx.store),
    )
    ctx.progress.finish()
    ctx.store.release_memory()
    _step_done("published")  # (the write's buffers: building indexes needs room)
    if result.inserted or result.updated or result.deleted:
        table = db.open_table(ctx.settings.table)
        try:
            changed = result.inserted + result.updated + result.deleted
            retry_conflicts(lambda: _maintain(table, ctx.store, changed), "table maintenance")
        except Exception as exc:
            if not is_commit_conflict(exc):
                raise
            log.warning("table maintenance gave way to other writers; the next run does it")
        result.version = table.version
    return result


def _remove_loaded_files(ctx: _Context) -> None:
    """Delete local batch, manifest and output files whose results are published.

    Their vectors are in the staging or the published table now; keeping every
    night's JSONL (gigabytes for remote outputs) would grow the index directory
    without bound. Files of failed or pending batches are kept.
    """
    removed = sum(_remove_files(r) for r in ctx.journal.files(states=("loaded",)))
    if removed:
        log.info("removed %d local batch files whose results are stored", removed)


def _remove_files(record: FileRecord) -> int:
    """Delete a loaded file's local input, manifest, output and error files."""
    removed = 0
    for name in (record.path, record.manifest_path, record.output_path, record.error_path):
        if name and Path(name).exists():
            Path(name).unlink()
            removed += 1
    return removed


def _table_exists(ctx: _Context) -> bool:
    try:
        connect(ctx.settings).open_table(ctx.settings.table)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _step_done(what: str) -> None:
    """After a publish step: hand its buffers back before the next one starts, and log
    the process's memory (-vv shows which step sets the peak)."""
    memory.release()
    log.debug("%s (RSS %s MB, peak %s MB)", what, memory.rss_mb(), memory.peak_rss_mb())


def _maintain(table: Any, store: RunStore, changed: int) -> None:
    """Indexes and compaction after a change, so reads stay fast and versions few.

    ``optimize()`` compacts fragments, prunes old versions and adds new rows to the
    existing full-text and vector indexes; it costs time in proportion to the table
    (1.2 s at 100k rows, ~12 s at 1M), so a nightly trickle defers it: it runs once
    ``OPTIMIZE_ROWS`` rows were written or ``OPTIMIZE_COMMITS`` publishes made since the
    last time (LanceDB's own rule of thumb), or when an index was just built. Until
    then searches still see every row: LanceDB scans the unindexed ones too. The vector
    index's partitions were trained on the rows of its day: once the table has doubled
    since (``store.db`` remembers the trained size), it is trained again.
    """
    from lancedb.index import FTS, BTree, IvfRq

    indexed = {tuple(i.columns) for i in table.list_indices()}
    if ("text",) not in indexed:
        table.create_index("text", config=FTS(memory_limit=FTS_BUILD_MIB))
        _step_done("full-text index built")
    for column in ("id", "source", "key"):  # nightly publishes look rows up by these
        if (column,) not in indexed:
            table.create_index(column, config=BTree())
            _step_done(f"{column} index built")
    rows = table.count_rows()
    trained = int(store.get_meta("vector_index_rows") or 0)
    has_index = ("vector",) in indexed
    if rows >= VECTOR_INDEX_MIN_ROWS and (not has_index or (trained and rows >= 2 * trained)):
        if has_index:
            log.info("the table doubled since its vector index was trained: training again")
        table.create_index("vector", config=IvfRq(distance_type="cosine"), replace=True)
        _step_done("vector index built")
        trained = rows
    elif has_index and not trained:  # an index from before the rule: count from here
        trained = rows
    built = len({tuple(i.columns) for i in table.list_indices()}) != len(indexed)
    rows_due = int(store.get_meta("unoptimized_rows") or 0) + changed
    commits_due = int(store.get_meta("unoptimized_commits") or 0) + 1
    optimize = built or rows_due >= OPTIMIZE_ROWS or commits_due >= OPTIMIZE_COMMITS
    if optimize:
        table.optimize(cleanup_older_than=timedelta(days=1))
        _step_done("compacted")
        rows_due = commits_due = 0
    with store.transaction():
        if trained:
            store.set_meta("vector_index_rows", str(trained))
        store.set_meta("unoptimized_rows", str(rows_due))
        store.set_meta("unoptimized_commits", str(commits_due))


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
    allow_mass_delete: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Index ``root`` into ``settings.table``; safe to re-run at any time.

    Reads the folder (re-chunking only changed files), embeds every chunk whose vector is
    not stored yet (nothing twice), loads results as each batch file finishes, and then
    publishes every source whose vectors are all there in one commit. With
    ``wait=False`` it submits and returns; sources still in flight keep their last
    published rows and a later call collects and publishes them. With ``dry_run`` it
    plans and prices only, and writes nothing a later run reads. Inputs that the provider
    rejected as invalid in earlier runs are not sent again (nor paid for again) unless
    ``retry_failed``. A scan that would delete all or most of the table is refused with
    :class:`MassDeleteRefused` unless ``allow_mass_delete``. ``api_key`` is used only for
    remote providers and never stored.
    """
    progress = progress or NullProgress()
    if not dry_run:
        preflight(settings, api_key)
    paths = IndexPaths(settings.index_dir)
    if dry_run and not paths.store.exists():
        # nothing to compare against: plan in a scratch directory, leave no index behind
        with tempfile.TemporaryDirectory(prefix="corpusbatch-plan-") as scratch:
            scratch_settings = replace(with_learned(settings), index_dir=Path(scratch))
            with index_lock(IndexPaths(Path(scratch))):
                ctx = _open_context(root, scratch_settings, progress, dry_run=True)
                try:
                    return _dry_run(ctx, full_scan, time.monotonic())
                finally:
                    ctx.store.close()
                    ctx.base_journal.close()
    t0 = time.monotonic()
    with index_lock(paths):
        probe = None if dry_run else probe_model_if_needed(settings, api_key)
        if probe is not None:
            progress.note(probe["note"])
        ctx = _open_context(root, settings, progress, dry_run=dry_run)
        ctx.report.probe = probe
        try:
            if dry_run:
                return _dry_run(ctx, full_scan, t0)
            if retry_failed:
                log.info("forgot %d inputs that had failed for good", ctx.store.clear_failures())
            return _run(ctx, api_key, wait, full_scan, allow_mass_delete, t0)
        finally:
            ctx.store.close()
            ctx.base_journal.close()


#: Seconds :func:`preflight` waits for the provider to answer at all.
PREFLIGHT_TIMEOUT = 10.0


def preflight(settings: Settings, api_key: str | None) -> None:
    """Fail fast: what would stop a run later is checked before any file is read.

    An unknown provider or model, a remote provider without an API key, and a base URL
    that does not answer (DNS, connection refused, TLS, timeout after
    :data:`PREFLIGHT_TIMEOUT` s) raise here, so a night with a broken setup costs
    seconds instead of a full read and chunk of the corpus. Reachability is one
    unauthenticated ``GET {base_url}/models``: any HTTP answer, even 401 or 404, will do
    (the key is checked by the provider's first real answer, and none of it is billed).
    ``plan`` (a dry run) sends nothing and skips this.
    """
    profile = settings.profile()  # an unknown provider raises ConfigError
    settings.model_spec()
    if not profile.remote:
        return
    if not api_key:
        env = profile.api_key_env or "the API key variable"
        raise ConfigError(
            f"provider {settings.provider!r} needs an API key",
            hint=f"set {env} (or --api-key-env NAME) in the environment",
        )
    import httpx

    from .config import redact_url
    from .submitting.adapter import DEFAULT_BASE_URL

    base_url = profile.base_url or DEFAULT_BASE_URL
    try:
        with httpx.Client(timeout=PREFLIGHT_TIMEOUT, follow_redirects=False) as client:
            client.get(base_url.rstrip("/") + "/models")
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        detail = str(exc).replace(base_url, redact_url(base_url))
        raise BackendError(
            f"cannot reach {redact_url(base_url)} ({type(exc).__name__}: {detail}); "
            "no file was read and nothing was sent",
            hint="check --base-url (or base_url in corpusbatch.toml) and the network, "
            "then run again",
        ) from None


def _dry_run(ctx: _Context, full_scan: bool, t0: float) -> RunReport:
    """Scan and plan inside one transaction that is rolled back: nothing is kept."""
    db = ctx.store.db
    db.execute("BEGIN IMMEDIATE")
    try:
        _scan(ctx, full_scan=full_scan, in_transaction=True)
        plan_missing(ctx, dry_run=True)
    finally:
        db.execute("ROLLBACK")
    ctx.report.pending_files = len(ctx.journal.pending())
    ctx.report.durations["total"] = round(time.monotonic() - t0, 3)
    return ctx.report


def _run(
    ctx: _Context,
    api_key: str | None,
    wait: bool,
    full_scan: bool,
    allow_mass_delete: bool,
    t0: float,
) -> RunReport:
    report = ctx.report
    _scan(ctx, full_scan=full_scan, allow_mass_delete=allow_mass_delete)
    t1 = time.monotonic()
    report.durations["scan"] = round(t1 - t0, 3)
    plan_missing(ctx)
    t2 = time.monotonic()
    report.durations["plan"] = round(t2 - t1, 3)
    with ctx.store.transaction():
        ctx.store.set_meta("settings", json.dumps(remembered(ctx.settings)))
    _execute(ctx, api_key, wait)
    report.durations["embed"] = round(time.monotonic() - t2, 3)
    return _finish(ctx, t0)


def _finish(ctx: _Context, t0: float) -> RunReport:
    """Publish every source whose vectors are all present; fill in the report.

    Sources still in flight (``--no-wait``) or waiting for a later run (provider trouble)
    keep their last published rows, so the table is always the newest complete state of
    each source and never waits on the slowest batch.
    """
    report = ctx.report
    t3 = time.monotonic()
    report.pending_files = len(ctx.journal.pending())
    _warn_other_targets(ctx)
    report.failed = _failures_report(ctx)
    if ctx.store.get_meta("fingerprint") not in (None, ctx.fingerprint):
        # e.g. `collect` for another model's batches: their vectors are stored now, but
        # the desired rows belong to the last scan's model; `index` publishes those.
        log.warning("the last scan used other settings; not publishing (run `index` to)")
        report.durations["total"] = round(time.monotonic() - t0, 3)
        return report
    report.deferred = _deferred_inputs(ctx)
    if report.deferred:
        report.deferred_reasons += [
            f"{f['file']}: {f['source']}:{f['lines']}: {f['message']}"
            for f in _failed_files_report(ctx)
        ]
    # not current: no table yet, or one of an older layout (rebuilt from stored vectors)
    version = _published_version(ctx)
    if ctx.store.needs_publish() or version is None:
        result = _publish(ctx)
        report.incomplete_sources = result.incomplete_sources
        if not result.deferred_rebuild:
            ctx.store.mark_published(result.published_sources, result.incomplete_sources)
            ctx.store.collect_garbage()
            ctx.store.staging.maintain()
            _note_published(ctx, result.version)
        _remove_loaded_files(ctx)
        report.published = result.version is not None and not result.deferred_rebuild
        report.new, report.changed = result.inserted, result.updated
        report.deleted, report.unchanged = result.deleted, result.unchanged
        report.table_version = result.version
    else:  # the table already is the desired state
        report.published = True
        report.unchanged = ctx.store.count("desired")
        report.table_version = version
    report.durations["publish"] = round(time.monotonic() - t3, 3)
    report.durations["total"] = round(time.monotonic() - t0, 3)
    return report


def _published_version(ctx: _Context) -> int | None:
    """The table version the last publish left, if that table (of this layout) is still
    on disk; None when a publish must look at the table. A run that changed nothing
    thus never imports LanceDB (2-4 s on these machines). A table on an object store is
    always looked at: a listing there need not agree with the last commit, and other
    writers may have committed since."""
    store, name = ctx.store, ctx.settings.table
    if not is_local(ctx.settings):
        return None
    if store.get_meta("published_table") != f"{name}@{TABLE_SCHEMA_VERSION}":
        return None
    raw = store.get_meta("published_version")
    on_disk = _latest_version(Path(table_uri(ctx.settings)) / f"{name}.lance")
    if on_disk is None or raw != str(on_disk):
        return None  # gone, or written since (another tool, a restore): look at it
    return on_disk


def _latest_version(table_dir: Path) -> int | None:
    """The newest version of a local Lance table, from its manifest file names (Lance
    names them by version, or by ``2**64 - 1 - version`` in its newer scheme)."""
    try:
        names = os.listdir(table_dir / "_versions")
    except OSError:
        return None
    versions = []
    for name in names:
        stem, _, ext = name.partition(".")
        if ext == "manifest" and stem.isdigit():
            n = int(stem)
            versions.append(n if n < 2**63 else 2**64 - 1 - n)
    return max(versions, default=None)


def _note_published(ctx: _Context, version: int | None) -> None:
    with ctx.store.transaction():
        if version is None:
            ctx.store.set_meta("published_table", "")
            return
        ctx.store.set_meta("published_table", f"{ctx.settings.table}@{TABLE_SCHEMA_VERSION}")
        ctx.store.set_meta("published_version", str(version))


def _warn_other_targets(ctx: _Context) -> None:
    others = [
        r for r in ctx.base_journal.pending() if r.target is not None and r.target != ctx.target
    ]
    if others:
        targets = ", ".join(sorted({r.target or "" for r in others}))
        log.warning(
            "%d batch files for another provider (%s) are still pending and were left "
            "alone; run `corpusbatch collect` with that provider, or `cancel` them",
            len(others),
            targets,
        )


def _deferred_inputs(ctx: _Context) -> int:
    """Inputs the sources need that have no vector, no recorded failure and no file
    running for them: the next run sends them again."""
    store = ctx.store
    missing = store.keys_to_embed(
        _pending_keys(ctx.base_journal), among_changed=not store.is_dirty()
    )
    return sum(1 for _ in missing)


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
