"""Settings of ``sparseflow experiment init``: the full run and, through each field's ``quick``, the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.training.options import check, option


@dataclass(frozen=True)
class InitConfig:
    """A ``depth``-layer ReLU MLP of width ``width`` per sparsity, init and seed, trained with SGD.

    ``epochs`` defaults to None: 3, and under --quick 2 on MNIST but 12 on the 8x8 digits, whose 1,437
    training examples give 2 epochs of only 24 steps, too few to train any 20-layer net (12 epochs, 144
    steps, still finish in about 20 s); :meth:`train_epochs` resolves it once the dataset is known.
    """

    depth: int = option(20, "Weight layers (depth - 1 hidden layers + classifier).", min=2)
    width: int = option(256, "Units per hidden layer.", min=1)
    seeds: int = option(3, "Seeds.", min=1, quick=1)
    epochs: int | None = option(None, "Epochs per run (default 3; quick 2 on MNIST, 12 on digits).", min=1)
    train_size: int | None = option(None, "Training examples (default all).", min=1, quick=8192)
    test_size: int | None = option(None, "Test examples (default all).", min=1, cli=False, quick=2000)
    sparsities: tuple[float, ...] = option((0.9, 0.95, 0.98), "Sparsities of the uniform random masks.", min=0,
                                           max=1, min_open=True, max_open=True, cli=False)
    batch_size: int = option(128, "SGD batch size.", min=1, cli=False)
    lr: float = option(0.02, "SGD learning rate.", min=0, min_open=True, cli=False)
    momentum: float = option(0.9, "SGD momentum.", min=0, max=1, max_open=True, cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)

    def train_epochs(self, dataset: str) -> int:
        """``epochs``, else 3 (quick: 2 on MNIST, 12 on the digits; see the class docstring)."""
        if self.epochs is not None:
            return self.epochs
        return (12 if dataset == "digits" else 2) if self.quick else 3
