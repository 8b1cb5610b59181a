"""The fake Batch API's fault knobs do what their comments say (through the real SDK)."""

from __future__ import annotations

import json

import openai
import pytest
from fakeapi import FakeBatchAPI


def _client(api: FakeBatchAPI, key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=api.base_url, max_retries=0)


def _batch(api: FakeBatchAPI, client: openai.OpenAI, texts: list[list[str]]) -> str:
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": t,
                "encoding_format": "base64",
                "dimensions": 8,
            },
        }
        for i, t in enumerate(texts)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    return b.id


def _run(client: openai.OpenAI, bid: str) -> tuple[list[bytes], list[bytes]]:
    for _ in range(10):
        b = client.batches.retrieve(bid)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            break
    out = client.files.content(b.output_file_id).content if b.output_file_id else b""
    err = client.files.content(b.error_file_id).content if b.error_file_id else b""
    return out.splitlines(), err.splitlines()


def test_bad_keys_get_401_on_every_route() -> None:
    with FakeBatchAPI() as api:
        api.valid_keys = set()
        c = _client(api)
        calls = [
            lambda: c.files.list(),
            lambda: c.files.retrieve("f"),
            lambda: c.files.content("f"),
            lambda: c.files.delete("f"),
            lambda: c.files.create(file=("x.jsonl", b"{}\n"), purpose="batch"),
            lambda: c.batches.list(),
            lambda: c.batches.retrieve("b"),
            lambda: c.batches.cancel("b"),
            lambda: c.batches.create(
                input_file_id="f", endpoint="/v1/embeddings", completion_window="24h"
            ),
            lambda: c.embeddings.create(model="text-embedding-3-small", input="x"),
        ]
        for call in calls:
            with pytest.raises(openai.AuthenticationError):
                call()


def test_vanishing_batch_comes_back_then_bills_once() -> None:
    with FakeBatchAPI() as api:
        c = _client(api)
        api.vanish_batches = [2, -1]
        back = _batch(api, c, [["a"]])
        gone = _batch(api, c, [["b"]])
        assert [b.id for b in c.batches.list()] == []
        for _ in range(2):
            with pytest.raises(openai.NotFoundError):
                c.batches.retrieve(back)
        out, _ = _run(c, back)
        assert len(out) == 1 and [b.id for b in c.batches.list()] == [back]
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve(gone)
        api.advance_all()
        assert api.billed == {("text-embedding-3-small", 8, "a"): 1}


def test_malformed_and_dropped_lines_count_as_lost() -> None:
    with FakeBatchAPI() as api:
        c = _client(api)
        for kind in ("bad_base64", "non_object_item", "invalid_utf8", "truncated_json"):
            api.malformed_next = [kind]
            api.drop_lines_next = [1]
            bid = _batch(api, c, [[f"{kind} x"], [f"{kind} y"], [f"{kind} z"]])
            out, _ = _run(c, bid)
            assert len(out) == 2
            good = 0
            for raw in out:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                    item = obj["response"]["body"]["data"][0]
                    good += isinstance(item, dict) and "@" not in item["embedding"]
                except (ValueError, KeyError):
                    pass
            assert good == 1, kind
        assert sum(api.billed.values()) == 12 and sum(api.lost.values()) == 8


def test_poison_and_realtime_faults() -> None:
    with FakeBatchAPI() as api:
        c = _client(api)
        api.poison = "POISON"
        bid = _batch(api, c, [["fine"], ["a POISON b", "fine too"]])
        out, err = _run(c, bid)
        assert len(out) == 1 and len(err) == 1
        assert json.loads(err[0])["response"]["status_code"] == 400
        assert set(api.billed) == {("text-embedding-3-small", 8, "fine")}
        assert sum(api.rejected.values()) == 2
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model="text-embedding-3-small", input=["x POISON"])
        api.realtime_faults = [401, 429, 500]
        for exc in (openai.AuthenticationError, openai.RateLimitError, openai.InternalServerError):
            with pytest.raises(exc):
                c.embeddings.create(model="text-embedding-3-small", input="x")
        c.embeddings.create(model="text-embedding-3-small", input="x", dimensions=8)
        assert api.billed[("text-embedding-3-small", 8, "x")] == 1
