"""What the command line shows: phase labels, a finished run said once, tables at full width off a terminal,
the criteria table and exit status, and the status line before PyTorch loads."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from sparseflow import _command_words
from sparseflow.cli.runner import Runner
from conftest import RunCli


def test_phases_are_labelled_and_a_finished_rerun_says_so(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "r"
    args = ["train", "--quick", "--epochs", "1", "--json"]
    code, stdout, err = run_cli([*args, "--out", str(out)])
    assert code == 0, err
    assert "sparseflow train: mlp on digits, gmp at sparsity 0.9, then the dense baseline" in err
    assert "sparse run (gmp, sparsity 0.9): 23 steps (1 epoch)" in err
    assert "dense baseline (same budget): 23 steps (1 epoch)" in err
    assert err.index("sparse run (gmp") < err.index("dense baseline (same")
    first = json.loads(stdout.strip().splitlines()[-1])
    # The rerun trains nothing: one line per run says so, with the accuracy its checkpoint holds; no bars
    # reading "loss nan".
    code, stdout, err = run_cli([*args, "--resume", str(out)])
    assert code == 0, err
    again = json.loads(stdout.strip().splitlines()[-1])
    assert again["accuracy"] == first["accuracy"] and again["dense_accuracy"] == first["dense_accuracy"]
    assert (f"sparse run (gmp, sparsity 0.9): already finished (23 steps, 1 epoch, test accuracy "
            f"{first['accuracy']:.4f}); reported from its checkpoint, not trained again") in err
    assert (f"dense baseline (same budget): already finished (23 steps, 1 epoch, test accuracy "
            f"{first['dense_accuracy']:.4f})") in err
    assert "nan" not in err and "epoch 1/1" not in err
    # The report carries the criteria the console shows.
    report = (out / "report.md").read_text()
    assert "## Criteria" in report and "2 of 2 criteria pass." in report
    for name, c in again["criteria"].items():
        assert f"| {name} | {c['value']:.4g} | {c['target']} | pass |" in report


def test_tables_use_the_full_width_when_not_a_terminal(tmp_path: Path, run_cli: RunCli,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # pytest-xdist's workers set COLUMNS=80
    run = tmp_path / "r"
    assert run_cli(["train", "--quick", "--epochs", "1", "--no-baseline", "--method", "random", "--no-progress",
                    "--out", str(run)])[0] == 0
    code, table, _ = run_cli(["analyze", str(run)])  # captured: stdout is not a terminal
    assert code == 0 and "…" not in table
    obj = json.loads(run_cli(["analyze", str(run), "--json"])[1].strip().splitlines()[-1])
    header = next(line for line in table.splitlines() if "layer" in line and "effective" in line)
    assert all(col in header for col in ("nonzeros", "no in", "no out", "unreached", "dead end", "const"))
    for layer in obj["layers"]:  # every row whole, on one line: the name and each count as the JSON has it
        row = next(line for line in table.splitlines() if f" {layer['name']} " in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells == [layer["name"], *(f"{layer[k]:,}" for k in ("in_units", "out_units", "nonzeros", "no_incoming",
                         "no_outgoing", "unreachable", "dead_end", "constant", "effective"))]
    summary = next(line for line in table.splitlines() if line.startswith("inputs reaching an output"))
    assert summary.endswith("collapsed")  # one line, not wrapped at 80 columns


def test_a_failed_criterion_exits_1_and_an_untestable_one_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    failing = {"criteria": {
        "bound": {"value": 1.5, "target": "<= 1", "pass": False},
        "scale": {"value": 2.0, "target": ">= 3 pp", "pass": None, "note": "not resolved at this scale"},
        "ok": {"value": 0.5, "target": "<= 1", "pass": True}}}
    with pytest.raises(typer.Exit) as e:
        Runner("x", as_json=True, quick=False).finish(failing)
    assert e.value.exit_code == 1
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == failing  # the JSON line comes before the exit
    assert "FAIL" in err and "n/a scale: not resolved at this scale" in err
    assert "1 criterion failed: bound (exit status 1)" in err
    untestable = {"criteria": {k: v for k, v in failing["criteria"].items() if k != "bound"}}
    Runner("x", as_json=False, quick=True).finish(untestable)  # returns: exit status 0
    out, err = capsys.readouterr()
    assert "n/a" in out and "FAIL" not in out and "failed:" not in err


def test_status_line_only_for_the_command_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cases = [  # (sys.argv while sparseflow is imported, sys.orig_argv) -> command words
        (["/venv/bin/sparseflow", "train", "--quick"], ["python", "/venv/bin/sparseflow", "train", "--quick"], ["train"]),
        (["-m"], ["python", "-X", "importtime", "-m", "sparseflow", "experiment", "methods", "--quick"],
         ["experiment", "methods"]),
        (["-m"], ["python", "-m", "sparseflow.cli", "bench", "overhead"], ["bench", "overhead"]),
        (["/src/sparseflow/__main__.py", "train"], ["python", "-m", "sparseflow", "train"], ["train"]),  # when run
        (["/venv/bin/sparseflow", "train", "--help"], ["python", "/venv/bin/sparseflow", "train", "--help"], None),
        (["/venv/bin/sparseflow"], ["python", "/venv/bin/sparseflow"], None),
        (["/venv/bin/sparseflow", "--version"], ["python", "/venv/bin/sparseflow", "--version"], None),
        (["my_script.py", "train"], ["python", "my_script.py", "train"], None),  # a library user's program
        (["-m"], ["python", "-m", "mytool", "train"], None),
    ]
    for argv, orig, words in cases:
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert _command_words() == words, (argv, orig)
    monkeypatch.setattr(sys, "argv", cases[0][0])
    monkeypatch.setattr(sys, "orig_argv", cases[0][1])
    monkeypatch.setenv("LOCAL_RANK", "1")  # a torchrun worker: its parent has shown the line
    assert _command_words() is None


def _pty_output(args: list[str]) -> bytes:
    """Everything a command writes to a pseudo-terminal (stdout and stderr), as it would reach a user."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, its output on the terminal
        os.execvpe(args[0], args, dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    return b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_sees_a_line_before_torch_loads_and_it_is_erased(tmp_path: Path) -> None:
    missing = tmp_path / "none.sfz"
    got = _pty_output([sys.executable, "-m", "sparseflow", "inspect", str(missing)]).decode()
    status = f"sparseflow inspect {missing}: loading PyTorch…"
    assert got.startswith(f"\r{status}")  # the first thing written, before any import of torch
    erased = got.index("\r\x1b[K")
    assert erased > 0 and got.index("error:") > erased  # erased before the command's own output
    # Imported as a library, sparseflow writes nothing (on a terminal too).
    assert _pty_output([sys.executable, "-c", "import sparseflow"]) == b""
    # Off a terminal (a pipe) the command writes only its own output.
    piped = subprocess.run([sys.executable, "-m", "sparseflow", "inspect", str(missing)], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert piped.returncode == 2 and piped.stderr.startswith("error:") and "loading PyTorch" not in piped.stderr


def test_progress_off_a_terminal_prints_throttled_plain_lines(monkeypatch, capsys) -> None:
    """Under nohup or a pipe a bar cannot redraw: plain lines instead, at most one per LOG_EVERY_S, and the last."""
    import sparseflow.cli.runner as runner

    clock = iter([0.0, 1.0, 2.0, 15.0, 16.0, 17.0])
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(clock))
    r = Runner("demo", as_json=False, quick=False)
    assert not r.err.is_terminal  # pytest captures stderr
    with r.progress("work", total=4) as tick:
        tick("a")  # t=1: first line
        tick("b")  # t=2: throttled
        tick("c")  # t=15: 14 s after the last line
        tick("d")  # t=16: the last unit, always printed
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["work: 1/4 a (1 s)", "work: 3/4 c (15 s)", "work: 4/4 d (16 s)"]
    with r.progress("quiet", total=2, enabled=False) as tick:
        tick("x")
    assert capsys.readouterr().err.strip() == ""


def test_plain_lines_report_a_long_unit_in_progress(monkeypatch, capsys) -> None:
    """Ticks that only say what is going on (advance 0: an epoch inside a long unit) reach the log too, at the same
    rate; a tick that neither advances nor says anything prints nothing."""
    import sparseflow.cli.runner as runner

    clock = iter([0.0, 1.0, 5.0, 12.0, 30.0, 31.0])
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(clock))
    r = Runner("demo", as_json=False, quick=False)
    with r.progress("work", total=1) as tick:
        tick("epoch 1", advance=0)  # t=1: printed
        tick("epoch 2", advance=0)  # t=5: throttled
        tick("epoch 3", advance=0)  # t=12: printed
        tick("", advance=0)         # t=30: nothing to say
        tick("done")                # t=31: the last unit
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["work: 0/1 epoch 1 (1 s)", "work: 0/1 epoch 3 (12 s)", "work: 1/1 done (31 s)"]
