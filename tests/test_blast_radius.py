"""A lost output line costs at most one request's inputs (issue #10 item 3).

Remote providers' request lines carry at most ``Limits.max_inputs_per_request`` inputs
by default (chosen in docs/benchmarks/request_size.md). The fake Batch API silently
drops k successful output lines (billed, never delivered); corpusbatch sends exactly
those lines' inputs again, so the inputs billed twice are at most k times the bound.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fakeapi import FakeBatchAPI, fake_vector

from corpusbatch import Settings, index, open_table
from corpusbatch.config import PROFILES, Limits

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"
BOUND = Limits().max_inputs_per_request


def test_the_default_bound_is_small_for_every_remote_provider() -> None:
    assert 64 <= BOUND <= 256
    for profile in PROFILES.values():
        if profile.remote:
            assert profile.limits.max_inputs_per_request == BOUND


@pytest.mark.parametrize("drops", [[1], [2, 1]])
def test_rebilled_inputs_after_k_lost_lines_are_at_most_k_times_the_bound(
    tmp_path: Path, drops: list[int]
) -> None:
    docs = tmp_path / "docs"
    for part in ("guides", "reference", "web"):
        shutil.copytree(SAMPLE / part, docs / part)
    with FakeBatchAPI(default_dims=32) as api:
        settings = Settings(
            index_dir=tmp_path / "idx",
            provider="openai",
            base_url=api.base_url,
            dimensions=32,
            chunk_tokens=40,  # many small chunks: request lines fill up to the bound
            poll_interval=0.01,
            limits={"max_inputs_per_file": 4 * BOUND},  # several files, several lines each
        )
        api.drop_lines_next = list(drops)
        report = index(docs, settings, api_key="k")

        assert report.published and not report.failed and report.deferred == 0
        k = sum(drops)
        assert not api.drop_lines_next  # every drop happened
        assert report.distinct_vectors > 4 * BOUND  # full lines, more than one file
        rebilled = sum(n - 1 for n in api.billed.values() if n > 1)
        lost = sum(api.lost.values())
        # exactly the lost lines' inputs went again, and nothing else
        assert rebilled == lost == report.retried_inputs
        assert 0 < rebilled <= k * BOUND
        assert all(api.billed[key] == 1 + api.lost[key] for key in api.billed)
        # the table holds every chunk once, with the server's vector
        rows = open_table(settings).to_arrow().to_pylist()
        assert len(rows) == report.chunks == len({r["id"] for r in rows})
        for row in rows:
            np.testing.assert_allclose(row["vector"], fake_vector(str(row["text"]), 32), atol=1e-6)
