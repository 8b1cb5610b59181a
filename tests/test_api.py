"""The public API is real imports with concrete types, and the README's examples type-check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest

import corpusbatch

REPO = Path(__file__).resolve().parent.parent


def test_every_public_name_is_a_real_attribute() -> None:
    names = set(dir(corpusbatch))
    assert [n for n in corpusbatch.__all__ if n not in names] == []
    assert not hasattr(corpusbatch, "__getattr__")  # nothing is resolved lazily
    for name in ("Hit", "RunReport", "VerifyReport", "index", "search_index", "open_table"):
        assert name in corpusbatch.__all__


def test_return_types_are_concrete() -> None:
    from lancedb.table import Table

    search = typing.get_type_hints(corpusbatch.search_index)
    assert search["return"] == list[corpusbatch.Hit]
    # imported for type checking only (lancedb loads on first use)
    hints = typing.get_type_hints(corpusbatch.open_table, localns={"Table": Table})
    assert hints["return"] is Table
    assert typing.get_type_hints(corpusbatch.index)["return"] is corpusbatch.RunReport
    assert typing.get_type_hints(corpusbatch.verify)["return"] is corpusbatch.VerifyReport


MYPY_INI = """\
[mypy]
strict = True
# corpusbatch as an installed package: its own imports are not the examples' business
[mypy-corpusbatch.*]
follow_imports = silent
"""


def test_readme_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    if shutil.which("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the [dev] extra)")
    blocks = re.findall(r"```python\n(.+?)```", (REPO / "README.md").read_text("utf-8"), re.S)
    assert len(blocks) >= 3  # From Python, LangChain, LlamaIndex
    files = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme_example_{i}.py"
        path.write_text(block, encoding="utf-8")
        files.append(str(path))
    (tmp_path / "mypy.ini").write_text(MYPY_INI, encoding="utf-8")
    # The cache keeps later runs at seconds (the frameworks are large to analyse).
    cache = REPO / ".mypy_cache" / "readme-examples"
    env = {**os.environ, "MYPYPATH": str(REPO)}  # an editable install hides the package
    result = subprocess.run(
        ["mypy", "--config-file", "mypy.ini", "--cache-dir", str(cache), *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
