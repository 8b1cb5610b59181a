"""Issue #10 item 7: a setup that cannot work stops the run before any file is read.

"Read" is observed where it happens: a Python audit hook records every ``open`` and
``os.scandir`` of a path inside the corpus, whoever makes it. The same corpus with a
working setup is read (the hook sees it), so the checks can fail.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeapi import FakeBatchAPI

from corpusbatch import Settings, index
from corpusbatch.cli import main
from corpusbatch.errors import BackendError, ConfigError

_WATCHED: list[str] = []  # corpus roots being watched (a hook cannot be removed)
_SEEN: list[tuple[str, str]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED or event not in ("open", "os.scandir", "os.listdir"):
        return
    path = args[0] if args else None
    if isinstance(path, bytes | str):
        text = path.decode(errors="replace") if isinstance(path, bytes) else path
        if any(text.startswith(root) for root in _WATCHED):
            _SEEN.append((event, text))


sys.addaudithook(_hook)


@pytest.fixture()
def corpus(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    for i in range(3):
        (root / "guides" / f"doc{i}.md").write_text(f"# Doc {i}\n\nSome text number {i}.\n")
    _SEEN.clear()
    _WATCHED.append(str(root))
    yield root
    _WATCHED.remove(str(root))


def touched(root: Path) -> list[tuple[str, str]]:
    return [(e, p) for e, p in _SEEN if p.startswith(str(root))]


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_missing_key_stops_before_any_file_is_read(corpus: Path, tmp_path: Path) -> None:
    settings = Settings(index_dir=tmp_path / "idx", provider="openai", dimensions=16)
    with pytest.raises(ConfigError, match="needs an API key") as info:
        index(corpus, settings, api_key=None)
    assert "OPENAI_API_KEY" in str(info.value)
    assert touched(corpus) == []
    assert not (tmp_path / "idx" / "store.db").exists()  # no scan was recorded either


def test_an_unreachable_base_url_stops_before_any_file_is_read(
    corpus: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings(index_dir=tmp_path / "idx", provider="openai", base_url=url)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach") as info:
        index(corpus, settings, api_key="k")
    assert time.monotonic() - t0 < 10  # refused at once, not after a scan or retries
    assert url in str(info.value) and "no file was read" in str(info.value)
    assert touched(corpus) == []


def test_an_unknown_provider_stops_before_any_file_is_read(corpus: Path, tmp_path: Path) -> None:
    settings = Settings(index_dir=tmp_path / "idx", provider="acme")
    with pytest.raises(ConfigError, match="unknown provider 'acme'"):
        index(corpus, settings, api_key="k")
    assert touched(corpus) == []


def test_the_cli_reports_each_before_reading(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    no_key = runner.invoke(main, ["index", str(corpus), "--provider", "openai"])
    assert no_key.exit_code == 2 and "OPENAI_API_KEY" in no_key.output
    unknown = runner.invoke(main, ["index", str(corpus), "--provider", "acme"])
    assert unknown.exit_code == 2 and "unknown provider 'acme'" in unknown.output
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    down = runner.invoke(main, ["index", str(corpus), "--provider", "openai", "--base-url", url])
    assert down.exit_code == 1 and f"error: cannot reach {url}" in down.output
    assert "reading and chunking" not in down.output
    # CliRunner checks the root exists (a stat), but nothing lists or opens it
    assert touched(corpus) == []


def test_a_reachable_provider_that_refuses_the_key_is_not_unreachable(
    corpus: Path, tmp_path: Path
) -> None:
    """The probe takes any HTTP answer (here 401 to everything) as reachable: the run
    reads the corpus and the key is refused by the first real call, as before."""
    with FakeBatchAPI(default_dims=16) as api:
        api.valid_keys = set()
        settings = Settings(
            index_dir=tmp_path / "idx",
            provider="openai",
            base_url=api.base_url,
            dimensions=16,
            poll_interval=0.01,
        )
        with pytest.raises(BackendError):
            index(corpus, settings, api_key="refused")
        assert api.requests["GET /v1/{id}"] == 1  # the probe: GET /v1/models
    opened = {Path(p).name for e, p in touched(corpus) if e == "open"}
    assert opened == {"doc0.md", "doc1.md", "doc2.md"}


def test_plan_needs_no_key_and_no_network(corpus: Path, tmp_path: Path) -> None:
    settings = Settings(
        index_dir=tmp_path / "idx", provider="openai", base_url="http://127.0.0.1:9/v1"
    )
    report = index(corpus, settings, dry_run=True)
    assert report.to_embed_inputs == 3 and touched(corpus)
