"""Several writers, one table on S3 (issue #11 item 3).

Indexers on different machines are separate processes here, each with its own index
directory and corpus, started at the same moment against one ``s3://`` table (moto's
S3 server, ``tests/s3server.py``; embeddings from the loopback fake Batch API). Each
owns the sources of its namespace (``--namespace NAME``: published as ``NAME/path``).

Checked: both first publishes and both nightly edits land; the table is exactly the
union of the writers' desired rows; no writer's run (an edit, a delete, a mass delete
with ``--allow-mass-delete``) touches another's rows; a writer with another identity is
refused (exit 2) instead of rebuilding the shared table; an index directory refuses a
namespace other than its own; and every version of the table ever committed shows each
namespace exactly as one of its published states (a publish is one commit: its upsert
deletes the stale rows too), never half of one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from fakeapi import FakeBatchAPI
from s3server import S3Server

from corpusbatch import Settings, open_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DIMS = 16
KEY = "sk-cbtest-writers-0123456789abcdef"
Rows = frozenset[tuple[str, str]]  # (id, content_hash)


@pytest.fixture()
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture()
def api() -> Iterator[FakeBatchAPI]:
    with FakeBatchAPI(default_dims=DIMS) as server:
        yield server


def corpus(root: Path, tag: str, n: int = 8) -> Path:
    root.mkdir()
    for i in range(n):
        paragraphs = [f"{tag} page {i} part {p}: {tag}{i}x{p} beans roast." for p in range(3)]
        (root / f"page{i}.md").write_text(f"# {tag} {i}\n\n" + "\n\n".join(paragraphs) + "\n")
    (root / "same.md").write_text("# Shared\n\nThe same text in every writer's corpus.\n")
    return root


class Writer:
    """One indexer: a corpus, an index directory and a namespace, run as the CLI."""

    def __init__(self, tmp: Path, name: str, s3: S3Server, api: FakeBatchAPI) -> None:
        self.name, self.s3, self.api = name, s3, api
        self.root = corpus(tmp / f"docs-{name}", name)
        self.idx = tmp / f"idx-{name}"
        self.uri = s3.uri("shared/tables")

    def args(self, *extra: str, namespace: str | None = None) -> list[str]:
        return [
            "-v",
            "index",
            str(self.root),
            "--db",
            self.uri,
            "--namespace",
            namespace or self.name,
            "--index-dir",
            str(self.idx),
            "--provider",
            "openai",
            "--base-url",
            self.api.base_url,
            "--dimensions",
            str(DIMS),
            "--chunk-tokens",
            "40",
            "--poll-interval",
            "0.002",
            "--json",
            *extra,
        ]

    def start(self, *extra: str, namespace: str | None = None) -> subprocess.Popen[str]:
        return self.popen(self.args(*extra, namespace=namespace))

    def popen(self, args: list[str]) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENAI_"))}
        env.update(self.s3.env())
        env["OPENAI_API_KEY"] = KEY
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
        return subprocess.Popen(
            [sys.executable, "-m", "corpusbatch", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def desired(self) -> Rows:
        with closing(sqlite3.connect(self.idx / "store.db")) as db:
            return frozenset(db.execute("SELECT id, content_hash FROM desired"))


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, object], str]:
    out, err = proc.communicate(timeout=300)
    report = json.loads(out) if out.strip().startswith("{") else {}
    return proc.returncode, report, err


def run_together(*runs: subprocess.Popen[str]) -> list[tuple[int, dict[str, object], str]]:
    return [finish(p) for p in runs]


def by_namespace(rows: list[dict[str, str]]) -> dict[str, Rows]:
    out: dict[str, set[tuple[str, str]]] = {}
    for row in rows:
        out.setdefault(row["source"].split("/", 1)[0], set()).add((row["id"], row["content_hash"]))
    return {k: frozenset(v) for k, v in out.items()}


def table_now(s3: S3Server) -> tuple[dict[str, Rows], int]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        table = open_table(Settings(db=s3.uri("shared/tables")))
        cols = ["id", "source", "content_hash"]
        return by_namespace(table.to_arrow().select(cols).to_pylist()), table.version


def history(s3: S3Server) -> list[tuple[int, dict[str, Rows]]]:
    """Every committed version of the table, with its rows by namespace."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        table = open_table(Settings(db=s3.uri("shared/tables")))
        out = []
        for v in sorted(int(x["version"]) for x in table.list_versions()):
            table.checkout(v)
            rows = table.to_arrow().select(["id", "source", "content_hash"]).to_pylist()
            out.append((v, by_namespace(rows)))
        return out


def test_two_writers_at_once_share_one_table_and_never_touch_each_others_rows(
    tmp_path: Path, s3: S3Server, api: FakeBatchAPI
) -> None:
    a, b = Writer(tmp_path, "alpha", s3, api), Writer(tmp_path, "beta", s3, api)

    # 1. both first runs at the same moment: the table is created once, both land
    results = run_together(a.start(), b.start())
    for code, report, err in results:
        assert code == 0, err
        assert report["published"] is True
    first = {"alpha": a.desired(), "beta": b.desired()}
    assert all(first.values())
    rows, _ = table_now(s3)
    # (a source outside both namespaces would make a third key here)
    assert rows == first, "the table is exactly the union of both writers' rows"

    # 2. both nightly edits at once: alpha rewrites a page and deletes one, beta adds one
    (a.root / "page1.md").write_text("# alpha 1\n\nalpha rewrote this page entirely.\n")
    (a.root / "page2.md").unlink()
    (b.root / "page9.md").write_text("# beta 9\n\nbeta added a page about grinders.\n")
    (b.root / "page3.md").write_text("# beta 3\n\nbeta rewrote page three.\n")
    results = run_together(a.start(), b.start())
    for code, report, err in results:
        assert code == 0, err
        assert report["published"] is True
        assert report["deleted"] >= 1  # each deleted or replaced some of its own rows
    second = {"alpha": a.desired(), "beta": b.desired()}
    assert second["alpha"] != first["alpha"] and second["beta"] != first["beta"]
    rows, _ = table_now(s3)
    assert rows == second

    # 3. what any reader could have seen: every version committed so far
    versions = history(s3)
    assert len(versions) >= 4
    for name in ("alpha", "beta"):
        s0, s1 = first[name], second[name]
        for v, seen in versions:
            got = seen.get(name, frozenset())
            assert got in (frozenset(), s0, s1), f"version {v}: {name} is half-published"

    # each writer's verify checks its own rows and sources only (the other's are no
    # orphans of it), and finds nothing wrong
    for w in (a, b):
        code, found, err = finish(
            w.popen(["verify", "--index-dir", str(w.idx), "--base-url", api.base_url, "--json"])
        )
        assert code == 0 and found["ok"] is True, (found, err)
        assert found["rows"] == found["expected_rows"] == len(second[w.name])

    # 4. alpha's corpus vanishes and alpha confirms it: only alpha's rows go
    for page in a.root.iterdir():
        page.unlink()
    code, report, err = finish(a.start())
    assert code == 6, "an empty folder is refused first"
    code, report, err = finish(a.start("--allow-mass-delete"))
    assert code == 0, err
    rows, _ = table_now(s3)
    assert rows == {"beta": second["beta"]}


def test_a_writer_with_another_identity_is_refused_instead_of_rebuilding(
    tmp_path: Path, s3: S3Server, api: FakeBatchAPI
) -> None:
    a, c = Writer(tmp_path, "alpha", s3, api), Writer(tmp_path, "gamma", s3, api)
    code, _, err = finish(a.start())
    assert code == 0, err
    before, version = table_now(s3)
    # gamma chunks differently: another identity (its vectors would not match alpha's
    # chunker fingerprint) -> refused, nothing written
    code, _, err = finish(c.start("--chunk-tokens", "30"))
    assert code == 2, err
    assert "shared by namespaced writers" in err and "chunker" in err
    assert table_now(s3) == (before, version)
    # the same writer under another namespace than its index directory's
    code, _, err = finish(a.start(namespace="renamed"))
    assert code == 2 and "namespace 'alpha'" in err
    assert table_now(s3) == (before, version)
