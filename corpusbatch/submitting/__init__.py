"""Run batch files through any OpenAI-compatible Batch API, resumably and never twice.

* :mod:`.executor`: :class:`BatchSubmitter`, the remote executor (journal lifecycle,
  reconciliation, queue waves, downloads);
* :mod:`.adapter`: :class:`ProviderAdapter` (what differs between providers),
  :func:`make_client` and :class:`RemoteEmbedder` (real-time query embeddings);
* :mod:`.status`: ``status`` and ``cancel`` for the CLI.
"""

from .adapter import (
    DEFAULT_BASE_URL,
    LineResult,
    ProviderAdapter,
    RemoteEmbedder,
    adapter_for,
    convert_lines,
    make_client,
)
from .executor import IN_FLIGHT, TERMINAL_STATUSES, BatchSubmitter
from .status import BatchStatus, cancel, status

__all__ = [
    "DEFAULT_BASE_URL",
    "IN_FLIGHT",
    "TERMINAL_STATUSES",
    "BatchStatus",
    "BatchSubmitter",
    "LineResult",
    "ProviderAdapter",
    "RemoteEmbedder",
    "adapter_for",
    "cancel",
    "convert_lines",
    "make_client",
    "status",
]
