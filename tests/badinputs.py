"""Fixtures and checks of the bad-input suite in tests/errors (loaded as a plugin by tests/conftest.py): one small
workspace of real files to make mistakes with, a read-only folder, and the checks every case shares (one
``error:`` line, exit status 2, no traceback, nothing written).

The workspace (built once per session, in about 3 s) holds::

    run/                a finished `sparseflow train` run (digits, MLP 64-16-10, 1 epoch, random mask)
    model.sfz           that run exported; dense.safetensors: exported with --dense (not an .sfz)
    trunc.sfz           the first 100 bytes of model.sfz; empty.sfz: 0 bytes; text.txt: three bytes of text
    afile               an empty file (where a folder is expected); d.sfz/, emptydir/: empty folders
    ro/                 a folder this user cannot write (see the ``readonly`` fixture)

Each case runs with the workspace as the current directory; a snapshot of every file (size, mtime) before
and after shows that a refused command wrote and changed nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]

Snapshot = dict[str, tuple[int, int] | str]


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root``: (size, mtime_ns) for files, "dir" for folders."""
    out: Snapshot = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
    return out


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


_BUILT: list[Path] = []  # the workspace, built once per test session whichever module asks first


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _BUILT:
        _BUILT.append(_build(tmp_path_factory.mktemp("errors-workspace")))
    return _BUILT[0]


def _build(root: Path) -> Path:
    from sparseflow.cli import main
    from sparseflow.training.job import TrainJob
    from sparseflow.training.run import run_train_job

    job = TrainJob(method="random", hidden=(16,), epochs=1, baseline=False)
    run_train_job(job, root / "run", progress=False)
    for args in (["export", str(root / "run"), "--out", str(root / "model.sfz")],
                 ["export", str(root / "run"), "--dense", "--out", str(root / "dense.safetensors")]):
        try:
            main(args)
        except SystemExit as e:
            assert not e.code, args
    (root / "trunc.sfz").write_bytes((root / "model.sfz").read_bytes()[:100])
    (root / "empty.sfz").write_bytes(b"")
    (root / "text.txt").write_text("hi\n")
    (root / "afile").write_bytes(b"")
    for d in ("d.sfz", "emptydir", "ro"):
        (root / d).mkdir()
    return root


@pytest.fixture
def workspace(workspace_template: Path, readonly: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shared workspace as the current directory; fails the test if the case changed any file in it."""
    monkeypatch.chdir(workspace_template)
    before = snapshot(workspace_template)
    yield workspace_template
    after = snapshot(workspace_template)
    changed = changes(before, after)
    for rel in changed:  # leave the workspace as it was for the next case
        p = workspace_template / rel
        if rel not in before:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    assert not changed, f"a refused input wrote or changed {changed}"


@pytest.fixture
def readonly(workspace_template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``ro/`` of the workspace, a folder this process cannot write (see :func:`make_read_only`)."""
    ro = workspace_template / "ro"
    make_read_only(ro, monkeypatch)
    yield ro
    os.chmod(ro, 0o755)


def make_read_only(ro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the folder ``ro`` read-only for this process. chmod 555 does that for an ordinary user; root may write
    anywhere, so then ``os.access`` reports the folder read-only and creating a file or folder in it fails with
    EACCES, as it would for a user without permission. The caller restores the mode (0o755) afterwards."""
    ro = ro.absolute()
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if not os.access(ro, os.W_OK):
        return
    import tempfile

    def inside(path: object) -> bool:
        p = Path(os.fspath(path)).absolute()  # type: ignore[arg-type]
        return p == ro or ro in p.parents

    real_access, real_mkstemp, real_mkdir = os.access, tempfile.mkstemp, Path.mkdir

    def access(path: object, mode: int, *a: object, **k: object) -> bool:
        if inside(path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)  # type: ignore[arg-type]

    def mkstemp(*a: object, dir: object = None, **k: object) -> tuple[int, str]:  # noqa: A002
        if dir is not None and inside(dir):
            raise PermissionError(13, "Permission denied", os.path.join(os.fspath(dir), ".x.tmp"))  # type: ignore
        return real_mkstemp(*a, dir=dir, **k)  # type: ignore[arg-type]

    def mkdir(self: Path, *a: object, **k: object) -> None:
        if inside(self) and self.absolute() != ro:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(Path, "mkdir", mkdir)


def check_cli_refusal(result: tuple[int, str, str], needles: tuple[str, ...]) -> str:
    """Exit status 2, exactly one ``error:`` line (the last one), no traceback, every needle in that line, and
    none of the spellings a command-line user cannot act on. Returns the line."""
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out[-500:], err[-500:])
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    line = errors[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    for api_only in ("resume=True", ".tmp'"):
        assert api_only not in line, line
    return line


def run_refused(run_cli: RunCli, argv: list[str], needles: tuple[str, ...]) -> str:
    return check_cli_refusal(run_cli(argv), needles)
