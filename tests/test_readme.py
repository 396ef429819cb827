"""The README's promises: its Python examples run, its options table matches the command."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trio_broadcast.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES, ids=lambda code: code.splitlines()[-1])
def test_readme_example_runs(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_readme_opens_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    assert blocks[0].strip().endswith(".venv/bin/trio-broadcast")
    assert blocks[1].strip() == "python3 -m pip install nox && python3 -m nox"
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci


def test_every_option_is_in_the_readme_table() -> None:
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    for option in options:
        assert f"`{option}" in README, option


def test_the_performance_table_is_generated_from_the_latest_results() -> None:
    root = Path(__file__).parent.parent
    sys.path.insert(0, str(root / "bench"))
    try:
        import report  # noqa: PLC0415 (bench/ is not a package; mypy checks it too)
    finally:
        sys.path.remove(str(root / "bench"))
    rendered = report.render(json.loads((root / "bench/results/latest.json").read_text()))
    assert report.with_table(README, rendered) == README


def _where_names() -> set[str]:
    section = README.split("## How it works", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| **")]
    return {name for row in rows for name in re.findall(r"`([\w.]+)", row.rsplit("|", 2)[1])}


def test_how_it_works_names_what_exists() -> None:
    names = _where_names()
    assert len(names) > 20
    for name in names:
        module, *attributes = name.split(".")
        target: object = importlib.import_module(f"trio_broadcast.{module}")
        for attribute in attributes:
            assert hasattr(target, attribute), name
            target = getattr(target, attribute)
