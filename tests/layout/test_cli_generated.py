"""Every command's options come from config dataclasses through one generator (sparseflow.cli.generate)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

import sparseflow
from sparseflow.cli import app

PKG = Path(sparseflow.__file__).resolve().parent


def test_no_option_is_declared_outside_the_generator() -> None:
    hand_written = []
    for path in sorted(PKG.rglob("*.py")):
        if path == PKG / "cli" / "generate.py":
            continue
        text = path.read_text()
        if re.search(r"typer\.(Option|Argument)\s*\(", text) or re.search(r"^\s*from typer import .*\b(Option|Argument)\b", text, re.M):
            hand_written.append(str(path.relative_to(PKG)))
    assert not hand_written, f"typer options declared by hand in {hand_written}"


def _commands(group, prefix=()):  # noqa: ANN001, ANN202
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_command_takes_quick_and_json() -> None:
    root = typer.main.get_command(app)
    missing = []
    for path, cmd in _commands(root):
        opts = {o for p in cmd.params for o in p.opts}
        if not {"--quick", "--json"} <= opts:
            missing.append(" ".join(path))
    assert not missing, f"commands without --quick/--json: {missing}"
