"""corpusbatch: a folder of documents -> a LanceDB table of embeddings, at batch prices.

The public API for RAG apps and scripts; the CLI is a thin layer over these.
"""

from __future__ import annotations

from .config import PROFILES, Limits, ModelSpec, Profile, Settings
from .errors import (
    BackendError,
    ChunkingError,
    ConfigError,
    CorpusbatchError,
    CostLimitExceeded,
    IndexNotFound,
    LoadError,
    LocalModelUnavailable,
    LockedError,
    PlanningError,
    SourceError,
)
from .types import Chunk, Document, EmbeddingIdentity

_LAZY = {
    "RunReport": "pipeline",
    "batch_status": "pipeline",
    "cancel_batches": "pipeline",
    "collect": "pipeline",
    "index": "pipeline",
    "open_table": "workspace",
    "search_index": "search",
    "verify": "verify",
}


def __getattr__(name: str) -> object:
    # The pipeline pulls in LanceDB and the tokenizers; import it on first use so that
    # `import corpusbatch.sources` (or the CLI's --help) stays fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'corpusbatch' has no attribute {name!r}")


__all__ = [
    "PROFILES",
    "BackendError",
    "Chunk",
    "ChunkingError",
    "ConfigError",
    "CorpusbatchError",
    "CostLimitExceeded",
    "Document",
    "EmbeddingIdentity",
    "IndexNotFound",
    "Limits",
    "LoadError",
    "LocalModelUnavailable",
    "LockedError",
    "ModelSpec",
    "PlanningError",
    "Profile",
    "RunReport",
    "Settings",
    "SourceError",
    "batch_status",
    "cancel_batches",
    "collect",
    "index",
    "open_table",
    "search_index",
    "verify",
]
