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
from .pipeline import RunReport, batch_status, cancel_batches, collect, index
from .search import Hit, search_index
from .types import Chunk, Document, EmbeddingIdentity
from .verify import VerifyReport, verify
from .workspace import open_table

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
    "Hit",
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
    "VerifyReport",
    "batch_status",
    "cancel_batches",
    "collect",
    "index",
    "open_table",
    "search_index",
    "verify",
]
