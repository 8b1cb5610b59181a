"""Search over a real LanceDB table of real MiniLM embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import FTS

from corpusbatch.errors import CorpusbatchError, IndexNotFound
from corpusbatch.local import LocalBackend
from corpusbatch.search import Hit, search, sql_string

# (source, heading, text): a dozen short chunks on clearly different topics.
DOCS = [
    (
        "guides/coffee.md",
        "Brewing",
        "Grind the beans coarsely and steep them in a French press for four minutes.",
    ),
    (
        "guides/bread.md",
        "Baking",
        "Knead the dough until it is elastic, then let it rise overnight in the fridge.",
    ),
    (
        "guides/bike.md",
        "Repairs",
        "To fix a flat tyre, remove the inner tube, find the puncture and patch it.",
    ),
    (
        "guides/garden.md",
        "Plants",
        "Tomato seedlings need full sun, deep watering and a stake to climb.",
    ),
    (
        "ops/backup.md",
        "Storage",
        "Nightly database backups are copied to an offsite bucket and kept for 30 days.",
    ),
    (
        "ops/oncall.md",
        "Incidents",
        "The on-call engineer is paged when the error rate exceeds five percent.",
    ),
    (
        "ops/tls.md",
        "Security",
        "Renew the TLS certificates before they expire or browsers will warn visitors.",
    ),
    (
        "notes/astronomy.md",
        "Sky",
        "Jupiter's four largest moons can be seen with ordinary binoculars.",
    ),
    (
        "notes/finance.md",
        "Money",
        "An index fund spreads your savings across hundreds of companies at low fees.",
    ),
    ("notes/health.md", "Sleep", "Adults should aim for seven to nine hours of sleep every night."),
    (
        "notes/travel.md",
        "Trains",
        "The night train from Vienna to Rome leaves at eight and arrives by morning.",
    ),
    (
        "guides/100%_pure.md",
        "Odd names",
        "Cold brew concentrate keeps in the refrigerator for about two weeks.",
    ),
]


@pytest.fixture(scope="session")
def backend() -> LocalBackend:
    b = LocalBackend()
    b.load()
    return b


def _embed(backend: LocalBackend) -> Any:
    return lambda texts: backend.embed(texts)


def _table(db_dir: Path, backend: LocalBackend, *, fts: bool) -> Any:
    texts = [d[2] for d in DOCS]
    vecs = backend.embed(texts)
    flat = pa.array(vecs.ravel(), type=pa.float32())
    n = len(DOCS)
    data = pa.table(
        {
            "id": [f"row-{i:02d}" for i in range(n)],
            "vector": pa.FixedSizeListArray.from_arrays(flat, backend.dimensions),
            "text": texts,
            "source": [d[0] for d in DOCS],
            "heading": [d[1] for d in DOCS],
            "start_line": pa.array([1 + i for i in range(n)], pa.int32()),
            "end_line": pa.array([3 + i for i in range(n)], pa.int32()),
            "n_tokens": pa.array(backend.count_tokens(texts), pa.int32()),
            "content_hash": [f"h{i}" for i in range(n)],
            "custom_id": [f"cb-{i}" for i in range(n)],
            "model": [backend.model] * n,
        }
    )
    table = lancedb.connect(str(db_dir)).create_table("chunks", data=data)
    if fts:
        table.create_index("text", config=FTS())
    return table


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, backend: LocalBackend) -> Any:
    return _table(tmp_path_factory.mktemp("lancedb"), backend, fts=True)


def _top(hits: list[Hit]) -> str:
    return hits[0].source


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "source"),
    [
        ("how long should I let coffee brew in a plunger pot", "guides/coffee.md"),
        ("repairing a punctured bicycle wheel", "guides/bike.md"),
        ("engineer alerted about failures", "ops/oncall.md"),
        ("how much rest does a grown-up need", "notes/health.md"),
        ("cheap diversified investing", "notes/finance.md"),
        ("overnight rail journey to Italy", "notes/travel.md"),
        ("seeing the moons of a planet", "notes/astronomy.md"),
    ],
)
def test_vector_search_finds_the_paraphrased_chunk(
    table: Any, backend: LocalBackend, query: str, source: str
) -> None:
    hits = search(table, query, embed=_embed(backend), k=3, mode="vector")
    assert _top(hits) == source
    assert len(hits) == 3
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)  # cosine similarity


@pytest.mark.slow
def test_hits_carry_the_row(table: Any, backend: LocalBackend) -> None:
    hit = search(table, "patch an inner tube", embed=_embed(backend), k=1, mode="vector")[0]
    i = [d[0] for d in DOCS].index("guides/bike.md")
    assert hit.to_dict() == {
        "id": f"row-{i:02d}",
        "text": DOCS[i][2],
        "source": "guides/bike.md",
        "heading": "Repairs",
        "start_line": 1 + i,
        "end_line": 3 + i,
        "score": hit.score,
    }
    # The score is the cosine similarity of the two embeddings.
    q, d = backend.embed(["patch an inner tube", DOCS[i][2]])
    assert hit.score == pytest.approx(float(q @ d), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["vector", "fts", "hybrid"])
def test_k_is_honoured(table: Any, backend: LocalBackend, mode: str) -> None:
    query = "the and for coffee sleep train" if mode != "vector" else "anything at all"
    for k in (1, 4, 50):
        hits = search(table, query, embed=_embed(backend), k=k, mode=mode)
        assert 1 <= len(hits) <= min(k, len(DOCS))
        assert len({h.id for h in hits}) == len(hits)
    assert len(search(table, "anything", embed=_embed(backend), k=50)) == len(DOCS)


@pytest.mark.slow
def test_fts_matches_words(table: Any, backend: LocalBackend) -> None:
    hits = search(table, "certificates", embed=_embed(backend), k=5, mode="fts")
    assert [h.source for h in hits] == ["ops/tls.md"]
    assert hits[0].score > 0
    # Stemming: "backup" finds "backups".
    assert _top(search(table, "backup", embed=_embed(backend), mode="fts")) == "ops/backup.md"


@pytest.mark.slow
def test_hybrid_fuses_both_rankings(table: Any, backend: LocalBackend) -> None:
    # Only the vector side understands this paraphrase; fts has "night" in two rows.
    hits = search(table, "night sleep for adults", embed=_embed(backend), k=3, mode="hybrid")
    assert _top(hits) == "notes/health.md"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    # A query no word of which is in the table still ranks by vector.
    hits = search(table, "planetary satellites", embed=_embed(backend), k=2, mode="hybrid")
    assert _top(hits) == "notes/astronomy.md"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["vector", "fts", "hybrid"])
def test_where_and_prefix_filter_before_ranking(
    table: Any, backend: LocalBackend, mode: str
) -> None:
    embed = _embed(backend)
    # Unfiltered, coffee.md ranks first in every mode; ops/ and guides/ rows both match.
    query = "French press coffee, database backups and certificates"
    assert _top(search(table, query, embed=embed, mode=mode)) == "guides/coffee.md"
    hits = search(table, query, embed=embed, k=5, mode=mode, where="source LIKE 'ops/%'")
    assert _top(hits) == "ops/backup.md"
    assert all(h.source.startswith("ops/") for h in hits)
    hits = search(table, query, embed=embed, k=5, mode=mode, path_prefix="guides/")
    assert _top(hits) == "guides/coffee.md"
    assert all(h.source.startswith("guides/") for h in hits)
    both = search(
        table, query, embed=embed, k=5, mode=mode, where="start_line > 5", path_prefix="guides/"
    )
    assert all(h.source.startswith("guides/") and h.start_line > 5 for h in both)
    if mode != "fts":  # no word of the query is in the one row left; fts finds nothing
        assert [h.source for h in both] == ["guides/100%_pure.md"]


@pytest.mark.slow
def test_prefix_is_literal_not_a_like_pattern(table: Any, backend: LocalBackend) -> None:
    embed = _embed(backend)
    hits = search(table, "cold brew", embed=embed, k=5, path_prefix="guides/100%_")
    assert [h.source for h in hits] == ["guides/100%_pure.md"]
    assert search(table, "cold brew", embed=embed, k=5, path_prefix="guides/1_") == []
    assert search(table, "x", embed=embed, k=5, path_prefix="it's/") == []


@pytest.mark.slow
def test_fts_without_index_raises_with_hint(tmp_path: Path, backend: LocalBackend) -> None:
    table = _table(tmp_path, backend, fts=False)
    for mode in ("fts", "hybrid"):
        with pytest.raises(IndexNotFound, match="full-text index") as info:
            search(table, "coffee", embed=_embed(backend), mode=mode)
        assert "--mode vector" in str(info.value)
    assert search(table, "coffee", embed=_embed(backend), k=1)[0].source == "guides/coffee.md"


@pytest.mark.slow
def test_bad_arguments_raise_corpusbatch_errors(table: Any, backend: LocalBackend) -> None:
    embed = _embed(backend)
    with pytest.raises(CorpusbatchError, match="mode"):
        search(table, "coffee", embed=embed, mode="semantic")
    with pytest.raises(CorpusbatchError, match="empty"):
        search(table, "   ", embed=embed)
    with pytest.raises(CorpusbatchError, match="k must"):
        search(table, "coffee", embed=embed, k=0)
    with pytest.raises(CorpusbatchError, match="--where"):
        search(table, "coffee", embed=embed, where="no_such_column = 1")
    with pytest.raises(CorpusbatchError):
        search(table, "coffee", embed=lambda texts: np.zeros((1, 16), np.float32))


def test_sql_string_escapes_quotes() -> None:
    assert sql_string("it's") == "'it''s'"


@pytest.mark.slow
def test_default_is_hybrid_and_scores_fuse_cosine_and_bm25(
    table: Any, backend: LocalBackend
) -> None:
    """With a full-text index the default fuses both sides by score (0.7 cosine + 0.3
    BM25 scaled to the query's best): each hit's score is exactly that sum."""
    from corpusbatch.search import HYBRID_VECTOR_WEIGHT

    query = "patch an inner tube"
    default = search(table, query, embed=_embed(backend), k=4)
    assert default == search(table, query, embed=_embed(backend), k=4, mode="hybrid")
    cosine = {
        h.id: h.score for h in search(table, query, embed=_embed(backend), k=50, mode="vector")
    }
    bm25 = {h.id: h.score for h in search(table, query, embed=_embed(backend), k=50, mode="fts")}
    top = max(bm25.values())
    for hit in default:
        want = HYBRID_VECTOR_WEIGHT * cosine.get(hit.id, 0.0)
        want += (1 - HYBRID_VECTOR_WEIGHT) * bm25.get(hit.id, 0.0) / top
        assert hit.score == pytest.approx(want, abs=1e-5)
    assert [h.score for h in default] == sorted((h.score for h in default), reverse=True)


# -- the query model comes from the table (a reader with nothing local, issue #11) ------
def test_the_query_is_embedded_by_the_provider_recorded_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from corpusbatch import search as search_mod
    from corpusbatch.config import Settings
    from corpusbatch.errors import ConfigError

    loaded: list[str] = []

    class FakeLocal:
        def embed(self, texts: list[str]) -> np.ndarray:
            loaded.extend(texts)
            return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(search_mod, "_local_backend", lambda: FakeLocal())
    reader = Settings()  # a reader's defaults: provider local, nothing remembered
    local = {"provider": "local", "model": "all-MiniLM-L6-v2", "input_prefix": "q: "}
    search_mod._query_embedder(reader, local, "all-MiniLM-L6-v2", None)(["tea"])
    assert loaded == ["q: tea"], "the table's input prefix, the local model"
    # a table built by OpenAI is never queried with the local model: its key is asked for
    remote = {"provider": "openai", "model": "text-embedding-3-small"}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        search_mod._query_embedder(reader, remote, "text-embedding-3-small", None)
    built_in = search_mod._query_profile(reader, "openai")
    assert built_in.name == "openai" and built_in.api_key_env == "OPENAI_API_KEY"
    # a provider that is not built in: its base URL must come from the reader, not the table
    with pytest.raises(ConfigError, match="--provider acme"):
        search_mod._query_embedder(reader, {"provider": "acme"}, "m", "sk-test-0123456789")
    assert loaded == ["q: tea"]
