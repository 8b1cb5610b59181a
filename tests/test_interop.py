"""The published table, read by the real LangChain and LlamaIndex LanceDB stores.

Both are used with their defaults (column names, metadata column) and the settings the
README tells users to pass; queries are embedded with the same local model through
``corpusbatch.interop``. Also: a table of the previous layout is migrated by the next
``index`` in one rebuild from the stored vectors, embedding nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

import corpusbatch
from corpusbatch import Settings, interop
from corpusbatch.loading import TABLE_SCHEMA_VERSION
from corpusbatch.workspace import IndexPaths, connect, table_identity

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_corpus"
FILES = [
    "guides/water-temperature.md",
    "guides/v60.md",
    "guides/chemex.md",
    "guides/french-press.md",
    "guides/cold-brew.md",
    "notes/descaling.txt",
]
QUESTION = "How hot should the water be for pour-over?"
ANSWER = "guides/water-temperature.md"
CITATION_KEYS = {"id", "source", "heading", "start_line", "end_line"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, root / rel)
    return root


@pytest.fixture(scope="module")
def indexed(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(index_dir=tmp_path_factory.mktemp("idx"))
    report = corpusbatch.index(corpus, settings)
    assert report.published and not report.failed
    return settings


def _state(settings: Settings) -> tuple[int, int]:
    table = corpusbatch.open_table(settings)
    return table.version, table.count_rows()


def test_table_carries_doc_id_and_metadata_struct(indexed: Settings) -> None:
    table = corpusbatch.open_table(settings=indexed)
    assert table.schema.field("metadata").type.num_fields == len(CITATION_KEYS)
    assert table_identity(table)["schema_version"] == TABLE_SCHEMA_VERSION
    for row in table.to_arrow().to_pylist():
        meta = row["metadata"]
        assert set(meta) == CITATION_KEYS
        assert row["doc_id"] == row["source"] == meta["source"]
        assert meta["id"] == row["id"] and meta["heading"] == row["heading"]
        assert (meta["start_line"], meta["end_line"]) == (row["start_line"], row["end_line"])


def test_langchain_store_search_filter_and_retriever(indexed: Settings) -> None:
    from langchain_community.vectorstores import LanceDB

    before = _state(indexed)
    store = LanceDB(
        connection=connect(IndexPaths(indexed.index_dir)),
        table_name=indexed.table,
        embedding=interop.langchain_embeddings(indexed),
        mode="append",
    )
    docs = store.similarity_search(QUESTION, k=3)
    assert len(docs) == 3
    assert docs[0].metadata["source"] == ANSWER
    for doc in docs:
        assert set(doc.metadata) == CITATION_KEYS and doc.page_content
        assert doc.metadata["start_line"] <= doc.metadata["end_line"]

    only = "guides/chemex.md"
    filtered = store.similarity_search(QUESTION, k=2, filter={"source": only}, prefilter=True)
    assert filtered and {d.metadata["source"] for d in filtered} == {only}
    nested = store.similarity_search(
        QUESTION, k=2, filter=f"metadata.source = '{only}'", prefilter=True
    )
    assert [d.metadata for d in nested] == [d.metadata for d in filtered]

    retrieved = store.as_retriever(search_kwargs={"k": 2}).invoke(QUESTION)
    assert len(retrieved) == 2 and retrieved[0].metadata["source"] == ANSWER
    assert _state(indexed) == before  # reading wrote nothing


def test_llamaindex_store_retriever_and_metadata_filter(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LlamaIndex loads cl100k_base from the copy it ships unless TIKTOKEN_CACHE_DIR is
    # set; conftest sets it to an empty dir, which would make it download.
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    before = _state(indexed)
    store = LanceDBVectorStore(
        uri=str(IndexPaths(indexed.index_dir).lancedb), table_name=indexed.table
    )
    embed_model = interop.llamaindex_embedding(indexed)
    vindex = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)

    nodes = vindex.as_retriever(similarity_top_k=3).retrieve(QUESTION)
    assert len(nodes) == 3
    top = nodes[0].node
    assert top.metadata["source"] == ANSWER and top.ref_doc_id == ANSWER
    for hit in nodes:
        assert set(hit.node.metadata) == CITATION_KEYS
        assert hit.node.node_id == hit.node.metadata["id"] and hit.node.get_content()

    only = "guides/chemex.md"
    filters = MetadataFilters(filters=[MetadataFilter(key="source", value=only)])
    filtered = vindex.as_retriever(similarity_top_k=2, filters=filters).retrieve(QUESTION)
    assert filtered and {n.node.metadata["source"] for n in filtered} == {only}
    assert _state(indexed) == before


def _downgrade_to_v1(settings: Settings) -> None:
    """Rewrite the table as corpusbatch 0.1.0 published it: no doc_id, no metadata."""
    db = connect(IndexPaths(settings.index_dir))
    table = db.open_table(settings.table)
    data = table.to_arrow().drop_columns(["doc_id", "metadata"])
    blob = json.loads(table.schema.metadata[b"corpusbatch"])
    del blob["schema_version"]
    data = data.replace_schema_metadata({"corpusbatch": json.dumps(blob, sort_keys=True)})
    db.create_table(settings.table, data=data, mode="overwrite")


def test_old_table_is_rebuilt_once_from_stored_vectors(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(index_dir=tmp_path / "idx")
    first = corpusbatch.index(corpus, settings)
    ids = sorted(corpusbatch.open_table(settings).to_arrow()["id"].to_pylist())
    _downgrade_to_v1(settings)
    with caplog.at_level(logging.WARNING, logger="corpusbatch"):
        old = corpusbatch.open_table(settings)
    assert "metadata" not in old.schema.names and "predates" in caplog.text
    # the flat columns still answer while the table waits for its migration
    assert corpusbatch.search_index(QUESTION, settings, k=1)[0].source == ANSWER

    again = corpusbatch.index(corpus, settings)
    assert again.embedded_vectors == 0 and again.to_embed_inputs == 0
    assert again.published and again.deleted == first.new == again.new
    table = corpusbatch.open_table(settings)
    assert isinstance(table.schema.field("metadata").type, pa.StructType)
    assert sorted(table.to_arrow()["id"].to_pylist()) == ids
    assert table_identity(table)["schema_version"] == TABLE_SCHEMA_VERSION

    third = corpusbatch.index(corpus, settings)  # migrated once: nothing to write now
    assert third.embedded_vectors == 0 and third.table_version == again.table_version
