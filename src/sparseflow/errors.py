"""The one exception family for user mistakes.

Every error a user can cause by passing a bad value (sparsity out of range, unknown name, missing file,
mismatched mask) is a :class:`SparseflowError` whose message says what was wrong, the offending value and
what to do. The CLI prints the message and exits with status 2; library users catch it like ``ValueError``.

A file or folder that cannot be written or read (a file where a folder is needed or the reverse, a path under
a file, no permission, a full disk) is a :class:`PathError`, which is also an ``OSError`` carrying the
failure's ``errno``, and whose message names the path the user gave (never a temporary file).
"""

from __future__ import annotations


class SparseflowError(ValueError):
    """A user-facing error: bad input, with the offending value and a remedy in the message."""


class DataError(SparseflowError):
    """A dataset is missing, corrupt (checksum mismatch) or cannot be downloaded."""


class MaskError(SparseflowError):
    """A mask does not fit its model: unknown parameter, wrong shape or dtype, impossible density."""


class StorageError(SparseflowError):
    """A stored file is unreadable, corrupted or does not fit the model it is loaded into."""


class PathError(SparseflowError, OSError):
    """A file or folder cannot be written or read: wrong kind (file vs folder), under a file, missing folder,
    no permission or no space. ``errno`` is the operating system's code when there was one."""


class CheckpointError(StorageError):
    """A run's checkpoint cannot be written (full disk, no permission) or no valid one can be read."""


class WriteError(PathError):
    """A file could not be written (full disk, no permission, read-only file system); the message names the
    target file and says whether its previous version is unchanged.

    It is also an :class:`OSError` with the cause's ``errno`` and ``strerror``, so code that handles OS errors
    (``except OSError``, ``e.errno == errno.ENOSPC``) keeps working.
    """

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        if cause is not None:
            self.errno, self.strerror = cause.errno, cause.strerror

    def __str__(self) -> str:  # OSError's would print "[Errno N] strerror" instead of the message
        return str(self.args[0]) if self.args else ""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty): the part of a
    library's error that is worth quoting inside a one-line :class:`SparseflowError`."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
