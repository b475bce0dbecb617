"""Settings of ``sparseflow experiment meanfield``: the full run and, through each field's ``quick``, the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.training.options import check, option

DENSITIES = (1.0, 0.5, 0.1, 0.05)


@dataclass(frozen=True)
class MeanfieldConfig:
    """A ``depth``-layer ReLU MLP of width ``width`` per density and init, fed a Gaussian batch."""

    seeds: int = option(3, "Seeds per density and init.", min=1, quick=1)
    width: int = option(1024, "Units per layer (the criteria are stated for >= 1024).", min=2)
    depth: int = option(30, "Linear layers.", min=2)
    batch: int = option(256, "Gaussian inputs per network.", min=2, quick=128)
    densities: tuple[float, ...] = option(DENSITIES, "Mask densities s.", min=0, min_open=True, max=1, distinct=True)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
