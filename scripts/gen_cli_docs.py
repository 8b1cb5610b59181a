"""Write docs/cli.md from the commands' own --help texts (run after changing the CLI).

tests/test_repo.py fails when docs/cli.md is out of date, so the reference never drifts
from the code.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from corpusbatch.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def render() -> str:
    runner = CliRunner()
    parts = [
        "# Command-line reference\n",
        "Generated from `--help` by `python scripts/gen_cli_docs.py`; do not edit by hand.\n",
    ]
    for name in [None, *sorted(main.commands)]:  # type: ignore[attr-defined]
        args = ["--help"] if name is None else [name, "--help"]
        text = runner.invoke(main, args, prog_name="corpusbatch", terminal_width=100).output
        title = "corpusbatch" if name is None else f"corpusbatch {name}"
        parts.append(f"\n## `{title}`\n\n```text\n{text.rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    DOCS.write_text(render(), encoding="utf-8")
    print(f"wrote {DOCS}")
