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


@pytest.mark.slow
def test_json_keeps_stderr_to_warnings_unless_vv_asks_for_debug(
    runner: CliRunner, docs: Path
) -> None:
    quiet = runner.invoke(main, ["index", str(docs), "--json"])
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.stdout)["published"]
    assert not re.search(r" (INFO|DEBUG) ", quiet.stderr), quiet.stderr
    (docs / "guides" / "v60.md").write_text("# V60\n\nA new paragraph about pour-over.\n")
    loud = runner.invoke(main, ["-vv", "index", str(docs), "--json"])
    assert loud.exit_code == 0, loud.output
    assert json.loads(loud.stdout)["published"], "stdout stays the JSON report alone"
    assert re.search(r"^\S+ DEBUG published \(RSS \d+ MB, peak \d+ MB\)$", loud.stderr, re.M), (
        loud.stderr
    )


def test_status_with_nothing_in_flight(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0 and "nothing in flight" in result.output


def test_collect_status_and_search_remember_the_index_settings(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fakeapi import FakeBatchAPI

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeBatchAPI(default_dims=16) as api:
        api.auto_advance = False
        # The base URL comes from the config file every run reads (a remembered one
        # would have to be confirmed); provider and dimensions are remembered.
        (tmp_path / "corpusbatch.toml").write_text(f'base_url = "{api.base_url}"\n')
        flags = ["--provider", "openai", "--dimensions", "16"]
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


# -- remembered settings do not direct keys ---------------------------------------------
def _index_locally(runner: CliRunner, docs: Path) -> None:
    done = runner.invoke(main, ["index", str(docs), "--json"])
    assert done.exit_code == 0, done.output


def _tamper_remembered(**changes: object) -> None:
    import sqlite3

    with sqlite3.connect(Path(".corpusbatch") / "store.db") as db:
        (raw,) = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        memory = json.loads(raw)
        memory.update(changes)
        db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (json.dumps(memory),))


def test_collect_refuses_a_remembered_base_url_it_was_not_given(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakeapi import FakeBatchAPI

    _index_locally(runner, docs)
    monkeypatch.setenv("SOME_VAR", "secret-value-123")
    with FakeBatchAPI(default_dims=64) as api:
        _tamper_remembered(provider="openai", base_url=api.base_url, api_key_env="SOME_VAR")
        refused = runner.invoke(main, ["collect", "--json"])
        assert refused.exit_code == 2, refused.output
        assert f"remembers base URL {api.base_url} for provider 'openai'" in refused.output
        assert f"--base-url {api.base_url}" in refused.output
        assert "secret-value-123" not in refused.output
        for command in (["status"], ["cancel"], ["verify"], ["search", "aeropress"]):
            other = runner.invoke(main, command)
            assert other.exit_code == 2, (command, other.output)
            assert "--base-url" in other.output and "secret-value-123" not in other.output
        assert sum(api.requests.values()) == 0  # nothing was sent, with or without a key


def test_collect_works_once_the_run_names_the_remembered_url_and_key_variable(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakeapi import FakeBatchAPI

    monkeypatch.setenv("SOME_VAR", "secret-value-123")
    with FakeBatchAPI(default_dims=64) as api:
        api.auto_advance = False
        api.valid_keys = {"secret-value-123"}
        flags = ["--provider", "openai", "--base-url", api.base_url, "--api-key-env", "SOME_VAR"]
        first = runner.invoke(main, ["index", str(docs), *flags, "--dimensions", "64", "--no-wait"])
        assert first.exit_code == 0, first.output
        api.advance_all()
        sent = sum(api.requests.values())

        bare = runner.invoke(main, ["collect"])
        assert bare.exit_code == 2 and f"--base-url {api.base_url}" in bare.output
        # --base-url confirms the URL, but the remembered key variable still is not read.
        url_only = runner.invoke(main, ["collect", "--base-url", api.base_url])
        assert url_only.exit_code == 2, url_only.output
        assert "--api-key-env SOME_VAR" in url_only.output
        assert sum(api.requests.values()) == sent  # the refused runs sent nothing

        confirmed = runner.invoke(main, ["collect", "--json", *flags[2:]])
        assert confirmed.exit_code == 0, confirmed.output
        assert json.loads(confirmed.stdout)["published"]
        assert sum(api.requests.values()) > sent


def test_remembered_builtin_provider_uses_only_builtin_key_and_url(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _index_locally(runner, docs)
    # A remembered provider alone picks its built-in key variable (the code's string).
    _tamper_remembered(provider="openai", base_url=None, api_key_env="OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    from corpusbatch.cli import _api_key, _settings

    settings = _settings()
    assert settings.provider == "openai" and settings.base_url is None
    assert settings.profile().api_key_env == "OPENAI_API_KEY" and _api_key(settings) == "k"
    # A remembered local provider reads no key, whatever else is remembered.
    _tamper_remembered(provider="local", base_url="http://127.0.0.1:9/v1", api_key_env="X_KEY")
    monkeypatch.setenv("X_KEY", "leak")
    settings = _settings()
    assert settings.base_url is None and _api_key(settings) is None
    assert runner.invoke(main, ["status"]).exit_code == 0


def test_remembered_credentials_in_a_url_are_not_echoed(runner: CliRunner, docs: Path) -> None:
    _index_locally(runner, docs)
    _tamper_remembered(provider="evil", base_url="https://user:hunter2@evil.example/v1?k=s3cr3t")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 2, result.output
    assert "evil.example/v1" in result.output
    assert "hunter2" not in result.output and "s3cr3t" not in result.output


def test_remembered_key_in_api_key_env_is_neither_read_nor_shown(
    runner: CliRunner, docs: Path
) -> None:
    _index_locally(runner, docs)
    key = "sk-proj-AbCdEf0123456789xyz"  # an older run stored a pasted key
    _tamper_remembered(provider="openai", api_key_env=key)
    result = runner.invoke(main, ["collect"])
    assert result.exit_code == 2, result.output
    assert "not a variable name" in result.output and key not in result.output


def test_search_does_not_send_the_tables_key_to_another_providers_url(
    runner: CliRunner, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakeapi import FakeBatchAPI

    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    with FakeBatchAPI(default_dims=16) as api:
        flags = ["--provider", "openai", "--base-url", api.base_url, "--dimensions", "16"]
        assert runner.invoke(main, ["index", str(docs), *flags]).exit_code == 0
        before = sum(api.requests.values())
        # The index now remembers deepinfra (built-in, so trusted); the table says openai.
        _tamper_remembered(provider="deepinfra", base_url=None)
        result = runner.invoke(main, ["search", "aeropress"])
        assert result.exit_code == 2, result.output
        assert "built with provider 'openai'" in result.output
        assert "--provider openai" in result.output and "openai-key" not in result.output
        assert sum(api.requests.values()) == before


# -- --api-key-env takes a name ----------------------------------------------------------
PASTED_KEY = "sk-test1234567890abcdefABCDEF"


def _index_dir_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_a_key_passed_as_api_key_env_is_refused_unstored_and_unechoed(
    runner: CliRunner, docs: Path, tmp_path: Path, how: str
) -> None:
    _index_locally(runner, docs)  # an index exists: nothing may be written into it
    args = ["-vv", "index", str(docs), "--provider", "openai"]
    if how == "flag":
        args += ["--api-key-env", PASTED_KEY]
    else:
        (tmp_path / "corpusbatch.toml").write_text(f'api_key_env = "{PASTED_KEY}"\n')
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "takes the NAME of an environment variable, not the key itself" in result.output
    assert PASTED_KEY not in result.output and "1234567890" not in result.output
    assert PASTED_KEY.encode() not in _index_dir_bytes(tmp_path / ".corpusbatch")
    for command in (["collect"], ["status"], ["plan", str(docs)]):
        again = runner.invoke(main, [*command, "--api-key-env", PASTED_KEY])
        assert again.exit_code == 2 and PASTED_KEY not in again.output
