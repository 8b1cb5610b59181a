"""Command-line interface: parse flags, call one library function, print.

Exit codes: 0 success; 1 error; 2 bad usage or configuration; 3 ``--max-cost`` would be
exceeded (nothing sent); 4 finished, but the provider rejected some inputs as invalid
(see the report; ``--retry-failed`` sends them again); 5 finished, but some inputs are not
embedded yet because of provider trouble (expiry, outages): nothing is lost and the next
run sends them again; 6 the scan would delete all or most of the table, nothing changed
(``--allow-mass-delete`` if meant); 75 another run holds the index lock (try again later).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from . import memory
from .config import PROFILES, Settings, settings_from
from .errors import ConfigError, CorpusbatchError, redact, redact_exception
from .sources import shown

EXIT_PARTIAL = 4
EXIT_DEFERRED = 5
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("corpusbatch")


# -- progress: tqdm bars on a terminal, plain timestamped lines otherwise ---------------
class TerminalProgress:
    """Draws one tqdm bar per stage."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, stage: str, total: int | None = None, unit: str = "it") -> None:
        from tqdm import tqdm

        self.finish()
        self._bar = tqdm(total=total, desc=f"{stage:<20}", unit=unit, leave=True, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def note(self, message: str) -> None:
        click.echo(message, err=True)


class LineProgress:
    """Plain timestamped log lines, at most one per stage every ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.stage = ""
        self.total: int | None = None
        self.done = 0
        self.unit = "it"
        self._last = 0.0

    def start(self, stage: str, total: int | None = None, unit: str = "it") -> None:
        self.stage, self.total, self.done, self.unit = stage, total, 0, unit
        self._last = time.monotonic()
        log.info("%s: started%s", stage, f" ({total} {unit}s)" if total else "")

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %ss", self.stage, self.done, of, self.unit)

    def finish(self) -> None:
        if self.stage:
            log.info("%s: done (%d %ss)", self.stage, self.done, self.unit)
            self.stage = ""

    def note(self, message: str) -> None:
        log.info("%s", message)


def _progress(quiet: bool) -> Any:
    if quiet:
        from .pipeline import NullProgress

        return NullProgress()  # its notes go to the log, which --quiet limits to warnings
    return TerminalProgress() if sys.stderr.isatty() else LineProgress()


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class _RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with any API key an error echoes redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Plain timestamped INFO lines off a terminal; on one, bars plus warnings (-v: INFO).
    ``quiet`` (--quiet, --json) keeps warnings only, unless -vv asks for debug lines."""
    tty = sys.stderr.isatty()
    if verbose > 1:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    elif tty and not verbose:
        level = logging.WARNING  # the bars and the final report tell the rest
    else:
        level = logging.INFO
    handler: logging.Handler = _TqdmHandler() if tty else logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("corpusbatch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# -- shared options ---------------------------------------------------------------------
class _Group(click.Group):
    """Turns library errors into one line and an exit code (tracebacks with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorpusbatchError as exc:
            redact_exception(exc)  # the message and what it was raised from: no key
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


_WHERE = [
    click.option(
        "--index-dir",
        type=click.Path(path_type=Path),
        help="Where the index lives (default ./.corpusbatch).",
    ),
    click.option("--table", help="Table name in the index (default chunks)."),
    click.option(
        "--db",
        metavar="URI",
        help="Where the table lives: a local path or s3://, gs://, az:// URI (default "
        "INDEX_DIR/lancedb). Credentials and endpoint come from the environment or "
        "[storage] in corpusbatch.toml, never from flags.",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="Config file (default ./corpusbatch.toml if present).",
    ),
]
_PROVIDER = [
    click.option(
        "--provider",
        type=str,
        help=f"Embedding provider: {', '.join(PROFILES)} (default local), "
        "or any name with --base-url.",
    ),
    click.option("--base-url", help="Base URL of an OpenAI-compatible API (generic provider)."),
    click.option("--api-key-env", help="Environment variable holding the API key."),
]
_MODEL = [
    click.option("--model", help="Embedding model (default: the provider's)."),
    click.option(
        "--dimensions",
        type=int,
        help="Ask the model for shorter vectors (models that accept it: text-embedding-3, "
        "or a model not built in whose provider takes the field).",
    ),
    click.option(
        "--model-dimensions",
        type=click.IntRange(min=1),
        metavar="N",
        help="Vector length of a model corpusbatch does not know (default: learned from "
        "the provider with a one-input request on the first index).",
    ),
    click.option("--input-prefix", help="Text prepended to every chunk before embedding."),
]
_CHUNKING = [
    click.option("--chunk-tokens", type=int, help="Maximum tokens per chunk."),
    click.option(
        "--overlap",
        "overlap_tokens",
        type=int,
        help="Tokens shared by consecutive chunks (default 0).",
    ),
    click.option("--include", multiple=True, help="Glob of files to index (repeatable)."),
    click.option(
        "--exclude",
        multiple=True,
        help="Glob of files to skip (repeatable; wins over --include).",
    ),
]


def _options(*groups: list[Any]) -> Callable[[F], F]:
    """Apply groups of shared click options, in order."""

    def apply(f: F) -> F:
        for opt in reversed([o for group in groups for o in group]):
            f = opt(f)
        return f

    return apply


_SCAN = [
    click.option(
        "--workers",
        "scan_workers",
        type=click.IntRange(min=1),
        metavar="N",
        help="Processes that read and chunk files (default: the cores available).",
    ),
]
_NAMESPACE = [
    click.option(
        "--namespace",
        metavar="NAME",
        help="Publish this root's files as NAME/path and touch no other rows: for one "
        "table written by several indexers (default: this index owns the whole table).",
    ),
]
_index_options = _options(_WHERE, _PROVIDER, _MODEL, _CHUNKING, _SCAN, _NAMESPACE)


def _settings(*, remember: bool = True, **flags: Any) -> Settings:
    """Settings from flags > config file > what the index remembers (unless ``remember``
    is off, as for `index` and `plan`) > defaults.

    A remembered base URL or key variable that this run's flags and config file do not
    name is never used to read or send a key (see :mod:`corpusbatch.config`): it raises
    :class:`ConfigError`, or is dropped where the provider's built-in value applies."""
    config_path = flags.pop("config_path", None)
    if config_path is None and Path("corpusbatch.toml").exists():
        config_path = Path("corpusbatch.toml")
    for key in ("include", "exclude"):
        if not flags.get(key):
            flags.pop(key, None)
    settings = settings_from(flags, config_path)
    if not remember:
        return settings
    from .workspace import last_settings

    return settings_from(flags, config_path, last_settings(settings.index_dir))


def _api_key(settings: Settings) -> str | None:
    """The API key from the environment, read only for a remote provider chosen explicitly.

    ``settings`` must come from :func:`_settings`: its ``base_url`` and ``api_key_env``
    are then either named by this run or the provider's built-in ones."""
    profile = settings.profile()
    if not profile.remote or not profile.api_key_env:
        return None
    return os.environ.get(profile.api_key_env)


def _cost(report: dict[str, Any]) -> str:
    if report["provider"] == "local":
        return "no cost (local model)"
    if report.get("route") == "realtime":
        return (
            f"estimated cost ${report['estimated_cost_realtime']:.4f} through the real-time "
            f"API (${report['estimated_cost_batch']:.4f} at batch price)"
        )
    return (
        f"estimated cost ${report['estimated_cost_batch']:.4f} at batch price "
        f"(${report['estimated_cost_realtime']:.4f} real-time)"
    )


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    approx = "~" if report.get("tokens_estimated") else ""  # counted by a stand-in tokenizer
    lines = [
        f"documents {report['documents']} ({report['documents_read']} files read, "
        f"{len(report['skipped'])} skipped), chunks {report['chunks']}",
        f"to embed: {report['to_embed_inputs']} inputs, {approx}{report['to_embed_tokens']:,} "
        f"tokens{' (estimated)' if approx else ''} in {report['files_planned']} files, "
        f"{report['waves']} waves; " + _cost(report),
    ]
    if report.get("probe"):
        lines.append(report["probe"]["note"])
    lines.extend(report.get("model_notes") or [])
    if report.get("skipped_by_reason"):
        counts = report["skipped_by_reason"]
        lines.append("skipped by reason: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if report.get("published"):
        lines.append(
            f"table: {report['new']} new, {report['changed']} changed, {report['unchanged']} "
            f"unchanged, {report['deleted']} deleted rows (version {report['table_version']})"
        )
    if report.get("pending_files"):
        lines.append(
            f"{report['pending_files']} batch files still in flight; run `corpusbatch collect` "
            "(or `corpusbatch index` again) later to load and publish them"
        )
    if report.get("incomplete_sources"):
        lines.append(
            f"{len(report['incomplete_sources'])} sources keep their last published rows until "
            "all their new chunks are embedded"
        )
    if report.get("deferred"):
        lines.append(
            f"{report['deferred']} inputs not embedded yet because of provider trouble; "
            "nothing is lost, the next run sends them again"
        )
        lines.extend(f"  {reason}" for reason in report.get("deferred_reasons", [])[:10])
    for skip in report["skipped"]:
        lines.append(f"skipped {shown(skip['path'])}: {skip['reason']}")
    for fail in report["failed"]:
        lines.append(f"failed {fail['source']}:{fail['lines']}: {fail['code']}: {fail['message']}")
    click.echo("\n".join(lines))


# -- commands ---------------------------------------------------------------------------
@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="corpusbatch")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Turn a folder of documents into a LanceDB table of embeddings, at batch prices.

    \b
    Examples:
      corpusbatch index ./docs
      corpusbatch search "how do I descale the machine?"
      corpusbatch plan ./docs --provider openai
    """
    ctx.obj = {"debug": debug, "verbose": verbose}
    _quiet_lance(verbose)
    memory.limit_arenas()  # before LanceDB starts its threads
    memory.bound_read_buffers()  # before LanceDB first reads


def _quiet_lance(verbose: int) -> None:
    """Keep LanceDB's Rust log lines (``WARN lance::index::vector ...``) off the terminal
    and out of cron mail unless -vv. They bypass Python's logging, and LanceDB reads
    LANCEDB_LOG only when it is first imported, which every command does after this."""
    if "lancedb" in sys.modules:
        log.debug("lancedb was imported before the CLI could set LANCEDB_LOG")
    os.environ.setdefault("LANCEDB_LOG", "warn" if verbose > 1 else "error")


@main.command("index")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_index_options
@click.option(
    "--max-cost", type=float, help="Abort before any upload if the estimate (USD) is higher."
)
@click.option("--no-wait", is_flag=True, help="Submit and exit; a later run collects results.")
@click.option(
    "--retry-failed", is_flag=True, help="Send inputs that failed for good in earlier runs again."
)
@click.option(
    "--realtime-under",
    type=int,
    metavar="TOKENS",
    help="Use the real-time API (about 2x the batch price, results in seconds) when the "
    "plan has at most this many tokens.",
)
@click.option(
    "--full-scan", is_flag=True, help="Read every file even if its size and mtime are unchanged."
)
@click.option(
    "--allow-mass-delete",
    is_flag=True,
    help="Publish even if the folder lost all, or more than half, of its files since the "
    "last run (refused by default: an unmounted share must not empty the table).",
)
@click.option("--poll-interval", type=float, help="Seconds between Batch API polls (default 30).")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def index_cmd(
    ctx: click.Context,
    /,
    root: Path,
    max_cost: float | None,
    no_wait: bool,
    full_scan: bool,
    retry_failed: bool,
    allow_mass_delete: bool,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Index ROOT: chunk, embed what changed, and publish the table.

    Runs on the local CPU model unless --provider (or the config file) picks a remote
    Batch API. Safe to re-run: nothing is embedded twice, a killed run resumes.

    \b
    Examples:
      corpusbatch index ./docs
      corpusbatch index ./docs --provider openai --max-cost 2.50
      corpusbatch index ./docs --provider openai --no-wait   # submit now, collect later
      corpusbatch index ./docs --provider openai --realtime-under 200000   # nightly
      corpusbatch index ./docs --exclude 'drafts/**' --json
    """
    from .pipeline import index

    _setup_logging(ctx.obj["verbose"], quiet or as_json)
    settings = _settings(remember=False, max_cost=max_cost, **flags)
    report = index(
        root,
        settings,
        api_key=_api_key(settings),
        wait=not no_wait,
        full_scan=full_scan,
        retry_failed=retry_failed,
        allow_mass_delete=allow_mass_delete,
        progress=_progress(quiet or as_json),
    )
    _print_report(report.to_dict(), as_json)
    _exit_for(report)


def _exit_for(report: Any) -> None:
    """Exit 4 when inputs were rejected for good, 5 when some wait for the next run."""
    if report.failed:
        sys.exit(EXIT_PARTIAL)
    if report.deferred:
        sys.exit(EXIT_DEFERRED)


@main.command("plan")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_index_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_cmd(ctx: click.Context, /, root: Path, as_json: bool, **flags: Any) -> None:
    """Dry run: show chunks, exact tokens, batch files, waves and cost. Nothing is sent.

    \b
    Examples:
      corpusbatch plan ./docs
      corpusbatch plan ./docs --provider openai --model text-embedding-3-large
    """
    from .pipeline import index

    _setup_logging(ctx.obj["verbose"], as_json)
    settings = _settings(remember=False, **flags)
    report = index(root, settings, dry_run=True, progress=_progress(as_json))
    _print_report(report.to_dict(), as_json)


@main.command("collect")
@_options(_WHERE, _PROVIDER)
@click.option("--no-wait", is_flag=True, help="Load what has finished and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def collect_cmd(
    ctx: click.Context, /, no_wait: bool, as_json: bool, quiet: bool, **flags: Any
) -> None:
    """Load finished batches and publish the table, without re-reading the sources.

    \b
    Examples:
      corpusbatch collect --provider openai
      corpusbatch collect --provider openai --no-wait   # from cron, every hour
    """
    from .pipeline import collect

    _setup_logging(ctx.obj["verbose"], quiet or as_json)
    settings = _settings(**flags)
    report = collect(
        settings, api_key=_api_key(settings), wait=not no_wait, progress=_progress(quiet or as_json)
    )
    _print_report(report.to_dict(), as_json)
    _exit_for(report)


@main.command("search")
@click.argument("question")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Number of results.")
@click.option(
    "--mode",
    type=click.Choice(["vector", "fts", "hybrid"]),
    default=None,
    help="Vector, full-text or hybrid (both, fused by score) search. Default: hybrid, or "
    "vector for a table without a full-text index.",
)
@click.option("--where", help="SQL filter on columns, e.g. \"source LIKE 'guides/%'\".")
@_options(_WHERE, _PROVIDER)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def search_cmd(
    ctx: click.Context,
    /,
    question: str,
    k: int,
    mode: str | None,
    where: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Search the index for QUESTION and print the best chunks.

    \b
    Examples:
      corpusbatch search "what grind size for French press?"
      corpusbatch search "descaling" --mode hybrid -k 3
      corpusbatch search "milk" --where "source LIKE 'guides/%'" --json
    """
    from .search import search_index

    _setup_logging(ctx.obj["verbose"], True)
    settings = _settings(**flags)
    hits = search_index(
        question, settings, k=k, mode=mode, where=where, api_key=_api_key_for_search(settings)
    )
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        click.echo("no results")
    for rank, hit in enumerate(hits, start=1):
        heading = f"  [{hit.heading}]" if hit.heading else ""
        click.echo(
            f"{rank}. {hit.source}:{hit.start_line}-{hit.end_line}  score {hit.score:.3f}{heading}"
        )
        snippet = " ".join(hit.text.split())
        click.echo(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}")


def _api_key_for_search(settings: Settings) -> str | None:
    """The key for embedding the query with the provider recorded in the table.

    The table's metadata is state too: its provider's built-in key variable is read only
    if the query goes to that provider's built-in URL (the run's provider is the same),
    or to a base URL this run named with --base-url or corpusbatch.toml."""
    from .workspace import open_table, table_identity

    provider = table_identity(open_table(settings)).get("provider") or settings.provider
    if provider == "local":
        return None
    provider = str(provider)
    if provider != settings.provider and settings.base_url is None:
        raise ConfigError(
            f"the table was built with provider {provider!r}, but this run uses "
            f"{settings.provider!r}; its key is not sent to another provider's URL",
            hint=f"pass --provider {provider} (and --base-url if it is not a built-in one)",
        )
    return _api_key(replace(settings, provider=provider))


@main.command("status")
@_options(_WHERE, _PROVIDER)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Show every batch file not yet loaded: state, batch status, counts, age.

    \b
    Examples:
      corpusbatch status
      corpusbatch status --provider openai --json
    """
    from .pipeline import batch_status

    _setup_logging(ctx.obj["verbose"], True)
    settings = _settings(**flags)
    rows = batch_status(settings, api_key=_api_key(settings))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("nothing in flight")
    for row in rows:
        click.echo("  ".join(f"{k}={v}" for k, v in row.items() if v is not None))


@main.command("cancel")
@_options(_WHERE, _PROVIDER)
@click.pass_context
def cancel_cmd(ctx: click.Context, /, **flags: Any) -> None:
    """Cancel every in-flight batch. Finished lines are kept and loaded by `collect`.

    \b
    Examples:
      corpusbatch cancel --provider openai
    """
    from .pipeline import cancel_batches

    _setup_logging(ctx.obj["verbose"], False)
    settings = _settings(**flags)
    for batch_id in cancel_batches(settings, api_key=_api_key(settings)):
        click.echo(f"cancelling {batch_id}")


@main.command("verify")
@click.argument(
    "root", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_options(_WHERE, _PROVIDER, _MODEL)
@click.option("--repair", is_flag=True, help="Re-embed and republish only what is wrong.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def verify_cmd(
    ctx: click.Context, /, root: Path | None, repair: bool, as_json: bool, **flags: Any
) -> None:
    """Compare journal, sources and table; report (and with --repair fix) what is wrong.

    Finds rows missing, duplicated, orphaned, of the wrong dimension, non-finite or
    zero, and sources changed since the last run. Exits 1 if anything is wrong and
    was not repaired. ROOT defaults to the folder of the last `index` run.

    \b
    Examples:
      corpusbatch verify
      corpusbatch verify ./docs --repair --json
    """
    from .verify import verify

    _setup_logging(ctx.obj["verbose"], as_json)
    settings = _settings(**flags)
    found = verify(settings, root, repair=repair, api_key=_api_key(settings))
    data = found.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for key, value in data.items():
            if isinstance(value, list) and value:
                click.echo(
                    f"{key}: {len(value)} ({', '.join(map(str, value[:5]))}"
                    f"{', ...' if len(value) > 5 else ''})"
                )
        if found.rebuild_pending:
            click.echo(
                "the table still holds the previous identity's rows: they were checked "
                "for damage only; the switch completes once the sources in flight finish"
                " (`corpusbatch collect`)"
            )
        click.echo(
            f"rows {found.rows}, expected {found.expected_rows}: "
            f"{'ok' if found.ok else 'problems found'}"
            f"{'; repaired' if found.repaired is not None else ''}"
        )
    if not found.ok and found.repaired is None:
        sys.exit(1)
