"""``sparseflow --version`` prints the installed package's version."""

from __future__ import annotations

from importlib.metadata import version

import sparseflow
from conftest import RunCli


def test_version_flag(run_cli: RunCli) -> None:
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"sparseflow {sparseflow.__version__}"
    assert sparseflow.__version__ == version("sparseflow")
