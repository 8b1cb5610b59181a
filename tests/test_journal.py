"""The journal: durable states, migration of older databases, crash consistency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from corpusbatch.errors import StateError
from corpusbatch.journal import STATES, TRANSITIONS, Journal


def _add(journal: Journal, name: str, tmp_path: Path, **kw: object) -> None:
    journal.add_file(
        name=name,
        plan="p1",
        path=tmp_path / name,
        manifest_path=tmp_path / f"{name}.manifest.jsonl",
        sha256="ab" * 32,
        model="m",
        n_lines=2,
        n_inputs=3,
        n_tokens=40,
        n_bytes=100,
        **kw,  # type: ignore[arg-type]
    )


def test_add_update_get_roundtrip(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path)
        _add(j, "a.jsonl", tmp_path)  # second add is a no-op
        j.update("a.jsonl", "uploading")
        j.update("a.jsonl", "uploaded", input_file_id="file-1", create_seq=2, not_before=5.0)
        rec = j.get("a.jsonl")
        assert rec is not None
        assert (rec.state, rec.input_file_id, rec.create_seq, rec.not_before) == (
            "uploaded",
            "file-1",
            2,
            5.0,
        )
        assert [e[2] for e in j.events("a.jsonl")] == ["uploading", "uploaded"]
        assert j.get("missing") is None


def test_update_rejects_unknown_state_field_and_name(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path)
        with pytest.raises(ValueError):
            j.update("a.jsonl", "bogus")
        with pytest.raises(ValueError):
            j.update("a.jsonl", nonsense=1)
        with pytest.raises(KeyError):
            j.update("nope.jsonl", "uploaded")


# A legal way into each state, with the fields each step needs.
_PATHS: dict[str, list[tuple[str, dict[str, object]]]] = {
    "planned": [],
    "uploading": [("uploading", {})],
    "uploaded": [("uploading", {}), ("uploaded", {"input_file_id": "file-1"})],
    "creating": [("uploading", {}), ("uploaded", {"input_file_id": "f"}), ("creating", {})],
    "created": [
        ("uploading", {}),
        ("uploaded", {"input_file_id": "f"}),
        ("creating", {}),
        ("created", {"batch_id": "batch-1"}),
    ],
    "finished": [
        ("uploading", {}),
        ("uploaded", {"input_file_id": "f"}),
        ("creating", {}),
        ("created", {"batch_id": "batch-1"}),
        ("finished", {"batch_status": "completed"}),
    ],
    "downloaded": [("downloaded", {})],
    "loaded": [("downloaded", {}), ("loaded", {})],
    "split": [("split", {"error": "token_limit_exceeded; split into 2 files"})],
    "failed": [("failed", {"error": "broken"})],
}


def _walk(journal: Journal, name: str, state: str) -> None:
    for step, fields in _PATHS[state]:
        journal.update(name, step, **fields)


def test_files_filters_and_pending(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        for i, state in enumerate(STATES):
            _add(j, f"f{i}.jsonl", tmp_path)
            _walk(j, f"f{i}.jsonl", state)
        pending = {f.state for f in j.pending()}
        assert pending == set(STATES) - {"loaded", "split", "failed"}
        assert [f.state for f in j.files(states=("created",))] == ["created"]
        assert j.files(plan="other") == []


def test_every_illegal_transition_raises_and_writes_nothing(tmp_path: Path) -> None:
    """The state machine is the table: each pair it does not list is refused."""
    with Journal(tmp_path / "state.db") as j:
        n = 0
        for source in STATES:
            for dest in STATES:
                if dest in TRANSITIONS[source]:
                    continue
                n += 1
                name = f"x{n}.jsonl"
                _add(j, name, tmp_path)
                _walk(j, name, source)
                before = (j.get(name), len(j.events(name)))
                with pytest.raises(StateError, match="illegal journal transition"):
                    j.update(name, dest, error="e", input_file_id="f", batch_id="b")
                assert (j.get(name), len(j.events(name))) == before
        assert n > 40  # most pairs are illegal: the machine is narrow


def test_split_is_terminal_needs_a_reason_and_is_reached_only_before_the_batch_ran(
    tmp_path: Path,
) -> None:
    """A file is split only while its batch has produced nothing (planned .. created);
    once finished, its results must be loaded, never re-planned."""
    assert {s for s in STATES if "split" in TRANSITIONS[s]} == {
        "planned",
        "uploading",
        "uploaded",
        "creating",
        "created",
    }
    assert TRANSITIONS["split"] == frozenset()
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path)
        _walk(j, "a.jsonl", "created")
        with pytest.raises(StateError, match="lacks error"):
            j.update("a.jsonl", "split")
        j.update("a.jsonl", "split", error="refused; split into 2 files")
        rec = j.get("a.jsonl")
        assert rec is not None and rec.state == "split" and rec.batch_id == "batch-1"
        assert j.pending() == []
        with pytest.raises(StateError):
            j.update("a.jsonl", "failed", error="late")


def test_learned_limits_persist_per_target_and_model_and_only_tighten(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        assert j.learned_limits("openai@x", "m") == {}
        assert j.learn_limit("openai@x", "m", "max_enqueued_tokens", 30_000) == 30_000
        assert j.learn_limit("openai@x", "m", "max_enqueued_tokens", 50_000) == 30_000
        assert j.learn_limit("openai@x", "m", "max_enqueued_tokens", 20_000) == 20_000
        j.learn_limit("openai@x", "m", "max_lines_per_file", 7)
        j.learn_limit("openai@x", "other-model", "max_enqueued_tokens", 5)
        j.learn_limit("deepinfra@y", "m", "max_enqueued_tokens", 6)
        with pytest.raises(ValueError):
            j.learn_limit("openai@x", "m", "max_lines_per_file", 0)
    with Journal(tmp_path / "state.db") as j:  # reopened: kept on disk, not in memory
        assert j.learned_limits("openai@x", "m") == {
            "max_enqueued_tokens": 20_000,
            "max_lines_per_file": 7,
        }
        assert j.learned_limits("openai@x", "other-model") == {"max_enqueued_tokens": 5}
        assert j.learned_limits(None, "m") == {}


def test_a_state_without_the_fields_it_needs_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path)
        j.update("a.jsonl", "uploading")
        with pytest.raises(StateError, match="lacks input_file_id"):
            j.update("a.jsonl", "uploaded")
        with pytest.raises(StateError, match="lacks error"):
            j.update("a.jsonl", "failed")
        assert j.get("a.jsonl").state == "uploading"  # type: ignore[union-attr]


def test_going_back_clears_what_belonged_to_the_old_batch(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path)
        _walk(j, "a.jsonl", "created")
        j.update("a.jsonl", missing_polls=2, missing_since=10.0)
        j.update("a.jsonl", "uploaded", create_seq=1)
        rec = j.get("a.jsonl")
        assert rec is not None
        assert (rec.batch_id, rec.missing_polls, rec.missing_since) == (None, 0, None)
        assert rec.input_file_id == "f" and rec.create_seq == 1


def test_paths_outside_the_index_directory_are_refused(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    with Journal(index_dir / "state.db") as j:
        _add(j, "a.jsonl", index_dir)
        _add(j, "b.jsonl", index_dir)
        j.update("b.jsonl", "downloaded", output_path=str(index_dir / "outputs" / "b.out"))
        assert j.get("b.jsonl") is not None
        # someone edits state.db to point at another place
        j._db.execute("UPDATE files SET path = '/etc/passwd' WHERE name = 'a.jsonl'")
        with pytest.raises(StateError, match="outside the index directory"):
            j.get("a.jsonl")
        with pytest.raises(StateError):
            j.files()
        j._db.execute(
            "UPDATE files SET path = ? WHERE name = 'a.jsonl'",
            (str(index_dir / "batches" / ".." / ".." / "x.jsonl"),),
        )
        with pytest.raises(StateError):
            j.get("a.jsonl")


def test_scoped_views_list_only_their_target_and_route(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        _add(j, "a.jsonl", tmp_path, target="openai@default", route="batch")
        _add(j, "b.jsonl", tmp_path, target="openai@default", route="realtime")
        _add(j, "c.jsonl", tmp_path, target="local", route="local")
        names = lambda view: [f.name for f in view.files()]  # noqa: E731
        assert names(j.scoped("openai@default")) == ["a.jsonl", "b.jsonl"]
        assert names(j.scoped("openai@default", ("realtime",))) == ["b.jsonl"]
        assert names(j.scoped("local", ("local",))) == ["c.jsonl"]
        assert names(j) == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_meta_roundtrip(tmp_path: Path) -> None:
    with Journal(tmp_path / "state.db") as j:
        assert j.get_meta("k") is None
        j.set_meta("k", "1")
        j.set_meta("k", "2")
        assert j.get_meta("k") == "2"


def test_old_journal_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE files (name TEXT PRIMARY KEY, plan TEXT NOT NULL, path TEXT NOT NULL,"
        " manifest_path TEXT NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL,"
        " n_lines INTEGER NOT NULL, n_inputs INTEGER NOT NULL, n_tokens INTEGER NOT NULL,"
        " n_bytes INTEGER NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,"
        " parent TEXT, input_file_id TEXT, batch_id TEXT, batch_status TEXT,"
        " output_file_id TEXT, error_file_id TEXT, output_path TEXT, error_path TEXT,"
        " error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    con.execute(
        "INSERT INTO files (name, plan, path, manifest_path, sha256, model, n_lines, n_inputs,"
        " n_tokens, n_bytes, state, created_at, updated_at)"
        " VALUES ('old.jsonl','p',?,?,'s','m',1,1,1,1,'created',0,0)",
        (str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl")),
    )
    con.commit()
    con.close()
    with Journal(db) as j:
        rec = j.get("old.jsonl")
        assert rec is not None
        assert (rec.state, rec.create_seq, rec.remote_deleted) == ("created", 0, 0)
        # files planned before routes were recorded stay with the Batch API
        assert (rec.route, rec.target, rec.missing_polls) == ("batch", None, 0)
        j.update("old.jsonl", request_counts='{"total": 1}')
        assert j.get("old.jsonl").request_counts == '{"total": 1}'  # type: ignore[union-attr]


_WRITER = """
import sys, time
from pathlib import Path
from corpusbatch.journal import Journal
j = Journal(Path(sys.argv[1]))
i = 0
while True:
    name = f"f{i:06d}.jsonl"
    p = Path(sys.argv[1]).parent / name
    j.add_file(name=name, plan="p", path=p, manifest_path=p, sha256="s",
               model="m", n_lines=1, n_inputs=1, n_tokens=1, n_bytes=1)
    j.update(name, "uploading")
    j.update(name, "uploaded", input_file_id="file-" + name)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_leaves_consistent_journal(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    for _ in range(30):  # let it commit a few files, then kill it mid-stream
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Journal(db) as j:
        files = j.files()
        assert len(files) >= 30
        for f in files:
            # every row is in one of the committed states and its fields match its state
            assert f.state in ("planned", "uploading", "uploaded")
            assert (f.input_file_id is not None) == (f.state == "uploaded")
        states = [e[2] for e in j.events()]
        assert states.count("uploaded") == sum(f.state == "uploaded" for f in files)
