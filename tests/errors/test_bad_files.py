"""Files through the Python API: saving where a file cannot go, and reading files that are missing, damaged or
of another kind. Each raises a SparseflowError (a PathError for a path that cannot be written or read) with one
line naming the path the user gave, never a temporary file; a failed write keeps the earlier file and leaves no
temporary file behind."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import sparseflow as sf
from sparseflow.errors import PathError, SparseflowError, StorageError
from sparseflow.io import atomic_write_text, load_state, save_state
from sparseflow.training.job import read_job

from badinputs import make_read_only


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the current folder, with: good.sfz, dense.safetensors (a plain state dict), state.safetensors
    (a sparseflow state file), masks.sfm, trunc.sfz, empty.sfz, text.txt, afile, folder/, bad_run/ (a config.json
    that is not JSON), ro/ (read-only)."""
    monkeypatch.chdir(tmp_path)
    sf.save("good.sfz", mlp())
    save_file({k: v.contiguous() for k, v in mlp().state_dict().items()}, "dense.safetensors")
    save_state("state.safetensors", {"w": torch.ones(2)})
    sf.save_masks("masks.sfm", [sf.Mask({"w": torch.ones(4, 4, dtype=torch.bool)})])
    Path("trunc.sfz").write_bytes(Path("good.sfz").read_bytes()[:100])
    Path("empty.sfz").write_bytes(b"")
    Path("text.txt").write_text("hi\n")
    Path("afile").write_bytes(b"")
    Path("folder").mkdir()
    Path("bad_run").mkdir()
    Path("bad_run/config.json").write_text("{not json")
    Path("ro").mkdir()
    make_read_only(Path("ro"), monkeypatch)
    yield tmp_path
    os.chmod(tmp_path / "ro", 0o755)


Case = tuple[str, Callable[[], Any], type[SparseflowError], tuple[str, ...]]
CASES: list[Case] = [
    # writing
    ("save into a folder path", lambda: sf.save("folder", mlp()), PathError, ("'folder' is a folder, not a file",)),
    ("save into a missing folder", lambda: sf.save("nodir/m.sfz", mlp()), PathError,
     ("'nodir/m.sfz'", "'nodir' does not exist")),
    ("save under a file", lambda: sf.save("afile/m.sfz", mlp()), PathError, ("'afile/m.sfz'", "which is a file")),
    ("save into a read-only folder", lambda: sf.save("ro/m.sfz", mlp()), PathError, ("'ro/m.sfz'", "read-only")),
    ("save dtype fp8", lambda: sf.save("m.sfz", mlp(), dtype="fp8"), StorageError, ("fp8",)),
    ("save a mask of another model", lambda: sf.save("m.sfz", mlp(), mask={"nope.weight": torch.ones(3, dtype=bool)}),
     StorageError, ("nope.weight",)),
    ("save_masks into a folder path", lambda: sf.save_masks("folder", [sf.Mask()]), SparseflowError, ("'folder'",)),
    ("save_state under a file", lambda: save_state("afile/s.safetensors", {"x": 1}), PathError,
     ("'afile/s.safetensors'", "which is a file")),
    ("save_state into a read-only folder", lambda: save_state("ro/s.safetensors", {"x": 1}), PathError,
     ("'ro/s.safetensors'", "read-only")),
    ("atomic_write_text onto a folder", lambda: atomic_write_text("folder", "x"), PathError, ("'folder'",)),
    # reading
    ("load a missing file", lambda: sf.load("missing.sfz", mlp()), StorageError, ("missing.sfz", "does not exist")),
    ("load a folder", lambda: sf.load("folder", mlp()), StorageError, ("'folder'",)),
    ("load a text file", lambda: sf.load("text.txt", mlp()), StorageError, ("text.txt", "3 bytes")),
    ("load an empty file", lambda: sf.load("empty.sfz", mlp()), StorageError, ("empty.sfz", "0 bytes")),
    ("load a truncated file", lambda: sf.load("trunc.sfz", mlp()), StorageError, ("trunc.sfz", "truncated")),
    ("load a plain safetensors state dict", lambda: sf.load("dense.safetensors", mlp()), StorageError,
     ("dense.safetensors", "not a sparseflow sparse file")),
    ("load into another model", lambda: sf.load("good.sfz", nn.Sequential(nn.Linear(3, 3))), StorageError,
     ("'0.weight'", "(16, 8)", "(3, 3)")),
    ("load_mask of a text file", lambda: sf.load_mask("text.txt"), StorageError, ("text.txt",)),
    ("inspect a truncated file", lambda: sf.inspect("trunc.sfz"), StorageError, ("trunc.sfz",)),
    ("load_masks of a missing file", lambda: sf.load_masks("missing.sfm"), StorageError, ("missing.sfm",)),
    ("load_masks of a .sfz", lambda: sf.load_masks("good.sfz"), StorageError, ("good.sfz",)),
    ("load_state of a folder", lambda: load_state("folder"), PathError, ("'folder' is a folder, not a file",)),
    ("load_state of a missing file", lambda: load_state("missing.safetensors"), SparseflowError,
     ("'missing.safetensors' does not exist",)),
    ("load_state of a plain safetensors", lambda: load_state("dense.safetensors"), SparseflowError,
     ("'dense.safetensors'", "format field")),
    ("load_state of a text file", lambda: load_state("text.txt"), SparseflowError, ("'text.txt'", "3 bytes")),
    ("read_job of a damaged config", lambda: read_job(Path("bad_run")), SparseflowError,
     ("bad_run/config.json", "not valid JSON")),
    ("read_job of a file", lambda: read_job(Path("afile")), SparseflowError, ("'afile' is a file, not a folder",)),
]


@pytest.mark.parametrize("call, error, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_raises_one_clear_error(call: Callable[[], Any], error: type[SparseflowError],
                                         needles: tuple[str, ...], files: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip() and ".tmp" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    after = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


@pytest.mark.parametrize("failure, cause", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "Permission denied"),
                                            (errno.EROFS, "Read-only file system"), (errno.EIO, "Input/output error")])
@pytest.mark.parametrize("where", ["write", "replace"])
def test_a_failed_save_names_the_target_and_keeps_the_old_file(failure: int, cause: str, where: str, files: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """sf.save over an existing file fails half-way (while writing its temporary file, or renaming it): the error
    is a PathError (also an OSError with the errno) naming good.sfz, and good.sfz is the file it was before."""
    before = Path("good.sfz").read_bytes()
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(2)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(failure, os.strerror(failure), str(files / ".good.sfz.abc123.tmp"))

    monkeypatch.setattr(os, "fsync" if where == "write" else "replace", fail)
    with pytest.raises(PathError) as info:
        sf.save("good.sfz", model)
    assert str(info.value).startswith(f"cannot write 'good.sfz' ({cause})"), str(info.value)
    assert ".tmp" not in str(info.value) and info.value.errno == failure
    assert isinstance(info.value, OSError)
    assert Path("good.sfz").read_bytes() == before
    assert not [p.name for p in files.iterdir() if p.name.endswith(".tmp")]
