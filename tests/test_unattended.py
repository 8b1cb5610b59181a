"""Regression tests for the unattended nightly job: each path here lost rows or paid twice
before the batch-file lifecycle became one explicit state machine (see journal.py).

Every test drives the real pipeline through the real ``openai`` SDK against the loopback
fake Batch API and checks the shared invariants of ``tests/invariants.py``: the table is
a clean build of the current folder (or, for sources still in flight, their last
published rows), nothing was paid twice, nothing paid for was thrown away.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeapi import FakeBatchAPI
from invariants import (
    CleanBuilder,
    assert_no_double_billing,
    assert_table_is_clean_build,
    read_files,
    stored_keys,
    table_rows,
)

from corpusbatch import Settings, collect, index, open_table
from corpusbatch.cli import main
from corpusbatch.errors import BackendError, MassDeleteRefused
from corpusbatch.journal import Journal
from corpusbatch.loading import RunStore
from corpusbatch.verify import verify

pytestmark = pytest.mark.slow

WORDS = ["alpha", "beta", "gamma", "delta", "lance", "token", "chunk", "queue", "wave"]
DIMS = 32


def _doc(rng: random.Random, title: str, paragraphs: int = 3) -> str:
    body = [f"# {title}\n"]
    for p in range(paragraphs):
        body.append(f"## Part {p}\n\n" + " ".join(rng.choice(WORDS) for _ in range(40)) + "\n")
    return "\n".join(body)


def make_corpus(root: Path, n: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.md").write_text(_doc(rng, f"Document {i}"))
    return root


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS) as server:
        yield server


@pytest.fixture(scope="module")
def clean() -> Iterator[CleanBuilder]:
    with CleanBuilder() as builder:
        yield builder


def settings_for(tmp_path: Path, api: FakeBatchAPI, **kw: Any) -> Settings:
    options: dict[str, Any] = {
        "index_dir": tmp_path / "idx",
        "provider": "openai",
        "base_url": api.base_url,
        "dimensions": DIMS,
        "chunk_tokens": 60,
        "poll_interval": 0.002,
        "limits": {"max_inputs_per_file": 6, "max_inputs_per_request": 3},
    }
    options.update(kw)
    return Settings(**options)


def check(
    settings: Settings, root: Path, api: FakeBatchAPI, clean: CleanBuilder, **kw: Any
) -> None:
    assert_table_is_clean_build(settings, read_files(root), api, clean, **kw)
    assert_no_double_billing(api)


# -- an emptied or mostly emptied folder -------------------------------------------------
def test_an_empty_root_is_refused_and_the_table_kept(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 4)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    before = table_rows(settings)
    assert before
    saved = tmp_path / "saved"
    shutil.move(root, saved)
    root.mkdir()  # an unmounted share: the folder is there, empty
    with pytest.raises(MassDeleteRefused, match="no documents"):
        index(root, settings, api_key="k")
    check(settings, root, api, clean, previous=before, refused=True)
    # the next night the share is back: nothing to do, nothing re-embedded
    shutil.rmtree(root)
    shutil.move(saved, root)
    report = index(root, settings, api_key="k")
    assert report.to_embed_inputs == 0 and report.deleted == 0
    check(settings, root, api, clean, previous=before)


def test_the_cli_exits_6_and_allow_mass_delete_publishes(tmp_path: Path, api: FakeBatchAPI) -> None:
    root = make_corpus(tmp_path / "docs", 12)
    args = ["index", str(root), "--provider", "openai", "--base-url", api.base_url]
    args += ["--index-dir", str(tmp_path / "idx"), "--dimensions", str(DIMS), "-q"]
    runner = CliRunner()
    env = {"OPENAI_API_KEY": "k"}
    assert runner.invoke(main, args, env=env).exit_code == 0
    for path in sorted(root.glob("*.md"))[:7]:  # 7 of 12 sources gone at once
        path.unlink()
    refused = runner.invoke(main, args, env=env)
    assert refused.exit_code == 6, refused.output
    assert "--allow-mass-delete" in refused.output
    assert {r.source for r in table_rows(settings_for(tmp_path, api))} == {
        f"doc{i:02d}.md" for i in range(12)
    }
    allowed = runner.invoke(main, [*args, "--allow-mass-delete"], env=env)
    assert allowed.exit_code == 0, allowed.output
    assert {r.source for r in table_rows(settings_for(tmp_path, api))} == {
        f"doc{i:02d}.md" for i in range(7, 12)
    }


def test_a_few_deletions_are_not_a_mass_delete(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    (root / "doc00.md").unlink()  # 1 of 3: small corpora may lose files normally
    before = table_rows(settings)
    index(root, settings, api_key="k")
    check(settings, root, api, clean, previous=before)


# -- plan is a dry run -----------------------------------------------------------------
def test_plan_of_a_subfolder_then_collect_deletes_nothing(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 4)
    make_corpus(root / "sub", 2, seed=9)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    before = table_rows(settings)
    store_before = (tmp_path / "idx" / "store.db").read_bytes()
    (root / "doc01.md").write_text("# Changed\n\nnew words entirely here\n")
    report = index(root / "sub", settings, dry_run=True)
    assert report.chunks > 0
    collect(settings, api_key="k")
    assert table_rows(settings) == before, "collect after plan changed the table"
    assert api.billed.total() == len({r.text for r in before})
    # the plan left no scan behind: the next index sees the edit and only the edit
    index(root, settings, api_key="k")
    check(settings, root, api, clean, previous=before)
    assert (tmp_path / "idx" / "store.db").read_bytes() != store_before


def test_plan_on_a_new_index_leaves_no_index_behind(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "docs", 2)
    settings = Settings(index_dir=tmp_path / "idx", provider="openai")
    report = index(root, settings, dry_run=True)
    assert report.to_embed_inputs > 0 and report.estimated_cost_batch > 0
    assert not (tmp_path / "idx").exists()


# -- --no-wait publishes what is complete --------------------------------------------------
def test_no_wait_publishes_complete_sources_while_others_are_in_flight(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 5)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    first = table_rows(settings)
    api.auto_advance = False  # tonight's batches stay in the provider's queue
    (root / "doc00.md").write_text("# Stuck\n\nthis edit waits in a batch that never ends\n")
    report = index(root, settings, api_key="k", wait=False)
    assert report.pending_files > 0 and report.incomplete_sources == ["doc00.md"]
    check(settings, root, api, clean, previous=first, incomplete=report.incomplete_sources)
    # the next night: a delete and a copy of an already embedded file need no batch
    (root / "doc01.md").unlink()
    shutil.copy(root / "doc02.md", root / "copy.md")
    report = index(root, settings, api_key="k", wait=False)
    assert report.incomplete_sources == ["doc00.md"]
    rows = table_rows(settings)
    assert "doc01.md" not in {r.source for r in rows}, "deletion waited for the stuck batch"
    assert "copy.md" in {r.source for r in rows}, "the copy waited for the stuck batch"
    check(settings, root, api, clean, previous=first, incomplete=report.incomplete_sources)
    api.auto_advance = True
    done = collect(settings, api_key="k")
    assert done.incomplete_sources == [] and done.pending_files == 0
    check(settings, root, api, clean, previous=rows)


# -- provider trouble is not the input's fault ------------------------------------------------
def test_expiry_every_time_defers_instead_of_failing_for_good(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api, max_attempts=2)
    api.expire_next = [0] * 200  # a bad provider day: every batch expires, nothing done
    report = index(root, settings, api_key="k")
    assert report.failed == [] and report.deferred > 0
    with closing(RunStore(tmp_path / "idx" / "store.db", DIMS)) as store:
        assert store.count("failures") == 0, "expiry was held against the inputs"
    api.expire_next = []
    report = index(root, settings, api_key="k")  # no --retry-failed needed
    assert report.failed == [] and report.deferred == 0
    check(settings, root, api, clean, previous=[])


def test_the_cli_exits_5_when_inputs_wait_for_the_next_run(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    root = make_corpus(tmp_path / "docs", 2)
    api.expire_next = [0] * 200
    args = ["index", str(root), "--provider", "openai", "--base-url", api.base_url]
    args += ["--index-dir", str(tmp_path / "idx"), "--dimensions", str(DIMS), "-q"]
    result = CliRunner().invoke(main, args, env={"OPENAI_API_KEY": "k"})
    assert result.exit_code == 5, result.output
    assert "the next run sends them again" in result.output


def test_a_401_on_the_realtime_route_stops_and_the_next_run_resumes(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 2)
    settings = settings_for(tmp_path, api, realtime_under=10**6)
    api.realtime_faults = [401]
    with pytest.raises(BackendError, match="401"):
        index(root, settings, api_key="k")
    with closing(RunStore(tmp_path / "idx" / "store.db", DIMS)) as store:
        assert store.count("failures") == 0
    report = index(root, settings, api_key="k")
    assert report.failed == [] and report.deferred == 0
    check(settings, root, api, clean, previous=[])


def test_a_malformed_output_line_does_not_wedge_the_index(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api)
    api.malformed_next = ["bad_base64", "non_object_item", "invalid_utf8", "truncated_json"]
    report = index(root, settings, api_key="k")
    assert report.failed == [] and report.deferred == 0, "the lost lines were sent again"
    check(settings, root, api, clean, previous=[])


# -- settings changed while batches are in flight --------------------------------------------
def test_dimensions_changed_while_batches_fly_keeps_what_was_paid(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api)
    api.auto_advance = False
    index(root, settings, api_key="k", wait=False)
    api.auto_advance = True
    smaller = settings_for(tmp_path, api, dimensions=16)
    report = index(root, smaller, api_key="k")
    assert report.failed == [] and report.deferred == 0
    check(smaller, root, api, clean, previous=[])
    # the 32-d vectors paid for in flight were loaded, not thrown away: switching back
    # costs nothing
    billed = api.billed.total()
    rows16 = table_rows(smaller)
    back = index(root, settings, api_key="k")
    assert back.to_embed_inputs == 0 and api.billed.total() == billed
    check(settings, root, api, clean, previous=rows16)
    # the store holds the vectors of both identities (keys differ by identity)
    distinct = len({r.text for r in rows16})
    assert len(stored_keys(settings)) >= 2 * distinct


# -- the real-time route sends only what it priced --------------------------------------------
def test_realtime_under_sends_only_its_own_small_plan(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 4)
    # a tiny queue: one night plans every file but can only enqueue one at a time
    limits = {"max_inputs_per_file": 3, "max_inputs_per_request": 3, "max_enqueued_tokens": 200}
    settings = settings_for(tmp_path, api, limits=limits)
    api.auto_advance = False
    index(root, settings, api_key="k", wait=False)
    with Journal(tmp_path / "idx" / "state.db") as journal:
        waiting = {r.name for r in journal.files(states=("planned",))}
    assert waiting, "the queue cap should leave files planned"
    api.auto_advance = True
    (root / "new.md").write_text("# Small\n\na small nightly change of a few words\n")
    small = settings_for(tmp_path, api, limits=limits, realtime_under=200)
    report = index(root, small, api_key="k")
    assert report.route == "realtime"
    assert set(api.realtime_processed) <= {
        r.text for r in table_rows(small) if r.source == "new.md"
    }, "files planned for the Batch API went through the real-time API"
    with Journal(tmp_path / "idx" / "state.db") as journal:
        assert {r.route for r in journal.files() if r.name in waiting} == {"batch"}
        assert all(r.state == "loaded" for r in journal.files() if r.name in waiting)
    check(small, root, api, clean, previous=[])


# -- found by the many-nights walk (tests/test_nights.py) ------------------------------------
def test_a_file_that_turned_into_a_folder_keeps_its_rows_until_it_is_back(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    before = table_rows(settings)
    data = (root / "doc01.md").read_bytes()
    (root / "doc01.md").unlink()
    (root / "doc01.md").mkdir()  # cannot be read as a document tonight
    report = index(root, settings, api_key="k")
    assert [s["path"] for s in report.skipped] == ["doc01.md"]
    assert "cannot read" in report.skipped[0]["reason"] and report.deleted_sources == []
    assert table_rows(settings) == before
    (root / "doc01.md").rmdir()
    (root / "doc01.md").write_bytes(data + b"\nOne more line.\n")
    index(root, settings, api_key="k")  # read again although nothing looks changed
    check(settings, root, api, clean, previous=before)


def test_verify_repair_under_other_dimensions_keeps_the_paid_vectors(
    tmp_path: Path, api: FakeBatchAPI, clean: CleanBuilder
) -> None:
    root = make_corpus(tmp_path / "docs", 2)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    kept = stored_keys(settings)
    found = verify(settings_for(tmp_path, api, dimensions=16), root, repair=False)
    assert found.bad_stored_vectors == [], "32-d vectors judged by 16-d flags"
    assert stored_keys(settings) == kept
    billed = api.billed.total()
    index(root, settings, api_key="k")
    assert api.billed.total() == billed
    check(settings, root, api, clean, previous=[])


def test_a_repair_whose_republish_is_refused_leaves_every_row_once(
    tmp_path: Path, api: FakeBatchAPI
) -> None:
    root = make_corpus(tmp_path / "docs", 3)
    settings = settings_for(tmp_path, api)
    index(root, settings, api_key="k")
    table = open_table(settings)
    before = table_rows(settings)
    table.add(table.to_arrow().slice(0, 2))  # two rows twice
    shutil.rmtree(root)
    root.mkdir()  # the republish will be refused as a mass delete
    with pytest.raises(MassDeleteRefused):
        verify(settings, root, repair=True, api_key="k")
    assert table_rows(settings) == before, "the repair lost the duplicated rows"
