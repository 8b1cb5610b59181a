"""Query embeddings for LangChain and LlamaIndex, from the model that built the table.

The published table is what both frameworks' LanceDB stores read with their defaults
(``id``, ``text``, ``vector``, a ``metadata`` struct and ``doc_id``); what they still
need is a query embedding from the same model. These adapters give them one, with the
table's input prefix, without the user writing a wrapper::

    from langchain_community.vectorstores import LanceDB
    store = LanceDB(connection=db, table_name="chunks", mode="append",
                    embedding=corpusbatch.interop.langchain_embeddings(settings))

The frameworks are optional (``pip install 'corpusbatch[interop]'``) and imported only
when an adapter is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Settings
from .search import Embed, _query_embedder
from .workspace import open_table, table_identity

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from llama_index.core.base.embeddings.base import BaseEmbedding


def query_embedder(settings: Settings, *, api_key: str | None = None) -> Embed:
    """``texts -> float32 matrix`` with the model (and input prefix) of the published table.

    The local model needs nothing; a table built by a remote provider needs its
    ``api_key`` (each call is then a real-time embeddings request).
    """
    ident = table_identity(open_table(settings))
    model = ident.get("model") or settings.model_spec().name
    embed = _query_embedder(settings, ident, model, api_key)

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(embed(list(texts)), dtype=np.float32)

    return run


def _rows(embed: Embed, texts: list[str]) -> list[list[float]]:
    vectors: list[list[float]] = np.asarray(embed(texts), dtype=np.float32).tolist()
    return vectors


def langchain_embeddings(settings: Settings, *, api_key: str | None = None) -> Embeddings:
    """A LangChain ``Embeddings`` for querying the published table (needs langchain-core)."""
    from langchain_core.embeddings import Embeddings

    embed = query_embedder(settings, api_key=api_key)

    class CorpusbatchEmbeddings(Embeddings):  # type: ignore[misc,unused-ignore]
        """Embeds with the model that built the corpusbatch table."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return _rows(embed, texts) if texts else []

        def embed_query(self, text: str) -> list[float]:
            return _rows(embed, [text])[0]

    return CorpusbatchEmbeddings()


def llamaindex_embedding(settings: Settings, *, api_key: str | None = None) -> BaseEmbedding:
    """A LlamaIndex ``BaseEmbedding`` for querying the published table (needs llama-index-core)."""
    from llama_index.core.base.embeddings.base import BaseEmbedding

    embed = query_embedder(settings, api_key=api_key)
    model = str(table_identity(open_table(settings)).get("model") or "")

    class CorpusbatchEmbedding(BaseEmbedding):  # type: ignore[misc,unused-ignore]
        """Embeds with the model that built the corpusbatch table."""

        def _get_query_embedding(self, query: str) -> list[float]:
            return _rows(embed, [query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return _rows(embed, [query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return _rows(embed, [text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return _rows(embed, texts) if texts else []

    result: Any = CorpusbatchEmbedding(model_name=model, embed_batch_size=32)
    return result  # type: ignore[no-any-return,unused-ignore]
