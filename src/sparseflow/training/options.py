"""Options: the one place a setting's name, type, default, help, valid range and quick value are written.

A job, experiment or benchmark is configured by one frozen dataclass whose fields are declared with
:func:`option`. The command-line tool is generated from these fields (``sparseflow.cli.generate``, as
open_lth's ``Hparams.add_args`` does), the Python API takes the same names, and :func:`check` validates
every field against its type and range in ``__post_init__``, so both paths refuse a bad value with the
same message::

    @dataclass(frozen=True)
    class MeanfieldConfig:
        seeds: int = option(3, "Seeds per density and init.", min=1, quick=1)
        width: int = option(1024, "Units per layer.", min=2)

        def __post_init__(self) -> None:
            check(self)

Types understood: ``int``, ``float``, ``bool``, ``str``, ``Path``, ``tuple[int | float | str, ...]`` (a
comma-separated list on the command line) and ``X | None`` of those. ``quick`` is the value under
``--quick`` (or a function of the config that returns it); an option given explicitly always wins.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sparseflow.errors import SparseflowError

T = TypeVar("T")
_NO_QUICK = object()
_SAME = object()


@dataclass(frozen=True)
class Opt:
    """What :func:`option` records about a field (in ``field.metadata["option"]``)."""

    help: str
    quick: Any = _NO_QUICK  # the value under --quick, or a function(config) -> value
    min: float | None = None  # inclusive bounds (min_open / max_open: exclusive)
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[Any, ...] | None = None
    flag: str | None = None  # the command-line name when it is not --field-name
    short: str | None = None  # a one-letter alias such as -o
    metavar: str | None = None
    positional: bool = False  # a command-line argument instead of an --option
    cli: bool = True  # False: the Python API only
    distinct: bool = False  # tuples: no repeated items
    increasing: bool = False  # tuples: strictly increasing
    nonempty: bool = True  # tuples: at least one item

    @property
    def has_quick(self) -> bool:
        return self.quick is not _NO_QUICK


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text, range and quick value; see :class:`Opt` for ``kw``."""
    return dataclasses.field(default=default, metadata={"option": Opt(help, **kw)})


def flag(name: str, o: Opt) -> str:
    """The command-line name of field ``name``: ``--name-with-dashes`` unless the option names its own."""
    return o.flag or "--" + name.replace("_", "-")


def opt_of(f: dataclasses.Field) -> Opt | None:
    return f.metadata.get("option")


def fields(cls_or_obj: Any) -> list[tuple[dataclasses.Field, Opt, Any]]:
    """(field, Opt, resolved type) of every field declared with :func:`option`, in declaration order."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    return [(f, o, hints[f.name]) for f in dataclasses.fields(cls) if (o := opt_of(f)) is not None]


# --- types ----------------------------------------------------------------------------------------
def unwrap(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def item_type(tp: Any) -> Any | None:
    """``tuple[int, ...]`` -> int; None for a scalar type."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0]
    return None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_NAMES = {int: "an integer", float: "a finite number", bool: "True or False", str: "a string", Path: "a path"}


def _scalar_ok(v: object, tp: Any) -> bool:
    if tp is int:
        return _is_int(v)
    if tp is float:
        return _is_num(v)
    if tp is bool:
        return isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp is Path:
        return isinstance(v, (str, Path))
    return True  # other types are the config's own business (its __post_init__)


def describe(o: Opt, tp: Any) -> str:
    """What a valid value looks like: "an integer >= 1", "one of sgd, adam", "in (0, 1)"."""
    base, _ = unwrap(tp)
    item = item_type(base)
    scalar = item if item is not None else base
    if o.choices is not None:
        want = "one of " + ", ".join(map(str, o.choices))
    else:
        want = _NAMES.get(scalar, getattr(scalar, "__name__", str(scalar)))
        lo = None if o.min is None else ("(" if o.min_open else "[") + f"{o.min:g}"
        hi = None if o.max is None else f"{o.max:g}" + (")" if o.max_open else "]")
        if lo is not None and hi is not None:
            want += f" in {lo}, {hi}"
        elif lo is not None:
            want += f" {'>' if o.min_open else '>='} {o.min:g}"
        elif hi is not None:
            want += f" {'<' if o.max_open else '<='} {o.max:g}"
    if item is not None:
        want = f"comma-separated values, each {want}"
        if o.distinct or o.increasing:
            want += ", " + ("increasing" if o.increasing else "distinct")
    return want


def _in_range(v: Any, o: Opt) -> bool:
    if o.choices is not None and v not in o.choices:
        return False
    if o.min is not None and (v < o.min or (o.min_open and v == o.min)):
        return False
    if o.max is not None and (v > o.max or (o.max_open and v == o.max)):
        return False
    return True


def check_value(value: Any, o: Opt, tp: Any, label: str) -> Any:
    """``value`` normalised (lists to tuples, ints to floats for float fields), or one clear error naming ``label``."""
    base, optional = unwrap(tp)
    if value is None and optional:
        return None
    item = item_type(base)
    bad = SparseflowError(f"{label} must be {describe(o, tp)}{' or None' if optional else ''}, got {value!r}")
    if item is not None:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise bad
        items = tuple(value)
        if (o.nonempty and not items) or not all(_scalar_ok(v, item) and _in_range(v, o) for v in items):
            raise bad
        if o.distinct and len(set(items)) != len(items):
            raise bad
        if o.increasing and any(a >= b for a, b in zip(items, items[1:])):
            raise bad
        return tuple(float(v) if item is float else v for v in items)
    if not _scalar_ok(value, base) or not _in_range(value, o):
        raise bad
    if base is float:
        return float(value)
    if base is Path:
        return Path(value)
    return value


def check(obj: Any, label: Callable[[str], str] | None = None) -> None:
    """Validate and normalise every :func:`option` field of a frozen dataclass in place (call in ``__post_init__``)."""
    prefix = type(obj).__name__
    for f, o, tp in fields(obj):
        name = label(f.name) if label is not None else f"{prefix}.{f.name}"
        value = check_value(getattr(obj, f.name), o, tp, name)
        object.__setattr__(obj, f.name, value)


# --- building from given values -----------------------------------------------------------------
def quick_values(cls: type[T], given: Mapping[str, Any]) -> dict[str, Any]:
    """The --quick value of every field not in ``given`` (callables see the defaults overridden by ``given``)."""
    base = {f.name: f.default for f, _, _ in fields(cls) if f.default is not dataclasses.MISSING}
    base.update(given)
    view = types.SimpleNamespace(**base)
    out: dict[str, Any] = {}
    for f, o, _ in fields(cls):
        if f.name in given or not o.has_quick:
            continue
        out[f.name] = o.quick(view) if callable(o.quick) else o.quick
    return out


def build(cls: type[T], given: Mapping[str, Any], *, quick: bool = False) -> T:
    """``cls(**given)``, under ``quick`` with the quick value of every field not given explicitly."""
    values = dict(given)
    if quick:
        values = {**quick_values(cls, given), **values}
    return cls(**values)


def parse_items(text: str, item: Any, label: str, noun: str | None = None) -> tuple:
    """``"500,1000"`` -> ``(500, 1000)`` for a comma-separated option; one clear error naming ``label`` (and
    what the items are, ``noun``, such as "widths")."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise SparseflowError(f"{label} needs at least one value, got {text!r}")
    try:
        return tuple(item(p) for p in parts if p)
    except ValueError:
        kind = noun or ("integers" if item is int else "numbers" if item is float else "values")
        example = "500,1000" if item is int else "0.5,0.1,0.02"
        raise SparseflowError(f"{label} takes comma-separated {kind} such as {example}, got {text!r}") from None


def _arg(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(_arg, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def command_line(prefix: str, *objs: Any) -> str:
    """The command that rebuilds ``objs`` (a config, then options): ``prefix``, ``--quick`` when the first has
    ``quick`` set, and every command-line option whose value differs from its default (its quick value under
    --quick), in declaration order. Reports print it so that a run can be repeated."""
    quick = bool(getattr(objs[0], "quick", False)) if objs else False
    parts = [prefix, *(["--quick"] if quick else [])]
    for obj in objs:
        base = quick_values(type(obj), {}) if quick else {}
        for f, o, _ in fields(obj):
            value = getattr(obj, f.name)
            if not o.cli or value == base.get(f.name, f.default):
                continue
            name = flag(f.name, o)
            if o.positional:
                parts.append(_arg(value))
            elif isinstance(value, bool):  # "--x" or "--x/--no-x"
                on, _, off = name.partition("/")
                parts.append(on if value else off or "--no-" + on.removeprefix("--"))
            else:
                parts += [name, _arg(value) or '""']  # an empty list as an argument the shell keeps
    return " ".join(parts)


def known(value: Any, names: Collection[Any], what: str) -> None:
    """Refuse a name that is not in a registry: "unknown method 'x'; choose one of dense, gmp, ..."."""
    if value not in names:
        raise SparseflowError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, names))}")


def like(cls: type, name: str, default: Any = _SAME, **changes: Any) -> Any:
    """A field declared as ``cls.name`` is (its default, help, range), with ``default`` and Opt ``changes``:
    one config that shares settings with another declares them once."""
    f = cls.__dataclass_fields__[name]
    o = dataclasses.replace(f.metadata["option"], **changes)
    return dataclasses.field(default=f.default if default is _SAME else default, metadata={"option": o})


def to_dict(obj: Any) -> dict[str, Any]:
    """The fields as JSON-ready values (tuples as lists, paths as strings)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
    return out


@dataclass(frozen=True)
class RunOptions:
    """The run directory every command that writes one takes (``--out``)."""

    out: Path | None = option(None, "Run directory (default runs/<name>, runs/<name>-quick under --quick).")


@dataclass(frozen=True)
class BudgetOptions(RunOptions):
    """:class:`RunOptions` and ``--yes``: run a grid estimated past the budget (:func:`~sparseflow.training.rundir.check_budget`)."""

    yes: bool = option(False, "Run even when the estimated time exceeds an hour.")

    def __post_init__(self) -> None:
        check(self)

    def check_budget(self, estimate_s: float, what: str) -> None:
        """Refuse a run estimated past the budget unless ``--yes`` (:func:`sparseflow.training.rundir.check_budget`)."""
        from sparseflow.training.rundir import check_budget

        check_budget(estimate_s, self.yes, what)
