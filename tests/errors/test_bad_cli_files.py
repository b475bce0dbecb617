"""Files and folders the commands read or write: a missing, damaged or foreign input, and an output into a
read-only folder, onto a file of the wrong kind, under a file, into a missing folder, or over the input itself.
Each is one ``error:`` line naming the path the user gave (never a temporary file), with exit status 2, and
nothing is written."""

from __future__ import annotations

import errno
import os
import shlex

import pytest

from badinputs import RunCli, run_refused

INPUTS = [
    ("export nowhere --out x.sfz", "'nowhere' does not exist"),
    ("export text.txt --out x.sfz", "'text.txt' is not a checkpoint", "3 bytes"),
    ("export emptydir --out x.sfz", "run directory 'emptydir' has no checkpoint.safetensors"),
    ("export model.sfz --out model.sfz", "--out 'model.sfz' is the source itself"),
    ("export run --out x.sfz --dtype fp8", "--dtype must be one of fp32, fp16, bf16", "'fp8'"),
    ("inspect nowhere.sfz", "'nowhere.sfz' does not exist"),
    ("inspect text.txt", "text.txt", "3 bytes"),
    ("inspect trunc.sfz", "trunc.sfz", "truncated"),
    ("inspect empty.sfz", "empty.sfz", "0 bytes"),
    ("inspect dense.safetensors", "dense.safetensors: not a sparseflow sparse file"),
    ("inspect emptydir", "'emptydir'", "is not a file"),
    ("inspect run", "'run'", "is not a file"),
    ("analyze nowhere", "'nowhere' does not exist"),
    ("analyze text.txt", "'text.txt' is not a checkpoint"),
    ("analyze emptydir", "run directory 'emptydir' has no checkpoint.safetensors"),
    ("analyze trunc.sfz", "trunc.sfz"),
    ("report nowhere", "run directory 'nowhere' does not exist"),
    ("report emptydir", "'emptydir' holds no results.json"),
    ("report afile", "run directory 'afile' does not exist or is not a folder"),
    ("stain nowhere", "'nowhere' does not exist"),
    ("stain text.txt", "'text.txt' is not a checkpoint"),
    ("stain run --units 0", "--units must be an integer >= 1", "got 0"),
    ("stain run --units -1", "--units must be an integer >= 1", "got -1"),
    ("stain run --layer nope", "no layer 'nope'", "layers.0"),
]

OUTPUTS = [
    # export: a file of the right kind, in a folder that exists and can be written
    ("export run --out x.txt", "--out should end in .sfz", "'x.txt'"),
    ("export run --dense --out x.sfz", "--dense writes a plain safetensors state dict", "'x.sfz'", ".safetensors"),
    ("export run --dense --out x.bin", "--out should end in .safetensors", "'x.bin'"),
    ("export run --out d.sfz", "--out 'd.sfz' is a folder, not a file"),
    ("export run --out afile/x.sfz", "--out 'afile/x.sfz' lies under 'afile', which is a file"),
    ("export run --out nodir/x.sfz", "--out 'nodir/x.sfz' cannot be written", "'nodir' does not exist"),
    ("export run --out ro/x.sfz", "--out 'ro/x.sfz' cannot be written", "'ro' is read-only"),
    ("export run --dense --out ro/x.safetensors", "--out 'ro/x.safetensors' cannot be written", "read-only"),
    ("export run --dense --out afile/x.safetensors", "lies under 'afile', which is a file"),
    # analyze --repair
    ("analyze run --repair x.txt", "--repair writes a .safetensors file", "'x.txt'"),
    ("analyze run --repair d.sfz", "--repair writes a .safetensors file", "'d.sfz'"),
    ("analyze run --repair afile/r.safetensors", "--repair 'afile/r.safetensors' lies under 'afile'"),
    ("analyze run --repair nodir/r.safetensors", "--repair 'nodir/r.safetensors' cannot be written"),
    ("analyze run --repair ro/r.safetensors", "--repair 'ro/r.safetensors' cannot be written", "read-only"),
    ("analyze run --repair run/checkpoint.safetensors", "is the checkpoint being analysed"),
    ("analyze run/checkpoint.safetensors --repair run/checkpoint.safetensors", "is the checkpoint being analysed"),
    # report --out
    ("report run --out x.md", "--out is an HTML page", "'x.md'"),
    ("report run --out run/report.md", "--out is an HTML page", "'run/report.md'"),
    ("report run --out run/result.json", "--out is an HTML page", "'run/result.json'"),
    ("report run --out afile/r.html", "--out 'afile/r.html' lies under 'afile'"),
    ("report run --out nodir/r.html", "--out 'nodir/r.html' cannot be written"),
    ("report run --out ro/r.html", "--out 'ro/r.html' cannot be written", "read-only"),
    # run folders: train, lottery, sweep, stain, bench, experiment
    ("train --out afile", "--out 'afile' is a file, not a folder"),
    ("train --out afile/r", "--out 'afile/r' lies under 'afile', which is a file"),
    ("train --out ro/r", "--out 'ro/r' cannot be written", "read-only"),
    ("train --out ro", "--out 'ro' cannot be written", "read-only"),
    ("lottery --out afile", "--out 'afile' is a file, not a folder"),
    ("lottery --out afile/x", "--out 'afile/x' lies under 'afile'"),
    ("lottery --quick --out ro/l", "--out 'ro/l' cannot be written", "read-only"),
    ("sweep --out afile", "--out 'afile' is a file, not a folder"),
    ("sweep --quick --out ro/s", "--out 'ro/s' cannot be written", "read-only"),
    ("stain run --out afile", "--out 'afile' is a file, not a folder"),
    ("stain run --out afile/s", "--out 'afile/s' lies under 'afile'"),
    ("stain run --out ro/s", "--out 'ro/s' cannot be written", "read-only"),
    ("bench storage --out afile", "--out 'afile' is a file, not a folder"),
    ("bench storage --quick --out ro/b", "--out 'ro/b' cannot be written", "read-only"),
    ("experiment collapse --out afile", "--out 'afile' is a file, not a folder"),
    ("experiment collapse --quick --out ro/c", "--out 'ro/c' cannot be written", "read-only"),
    ("experiment all --out afile", "--out 'afile' is a file, not a folder"),
    ("experiment all --quick --out afile/x", "--out 'afile/x' lies under 'afile'"),
]

CASES = INPUTS + OUTPUTS


@pytest.mark.usefixtures("workspace")
@pytest.mark.parametrize("line, needles", [(c[0], c[1:]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_path_is_one_error_line(line: str, needles: tuple[str, ...], run_cli: RunCli) -> None:
    run_refused(run_cli, shlex.split(line), needles)


@pytest.mark.parametrize("line", ["export run --out x.sfz", "export run --dense --out x.safetensors",
                                  "analyze run --repair r.safetensors", "report run --out r.html"])
@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EACCES, errno.EIO])
@pytest.mark.usefixtures("workspace")
def test_a_failed_write_names_the_target_not_its_temporary_file(line: str, failure: int, run_cli: RunCli,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The write itself fails (the disk fills up, permission is lost, an I/O error): the error names the file the
    user asked for, keeps an earlier file as it was and leaves no temporary file behind."""
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if str(src).endswith(".tmp"):
            raise OSError(failure, os.strerror(failure), src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    target = shlex.split(line)[-1]
    cause = "the disk is full" if failure == errno.ENOSPC else os.strerror(failure)
    run_refused(run_cli, shlex.split(line), (f"cannot write {target!r}", cause))
