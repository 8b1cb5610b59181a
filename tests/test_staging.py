"""The staging table: appends, lookups by key, and deletes of few, most or all rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corpusbatch import staging
from corpusbatch.staging import Staging


def vec(i: int, dim: int = 4) -> bytes:
    return np.full(dim, i, dtype="<f4").tobytes()


def keys_of(s: Staging) -> list[str]:
    return sorted(k for batch in s.key_batches() for k in batch)


@pytest.fixture()
def filled(tmp_path: Path) -> Staging:
    s = Staging(tmp_path / "staging")
    s.add([(f"k{i:03d}", vec(i)) for i in range(50)])
    s.add([("k007", vec(7)), ("k008", vec(8))])  # a crash left two keys twice
    return s


def test_fetch_finds_each_key_once_with_its_vector(filled: Staging) -> None:
    got = filled.fetch(["k007", "k049", "nope"])
    assert got == {"k007": vec(7), "k049": vec(49)}
    assert filled.count() == 52


def test_deleting_a_few_keys_removes_every_copy(filled: Staging) -> None:
    filled.delete({"k007", "k010"})
    assert keys_of(filled) == sorted(
        [f"k{i:03d}" for i in range(50) if i not in (7, 10)] + ["k008"]
    )


def test_deleting_most_keys_keeps_exactly_the_rest(
    filled: Staging, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "REWRITE_MAX_KEEP", 10)
    gone = {f"k{i:03d}" for i in range(45)}
    filled.delete(gone)
    assert keys_of(filled) == [f"k{i:03d}" for i in range(45, 50)]
    assert filled.fetch(["k046"]) == {"k046": vec(46)}


def test_deleting_every_key_empties_the_table(filled: Staging) -> None:
    filled.delete({f"k{i:03d}" for i in range(50)})
    assert filled.count() == 0
    filled.add([("again", vec(1))])  # still usable
    assert filled.fetch(["again"]) == {"again": vec(1)}
