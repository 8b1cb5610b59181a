"""Smoke test of scripts/bench_scale.py: the whole benchmark, end to end, at 2,000 chunks.

Built from the bundled sample corpus (so it needs no ../shared/corpora); it checks the
JSON the script prints has every figure and that the figures are sane, never a timing
target (those are in docs/benchmarks/scale.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_scale_smoke(tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_scale.py"),
            "--chunks",
            "2000",
            "--corpus",
            str(REPO / "sample_corpus"),
            "--workdir",
            str(work),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    corpus = result["corpus"]
    assert corpus["copies"] >= 2 and corpus["mb"] > 0
    assert corpus["chunks"] >= 2000
    assert result["commit"] and result["machine"]["cores"] >= 1
    first, quiet, edit = result["runs"]
    assert [r["run"] for r in result["runs"]] == ["first", "no-change", "edit"]
    # every paragraph is unique: (nearly) nothing is deduplicated away
    assert first["report"]["embedded_vectors"] >= 0.98 * corpus["chunks"]
    assert first["report"]["new"] == corpus["chunks"]
    assert quiet["report"]["embedded_vectors"] == 0 and quiet["report"]["new"] == 0
    assert 1 <= edit["report"]["embedded_vectors"] <= 5
    for run in result["runs"]:
        assert run["wall_s"] > 0 and run["cpu_s"] > 0
        assert {"scan", "plan", "embed", "publish", "total"} <= run["durations"].keys()
        assert 50 < run["peak_rss_mb"] < 4000
        assert run["peak_rss_tree_mb"] > 0 and run["server"]["rss_mb"] > 0
        sizes = run["index_mb"]
        assert set(sizes) >= {"store.db", "state.db", "lancedb", "batches", "outputs", "total"}
        assert sizes["lancedb"] > 0 and sizes["total"] >= sizes["lancedb"]
        assert run["table_mb"]["rows"] == corpus["chunks"]
        assert run["table_mb"]["dir_mb"] > 0 and run["ratio_index_to_table"] >= 1
    # the script removes what it made in a directory it was given
    assert not any(work.iterdir())
