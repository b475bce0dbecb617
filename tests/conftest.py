"""Shared test fixtures: tiny seeded models for the core tests (mask, patterns, methods)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

# The bad-input suite's workspace, read-only folder and refusal checks (tests/badinputs.py).
pytest_plugins = ("badinputs",)

# Under pytest-xdist every worker gets its share of the cores for torch's intra-op threads: two workers of two
# threads each on two cores spin against each other (a tiny conv net's 60 steps took 8.8 s instead of 1.2 s).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS) if "PYTEST_XDIST_WORKER" in os.environ else None


@pytest.fixture(autouse=True)
def _worker_threads() -> None:
    """Each test starts with the worker's share of threads (a command run in-process may have changed it)."""
    if _THREADS is not None and torch.get_num_threads() != _THREADS:
        torch.set_num_threads(_THREADS)


def build_tiny_mlp(widths: Sequence[int] = (8, 16, 12, 4), seed: int = 0) -> nn.Sequential:
    """Linear(w0, w1) -> ReLU -> ... -> Linear(w_{k-1}, w_k), initialised from ``seed``.

    The default widths divide by 4 along every input and by 2 along every output, so NM(2, 4) and
    Block(2, 2) fit every layer.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_tiny_convnet(seed: int = 0) -> nn.Sequential:
    """Input (4, 6, 6): Conv2d(4, 8, 3) -> ReLU -> Conv2d(8, 4, 3, padding=1) -> ReLU -> Linear(64, 4).

    Input channels (4, 8, 64) divide by 4 and every (out, kernel * in) matrix view divides into 2x2 tiles.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 4),
    )


@pytest.fixture(scope="session")
def make_tiny_mlp() -> Callable[..., nn.Sequential]:
    """Factory: ``make_tiny_mlp(widths=(8, 16, 12, 4), seed=0)``."""
    return build_tiny_mlp


@pytest.fixture(scope="session")
def make_tiny_convnet() -> Callable[..., nn.Sequential]:
    """Factory: ``make_tiny_convnet(seed=0)``; input shape (batch, 4, 6, 6), 4 outputs."""
    return build_tiny_convnet


RunCli = Callable[[Sequence[str]], tuple[int, str, str]]


def criteria_exit(obj: dict) -> int:
    """The exit status a command's JSON object implies: 1 when a measured criterion failed (``"pass": false``),
    else 0 (a criterion the run cannot test, ``"pass": null``, does not fail)."""
    return 1 if any(c.get("pass") is False for c in (obj.get("criteria") or {}).values()) else 0


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run ``sparseflow ARGS`` in-process: (exit status, stdout, stderr)."""
    from sparseflow.cli import main

    def run(args: Sequence[str]) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
