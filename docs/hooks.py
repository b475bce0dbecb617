"""MkDocs hooks: the CLI and API reference pages are generated from the code at every build.

- ``<!-- cli-reference -->`` in a page becomes one section per command of ``sparseflow.cli.app``, read from
  its click command tree (name, help, usage, every option with its type, default and help), so the
  reference always matches the installed ``sparseflow`` command.
- ``<!-- api-reference -->`` becomes one mkdocstrings block per public name of ``sparseflow.__all__``,
  grouped by concept (the package that defines the name).

The two generators are plain functions of the app and the package (:func:`cli_markdown`,
:func:`api_markdown`), so the tests call them without MkDocs.
"""

from __future__ import annotations

import ast
import enum
import html
import importlib
import inspect
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
API_MARKER = "<!-- api-reference -->"

# Concept of a public name = the first package under sparseflow that defines it; the order is the page's.
GROUPS: dict[str, str] = {
    "mask": "Masks, targets, patterns and distributions",
    "targets": "Masks, targets, patterns and distributions",
    "patterns": "Masks, targets, patterns and distributions",
    "distributions": "Masks, targets, patterns and distributions",
    "layouts": "Masks, targets, patterns and distributions",
    "schedules": "Schedules",
    "methods": "Methods: pruning, sparse from scratch, dynamic sparse training",
    "init": "Sparsity-aware initialisation",
    "training": "Training, data and models",
    "analysis": "Analysis: connectivity, signal, repair, stain, size",
    "storage": "Storage: .sfz files and mask sequences",
    "inference": "Inference: sparse kernels",
    "lottery": "Lottery tickets",
    "sweep": "Sweeps",
    "hopfield": "Hopfield memory",
    "errors": "Errors",
}


# ---------------------------------------------------------------------------------------------- CLI


def _text(s: str | None) -> str:
    """Help text as Markdown inline text: no raw HTML, no table breaks, no stray emphasis."""
    s = " ".join((s or "").split())
    return html.escape(s, quote=False).replace("|", "&#124;").replace("*", r"\*")


def _code(s: str) -> str:
    return f"`{s}`" if s else ""


def _help_columns(record: tuple[str, str]) -> tuple[str, str, str]:
    """click's help record ``("--seeds <int>", "Seeds.  [default: 3; required]")`` -> name, default, help."""
    name, help_text = record
    default, extras = "", []
    head, sep, tail = help_text.rpartition("  [")
    if sep and tail.endswith("]"):  # the bracketed trailer click appends: default, range, required
        help_text = head
        for item in tail[:-1].split("; "):
            if item.startswith("default: "):
                default = item.removeprefix("default: ")
            else:
                extras.append(item)
    if extras:
        help_text = f"{help_text} ({', '.join(extras)})".strip()
    return name, default, help_text


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "commands")


def _context(cmd: Any, name: str, parent: Any = None) -> Any:
    # the command's own context class: typer may ship its own copy of click, so no click import here
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _command_section(cmd: Any, path: list[str], level: int, ctx: Any) -> list[str]:
    name = " ".join(path)
    out = [f"{'#' * level} {name}", ""]
    doc = inspect.cleandoc(cmd.help or "")
    if doc:
        out += [_text(para) + "\n" for para in doc.split("\n\n")]
    sub = _context(cmd, path[-1], ctx)
    if _is_group(cmd):
        return out
    out += [f"```\n{name} {' '.join(cmd.collect_usage_pieces(sub))}\n```", ""]
    rows = [(p.param_type_name, p.get_help_record(sub)) for p in cmd.params]
    for kind, title in (("argument", "Argument"), ("option", "Option")):
        records = [_help_columns(r) for k, r in rows if k == kind and r is not None]
        if records:
            out += [f"| {title} | Default | Description |", "|---|---|---|"]
            out += [f"| {_code(n)} | {_code(d) or '–'} | {_text(h)} |" for n, d, h in records]
            out.append("")
    return out


def _commands_first(group: Any) -> list[tuple[str, Any]]:
    """A group's subcommands by name, plain commands before the groups with theirs."""
    return sorted(group.commands.items(), key=lambda kv: (_is_group(kv[1]), kv[0]))


def cli_markdown(app: Any = None) -> str:
    """The reference of every ``sparseflow`` command as Markdown, walking the click tree of the typer app."""
    import typer.main

    if app is None:
        app = importlib.import_module("sparseflow.cli").app
    root = typer.main.get_command(app)
    ctx = _context(root, "sparseflow")
    lines: list[str] = []
    if root.help:
        lines += [_text(root.help), ""]

    def walk(cmd: Any, path: list[str], parent: Any) -> None:
        # heading level = depth: "sparseflow train" is ##, "sparseflow bench overhead" is ###
        lines.extend(_command_section(cmd, path, min(len(path), 6), parent))
        if _is_group(cmd):
            sub_ctx = _context(cmd, path[-1], parent)
            for name, sub in _commands_first(cmd):
                walk(sub, [*path, name], sub_ctx)

    for name, cmd in _commands_first(root):
        walk(cmd, ["sparseflow", name], ctx)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- API


def _imported_from(package: Any) -> dict[str, str]:
    """name -> module it is imported from in the package's ``__init__`` (for constants and instances)."""
    tree = ast.parse(Path(package.__file__).read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found[alias.asname or alias.name] = node.module
    return found


def api_groups(package_name: str = "sparseflow") -> dict[str, list[str]]:
    """Concept title -> public names of ``package.__all__`` in that concept, in the order of :data:`GROUPS`."""
    package = importlib.import_module(package_name)
    imported = _imported_from(package)
    groups: dict[str, list[str]] = {title: [] for title in GROUPS.values()}
    for name in package.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(package, name)
        module = obj.__module__ if inspect.isclass(obj) or inspect.isroutine(obj) else imported.get(name, "")
        parts = module.split(".")
        key = parts[1] if len(parts) > 1 and parts[0] == package_name else "other"
        title = GROUPS.get(key, key.replace("_", " ").capitalize())
        groups.setdefault(title, []).append(name)
    return {title: sorted(names, key=str.lower) for title, names in groups.items() if names}


def api_markdown(package_name: str = "sparseflow") -> str:
    """One mkdocstrings block per public name, under a heading per concept."""
    lines: list[str] = []
    for title, names in api_groups(package_name).items():
        lines += [f"## {title}", ""]
        lines += [f"::: {package_name}.{name}\n" for name in names]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the reference pages' markers at build time."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_markdown())
    return markdown
