"""The CLI: help texts, one-line errors with exit codes, dry runs, machine output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpusbatch.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "sample_corpus"
COMMANDS = ["index", "plan", "search", "status", "cancel", "collect", "verify"]


@pytest.fixture()
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for rel in ("guides/aeropress.md", "guides/v60.md", "notes/empty.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / rel, root / rel)
    return root


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_ends_with_examples(runner: CliRunner, command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    body = result.output.split("Options:")[0]
    assert "Examples:" in body and f"corpusbatch {command}" in body.split("Examples:")[1]


def test_search_without_an_index_is_one_line_and_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["search", "anything"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no index in")
    assert "corpusbatch index" in lines[0]  # says what to do


def test_debug_shows_the_exception(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--debug", "search", "anything"])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "IndexNotFound"


def test_remote_provider_without_key_fails_before_any_work(
    runner: CliRunner, docs: Path, tmp_path: Path
) -> None:
    result = runner.invoke(main, ["index", str(docs), "--provider", "openai"])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.output
    assert not list((tmp_path / ".corpusbatch" / "lancedb").glob("*"))


def test_unknown_config_key_names_the_file(runner: CliRunner, docs: Path, tmp_path: Path) -> None:
    (tmp_path / "corpusbatch.toml").write_text("chunk_size = 3\n")
    result = runner.invoke(main, ["plan", str(docs)])
    assert result.exit_code == 2
    assert "corpusbatch.toml" in result.output and "chunk_size" in result.output


def test_chunk_size_over_the_model_limit_says_what_to_do(runner: CliRunner, docs: Path) -> None:
    result = runner.invoke(main, ["plan", str(docs), "--chunk-tokens", "9000"])
    assert result.exit_code == 2
    assert "254" in result.output and "--chunk-tokens" in result.output


def test_plan_json_prices_openai_without_sending(runner: CliRunner, docs: Path) -> None:
    result = runner.invoke(main, ["plan", str(docs), "--provider", "openai", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["to_embed_tokens"] > 0 and report["files_planned"] == 1
    expected = report["to_embed_tokens"] * 0.01 / 1e6
    assert report["estimated_cost_batch"] == pytest.approx(expected)
    assert report["estimated_cost_realtime"] == pytest.approx(2 * expected)
    assert not report["published"]
    assert {s["path"] for s in report["skipped"]} == {"notes/empty.txt"}


def test_non_tty_progress_is_plain_timestamped_lines(runner: CliRunner, docs: Path) -> None:
    result = runner.invoke(main, ["plan", str(docs)])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO reading and chunking: started", result.stderr, re.M
    )
    assert "\r" not in result.stderr  # no progress-bar redraws


def test_status_with_nothing_in_flight(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0 and "nothing in flight" in result.output


def test_collect_status_and_search_remember_the_index_settings(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakeapi import FakeBatchAPI

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeBatchAPI(default_dims=16) as api:
        api.auto_advance = False
        flags = ["--provider", "openai", "--base-url", api.base_url, "--dimensions", "16"]
        first = runner.invoke(main, ["index", str(docs), *flags, "--no-wait", "--json"])
        assert first.exit_code == 0, first.output
        assert json.loads(first.stdout)["pending_files"] == 1

        status = runner.invoke(main, ["status", "--json"])  # no flags: the index knows
        assert status.exit_code == 0, status.output
        assert [row["batch_status"] for row in json.loads(status.stdout)] == ["validating"]

        api.advance_all()
        done = runner.invoke(main, ["collect", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["published"]
        hits = runner.invoke(main, ["search", "aeropress", "-k", "1", "--json"])
        assert hits.exit_code == 0, hits.output
        assert len(json.loads(hits.stdout)) == 1
    assert "test-key" not in (Path(".corpusbatch") / "store.db").read_bytes().decode("latin-1")
