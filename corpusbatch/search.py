"""Query a published LanceDB table: vector, full-text or hybrid search.

The table has one row per chunk with the columns ``id``, ``vector`` (fixed-size float32
list), ``text``, ``source``, ``heading``, ``start_line``, ``end_line``, ``n_tokens``,
``content_hash``, ``custom_id``, ``model``, ``doc_id`` (the source path) and ``metadata``
(a struct of ``id``, ``source``, ``heading``, ``start_line``, ``end_line`` for RAG
frameworks). Queries are embedded with the same model
that embedded the chunks; the caller passes that model's ``embed`` function.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config import PROFILES, Profile, Settings
from .errors import ConfigError, CorpusbatchError, IndexNotFound
from .workspace import open_table, table_identity

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)

Mode = Literal["vector", "fts", "hybrid"]
MODES: tuple[str, ...] = ("vector", "fts", "hybrid")
Embed = Callable[[list[str]], np.ndarray]

_COLUMNS = ["id", "text", "source", "heading", "start_line", "end_line"]


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked chunk. ``score`` is higher for better matches.

    The scale depends on the mode: cosine similarity (vector), BM25 (fts) or a weighted
    sum of cosine and BM25 scaled to the query's best (hybrid, 0 to 1). Compare scores
    only within one result list.
    """

    id: str
    text: str
    source: str
    heading: str
    start_line: int
    end_line: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the hit."""
        return asdict(self)


def search(
    table: Table,
    query: str,
    *,
    embed: Embed,
    k: int = 5,
    mode: str | None = None,
    where: str | None = None,
    path_prefix: str | None = None,
) -> list[Hit]:
    """Return the ``k`` chunks of ``table`` that best match ``query``, best first.

    ``table`` is a ``lancedb.table.Table``. ``mode`` is ``"vector"`` (cosine similarity of
    embeddings; ``embed`` turns a list of strings into a float32 matrix), ``"fts"``
    (full-text BM25 over ``text``) or ``"hybrid"`` (both, fused by score; see
    ``HYBRID_VECTOR_WEIGHT``). The default, None, is hybrid when the table has a
    full-text index (every table corpusbatch publishes has one) and vector otherwise.
    ``fts`` and ``hybrid`` need a full-text index on ``text``; without one they raise
    :class:`~corpusbatch.errors.IndexNotFound` rather than silently searching differently.
    ``where`` is a SQL filter applied before ranking, e.g. ``"source LIKE 'guides/%'"``;
    ``path_prefix`` keeps only chunks whose ``source`` starts with it. Both may be given.
    """
    if mode is None:
        mode = "hybrid" if _has_fts_index(table) else "vector"
    if mode not in MODES:
        raise CorpusbatchError(
            f"unknown search mode {mode!r}", hint=f"use one of {', '.join(MODES)}"
        )
    if not query.strip():
        raise CorpusbatchError("the search query is empty", hint="pass some words to search for")
    if k < 1:
        raise CorpusbatchError(f"k must be at least 1, not {k}")
    filt = _combine_filters(where, path_prefix)
    if mode != "vector":
        _require_fts_index(table)
    if mode == "fts":
        rows = _fts(table, query, k, filt)
    else:
        vector = _query_vector(embed, query)
        rows = (
            _vector(table, vector, k, filt)
            if mode == "vector"
            else _hybrid(table, query, vector, k, filt)
        )
    return [_hit(row, mode) for row in rows[:k]]


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _combine_filters(where: str | None, path_prefix: str | None) -> str | None:
    parts: list[str] = []
    if where and where.strip():
        parts.append(f"({where})")
    if path_prefix:
        # starts_with, unlike LIKE, treats % and _ in file names literally.
        parts.append(f"starts_with(source, {sql_string(path_prefix)})")
    return " AND ".join(parts) or None


def _has_fts_index(table: Any) -> bool:
    return any(
        index.index_type == "FTS" and "text" in list(index.columns)
        for index in table.list_indices()
    )


def _require_fts_index(table: Any) -> None:
    if _has_fts_index(table):
        return
    raise IndexNotFound(
        f"table {table.name!r} has no full-text index on 'text'",
        hint="use --mode vector, or build the index with "
        "table.create_index('text', config=lancedb.index.FTS())",
    )


def _query_vector(embed: Embed, query: str) -> np.ndarray:
    vecs = np.asarray(embed([query]), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != 1:
        raise CorpusbatchError(f"embed() returned shape {vecs.shape} for one query")
    vector: np.ndarray = vecs[0]
    return vector


def _run(builder: Any, where: str | None, table: Any) -> list[dict[str, Any]]:
    if where is not None:
        builder = builder.where(where, prefilter=True)
    try:
        rows: list[dict[str, Any]] = builder.to_list()
    except (ValueError, RuntimeError) as exc:
        # Bad filters and column/dimension mismatches surface here as lance errors.
        raise CorpusbatchError(
            f"search in table {table.name!r} failed: {exc}",
            hint="check the --where filter and that the query model matches the table's",
        ) from exc
    return rows


# Re-rank this many times k candidates by exact distance once a vector index exists.
# Measured on 20k clustered 64-d vectors with an IVF_RQ index: recall@10 0.40 without,
# 0.91 at 5, 1.00 at 10 (flat search is exact and ignores it).
REFINE_FACTOR = 10


def _vector(table: Any, vector: np.ndarray, k: int, where: str | None) -> list[dict[str, Any]]:
    builder = (
        table.search(vector, query_type="vector", vector_column_name="vector")
        .distance_type("cosine")
        .refine_factor(REFINE_FACTOR)
        .select([*_COLUMNS, "_distance"])
        .limit(k)
    )
    return _run(builder, where, table)


def _fts(table: Any, query: str, k: int, where: str | None) -> list[dict[str, Any]]:
    builder = table.search(query, query_type="fts").select([*_COLUMNS, "_score"]).limit(k)
    return _run(builder, where, table)


# Hybrid search fuses scores, not ranks: each side proposes HYBRID_CANDIDATES chunks and
# a chunk scores HYBRID_VECTOR_WEIGHT * cosine + (1 - weight) * BM25 / (the query's top
# BM25), a side that did not propose it counting 0. Measured with
# scripts/eval_retrieval.py (docs/benchmarks/retrieval.md), MRR@10 on the Rust book (76
# questions) / sample corpus (24): vector 0.671 / 0.653, BM25 0.690 / 0.646, reciprocal
# rank fusion 0.719 / 0.694, this fusion 0.761 / 0.755 (weights 0.5-0.7 within 0.01).
HYBRID_CANDIDATES = 50
HYBRID_VECTOR_WEIGHT = 0.7


def _hybrid(
    table: Any, query: str, vector: np.ndarray, k: int, where: str | None
) -> list[dict[str, Any]]:
    n = max(HYBRID_CANDIDATES, k)
    by_vector = _vector(table, vector, n, where)
    by_text = _fts(table, query, n, where)
    top = max((float(r["_score"]) for r in by_text), default=0.0) or 1.0
    rows: dict[str, dict[str, Any]] = {}
    score: dict[str, float] = {}
    for row in by_vector:
        rid = str(row["id"])
        rows[rid] = row
        score[rid] = HYBRID_VECTOR_WEIGHT * (1.0 - float(row["_distance"]))
    for row in by_text:
        rid = str(row["id"])
        rows.setdefault(rid, row)
        bm25 = float(row["_score"]) / top
        score[rid] = score.get(rid, 0.0) + (1.0 - HYBRID_VECTOR_WEIGHT) * bm25
    ranked = sorted(score, key=lambda rid: (-score[rid], rid))[:k]
    return [{**rows[rid], "_relevance_score": score[rid]} for rid in ranked]


def _hit(row: dict[str, Any], mode: str) -> Hit:
    if mode == "vector":
        score = 1.0 - float(row["_distance"])
    elif mode == "fts":
        score = float(row["_score"])
    else:
        score = float(row["_relevance_score"])
    heading = row.get("heading")
    if isinstance(heading, Sequence) and not isinstance(heading, str):
        heading = " > ".join(str(h) for h in heading)  # tolerate a list<string> column
    return Hit(
        id=str(row["id"]),
        text=str(row["text"]),
        source=str(row["source"]),
        heading=str(heading or ""),
        start_line=int(row["start_line"]),
        end_line=int(row["end_line"]),
        score=score,
    )


def search_index(
    question: str,
    settings: Settings,
    *,
    k: int = 5,
    mode: str | None = None,
    where: str | None = None,
    api_key: str | None = None,
) -> list[Hit]:
    """Answer ``question`` from the published table with the model that built it.

    The ``k`` best chunks, best first; ``mode`` and ``where`` as in :func:`search`. A
    table built by a remote provider needs that provider's ``api_key`` to embed the query.
    """
    table = open_table(settings)
    ident = table_identity(table)
    model = ident.get("model") or settings.model_spec().name
    embed = _query_embedder(settings, ident, model, api_key)
    return search(table, question, embed=embed, k=k, mode=mode, where=where)


@functools.lru_cache(maxsize=1)
def _local_backend() -> Any:
    """One loaded local model per process: loading it takes seconds, a query milliseconds."""
    from .local import LocalBackend

    return LocalBackend()


def _query_embedder(
    settings: Settings, ident: dict[str, Any], model: str, api_key: str | None
) -> Callable[[list[str]], Any]:
    """Embeds queries as the table's rows were: its model, provider and input prefix,
    all read from the table's own metadata (a reader needs no index directory)."""
    prefix = str(ident.get("input_prefix") or "")
    provider = str(ident.get("provider") or settings.provider)
    if provider == "local" or (provider == settings.provider and not settings.profile().remote):
        backend = _local_backend()
        return lambda texts: backend.embed([prefix + t for t in texts])
    from .submitting import RemoteEmbedder, make_client

    profile = _query_profile(settings, provider)
    if not api_key:
        raise ConfigError(
            f"searching a table built with {model} ({provider}) needs the provider's API key",
            hint=f"set {profile.api_key_env or 'the API key variable'} and pass "
            f"--provider {provider}",
        )
    remote = RemoteEmbedder(make_client(profile, api_key), model, ident.get("request_dimensions"))
    return lambda texts: remote.embed([prefix + t for t in texts])


def _query_profile(settings: Settings, provider: str) -> Profile:
    """Where a query for a table built by remote ``provider`` goes: the settings' own
    profile when they name that provider, else its built-in one. A provider that is
    not built in needs its base URL from the caller (never from the table)."""
    if provider == settings.provider:
        return settings.profile()
    if provider in PROFILES and PROFILES[provider].remote and settings.base_url is None:
        return replace(settings, provider=provider).profile()
    raise ConfigError(
        f"the table was built with provider {provider!r}, but the search uses "
        f"{settings.provider!r}",
        hint=f"pass --provider {provider} (and --base-url if it is not a built-in one)",
    )
