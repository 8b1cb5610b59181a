"""``verify --repair`` on the local backend: every expected row ends in the table exactly once.

Damage is made the way it happens: a second writer adds copies of rows, or rows are deleted
behind corpusbatch's back. Only the table is touched, so the store is clean and nothing would
be re-embedded: the repair itself must make the next publish put the rows back.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpusbatch import Settings, index, open_table
from corpusbatch.cli import main
from corpusbatch.verify import verify

pytestmark = pytest.mark.slow


def write_corpus(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.md").write_text("# Alpha\n\nThe first file talks about grinding beans.\n")
    (root / "b.md").write_text("# Beta\n\nThe second file talks about water temperature.\n")
    (root / "c.md").write_text("# Gamma\n\nThe third file talks about brew ratios.\n")


@pytest.fixture()
def indexed(tmp_path: Path) -> tuple[Settings, Path, list[str]]:
    docs = tmp_path / "docs"
    write_corpus(docs)
    settings = Settings(index_dir=tmp_path / "idx")
    report = index(docs, settings)
    assert report.published
    ids = sorted(open_table(settings).to_arrow()["id"].to_pylist())
    assert len(ids) >= 3 and verify(settings).ok
    return settings, docs, ids


def id_counts(settings: Settings) -> Counter[str]:
    return Counter(open_table(settings).to_arrow()["id"].to_pylist())


def duplicate(settings: Settings, rid: str, copies: int = 1) -> None:
    table = open_table(settings)
    row = table.search().where(f"id = '{rid}'").limit(None).to_arrow()
    assert row.num_rows == 1
    for _ in range(copies):
        table.add(row)


def test_repair_of_duplicated_rows_keeps_each_row_exactly_once(
    indexed: tuple[Settings, Path, list[str]],
) -> None:
    settings, docs, ids = indexed
    duplicate(settings, ids[0])
    duplicate(settings, ids[1], copies=2)
    found = verify(settings)
    assert found.duplicated == sorted(ids[:2]) and found.rows == len(ids) + 3

    repaired = verify(settings, docs, repair=True)
    assert repaired.repaired is not None and repaired.repaired.embedded_vectors == 0
    assert id_counts(settings) == Counter(ids)  # every expected row, exactly once
    assert verify(settings).ok


def test_repair_puts_missing_rows_back(indexed: tuple[Settings, Path, list[str]]) -> None:
    settings, docs, ids = indexed
    open_table(settings).delete(f"id = '{ids[0]}'")
    open_table(settings).delete(f"id = '{ids[2]}'")
    found = verify(settings)
    assert found.missing == [ids[0], ids[2]] and not found.ok

    # The published table is the only copy of a published vector: rows deleted
    # outside corpusbatch took theirs along, so repair embeds exactly those two again.
    repaired = verify(settings, docs, repair=True)
    assert repaired.repaired is not None and repaired.repaired.embedded_vectors == 2
    assert id_counts(settings) == Counter(ids)
    assert verify(settings).ok


def test_repair_without_a_root_leaves_the_next_index_to_republish(
    indexed: tuple[Settings, Path, list[str]], tmp_path: Path
) -> None:
    settings, docs, ids = indexed
    duplicate(settings, ids[1])
    open_table(settings).delete(f"id = '{ids[0]}'")
    # The last run's folder is gone: repair can only drop the damage and note it.
    moved = docs.rename(tmp_path / "moved")
    assert verify(settings, repair=True).repaired is None
    # the duplicate is one row again at once; the missing row waits for the next index
    assert ids[0] not in id_counts(settings) and id_counts(settings)[ids[1]] == 1

    index(moved, settings)  # the next run republishes everything that was dropped
    assert id_counts(settings) == Counter(ids)
    assert verify(settings, moved).ok


def test_cli_verify_repair_then_verify_is_ok(
    indexed: tuple[Settings, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, docs, ids = indexed
    duplicate(settings, ids[2])
    open_table(settings).delete(f"id = '{ids[0]}'")
    monkeypatch.chdir(docs.parent)
    runner = CliRunner()
    where = ["--index-dir", str(settings.index_dir)]
    assert runner.invoke(main, ["verify", *where]).exit_code == 1
    fixed = runner.invoke(main, ["verify", *where, "--repair"])
    assert fixed.exit_code == 0, fixed.output
    again = runner.invoke(main, ["verify", *where])
    assert again.exit_code == 0 and again.output.strip().endswith(": ok"), again.output
    assert id_counts(settings) == Counter(ids)


def test_repair_while_an_identity_switch_waits_keeps_the_old_rows(tmp_path: Path) -> None:
    """A switch of ``--dimensions`` waits for its batches; the table still holds the old
    identity's rows. A repair then fixes their damage only: it must not take those rows
    for rows of the new identity (all "missing", "orphaned" or "of the wrong dimension")
    and drop them, which left vectors recorded as stored that were stored nowhere: a
    switch back paid for them again."""
    from fakeapi import FakeBatchAPI
    from invariants import assert_no_double_billing, dangling_problems

    docs = tmp_path / "docs"
    write_corpus(docs)
    with FakeBatchAPI(default_dims=64) as api:
        base = {"index_dir": tmp_path / "idx", "provider": "openai", "poll_interval": 0.01}
        at32 = Settings(**base, base_url=api.base_url, dimensions=32)  # type: ignore[arg-type]
        at48 = Settings(**base, base_url=api.base_url, dimensions=48)  # type: ignore[arg-type]
        assert index(docs, at32, api_key="k").published
        ids = sorted(open_table(at32).to_arrow()["id"].to_pylist())

        api.auto_advance = False
        waiting = index(docs, at48, api_key="k", wait=False)
        assert waiting.pending_files and not waiting.published
        duplicate(at48, ids[0])
        found = verify(at48, docs)
        assert found.rebuild_pending and found.duplicated == [ids[0]]
        assert not (found.missing or found.orphaned or found.wrong_dimension)

        api.auto_advance = True  # (the repair's index run waits for the batches)
        repaired = verify(at48, docs, repair=True, api_key="k").repaired
        assert repaired is not None and repaired.published  # (loads the waiting batches)
        assert open_table(at48).schema.field("vector").type.list_size == 48
        assert len(id_counts(at48)) == len(ids) and dangling_problems(at48) == []
        back = index(docs, at32, api_key="k")  # the 32-dimension vectors were kept
        assert back.published and back.embedded_vectors == 0
        assert id_counts(at32) == Counter(ids)
        assert_no_double_billing(api)
