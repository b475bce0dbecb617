"""Layer-collapse experiment: reachability against hand-built masks, probes on a hand-built model whose
collapse sparsity is known, and the quick table's structure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparseflow import GLOBAL, MagnitudePruning, SparseflowError
from sparseflow.experiments.collapse import CollapseConfig, CollapseTable, Probe, collapse_sparsity, has_path, probe, run
from sparseflow.experiments.collapse.run import compression_grid
from sparseflow.training.options import build


def _b(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_has_path_on_hand_built_masks() -> None:
    # 3 inputs -> 2 hidden -> 2 outputs (masks are (out, in))
    w1 = _b([[1, 0, 0], [0, 0, 0]])  # only input 0 -> hidden 0
    assert has_path([w1, _b([[1, 0], [0, 0]])])  # hidden 0 -> output 0: a path
    assert not has_path([w1, _b([[0, 1], [0, 1]])])  # only hidden 1 feeds the outputs: every layer non-empty, no path
    assert not has_path([_b([[0, 0, 0], [0, 0, 0]]), _b([[1, 1], [1, 1]])])
    # a conv (out=2, in=1, 3x3) whose channel 1 is cut, flattened (2 channels x 4 positions) into a Linear(8, 1)
    conv = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    conv[0, 0, 1, 1] = True
    lin = torch.zeros(1, 8, dtype=torch.bool)
    lin[0, 5] = True  # reads channel 1 (inputs 4..7): not reached
    assert not has_path([conv, lin])
    lin[0, 2] = True  # reads channel 0
    assert has_path([conv, lin])
    with pytest.raises(SparseflowError, match="do not chain"):
        has_path([w1, torch.ones(2, 3, dtype=torch.bool)])


def _two_by_two() -> nn.Sequential:
    """Global magnitude keeps 10 (in0 -> h0) and 5 (h1 -> out0) first: no path at 2 of 8 weights."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[10.0, 0.1], [0.1, 0.1]]))
        model[1].weight.copy_(torch.tensor([[0.2, 5.0], [0.1, 0.1]]))
    return model


def test_probe_and_collapse_sparsity_on_a_hand_built_model() -> None:
    make = lambda s: MagnitudePruning(s, distribution=GLOBAL)  # noqa: E731
    assert probe(make, _two_by_two, 0.5) == Probe(0.5, nonempty=True, connected=True)  # keeps 10, 5, 0.2, ...
    assert probe(make, _two_by_two, 0.75) == Probe(0.75, nonempty=True, connected=False)
    assert probe(make, _two_by_two, 0.875) == Probe(0.875, nonempty=False, connected=False)  # a layer emptied
    assert collapse_sparsity(make, _two_by_two, sparsities=[0.75, 0.25, 0.5, 0.875]) == 0.75
    assert collapse_sparsity(make, _two_by_two, sparsities=[0.0, 0.5]) is None


def test_compression_grid() -> None:
    grid = compression_grid(0.5)
    assert len(grid) == 8
    assert [round(-math.log10(1 - s), 6) for s in grid] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def test_quick_table_is_sane() -> None:
    threads = torch.get_num_threads()
    table = run(build(CollapseConfig, {"seeds": 1}, quick=True))
    assert torch.get_num_threads() == threads  # restored
    assert isinstance(table, CollapseTable)
    assert [r.method for r in table.rows] == ["magnitude", "random", "snip", "grasp", "synflow"]
    for r in table.rows:
        assert r.collapse is None or r.collapse in table.grid
        assert r.largest_nonempty is None or r.largest_nonempty in table.grid
        if r.collapse is not None and r.largest_nonempty is not None:  # a layer emptied cuts every path
            first_empty = next((s for s in table.grid if s > r.largest_nonempty), None)
            assert first_empty is None or r.collapse <= first_empty
    rows = {r.method: r for r in table.rows}
    # SynFlow stays connected past the point where global magnitude at initialisation has collapsed (by
    # two orders of magnitude of compression in every measured seed: 10^4 vs 10^1.75-10^2).
    assert rows["magnitude"].collapse is not None
    assert rows["synflow"].collapse is None or rows["synflow"].collapse > rows["magnitude"].collapse
    text = table.markdown()
    assert all(name in text for name in rows) and "compression" in text
