"""No API key, whole or masked, in anything corpusbatch writes or prints (issue #10 item 6).

The real CLI runs full remote indexes against the loopback fake Batch API with a
recognisable fake key, with ``--debug`` and ``-v``: runs whose every call is refused with
a 401 that echoes the key (whole, and masked the way OpenAI does: ``sk-cbte...wxyz``), a
real-time 401 echoing it, a good run, ``status`` and ``verify``. Then every file the runs
wrote (the whole index directory: state.db, store.db and their WAL files, lancedb,
batches, outputs; and the JSON reports) and everything they printed (stdout, stderr,
log lines, tracebacks) is searched for the key and its masked forms. A value passed to
``--api-key-env`` that looks like a key is refused without being stored or echoed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakeapi import FakeBatchAPI

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-cbtest-Q7mZ2xV9kL4pR8sT1wY6nB3cF5hJ0dGw"
MASKED = f"{KEY[:6]}...{KEY[-4:]}"
NEEDLES = (KEY, MASKED, KEY[6:-4], KEY[10:30], f"...{KEY[-4:]}", KEY[:6] + "...")


def _docs(root: Path) -> Path:
    root.mkdir()
    for i in range(3):
        body = "\n\n".join(f"Paragraph {p} of page {i} about brewing coffee." for p in range(4))
        (root / f"page{i}.md").write_text(f"# Page {i}\n\n{body}\n")
    return root


def _cli(
    args: list[str], *, key: str | None = KEY, debug: bool = True
) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = path
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "corpusbatch", *(["--debug"] if debug else []), "-v", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _found(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [n for n in NEEDLES if n.encode() in data]


def _index_args(docs: Path, idx: Path, api: FakeBatchAPI, *extra: str) -> list[str]:
    return [
        "index",
        str(docs),
        "--provider",
        "openai",
        "--base-url",
        api.base_url,
        "--index-dir",
        str(idx),
        "--dimensions",
        "32",
        "--poll-interval",
        "0.01",
        "--json",
        *extra,
    ]


def test_no_key_in_anything_a_remote_run_writes_or_prints(tmp_path: Path) -> None:
    docs = _docs(tmp_path / "docs")
    idx = tmp_path / "idx"
    reports = tmp_path / "reports"
    reports.mkdir()
    printed: list[str] = []

    def run(name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        done = _cli(args)
        printed.extend([done.stdout, done.stderr])
        (reports / f"{name}.json").write_text(done.stdout)
        return done

    with FakeBatchAPI(default_dims=32) as api:
        # 1-2: every call refused with a 401 that echoes the key, whole and masked
        for echo in ("plain", "masked"):
            api.valid_keys, api.echo_key = {"someone-elses-key"}, echo
            refused = run(f"refused-{echo}", _index_args(docs, idx, api))
            assert refused.returncode != 0
            assert "Traceback" in refused.stderr, "--debug shows the traceback"
            assert "[redacted]" in refused.stderr, "the echoed key was there, and redacted"
        # 3: the real-time route, refused with a masked echo
        api.valid_keys, api.echo_key = None, "masked"
        api.realtime_faults = [401]
        rt_args = _index_args(docs, tmp_path / "idx-rt", api, "--realtime-under", "1000000")
        rt = run("realtime", rt_args)
        assert rt.returncode != 0 and api.requests["POST /v1/embeddings"] >= 1
        assert "[redacted]" in rt.stderr
        # 4: a good run through the Batch API completes
        api.echo_key = None
        good = run("good", _index_args(docs, idx, api))
        assert good.returncode == 0, good.stderr
        assert '"published": true' in good.stdout
        # 5: commands that read the index and talk to the provider
        status = run(
            "status",
            ["status", "--index-dir", str(idx), "--base-url", api.base_url, "--json"],
        )
        assert status.returncode == 0, status.stderr
        verify = run("verify", ["verify", "--index-dir", str(idx), "--base-url", api.base_url])
        assert verify.returncode in (0, 1), verify.stderr

    leaks = {f"printed #{i}": _found(text) for i, text in enumerate(printed)}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and docs not in p.parents]
    assert any(p.name == "state.db" for p in written) and any(p.name == "store.db" for p in written)
    assert any("lancedb" in p.parts for p in written)
    leaks.update({str(p.relative_to(tmp_path)): _found(p.read_bytes()) for p in written})
    assert {k: v for k, v in leaks.items() if v} == {}


def test_a_key_passed_to_api_key_env_is_refused_not_stored_nor_echoed(tmp_path: Path) -> None:
    docs = _docs(tmp_path / "docs")
    idx = tmp_path / "idx"
    with FakeBatchAPI(default_dims=32) as api:
        for debug in (False, True):  # a one-line error (exit 2), or a traceback
            args = _index_args(docs, idx, api, "--api-key-env", KEY)
            done = _cli(args, key=None, debug=debug)
            assert done.returncode == (1 if debug else 2), done.stderr
            assert "--api-key-env takes the NAME" in done.stderr
            assert _found(done.stdout + done.stderr) == []
        assert api.requests == {}, "nothing was sent to the provider"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and docs not in p.parents]
    assert {str(p): _found(p.read_bytes()) for p in written if _found(p.read_bytes())} == {}


def test_redact_hides_registered_keys_their_masks_and_key_shaped_words() -> None:
    from corpusbatch.errors import redact, register_secret

    token = "di-token-0123456789abcdefXYZW"  # a DeepInfra-style key: no sk- prefix
    register_secret(token)
    for text in (
        f"Incorrect API key provided: {token}.",
        f"key {token[:6]}...{token[-4:]} refused",
        f"key {token[:4]}****************{token[-4:]} refused",
        "Incorrect API key provided: sk-proj-abcd...wxyz.",
        "Authorization: Bearer sk-anything-at-all",
        "sk-live-0123456789abcdefghij",
    ):
        out = redact(text)
        assert "[redacted]" in out
        assert token not in out and token[-4:] not in out and "wxyz" not in out
        assert "0123456789abcdef" not in out
    assert redact("dimensions 64 and sk-learn are fine") == "dimensions 64 and sk-learn are fine"
