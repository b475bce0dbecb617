"""Settings of ``sparseflow experiment collapse``: the full run and, through each field's ``quick``, the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.training.options import check, option


@dataclass(frozen=True)
class CollapseConfig:
    """An MLP of ``depth`` hidden layers of ``width`` units, pruned on a grid of compressions per method and seed."""

    seeds: int = option(5, "Seeds.", min=1, quick=2)
    depth: int = option(10, "Hidden layers of the MLP.", min=1)
    width: int = option(100, "Units per hidden layer.", min=1)
    grid_step: float = option(0.25, "Step of the grid of log10 compressions (from 10^0.5 to 10^4).", min=0,
                              min_open=True, max=3.5, cli=False, quick=0.5)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
