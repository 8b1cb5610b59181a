"""``kill -9`` the real CLI at each step of a remote run, rerun it, and check nothing is lost
or paid twice: every chunk is in the table exactly once with the vector the server
computed, and the server embedded every input exactly once across both runs.

The fake Batch API runs in this process; the CLI runs as a subprocess pointed at it
with ``--base-url``. The server itself sends the SIGKILL at the chosen point, before it
answers the request, so the client dies with the call's effect done but unrecorded.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeapi import FakeBatchAPI, fake_vector

from corpusbatch.journal import Journal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
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
]
CONFIG = """\
poll_interval = 0.02
chunk_tokens = 120

[limits]
max_inputs_per_file = 4
max_inputs_per_request = 2
max_enqueued_tokens = 1500
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(7)
    for d in range(4):
        parts = [f"# Document {d}\n"]
        for s in range(4):
            words = " ".join(rng.choice(WORDS) for _ in range(110))
            parts.append(f"## Section {d}.{s}\n\n{words}\n")
        (root / f"doc{d}.md").write_text("\n".join(parts))
    (root / "corpusbatch.toml").write_text(CONFIG)
    return root


def _cli(corpus: Path, index_dir: Path, base_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OPENAI_API_KEY="test", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corpusbatch",
            "index",
            str(corpus),
            "--provider",
            "openai",
            "--base-url",
            base_url,
            "--index-dir",
            str(index_dir),
            "--config",
            str(corpus / "corpusbatch.toml"),
            "--exclude",
            "corpusbatch.toml",
            "-q",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _rows(index_dir: Path) -> list[dict[str, Any]]:
    import lancedb

    table = lancedb.connect(str(index_dir / "lancedb")).open_table("chunks")
    return list(table.to_arrow().to_pylist())


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The table an uninterrupted run builds: (source, lines, text) of every chunk."""
    index_dir = tmp_path_factory.mktemp("reference")
    with FakeBatchAPI() as api:
        proc = _cli(corpus, index_dir, api.base_url)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert len(api.batches) >= 4, "the config should make several batch files"
    return sorted(
        (r["source"], r["start_line"], r["end_line"], r["text"]) for r in _rows(index_dir)
    )


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        ("upload", 2),  # file stored by the provider, id never recorded
        ("create", 2),  # batch created (and billable), id never recorded
        ("retrieve", 5),  # mid-poll
        ("download", 2),  # half of an output file received
        ("downloaded", 1),  # whole output received, not yet loaded
        ("delete", 1),  # loaded, provider files half cleaned up
    ],
)
def test_kill_and_rerun_embeds_each_chunk_once(
    corpus: Path, tmp_path: Path, reference: list[tuple[Any, ...]], point: str, nth: int
) -> None:
    index_dir = tmp_path / "index"
    with FakeBatchAPI() as api:
        proc = _cli(corpus, index_dir, api.base_url)
        api.kill_at(point, proc.pid, nth)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: {err.decode()}"

        rerun = _cli(corpus, index_dir, api.base_url)
        _, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err.decode()

        rows = _rows(index_dir)
        got = sorted((r["source"], r["start_line"], r["end_line"], r["text"]) for r in rows)
        assert got == reference, "every chunk exactly once"
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            np.testing.assert_array_equal(
                np.asarray(r["vector"], dtype="<f4"), fake_vector(r["text"], 1536)
            )
        texts = {r["text"] for r in rows}
        assert set(api.processed) == texts
        assert max(api.processed.values()) == 1, "an input was embedded (and billed) twice"
        # no orphan: every batch was followed to the end, every upload was used once
        assert {b.status for b in api.batches.values()} == {"completed"}
        with Journal(index_dir / "state.db") as journal:
            files = journal.files()
        assert {f.state for f in files} == {"loaded"}
        assert len(api.batches) == len(files)
        assert api.requests["POST /v1/files"] == len(files)
        # the provider holds nothing of ours once everything is loaded
        assert [f for f in api.files.values() if f.purpose == "batch"] == []


def test_killed_again_and_again_still_embeds_each_chunk_once(
    corpus: Path, tmp_path: Path, reference: list[tuple[Any, ...]]
) -> None:
    index_dir = tmp_path / "index"
    with FakeBatchAPI() as api:
        for point in ("create", "upload", "retrieve", "downloaded"):
            proc = _cli(corpus, index_dir, api.base_url)
            api.kill_at(point, proc.pid, 1)
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: {err.decode()}"
        final = _cli(corpus, index_dir, api.base_url)
        _, err = final.communicate(timeout=300)
        assert final.returncode == 0, err.decode()
        rows = _rows(index_dir)
        got = sorted((r["source"], r["start_line"], r["end_line"], r["text"]) for r in rows)
        assert got == reference
        assert max(api.processed.values()) == 1
        assert set(api.processed) == {r["text"] for r in rows}
        assert {b.status for b in api.batches.values()} == {"completed"}
