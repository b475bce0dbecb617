"""Coverage-guided fuzzing of the ``.sfz`` reader with atheris (libFuzzer for Python).

Complements ``python benchmarks/fuzz/run_fuzz.py`` (seeded, structure-aware, fixed count): libFuzzer keeps the inputs that
reach new branches of the reader and the mask codecs (instrumented here) and mutates those. Half of the
mutations are libFuzzer's own byte-level ones, half are the structure-aware ones of
`sfz_mutate.py`, so header-consistent edits reach the codecs' inner checks.

Any exception other than ``StorageError`` is a crash; libFuzzer's ``-timeout`` and ``-rss_limit_mb`` catch
hangs and over-allocation. Usage (``pip install atheris``; it ships CPython 3.11 manylinux wheels)::

    python benchmarks/fuzz_atheris.py CORPUS_DIR -max_total_time=600 -timeout=1 -rss_limit_mb=2048 -max_len=262144

``CORPUS_DIR`` is seeded with valid files from :func:`~sfz_mutate.make_pool` if empty.
"""

from __future__ import annotations

import os
import sys

import atheris
import numpy as np

with atheris.instrument_imports(include=["sparseflow.storage"]):  # the reader and every codec, not the mutator
    from sparseflow.errors import StorageError
    from sparseflow.storage import codec, container, context  # noqa: F401  (context is imported lazily otherwise)
    from sparseflow.storage.container import read_bytes

from sfz_mutate import make_pool, mutate  # noqa: E402

_MAX_NUMEL = 2**20


def test_one_input(data: bytes) -> None:
    try:
        stored = read_bytes(data, max_numel=_MAX_NUMEL)
    except StorageError:
        return
    for name, t in stored.tensors.items():  # torch allocations are invisible to the RSS check at this size
        assert t.numel() <= _MAX_NUMEL, f"{name!r} decoded to {t.numel()} elements"


def main() -> None:
    pool = make_pool(0, 16)
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        if not os.listdir(d):
            for i, b in enumerate(pool):
                with open(os.path.join(d, f"seed{i:02d}.sfz"), "wb") as f:
                    f.write(b)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        if rng.random() < 0.5 or not data:
            return atheris.Mutate(data, max_size)
        out, _ = mutate(data, rng, pool)
        return out[:max_size]

    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
