"""Command-line mistakes caught while parsing (unknown option or command, a value of the wrong type, a missing
argument or value): each is one ``error:`` line naming what was wrong and the value, with exit status 2."""

from __future__ import annotations

import shlex

import pytest

from badinputs import RunCli, run_refused

CASES = [
    # unknown options, with the near miss suggested
    ("train --bogus", "unknown option (--bogus)", "sparseflow train --help"),
    ("train --meth x", "unknown option (--meth)", "--method"),
    ("lottery --prune 0.5", "unknown option (--prune)", "sparseflow lottery --help"),
    ("sweep --seed 1", "unknown option (--seed)", "--seeds"),
    ("export run --output x.sfz", "unknown option (--output)", "sparseflow export --help"),
    ("inspect model.sfz --verbose", "unknown option (--verbose)"),
    ("analyze run --fix x.safetensors", "unknown option (--fix)"),
    ("report run --html x.html", "unknown option (--html)"),
    ("stain run --unit 3", "unknown option (--unit)", "--units"),
    ("bench storage --bogus", "unknown option (--bogus)", "sparseflow bench storage --help"),
    ("experiment collapse --bogus", "unknown option (--bogus)", "sparseflow experiment collapse --help"),
    ("experiment normalisation --bogus", "unknown option (--bogus)"),
    ("experiment regularisation --bogus", "unknown option (--bogus)"),
    ("experiment methods --bogus", "unknown option (--bogus)"),
    # a value of the wrong type
    ("train --epochs abc", "--epochs takes an integer", "'abc'"),
    ("train --epochs=1.5", "--epochs takes an integer", "'1.5'"),
    ("train --sparsity x", "--sparsity takes a number", "'x'"),
    ("train --lr fast", "--lr takes a number", "'fast'"),
    ("train --seed 1.5", "--seed takes an integer", "'1.5'"),
    ("lottery --iterations many", "--iterations takes an integer", "'many'"),
    ("sweep --workers x", "--workers takes an integer", "'x'"),
    ("bench storage --seed x", "--seed takes an integer", "'x'"),
    ("stain run --units three", "--units takes an integer", "'three'"),
    ("analyze run --seed s", "--seed takes an integer", "'s'"),
    # unknown commands
    ("nope", "unknown command (nope)", "train"),
    ("bench nope", "unknown command (nope)", "storage"),
    ("experiment nope", "unknown experiment 'nope'", "collapse"),
    # missing arguments and option values
    ("export", "missing argument (SOURCE)"),
    ("export run", "missing option (--out"),
    ("inspect", "missing argument (FILE)"),
    ("analyze", "missing argument (PATH)"),
    ("report", "missing argument (RUN_DIR)"),
    ("stain", "missing argument"),
    ("train --epochs", "--epochs needs a value"),
    ("train --out", "--out needs a value"),
    ("experiment all --only", "--only needs a value"),
    # extra arguments and switches given a value
    ("train extra", "unexpected extra argument (extra)"),
    ("train a b", "unexpected extra argument (a b)"),
    ("train --baseline=3", "--baseline is a switch", "--baseline=..."),
    ("train --no-progress=x", "--no-progress is a switch"),
]


@pytest.mark.usefixtures("workspace")
@pytest.mark.parametrize("line, needles", [(c[0], c[1:]) for c in CASES], ids=[c[0] for c in CASES])
def test_usage_mistake_is_one_error_line(line: str, needles: tuple[str, ...], run_cli: RunCli) -> None:
    run_refused(run_cli, shlex.split(line), needles)


def test_bare_group_shows_its_help(run_cli: RunCli) -> None:
    code, out, err = run_cli(["bench"])
    assert code == 2 and "storage" in out and "Traceback" not in out + err
