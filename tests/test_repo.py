"""Repository-level promises: the README's commands, CI, the public API."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import corpusbatch

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _run, test = readme_commands()
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test in ci_lines
    assert "pytest" in test and "[local,dev]" in test


def test_readme_first_command_indexes_the_sample_corpus_then_searches() -> None:
    run, _ = readme_commands()
    assert "corpusbatch index sample_corpus" in run and "corpusbatch search" in run
    assert "torch==2.13.0" in run


def test_public_api_is_declared_once_and_importable() -> None:
    names = corpusbatch.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(corpusbatch, name) is not None


def _run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed (it comes with the [dev] extra)")
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    lint = _run_tool("ruff", "check", "corpusbatch", "tests", "scripts")
    assert lint.returncode == 0, lint.stdout
    fmt = _run_tool("ruff", "format", "--check", "corpusbatch")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_is_clean() -> None:
    result = _run_tool("mypy")
    assert result.returncode == 0, result.stdout


def test_cli_reference_is_generated_from_the_current_help() -> None:
    # Compared by content (every command, flag and example), not byte for byte, so that
    # another click version's line wrapping does not fail the suite.
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", REPO / "scripts" / "gen_cli_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    fresh = module.render()
    for pattern in (r"^## `corpusbatch[^`]*`", r"--[a-z][a-z-]+", r"^\s+corpusbatch .+$"):
        wanted = {m.strip() for m in re.findall(pattern, fresh, re.M)}
        have = {m.strip() for m in re.findall(pattern, current, re.M)}
        assert wanted == have, "docs/cli.md is stale; run `python scripts/gen_cli_docs.py`"
