"""Settings of ``sparseflow experiment percolation``: the full run and, through each field's ``quick``, the quick one.

``seeds`` and ``epochs`` default to None: their value depends on the scale (and, for ``epochs``, on whether
the training runs on the digits or on MNIST), so the config resolves them (:meth:`PercolationConfig.mc_seeds`,
:meth:`~PercolationConfig.train_seeds`, :meth:`~PercolationConfig.train_epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.errors import SparseflowError
from sparseflow.training.options import check, option

CS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0)
CS_QUICK = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
TRAIN_CS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class PercolationConfig:
    """Random-mask Monte Carlo over ``cs`` x ``widths`` x ``depths``, p_c for every fan-out in ``bs``, and a
    training sweep over ``train_cs`` (skipped with ``train=False``)."""

    seeds: int | None = option(None, "Seeds for the Monte Carlo and the training (default 10 / 3; quick 4 / 1).", min=1)
    widths: tuple[int, ...] = option((256, 1024, 4096), "Widths of the random-mask Monte Carlo, e.g. 256,1024,4096.",
                                     min=1, quick=(256, 1024))
    depths: tuple[int, ...] = option((10, 30, 100), "Depths at which the surviving fraction is read, e.g. 10,30,100.",
                                     min=2, quick=(10, 30))
    pc_width: int = option(4096, "Width of the fan-out networks for p_c.", min=1, quick=1024)
    pc_depth: int = option(100, "Depth L for p_c; curves at L/2 and L cross.", min=2, quick=40)
    epochs: int | None = option(None, "Epochs per training run (default 30 on digits, 10 on MNIST; quick 20 / 3).",
                                min=1)
    train: bool = option(True, "Run the training sweep (--no-train skips it).", flag="--train/--no-train")
    cs: tuple[float, ...] = option(CS, "Mean fan-ins c of the random-mask Monte Carlo.", min=0, min_open=True,
                                   cli=False, quick=CS_QUICK)
    bs: tuple[int, ...] = option((2, 4, 10), "Fan-outs b whose threshold p_c = 1 - 1/b is estimated.", min=1, cli=False)
    train_cs: tuple[float, ...] = option(TRAIN_CS, "Mean fan-ins c of the training sweep.", min=0, min_open=True,
                                         cli=False)
    train_depth: int = option(12, "Hidden layers of the trained MLPs.", min=2, cli=False)
    train_width: int = option(64, "Units per hidden layer of the trained MLPs.", min=1, cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if max(self.cs) > min(self.widths):
            raise SparseflowError(f"widths must be >= the largest mean fan-in {max(self.cs):g}, "
                                  f"got {','.join(map(str, self.widths))}")

    def mc_seeds(self) -> tuple[int, ...]:
        """Seeds of the random-mask Monte Carlo and of the p_c scans: ``seeds``, else 10 (quick 4)."""
        return tuple(range(self.seeds if self.seeds is not None else 4 if self.quick else 10))

    def train_seeds(self) -> tuple[int, ...]:
        """Seeds of the training sweep: ``seeds``, else 3 (quick 1)."""
        return tuple(range(self.seeds if self.seeds is not None else 1 if self.quick else 3))

    def train_epochs(self, dataset: str) -> int:
        """``epochs``, else 30 on the digits and 10 on MNIST (quick 20 / 3)."""
        if self.epochs is not None:
            return self.epochs
        return (20 if self.quick else 30) if dataset == "digits" else (3 if self.quick else 10)

    def subset(self, dataset: str) -> int | None:
        """MNIST training images (seeded subset): 20,000 (quick 5,000); None (all) on the digits."""
        return None if dataset == "digits" else 5000 if self.quick else 20000
