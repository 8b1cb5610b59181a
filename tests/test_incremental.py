"""Nightly re-index on the local backend: pay only for what changed, publish atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest

from corpusbatch import Settings, index, open_table
from corpusbatch.verify import verify
from corpusbatch.workspace import IndexPaths, index_lock

pytestmark = pytest.mark.slow

SHARED = "Shared paragraph: always weigh both the coffee and the water with the same scale."


def para(topic: str, n: int) -> str:
    return f"{topic} paragraph {n}. " + " ".join(f"{topic}-word-{n}-{i}" for i in range(60))


def write_corpus(root: Path) -> None:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.md").write_text(
        "# Alpha\n\n" + "\n\n".join(para("alpha", i) for i in range(4)) + f"\n\n{SHARED}\n"
    )
    (root / "b.md").write_text(
        "# Beta\n\n" + "\n\n".join(para("beta", i) for i in range(3)) + f"\n\n{SHARED}\n"
    )
    (root / "sub" / "c.rst").write_text(
        "Gamma\n=====\n\n" + "\n\n".join(para("gamma", i) for i in range(3)) + "\n"
    )
    (root / "sub" / "b-copy.md").write_text((root / "b.md").read_text())  # same chunks


def rows(settings: Settings) -> dict[str, tuple[str, str, int, int]]:
    table = open_table(settings).to_arrow().to_pylist()
    return {r["id"]: (r["source"], r["text"], r["start_line"], r["end_line"]) for r in table}


def test_edit_rename_delete_add_costs_only_what_changed(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_corpus(docs)
    settings = Settings(index_dir=tmp_path / "idx", chunk_tokens=64)
    first = index(docs, settings)
    # the copy's chunks are embedded once for both files
    assert first.embedded_vectors == first.distinct_vectors < first.chunks

    # edit one paragraph of a.md, rename b.md, delete c.rst, add d.md
    a = (docs / "a.md").read_text().replace(para("alpha", 2), para("alpha", 2) + " Edited!")
    (docs / "a.md").write_text(a)
    (docs / "b.md").rename(docs / "sub" / "b-renamed.md")
    (docs / "sub" / "c.rst").unlink()
    (docs / "d.md").write_text("# Delta\n\n" + para("delta", 0) + "\n")
    second = index(docs, settings)

    fresh_settings = Settings(index_dir=tmp_path / "fresh", chunk_tokens=64)
    index(docs, fresh_settings)
    assert rows(settings) == rows(fresh_settings)  # exactly the rows a clean build gives
    # only the edited chunk(s) and d.md were embedded; the renamed file cost nothing
    edited = {t for (_, t, _, _) in rows(settings).values() if "Edited!" in t}
    delta = {t for (s, t, _, _) in rows(settings).values() if s == "d.md"}
    assert second.embedded_vectors == len(edited) + len(delta)
    assert second.to_embed_inputs == second.embedded_vectors
    assert second.deleted_sources == ["b.md", "sub/c.rst"]
    assert second.deleted >= 1 and second.new >= len(edited) + len(delta)

    third = index(docs, settings)
    assert third.embedded_vectors == 0 and third.files_planned == 0
    assert (third.new, third.changed, third.deleted) == (0, 0, 0)
    assert third.table_version == second.table_version


def test_identity_change_rebuilds_and_swaps_in_one_commit(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_corpus(docs)
    settings = Settings(index_dir=tmp_path / "idx", chunk_tokens=64)
    first = index(docs, settings)
    settings.input_prefix = "passage: "
    second = index(docs, settings)
    assert second.embedded_vectors == second.distinct_vectors  # everything re-embedded
    table = open_table(settings)
    assert {r["model"] for r in table.to_arrow().to_pylist()} == {"all-MiniLM-L6-v2"}
    old = open_table(settings)
    old.checkout(first.table_version)
    old_vectors = np.array([r["vector"] for r in old.to_arrow().to_pylist()])
    new_vectors = np.array([r["vector"] for r in table.to_arrow().to_pylist()])
    assert old_vectors.shape[0] == first.chunks and new_vectors.shape[0] == second.chunks
    ids_old = {r["id"] for r in old.to_arrow().to_pylist()}
    assert ids_old.isdisjoint({r["id"] for r in table.to_arrow().to_pylist()})


def test_verify_finds_damage_and_repair_fixes_only_that(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_corpus(docs)
    settings = Settings(index_dir=tmp_path / "idx", chunk_tokens=64)
    index(docs, settings)
    assert verify(settings).ok

    table = open_table(settings)
    all_rows = table.to_arrow()
    ids = sorted(all_rows["id"].to_pylist())
    nan_id, gone_id, dup_id = ids[0], ids[1], ids[2]
    poisoned = all_rows.filter(lancedb_filter(all_rows, nan_id)).to_pylist()[0]
    poisoned["vector"] = [0.0] * 384  # Lance itself refuses NaN vectors on write
    table.delete(f"id = '{nan_id}'")
    table.add([poisoned])
    table.delete(f"id = '{gone_id}'")
    table.add(all_rows.filter(lancedb_filter(all_rows, dup_id)))
    orphan = all_rows.filter(lancedb_filter(all_rows, ids[3])).to_pylist()[0]
    orphan["id"] = "0" * 32
    table.add([orphan])

    found = verify(settings)
    assert not found.ok
    assert found.zero_vectors == [nan_id]
    assert found.missing == [gone_id]
    assert found.duplicated == [dup_id]
    assert found.orphaned == ["0" * 32]

    repaired = verify(settings, repair=True)
    assert repaired.repaired is not None
    assert repaired.repaired.embedded_vectors == 1  # only the zeroed row's vector
    assert verify(settings).ok


def lancedb_filter(table: object, rid: str) -> object:
    import pyarrow.compute as pc

    return pc.equal(table["id"], rid)  # type: ignore[index]


def test_concurrent_run_exits_75_with_a_clear_message(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_corpus(docs)
    paths = IndexPaths(tmp_path / "idx")
    with index_lock(paths):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "corpusbatch",
                "index",
                str(docs),
                "--index-dir",
                str(paths.root),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 75
    assert "another corpusbatch run" in proc.stderr
    assert (
        not (paths.root / "lancedb").exists()
        or not lancedb.connect(str(paths.root / "lancedb")).list_tables().tables
    )


def test_a_document_that_cannot_be_chunked_is_skipped_not_fatal(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "emoji.txt").write_text("😀😀😀 日本語のテキスト\n")
    (docs / "plain.txt").write_text("plain words\n")
    settings = Settings(index_dir=tmp_path / "idx", provider="openai", chunk_tokens=1)
    report = index(docs, settings, dry_run=True)
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "emoji.txt" in reasons and "--chunk-tokens" in reasons["emoji.txt"]
    assert report.documents == 1 and report.to_embed_inputs >= 2  # plain.txt went on
