"""Every way a command line can go wrong, as the one line ``error: <what> (<value>): <what to do>``.

:func:`main` (in :mod:`sparseflow.cli`) runs the app with click's own error display turned off and hands
each failure here: a :class:`~sparseflow.errors.SparseflowError` keeps its message; click's usage errors
(unknown option or command, a value of the wrong type, a missing argument) and operating-system errors
(a path the command cannot read or write) are rewritten into the same shape. A message that spans lines
is joined into one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import typer

# typer may vendor its own copy of click: take the exception classes from the module it raises them from.
click_errors: Any = importlib.import_module(typer.BadParameter.__module__)


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (an error is one line)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _command_path(args: Sequence[str], e: Any) -> str:
    ctx = getattr(e, "ctx", None)
    if ctx is not None and ctx.command_path:
        return " ".join(["sparseflow", *ctx.command_path.split()[1:]])
    words = []
    for a in args:  # the command words come first, before any option
        if a.startswith("-"):
            break
        words.append(a)
    return " ".join(["sparseflow", *words[:2]])


def _given_value(args: Sequence[str], opts: Sequence[str]) -> str | None:
    """The value given on the command line for an option spelled as one of ``opts`` (the last one given)."""
    found = None
    for i, a in enumerate(args):
        for o in opts:
            if a == o and i + 1 < len(args):
                found = args[i + 1]
            elif o.startswith("--") and a.startswith(o + "="):
                found = a[len(o) + 1 :]
    return found


def usage_message(e: Any, args: Sequence[str]) -> str:
    """One line for a click usage error ``e`` raised while parsing ``args``."""
    where = _command_path(args, e).strip()
    help_hint = f"run '{where} --help' for the options"
    if isinstance(e, click_errors.NoSuchOption):
        near = getattr(e, "possibilities", None) or []
        guess = f"did you mean {' or '.join(near[:3])}? " if near else ""
        return f"unknown option ({e.option_name}): {guess}{help_hint}"
    if isinstance(e, click_errors.MissingParameter):
        param = e.param
        if param is not None and getattr(param, "param_type_name", "") == "argument":
            return f"missing argument ({param.name.upper()}): pass it, as in '{where} {param.name.upper()}'; {help_hint}"
        name = " / ".join(param.opts) if param is not None else "an option"
        return f"missing option ({name}): pass it with a value; {help_hint}"
    if isinstance(e, click_errors.BadParameter):
        param = e.param
        opts = list(getattr(param, "opts", []) or [])
        label = opts[0] if opts and opts[0].startswith("-") else (param.name.upper() if param is not None else "value")
        value = _given_value(args, opts) if opts else None
        got = f"got {value!r}" if value is not None else "the value given"
        return f"{label} {_what_it_takes(param, e)} ({got}): {help_hint}"
    message = one_line(e.format_message())
    if message.startswith("No such command"):
        group = getattr(e, "ctx", None)
        name = message.split("'")[1] if "'" in message else message
        choices = ", ".join(group.command.list_commands(group)) if group is not None else ""
        return f"unknown command ({name}): choose one of {choices}" if choices else f"unknown command ({name}): {help_hint}"
    if message.startswith("Got unexpected extra argument"):
        extra = message[message.rfind("(") + 1 : message.rfind(")")] if "(" in message else ""
        return f"unexpected extra argument ({extra}): options start with --; {help_hint}"
    if "requires an argument" in message or "does not take a value" in message:
        opt = message.split("'")[1] if "'" in message else ""
        if "requires" in message:
            return f"option {opt} needs a value (none given): pass '{opt} VALUE'; {help_hint}"
        return f"option {opt} is a switch and takes no value ({opt}=...): pass {opt} alone; {help_hint}"
    return f"{message[:1].lower()}{message[1:].rstrip('.')}: {help_hint}"


def _what_it_takes(param: Any, e: Any) -> str:
    detail = one_line(e.format_message()).split(": ", 1)[-1].rstrip(".")
    low = detail.lower()
    if "integer" in low:
        return "takes an integer"
    if "number" in low or "float" in low:
        return "takes a number"
    if "boolean" in low:
        return "takes true or false"
    return f"is not valid: {detail[:1].lower()}{detail[1:]}"


def os_message(e: OSError) -> str:
    """One line for an operating-system error that reached the command line (a path it cannot use)."""
    target = e.filename if e.filename is not None else "a file"
    cause = e.strerror or str(e)
    return f"cannot use {str(target)!r} ({cause}): check the path and its permissions"
