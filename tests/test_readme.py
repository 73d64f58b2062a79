"""The README's command table and the parser agree: every flag it shows exists on that command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mixweight.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
TABLE_ROWS = re.findall(r"^\| `mixweight (.*?)` \|", README, flags=re.M)


def _commands(parser: argparse.ArgumentParser, prefix: tuple = ()) -> dict[str, argparse.ArgumentParser]:
    found = {" ".join(prefix): parser} if prefix else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())


def test_the_readme_has_a_command_table():
    assert len(TABLE_ROWS) >= 10


@pytest.mark.parametrize("row", TABLE_ROWS)
def test_every_flag_in_the_readme_table_exists(row):
    words = row.split()
    command = max((c for c in COMMANDS if words[: len(c.split())] == c.split()), key=len, default=None)
    assert command is not None, f"README row names no command: {row}"
    known = {option for action in COMMANDS[command]._actions for option in action.option_strings}
    shown = set(re.findall(r"--[a-z][a-z0-9-]*", row))
    assert shown <= known, f"mixweight {command}: README shows {sorted(shown - known)}, the parser has no such flag"


def test_every_command_is_in_the_readme_table():
    listed = {max((c for c in COMMANDS if r.split()[: len(c.split())] == c.split()), key=len) for r in TABLE_ROWS}
    leaves = {c for c in COMMANDS if not any(other.startswith(c + " ") for other in COMMANDS)}
    assert leaves <= listed, f"commands missing from the README table: {sorted(leaves - listed)}"
