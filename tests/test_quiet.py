"""A cron job's mail holds only real warnings: LanceDB's own Rust log lines stay out of
stderr unless -vv.

LanceDB reads LANCEDB_LOG once, when it is first imported, and its Rust side writes
straight to stderr, past Python's logging. So the test runs the real CLI entry point in a
fresh subprocess, then (in the same process, as every command does after parsing its
flags) uses LanceDB in a way that makes Lance log a WARN line: an IVF index asked for
more partitions than a small table can train.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = """
import sys, tempfile
import numpy as np, pyarrow as pa
from corpusbatch.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
import lancedb
from lancedb.index import IvfPq
vecs = np.random.default_rng(0).standard_normal((300, 16)).astype("float32")
data = pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 16)})
table = lancedb.connect(tempfile.mkdtemp()).create_table("t", data=data)
table.create_index("vector", config=IvfPq(num_partitions=64, num_sub_vectors=4))
print("indexed", file=sys.stderr)
"""


def _stderr(tmp_path: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LANCEDB_LOG"}
    env["PYTHONPATH"] = str(REPO)
    args = [*flags, "status", "--index-dir", str(tmp_path / "idx")]
    proc = subprocess.run(
        [sys.executable, "-c", RUN, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "indexed" in proc.stderr, proc.stderr
    return proc.stderr


def test_lance_log_lines_reach_stderr_only_with_vv(tmp_path: Path) -> None:
    loud = _stderr(tmp_path, "-vv")
    assert "WARN" in loud and "lance" in loud, "the scenario must make Lance log"
    quiet = _stderr(tmp_path)
    assert "WARN" not in quiet and "lance::" not in quiet, quiet
