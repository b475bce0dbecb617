"""Commands generated from config dataclasses: the only place the tool declares its options.

:func:`command` turns the :func:`~sparseflow.training.options.option` fields of a config (what determines
the result) and of an options dataclass (paths and run settings) into one typer command with an
``--option`` per field (tuples as comma-separated lists, ``bool`` as ``--x/--no-x``), plus ``--quick`` and
``--json`` for every command. On a call it validates each given value under its flag's name, builds both
dataclasses (under ``--quick`` with their quick values, except for the options given explicitly) and hands
them to the command's handler with a :class:`~sparseflow.cli.runner.Runner`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sparseflow.cli.runner import Runner
from sparseflow.errors import SparseflowError
from sparseflow.training.options import Opt, build, check_value, fields, flag, item_type, parse_items, unwrap

COMMON = ("quick", "as_json")


@dataclass(frozen=True)
class Call:
    """One invocation: the built config and options, the flags every command has, and what was given."""

    config: Any
    options: Any
    quick: bool
    as_json: bool
    given: frozenset[str]  # field names given on the command line
    ctx: typer.Context
    run: Runner


def _cli_type(tp: Any) -> tuple[Any, bool]:
    """(the type typer parses, whether it is a comma-separated list parsed here)."""
    base, optional = unwrap(tp)
    if item_type(base) is not None:
        return Optional[str], True
    return (Optional[base] if optional else base), False


def _cli_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


def _help(o: Opt) -> str:
    text = o.help
    if o.has_quick and not callable(o.quick):
        q = o.quick
        text += f" (quick: {_cli_default(q) if q not in (None, ()) else 'none'})"
    return text


def _parameter(name: str, o: Opt, tp: Any, default: Any) -> inspect.Parameter:
    cli_tp, is_list = _cli_type(tp)
    metavar = o.metavar or ("LIST" if is_list else None)
    if o.positional:
        info = typer.Argument(help=_help(o), metavar=metavar, show_default=default is not dataclasses.MISSING)
    else:
        info = typer.Option(flag(name, o), *([o.short] if o.short else []), help=_help(o), metavar=metavar)
    d = inspect.Parameter.empty if default is dataclasses.MISSING else _cli_default(default)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=Annotated[cli_tp, info])


def _convert(name: str, o: Opt, tp: Any, raw: Any) -> Any:
    """A value as typer parsed it -> the field's value, checked under its flag's name."""
    label = flag(name, o)
    base, optional = unwrap(tp)
    item = item_type(base)
    if item is not None and isinstance(raw, str):
        text = raw.strip()
        if text.lower() == "none" and optional:
            return None
        if text.lower() in ("none", "") and not o.nonempty:
            return ()
        raw = parse_items(text, item, label, o.metavar.lower() if o.metavar else None)
    return check_value(raw, o, tp, label)


def command(parent: typer.Typer, name: str, handler: Callable[[Call], None], *, config: type | None = None,
            options: type | None = None, help: str | None = None) -> None:
    """Register ``name`` on ``parent``: one option per field of ``config`` and ``options``, plus --quick/--json."""
    specs: dict[str, tuple[str, Opt, Any, Any]] = {}  # param name -> (owner, Opt, type, default)
    for owner, cls in (("config", config), ("options", options)):
        if cls is None:
            continue
        for f, o, tp in fields(cls):
            if not o.cli:
                continue
            if f.name in specs or f.name in COMMON:
                raise TypeError(f"option {f.name!r} of {cls.__name__} is declared twice for command {name!r}")
            specs[f.name] = (owner, o, tp, f.default)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    positional = [n for n, (_, o, _, _) in specs.items() if o.positional]
    for n in [*positional, *(n for n in specs if n not in positional)]:
        _, o, tp, default = specs[n]
        params.append(_parameter(n, o, tp, default))
    params.append(inspect.Parameter("quick", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--quick", help="A reduced run that finishes within 60 s; options given explicitly win.")]))
    params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line of stdout (tables go to stderr).")]))

    def callback(ctx: typer.Context, **kwargs: Any) -> None:
        given = frozenset(
            n for n in specs if getattr(ctx.get_parameter_source(n), "name", "") in ("COMMANDLINE", "ENVIRONMENT"))
        parts: dict[str, dict[str, Any]] = {"config": {}, "options": {}}
        for n in given:
            owner, o, tp, _ = specs[n]
            parts[owner][n] = _convert(n, o, tp, kwargs[n])
        quick, as_json = kwargs["quick"], kwargs["as_json"]
        built = {owner: build(cls, parts[owner], quick=quick) if cls is not None else None
                 for owner, cls in (("config", config), ("options", options))}
        handler(Call(built["config"], built["options"], quick, as_json, given, ctx, Runner(name, as_json, quick)))

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__name__ = name.replace("-", "_")
    callback.__doc__ = help if help is not None else handler.__doc__
    parent.command(name)(callback)


def reject(given: frozenset[str], names: tuple[str, ...], why: str) -> None:
    """One clear error when any of ``names`` was given although ``why`` makes it meaningless."""
    bad = [n for n in names if n in given]
    if bad:
        raise SparseflowError(f"{', '.join('--' + n.replace('_', '-') for n in bad)} cannot be used here: {why}")


def default_out(out: Path | None, name: str, quick: bool) -> Path:
    """``out``, or ``runs/NAME`` (``runs/NAME-quick`` under --quick)."""
    return out if out is not None else Path("runs") / (f"{name}-quick" if quick else name)


def version_option(app: typer.Typer, version: str) -> None:
    """``sparseflow --version``: print the package version and exit."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"sparseflow {version}")
            raise typer.Exit()

    def root(**kwargs: Any) -> None:
        """Sparse neural networks: create, analyse, store and run them."""

    info = typer.Option("--version", help="Print the sparseflow version and exit.", callback=show, is_eager=True)
    p = inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Optional[bool], info])
    root.__signature__ = inspect.Signature([p])  # type: ignore[attr-defined]
    root.__annotations__ = {"version": p.annotation}
    app.callback()(root)
