"""Token counting: offline cl100k_base, MiniLM word-pieces, and boundary offsets."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpusbatch.errors import ConfigError
from corpusbatch.tokenizers import (
    CL100K_SHA256,
    TiktokenTokenizer,
    _cl100k_encoding,
    get_tokenizer,
    load_cl100k_ranks,
)

TEXTS = st.lists(
    st.sampled_from([*"ab cd\n\n#.,'-é😀日本語\u0301\t ", "🏳️‍🌈", "word", "ß"]),
    max_size=120,
).map("".join)


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("tokenizer tried to use the network")


def test_cl100k_loads_offline_and_counts_known_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(cache))
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)

    tok = TiktokenTokenizer(_cl100k_encoding(), "cl100k_base")  # fresh, not the cache

    assert tok.encode("hello world").tolist() == [15339, 1917]
    assert tok.count("hello world") == 2
    assert tok.count("") == 0
    # Special-token text in a document is ordinary text, never a special token.
    assert 100257 not in tok.encode("<|endoftext|>").tolist()
    assert tok.count("<|endoftext|>") > 1
    assert tok.count_many(["hello world", "", "a b c"]) == [2, 0, 3]
    assert list(cache.iterdir()) == []  # nothing downloaded or cached


def test_cl100k_vocabulary_is_the_published_one() -> None:
    ranks = load_cl100k_ranks()
    assert len(ranks) == 100_256
    assert ranks[b"hello"] == 15339
    assert CL100K_SHA256.startswith("223921b7")


def test_get_tokenizer_caches_and_rejects_unknown_names() -> None:
    assert get_tokenizer("cl100k_base") is get_tokenizer("cl100k_base")
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        get_tokenizer("gpt2")


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_cl100k_bounds_are_char_offsets_of_token_boundaries(text: str) -> None:
    tok = get_tokenizer("cl100k_base")
    assert isinstance(tok, TiktokenTokenizer)
    ids = tok.encode(text).tolist()
    b = tok.bounds(text)
    assert b.shape == (len(ids) + 1,)
    assert b[0] == 0 and b[-1] == len(text)
    valid = b[b >= 0]
    assert np.all(np.diff(valid) > 0)
    enc = tok._enc
    byte_pos = 0
    for k, token in enumerate(ids):
        if b[k] >= 0:
            assert len(text[: b[k]].encode()) == byte_pos
        else:  # only a boundary inside a multi-byte character is marked unusable
            prefix = text.encode()[:byte_pos]
            with pytest.raises(UnicodeDecodeError):
                prefix.decode()
        byte_pos += len(enc.decode_single_token_bytes(token))
    assert tok.count(text) == len(ids)


def test_minilm_counts_text_pieces_without_special_tokens_or_truncation() -> None:
    tok = get_tokenizer("local-minilm")
    assert tok.count("hello world") == 2
    assert tok.count("") == 0
    long = "word " * 300
    assert tok.count(long) == 300  # the packaged tokenizer.json would cut at 128
    assert tok.count_many(["hello world", long]) == [2, 300]
    b = tok.bounds("hello world")
    assert b.tolist() == [0, 6, 11]


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_minilm_bounds_shape_and_order(text: str) -> None:
    tok = get_tokenizer("local-minilm")
    b = tok.bounds(text)
    n = tok.count(text)
    assert b.shape == (n + 1,)
    assert b[0] == 0
    if n:
        assert b[-1] == len(text)
    valid = b[b >= 0]
    assert np.all(np.diff(valid) > 0)
