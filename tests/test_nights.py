"""Many nights of a cron job, as a seeded random walk against the loopback fake Batch API.

Each night mutates a small Markdown corpus (edit, add, delete, rename, empty the root,
restore it), sometimes changes the identity (model, ``--dimensions``, input prefix) or
``--realtime-under``, sometimes arms one provider fault, then does one thing: ``index``
(waiting or ``--no-wait``), ``collect``, ``plan`` (a dry run, of the root or of ``sub/``),
``verify --repair`` (sometimes after duplicating table rows), or runs the real CLI and
SIGKILLs it at a random point, then re-runs. After every run that returns, the shared
invariants (``tests/invariants.py``) must hold.

From their own random stream (so a seed's main walk is what it was before them), some
nights also replace a listed file by a folder of the same name for that night (a read
error even as root: the source must keep its last published rows, be reported in
``skipped``, and be read again once restored), run ``collect`` with other
``--dimensions`` while batches are in flight (it loads them under their own identity and
publishes nothing), run the CLI with a key the provider refuses (exit 1, table
unchanged, then the good key converges), damage one real-time answer (bad base64,
non-object items, truncated JSON, a left-out item, duplicated indexes), hand back hostile
Batch API output (unknown custom_ids, duplicated lines, another batch's output file,
wrong vector lengths, NaN/inf, an HTML page on poll, list, create, upload or download),
or shrink the provider's queue below the files' size (refused, limit learned, split).

CI runs ``NIGHTS`` nights of one seed. For long runs::

    CORPUSBATCH_NIGHTS=5000 CORPUSBATCH_SEED=123 python -m pytest -q tests/test_nights.py -s

``CORPUSBATCH_KEEP_GOING=1`` records every finding instead of stopping at the first;
``CORPUSBATCH_STEPS_LOG=FILE`` appends each night's steps to FILE as the walk goes;
``CORPUSBATCH_SKIP`` leaves operations or faults out (see ``SKIP``).
On failure the seed and the night-by-night steps are printed; the walk is a pure
function of the seed, so the same seed and ``CORPUSBATCH_NIGHTS=<failing night>``
replays it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeBatchAPI
from invariants import (
    CleanBuilder,
    Row,
    billing_problems,
    dangling_problems,
    half_published_problems,
    lost_problems,
    read_files,
    table_problems,
    table_rows,
    table_version,
    unreadable_sources,
)

import corpusbatch
from corpusbatch import Settings, collect, loading, scanning
from corpusbatch.errors import CorpusbatchError
from corpusbatch.workspace import table_identity

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NIGHTS = int(os.environ.get("CORPUSBATCH_NIGHTS", "50"))
BOUNDS = {name: getattr(loading, name) for name in ("ATOMIC_UPSERT_BYTES", "ATOMIC_DELETES")}
SEED = int(os.environ.get("CORPUSBATCH_SEED", "20251"))
KEEP_GOING = os.environ.get("CORPUSBATCH_KEEP_GOING", "") not in ("", "0")
# comma-separated operations/faults to leave out, to hunt past a known bug:
# e.g. "no-wait,empty,vanish2" (ops: index no-wait collect plan verify kill empty;
# extensions: unreadable collect-dims cli-bad-key rt_damage hostile token_split)
SKIP = set(filter(None, os.environ.get("CORPUSBATCH_SKIP", "").split(",")))
# a file to append each night's steps to as the walk goes (long walks under `timeout`)
STEPS_LOG = os.environ.get("CORPUSBATCH_STEPS_LOG", "")
RUN_TIMEOUT = float(os.environ.get("CORPUSBATCH_RUN_TIMEOUT", "60"))
POISON = "zzpoisonzz"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "batch",
    "vector",
    "lance",
    "token",
    "chunk",
    "file",
    "queue",
    "wave",
    "river",
    "stone",
    "cloud",
    "lamp",
    "orbit",
    "cedar",
    "maple",
    "ember",
    "frost",
    "harbor",
    "meadow",
    "quartz",
    "violet",
    "willow",
    "amber",
]
MODELS = ("text-embedding-3-small", "text-embedding-3-large")
RT_DAMAGE = ("bad_base64", "non_object_item", "truncated_json", "drop_item", "dup_index")
# hostile Batch API output (extension, own stream): fakeapi's hostile_next,
# malformed_next and html_next kinds
HOSTILE = (
    "unknown_custom_id",
    "duplicate_line",
    "other_batch",
    "wrong_dims",
    "nan",
    "inf",
    "html_retrieve",
    "html_list",
    "html_content",
    "html_create",
    "html_upload",
)
KILL_POINTS = ("upload", "create", "retrieve", "download", "downloaded", "delete")
LIMITS = {"max_inputs_per_file": 6, "max_inputs_per_request": 3}
CHUNK_TOKENS = 60
# a batch that answers 404 and is nowhere in the list is created again after this many
# seconds (default 1 h: a waiting run would poll that long); vanish2 batches come back
# within milliseconds, far inside it, so a second batch for them is still paying twice
MISSING_GRACE = 2.0
FAULTS = (
    "vanish2",
    "vanish_gone",
    "bad_key",
    "rt429",
    "rt500",
    "rt401",
    "expire",
    "malformed",
    "drop_lines",
    "download_drop",
    "create_500_after",
)


def _set_bounds(large: bool) -> None:
    """loading's one-commit bounds: the defaults, or those of a change past them."""
    for name, default in BOUNDS.items():
        setattr(loading, name, default)
    if large:
        loading.ATOMIC_UPSERT_BYTES, loading.ATOMIC_DELETES = 0, 1


class Timeout(BaseException):
    """Not an ``Exception``: the OpenAI SDK turns any ``Exception`` raised inside a
    request into a retried ``APIConnectionError``, which would swallow the deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in this (main) thread if the block runs too long."""

    def fire(*_: object) -> None:
        raise Timeout(f"no answer after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Ident:
    model: str = MODELS[0]
    dims: int = 32
    prefix: str = ""
    realtime_under: int | None = None


@dataclass
class Walk:
    """The model: the corpus on disk, the settings, what the index should hold."""

    rng: random.Random
    root: Path
    work: Path
    api: FakeBatchAPI
    clean: CleanBuilder
    ident: Ident = field(default_factory=Ident)
    stash: dict[str, bytes] = field(default_factory=dict)  # files of an emptied root
    scanned: dict[str, bytes] | None = None  # corpus of the last index run
    scanned_settings: Settings | None = None
    previous: list[Row] = field(default_factory=list)  # table after the last run
    allow_mass_delete: bool = False
    steps: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    night: int = 0
    counter: int = 0
    paid_twice: set[str] = field(default_factory=set)  # billing findings already made
    # per billed input: times its text left the corpus and the table (see note_collectable)
    collected: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    present: dict[tuple[str, int, str], bool] = field(default_factory=dict)
    # the extensions below draw from their own stream, so that the main walk of a seed
    # (and the replay of an older finding) stays what it was before they were added
    xrng: random.Random = field(default_factory=random.Random)
    unreadable: tuple[str, bytes] | None = None  # a file replaced by a folder tonight
    scanned_keep: set[str] = field(default_factory=set)  # unreadable at the last scan
    workers: int = 1  # scan processes tonight (see _workers_for)

    # ------------------------------------------------------------------- settings ---
    def settings(self) -> Settings:
        return Settings(
            index_dir=self.work / "idx",
            provider="openai",
            base_url=self.api.base_url,
            model=self.ident.model,
            dimensions=self.ident.dims,
            input_prefix=self.ident.prefix,
            chunk_tokens=CHUNK_TOKENS,
            poll_interval=0.01,
            limits=dict(LIMITS),
            realtime_under=self.ident.realtime_under,
            missing_batch_grace=MISSING_GRACE,
            scan_workers=self.workers,
        )

    # -------------------------------------------------------------------- corpus ---
    def paragraph(self) -> str:
        rng = self.rng
        if rng.random() < 0.01:
            words = [rng.choice(WORDS) for _ in range(rng.randint(12, 30))]
            words.insert(rng.randrange(len(words)), POISON)
            return " ".join(words)
        existing = [p for f in self.files().values() for p in _paragraphs(f)]
        if existing and rng.random() < 0.15:  # shared chunks: one vector, many rows
            return rng.choice(existing)
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40)))

    def document(self) -> str:
        self.counter += 1
        parts = [f"# Note {self.counter}"]
        parts += [self.paragraph() for _ in range(self.rng.randint(2, 5))]
        return "\n\n".join(parts) + "\n"

    def files(self) -> dict[str, str]:
        return {k: v.decode() for k, v in read_files(self.root).items()}

    def new_name(self) -> str:
        self.counter += 1
        folder = "sub/" if self.rng.random() < 0.3 else ""
        return f"{folder}n{self.counter}.md"

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        # a later edit in the same second must still look changed (size and mtime)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + self.counter * 1000))

    def mutate(self) -> str:
        rng, files = self.rng, self.files()
        op = rng.choices(["edit", "add", "delete", "rename"], [5, 2, 1.5, 1.5])[0]
        if not files or op == "add":
            rel = self.new_name()
            self.write(rel, self.document())
            return f"add {rel}"
        rel = rng.choice(sorted(files))
        if op == "edit":
            paras = _paragraphs(files[rel])
            head = files[rel].split("\n\n", 1)[0]
            if paras and rng.random() < 0.6:
                paras[rng.randrange(len(paras))] = self.paragraph()
            else:
                paras.append(self.paragraph())
            self.write(rel, "\n\n".join([head, *paras]) + "\n")
            return f"edit {rel}"
        if op == "delete":
            (self.root / rel).unlink()
            return f"delete {rel}"
        new = self.new_name()
        (self.root / new).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).rename(self.root / new)
        return f"rename {rel} -> {new}"

    def empty_root(self) -> str:
        self.stash = read_files(self.root)
        for rel in self.stash:
            (self.root / rel).unlink()
        return "empty the root"

    def restore(self) -> str:
        for rel, data in self.stash.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_bytes(data)
        self.stash = {}
        return "restore the root"

    def make_unreadable(self) -> str:
        """Replace a listed file by a folder of the same name (a read error as root).

        Only a file the last scan indexed can be "unreadable": a file added tonight that
        is a folder by the time of the scan was never a document (seed 7 night 137)."""
        known = sorted(set(self.files()) & set(self.scanned or {}))
        if not known:
            return "no indexed file to make unreadable"
        rel = self.xrng.choice(known)
        path = self.root / rel
        self.unreadable = (rel, path.read_bytes())
        path.unlink()
        path.mkdir()
        return f"{rel} becomes a folder (unreadable)"

    def restore_unreadable(self) -> str:
        assert self.unreadable is not None
        rel, data = self.unreadable
        path = self.root / rel
        for inner in sorted(path.rglob("*"), reverse=True):
            inner.rmdir() if inner.is_dir() else inner.unlink()
        path.rmdir()
        self.write(rel, data.decode())
        self.unreadable = None
        return f"{rel} is a file again"

    # --------------------------------------------------------------------- faults ---
    def arm(self, fault: str) -> None:
        api, rng = self.api, self.rng
        match fault:
            case "vanish2":
                api.vanish_batches = [rng.randint(1, 3)]
            case "vanish_gone":
                api.vanish_batches = [-1]
            case "bad_key":
                api.valid_keys = {"someone-elses-key"}
            case "rt429":
                api.realtime_faults = [429] * 4
            case "rt500":
                api.realtime_faults = [500] * 4
            case "rt401":
                api.realtime_faults = [401]
            case "expire":
                api.expire_next = [rng.randint(0, 1)]
            case "malformed":
                kinds = ["bad_base64", "non_object_item", "invalid_utf8", "truncated_json"]
                api.malformed_next = [rng.choice(kinds)]
            case "drop_lines":
                api.drop_lines_next = [1]
            case "download_drop":
                api.download_drops = 1
            case "create_500_after":
                api.create_faults = ["500-after"]

    def disarm(self) -> None:
        api = self.api
        api.valid_keys = None
        api.vanish_batches, api.realtime_faults, api.expire_next = [], [], []
        api.malformed_next, api.drop_lines_next, api.create_faults = [], [], []
        api.download_drops = 0
        api.realtime_damage = []
        api.token_cap, api.hostile_next, api.html_next = None, [], []
        api.clear_kills()

    # ------------------------------------------------------------------- checking ---
    def find(self, what: str) -> None:
        msg = f"night {self.night}: {what}"
        self.findings.append(msg)
        self.steps.append("  !! " + what.replace("\n", "\n     "))
        if not KEEP_GOING:
            raise AssertionError(msg)

    def check_table(
        self,
        files: dict[str, bytes],
        settings: Settings,
        report: Any = None,
        *,
        refused: bool = False,
        keep: set[str] | None = None,
        last_scanned: dict[str, bytes] | None = None,
        last_settings: Settings | None = None,
    ) -> None:
        if report is not None and not report.published and not refused:
            # nothing committed: a change of identity waits for every source (the whole
            # old table stays, deleted sources too), or `collect` for another identity
            if table_rows(settings) != self.previous:
                self.find(f"not published ({_summary(report)}) but the table changed")
            return
        incomplete = list(getattr(report, "incomplete_sources", None) or [])
        unreadable = unreadable_sources(report) | (keep or set())
        problems = table_problems(
            settings,
            files,
            self.api,
            self.clean,
            previous=self.previous,
            incomplete=incomplete,
            unreadable=unreadable,
            last_scanned=last_scanned,
            same_identity=last_settings is None or _identity(last_settings) == _identity(settings),
            refused=refused,
        )
        done = report is not None and not incomplete and not report.pending_files
        if done and not refused:
            wanted = [r.text for r in self.clean.rows(files, settings)]
            problems += lost_problems(self.api, settings, wanted)
        if problems:
            self.find("invariants broken:\n" + "\n".join(problems))

    def note_collectable(self) -> None:
        """Count, for each billed input, a new absence of its text from both the corpus
        and the table: garbage collection may drop its vector then, so that text costs
        once more if it comes back. (Lenient where the library keeps more, e.g. the
        rows of a file it could not read.)"""
        texts = {r.text for r in self.clean.rows(read_files(self.root), self.settings())}
        texts |= {r.text for r in self.previous}
        for key in self.api.billed:
            text = key[2]
            here = text in texts or (text.startswith("q: ") and text[3:] in texts)
            if not here and self.present.get(key, True):
                self.collected[key] += 1
            self.present[key] = here

    def unchanged(self, why: str) -> None:
        if table_rows(self.settings()) != self.previous:
            self.find(f"the table changed after {why}")

    # ----------------------------------------------------------------------- runs ---
    def library(self, fn: Callable[[], Any]) -> tuple[str, Any]:
        """Run a library call; ('ok', report) or (error class name, exception)."""
        try:
            with deadline(RUN_TIMEOUT):
                return "ok", fn()
        except CorpusbatchError as exc:
            return type(exc).__name__, exc
        except Timeout as exc:
            return "Timeout", exc
        except Exception as exc:  # a crash: always a finding
            tb = traceback.format_exception(exc)[-3:]
            return "crash", "".join(tb).strip()

    def index_run(self, *, wait: bool, fault: str | None, label: str) -> None:
        settings = self.settings()
        files = read_files(self.root)
        expect_refusal = not files and bool(self.previous) and not self.allow_mass_delete
        allow = self.allow_mass_delete
        extra = {"allow_mass_delete": True} if allow else {}
        outcome, value = self.library(
            lambda: corpusbatch.index(self.root, settings, api_key="k", wait=wait, **extra)
        )
        self.allow_mass_delete = False
        self.outcome(label, outcome, value, fault, settings, files, expect_refusal)

    def outcome(
        self,
        label: str,
        outcome: str,
        value: Any,
        fault: str | None,
        settings: Settings,
        files: dict[str, bytes],
        expect_refusal: bool,
    ) -> None:
        summary = outcome
        if outcome == "ok":
            summary = _summary(value)
        self.steps.append(f"  {label} -> {summary}")
        if outcome == "MassDeleteRefused":
            if not expect_refusal and files and not self.most_gone(files):
                self.find(f"mass delete refused although {len(files)} files are there: {value}")
            self.check_table(files, settings, refused=True)
            self.allow_mass_delete = self.rng.random() < 0.5
            return
        if expect_refusal and outcome == "ok":
            self.find(f"emptied root: {label} did not refuse (table now {_summary(value)})")
        if outcome in ("crash", "Timeout"):
            self.find(f"{label}: {outcome}: {value}")
            if label != "collect":  # its scan committed before the crash
                self.scanned, self.scanned_settings = files, settings
            return
        known = {self.unreadable[0]} if self.unreadable and label != "collect" else set()
        if outcome != "ok":
            if fault in ("bad_key", "rt401") and outcome == "BackendError":
                self.unchanged(f"{label} stopped on a bad key")
                if label != "collect":
                    self.scanned, self.scanned_settings = files, settings
                    self.scanned_keep = known
                return
            self.find(f"{label}: unexpected {outcome}: {value}")
            return
        last = {"last_scanned": self.scanned, "last_settings": self.scanned_settings}
        if label == "collect":  # no scan: sources unreadable at the last one keep rows
            self.check_table(files, settings, value, keep=self.scanned_keep, **last)
            return
        for rel in sorted(known - unreadable_sources(value)):
            skipped = [s for s in value.skipped if s.get("path") == rel]
            self.find(f"{rel} (a folder now) not reported as unreadable; skipped: {skipped}")
        self.scanned, self.scanned_settings = files, settings
        self.scanned_keep = known | unreadable_sources(value)
        self.check_table(files, settings, value, keep=known, **last)

    def most_gone(self, files: dict[str, bytes]) -> bool:
        """Whether the mass-delete guard may refuse this scan: of at least 10 known
        sources, more than half are gone (the walk knows the sources roughly: the last
        scanned corpus and the published table; a little slack for the difference)."""
        before = set(self.scanned or {}) | {r.source for r in self.previous}
        gone = before - set(files)
        return len(before) >= 10 and len(gone) >= len(before) * 0.4

    def collect_run(self, fault: str | None) -> None:
        if self.scanned_settings is None:
            return
        settings = self.scanned_settings
        outcome, value = self.library(lambda: collect(settings, api_key="k", wait=True))
        self.outcome("collect", outcome, value, fault, settings, self.scanned or {}, False)

    def collect_other_dims(self, fault: str | None) -> None:
        """``collect`` with other ``--dimensions`` than the last scan, batches in flight:
        it loads them under the identity they were planned for and publishes nothing
        (the desired rows are the last scan's); the next ``index`` converges."""
        scanned = self.scanned_settings
        assert scanned is not None
        settings = self.settings()
        pending = len(corpusbatch.batch_status(scanned))
        outcome, value = self.library(lambda: collect(settings, api_key="k", wait=True))
        label = f"collect --dimensions {settings.dimensions} ({pending} files in flight)"
        self.steps.append(f"  {label} -> {_summary(value) if outcome == 'ok' else outcome}")
        if outcome == "BackendError" and fault == "bad_key":
            self.unchanged(f"{label} stopped on a bad key")
            return
        if outcome != "ok":
            self.find(f"{label}: unexpected {outcome}: {value}")
            return
        self.unchanged(label)
        if not value.pending_files and self.scanned is not None:
            wanted = [r.text for r in self.clean.rows(self.scanned, scanned)]
            problems = lost_problems(self.api, scanned, wanted)
            if problems:
                self.find(f"{label}: results of the last scan lost:\n" + "\n".join(problems))

    def plan_run(self) -> None:
        sub = self.rng.random() < 0.6 and (self.root / "sub").is_dir()
        where = self.root / "sub" if sub else self.root
        settings = self.settings()
        outcome, value = self.library(
            lambda: corpusbatch.index(where, settings, api_key="k", dry_run=True)
        )
        label = f"plan {'sub/' if sub else '.'}"
        self.steps.append(f"  {label} -> {outcome}")
        if outcome not in ("ok", "MassDeleteRefused"):
            self.find(f"{label}: {outcome}: {value}")
        self.unchanged(label)

    def verify_run(self, fault: str | None) -> None:
        from corpusbatch.verify import verify

        settings = self.settings()
        damage = self.previous and self.rng.random() < 0.5
        label = "verify --repair"
        if damage:
            self.duplicate_rows(settings)
            label = "duplicate 2 rows; verify --repair"
        if self.previous and self.xrng.random() < 0.3:
            # the table is the only copy of a published vector and text: rows deleted by
            # hand are read and paid for again (once), and the table must recover whole
            self.delete_rows(settings)
            label = ("" if not damage else "duplicate 2 rows, ") + "delete 2 rows; verify --repair"
        damaged = table_rows(settings) if label != "verify --repair" else None
        files = read_files(self.root)
        outcome, value = self.library(lambda: verify(settings, self.root, repair=True, api_key="k"))
        if outcome == "ok":
            value = value.repaired
            if value is None:
                self.steps.append(f"  {label} -> nothing repaired")
                self.find(f"{label}: no repair run")
                return
        if outcome == "IndexNotFound" and not (settings.index_dir / "store.db").exists():
            self.steps.append(f"  {label} -> IndexNotFound (no index yet)")
            return
        if outcome == "MassDeleteRefused" and damaged is not None:
            # a refused repair leaves the damage as it is, except that every duplicated
            # row is back to one copy (done before the republish that was refused)
            self.previous = sorted(set(damaged))
        self.outcome(label, outcome, value, fault, settings, files, False)

    def delete_rows(self, settings: Settings) -> None:
        import lancedb

        table = lancedb.connect(str(settings.index_dir / "lancedb")).open_table(settings.table)
        rows = table.to_arrow().select(["id", "text"]).to_pylist()
        # the vectors go with the rows: those of the table's identity, which is not the
        # run's while a switch waits or before the repair's run rebuilds the table
        have = table_identity(table)
        model, dims, prefix = have["model"], have["dimensions"], have["input_prefix"]
        for row in self.xrng.sample(rows, min(2, len(rows))):
            table.delete(f"id = '{row['id']}'")
            self.collected[(model, dims, prefix + row["text"])] += 1

    def duplicate_rows(self, settings: Settings) -> None:
        import lancedb

        table = lancedb.connect(str(settings.index_dir / "lancedb")).open_table(settings.table)
        rows = table.to_arrow().slice(0, 2)
        table.add(rows)

    def kill_run(self) -> None:
        settings = self.settings()
        point = self.rng.choice(KILL_POINTS)
        nth = self.rng.randint(1, 3)
        files = read_files(self.root)
        proc = _cli(self.root, settings, self.work / "config.toml")
        self.api.kill_at(point, proc.pid, nth)
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.find(f"CLI index (kill at {point} #{nth}) hung")
        finally:
            self.api.clear_kills()
        code = proc.returncode
        self.steps.append(f"  CLI index, SIGKILL at {point} #{nth} -> exit {code}")
        if code not in (0, 4, 5, 6, -signal.SIGKILL):
            self.find(f"CLI index exit {code}: {err.decode()[-600:]}")
        if code == 0 and not files and self.previous:
            self.find("emptied root: the CLI did not refuse the mass delete")
        self.scanned, self.scanned_settings = files, settings
        self.index_run(wait=True, fault=None, label="rerun index")

    def cli_bad_key(self) -> None:
        """The CLI with a key the provider refuses: exit 1, table unchanged; then the
        good key converges."""
        settings = self.settings()
        self.api.valid_keys = {"good"}
        proc = _cli(self.root, settings, self.work / "config.toml", api_key="bad")
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.find("CLI index with a bad key hung")
        finally:
            self.api.valid_keys = None
        code = proc.returncode
        self.steps.append(f"  CLI index with a bad key -> exit {code}")
        if code == 1:
            self.unchanged("the CLI stopped on a bad key")
        elif code not in (0, 4, 5, 6):  # 0/4/5: nothing to send, no provider call
            self.find(f"CLI index with a bad key: exit {code}: {err.decode()[-600:]}")
        self.previous = table_rows(settings)
        self.index_run(wait=True, fault=None, label="rerun index with the good key")

    # ----------------------------------------------------------------------- night ---
    def extend(
        self, op: str, fault: str | None, notes: list[str], *, same_ident: bool
    ) -> tuple[str, str | None]:
        """Paths the main walk does not reach (own random stream, see ``xrng``)."""
        xrng, files = self.xrng, self.files()
        if (
            op in ("index", "no-wait")
            and same_ident
            and not self.stash
            and len(files) >= 2
            and xrng.random() < 0.08 * _on("unreadable")
        ):
            notes.append(self.make_unreadable())
        in_flight = self.scanned_settings is not None and bool(
            corpusbatch.batch_status(self.scanned_settings)
        )
        if (
            in_flight
            and op in ("collect", "index", "no-wait")
            and xrng.random() < (0.6 if op == "collect" else 0.25) * _on("collect-dims")
        ):
            assert self.scanned_settings is not None
            self.ident.dims = 48 if self.scanned_settings.dimensions == 32 else 32
            notes.append(f"dimensions {self.ident.dims} (collect with them)")
            op = "collect-dims"
        if op == "index" and fault is None and xrng.random() < 0.05 * _on("cli-bad-key"):
            notes.append("CLI with a bad key")
            op = "cli-bad-key"
        if (
            op in ("index", "no-wait")
            and fault is None
            and self.ident.realtime_under
            and xrng.random() < 0.4 * _on("rt_damage")
        ):
            kind = xrng.choice(RT_DAMAGE)
            self.api.realtime_damage = [kind]
            fault = "rt_damage"
            notes.append(f"fault rt_damage {kind}")
        if op in ("index", "no-wait", "collect") and fault is None:
            if xrng.random() < 0.12 * _on("hostile"):
                kind = xrng.choice(HOSTILE)
                if kind.startswith("html_"):
                    self.api.html_next = [kind.removeprefix("html_")]
                elif kind in ("wrong_dims", "nan", "inf"):
                    self.api.malformed_next = [kind]
                else:
                    self.api.hostile_next = [kind]
                fault = "hostile"
                notes.append(f"fault hostile {kind}")
            elif op != "collect" and xrng.random() < 0.1 * _on("token_split"):
                # the provider's queue is smaller than any file: refused, learned, split
                self.api.token_cap = xrng.choice([60, 120])
                fault = "token_split"
                notes.append(f"fault token_split (queue of {self.api.token_cap} tokens)")
        return op, fault

    def one_night(self) -> None:
        rng = self.rng
        notes: list[str] = []
        if self.unreadable:
            notes.append(self.restore_unreadable())
        if self.stash and rng.random() < 0.6:
            notes.append(self.restore())
        elif not self.stash and read_files(self.root) and rng.random() < 0.05 * _on("empty"):
            notes.append(self.empty_root())
        else:
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                notes.append(self.mutate())
        ident = replace(self.ident)
        if rng.random() < 0.1:
            self.ident.model = rng.choice(MODELS)
            notes.append(f"model {self.ident.model}")
        if rng.random() < 0.1:
            self.ident.dims = rng.choice([32, 48])
            notes.append(f"dimensions {self.ident.dims}")
        if rng.random() < 0.08:
            self.ident.prefix = rng.choice(["", "q: "])
            notes.append(f"prefix {self.ident.prefix!r}")
        if rng.random() < 0.12:
            self.ident.realtime_under = rng.choice([None, 400])
            notes.append(f"realtime-under {self.ident.realtime_under}")
        if _workers_for(self.night) != self.workers:
            self.workers = _workers_for(self.night)
            notes.append(f"scan workers {self.workers}")
        ops = ["index", "no-wait", "collect", "plan", "verify", "kill"]
        op = rng.choices(
            ops, [w * _on(o) for o, w in zip(ops, [40, 16, 10, 8, 8, 9], strict=True)]
        )[0]
        fault = None
        if op not in ("plan", "kill") and rng.random() < 0.35:
            weights = [4, 1, 2, 1, 1, 1, 3, 3, 3, 2, 2]
            fault = rng.choices(FAULTS, [w * _on(f) for f, w in zip(FAULTS, weights, strict=True)])[
                0
            ]
            fault = fault if _on(fault) else None
            if fault:
                self.arm(fault)
                notes.append(f"fault {fault}")
        op, fault = self.extend(op, fault, notes, same_ident=ident == self.ident)
        # a "large" change: past loading's bounds the publish is one commit per source
        # (and per deleted source), each source still whole in its commit (in this
        # process; a killed CLI run keeps the defaults)
        large = self.xrng.random() < 0.25 * _on("large-table")
        _set_bounds(large)
        if large:
            notes.append("large change (a commit per source)")
        self.steps.append(f"night {self.night}: " + "; ".join(notes or ["no change"]))
        t0 = time.monotonic()
        since = table_version(self.settings())
        try:
            match op:
                case "index":
                    self.index_run(wait=True, fault=fault, label="index")
                case "no-wait":
                    self.index_run(wait=False, fault=fault, label="index --no-wait")
                case "collect":
                    self.collect_run(fault)
                case "plan":
                    self.plan_run()
                case "verify":
                    self.verify_run(fault)
                case "kill":
                    self.kill_run()
                case "collect-dims":
                    self.collect_other_dims(fault)
                case "cli-bad-key":
                    self.cli_bad_key()
        finally:
            self.disarm()
            if op != "verify":  # (verify's damage step deletes rows by hand first)
                half = half_published_problems(self.settings(), since, self.previous)
                if half:
                    self.find("a reader could see a half-published state:\n" + "\n".join(half))
            self.previous = table_rows(self.settings())
            dangling = dangling_problems(self.settings())
            if dangling:
                self.find("\n".join(dangling))
            if rng.random() < 0.8:
                self.api.advance_all()  # overnight the provider finishes (and bills)
            self.note_collectable()
            new = [
                p for p in billing_problems(self.api, self.collected) if p not in self.paid_twice
            ]
            self.paid_twice.update(new)
            if new:  # after the night: abandoned batches are billed by now
                self.find("paid twice:\n" + "\n".join(new))
            self.steps.append(f"  ({time.monotonic() - t0:.1f} s)")


def _on(name: str) -> int:
    return int(name not in SKIP)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n")[1:] if p.strip()]


def _summary(report: Any) -> str:
    parts = [f"route={report.route}", f"planned={report.files_planned}"]
    if report.pending_files:
        parts.append(f"pending={report.pending_files}")
    if report.published:
        parts.append("published")
    if report.failed:
        parts.append(f"failed={len(report.failed)}")
    incomplete = getattr(report, "incomplete_sources", None)
    if incomplete:
        parts.append(f"incomplete={len(incomplete)}")
    return " ".join(parts)


def _cli(
    root: Path, settings: Settings, config: Path, *, api_key: str = "k"
) -> subprocess.Popen[bytes]:
    limits = "".join(f"{k} = {v}\n" for k, v in LIMITS.items())
    config.write_text(
        f"chunk_tokens = {CHUNK_TOKENS}\npoll_interval = 0.01\n"
        f"missing_batch_grace = {MISSING_GRACE}\n[limits]\n{limits}"
    )
    args = [
        sys.executable,
        "-m",
        "corpusbatch",
        "index",
        str(root),
        "--provider",
        "openai",
        "--base-url",
        str(settings.base_url),
        "--index-dir",
        str(settings.index_dir),
        "--config",
        str(config),
        "--model",
        str(settings.model),
        "--dimensions",
        str(settings.dimensions),
        "-q",
    ]
    if settings.input_prefix:
        args += ["--input-prefix", settings.input_prefix]
    if settings.realtime_under:
        args += ["--realtime-under", str(settings.realtime_under)]
    if settings.scan_workers:
        args += ["--workers", str(settings.scan_workers)]
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
    env = dict(os.environ, OPENAI_API_KEY=api_key, PYTHONPATH=path)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _identity(settings: Settings) -> tuple[Any, ...]:
    return (settings.model, settings.dimensions, settings.input_prefix, settings.chunk_tokens)


def _workers_for(night: int) -> int:
    """Scan processes for a night: 1 or 2, fixed by the night number so that no random
    stream of the walk is disturbed (older seeds replay as before)."""
    return 1 + zlib.crc32(f"workers {night}".encode()) % 2


def run_walk(seed: int, nights: int, tmp: Path) -> Walk:
    rng = random.Random(seed)
    root = tmp / "corpus"
    root.mkdir()
    with FakeBatchAPI(seed=seed) as api, CleanBuilder(poison=POISON) as clean:
        api.poison = POISON
        walk = Walk(rng=rng, root=root, work=tmp, api=api, clean=clean)
        walk.xrng = random.Random(f"extend-{seed}")
        for _ in range(rng.randint(6, 10)):
            walk.write(walk.new_name(), walk.document())
        written = 0
        try:
            for night in range(nights):
                walk.night = night
                try:
                    walk.one_night()
                finally:
                    if STEPS_LOG:
                        with open(STEPS_LOG, "a") as log:
                            log.write("".join(f"{s}\n" for s in walk.steps[written:]))
                        written = len(walk.steps)
        except AssertionError:
            pass
        finally:
            _set_bounds(False)
        return walk


def test_many_nights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nights with 2 scan workers use the process pool even on this small corpus (the CLI
    # runs of kill steps keep the real threshold and scan in-process)
    monkeypatch.setattr(scanning, "MIN_POOL_BYTES", 0)
    t0 = time.monotonic()
    walk = run_walk(SEED, NIGHTS, tmp_path)
    took = time.monotonic() - t0
    print(f"seed {SEED}: {walk.night + 1} nights in {took:.1f} s")
    if walk.findings:
        log = "\n".join(walk.steps)
        pytest.fail(
            f"seed {SEED} (replay: CORPUSBATCH_SEED={SEED} CORPUSBATCH_NIGHTS={walk.night + 1})"
            f"\n{len(walk.findings)} finding(s); steps:\n{log}",
            pytrace=False,
        )


if __name__ == "__main__":  # python tests/test_nights.py SEED NIGHTS: print the walk
    import tempfile

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else SEED
    nights = int(sys.argv[2]) if len(sys.argv) > 2 else NIGHTS
    with tempfile.TemporaryDirectory() as d:
        w = run_walk(seed, nights, Path(d))
        print("\n".join(w.steps))
        print(f"{len(w.findings)} finding(s)")


@pytest.mark.parametrize("kind", RT_DAMAGE)
def test_damaged_realtime_answer(tmp_path: Path, kind: str) -> None:
    """A damaged 200 answer of /v1/embeddings is provider trouble (``retry``): the run
    returns, the damaged inputs are sent again, and the table is a clean build with
    nothing paid twice beyond what was lost."""
    root = tmp_path / "corpus"
    with FakeBatchAPI(seed=3) as api, CleanBuilder() as clean:
        rng = random.Random(kind)
        walk = Walk(rng=rng, root=root, work=tmp_path, api=api, clean=clean)
        for _ in range(3):
            walk.write(walk.new_name(), walk.document())
        walk.ident.realtime_under = 100_000
        settings = walk.settings()
        api.realtime_damage = [kind]
        outcome, value = walk.library(
            lambda: corpusbatch.index(root, settings, api_key="k", wait=True)
        )
        assert outcome == "ok", f"{kind}: {outcome}: {value}"
        assert value.route == "realtime"
        files = read_files(root)
        assert not table_problems(
            settings, files, api, clean, previous=[], incomplete=value.incomplete_sources
        )
        wanted = [r.text for r in clean.rows(files, settings)]
        assert not lost_problems(api, settings, wanted)
        assert not billing_problems(api)
