"""Settings of ``sparseflow bench storage``: the full run and, through each field's ``quick``, the quick one.

Quick: the same layer (so the 90 % goal is checked as is), a smaller tensor for the coding sweep and the
timings, zstd level 3, and ResNet-50 dense and at one sparsity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sparseflow.training.options import check, option

RESNET = (("dense", 0.0), ("uniform", 0.8), ("erk", 0.8), ("uniform", 0.9), ("erk", 0.9), ("uniform", 0.99),
          ("erk", 0.99))


@dataclass(frozen=True)
class StorageConfig:
    """What is measured (the command line sets the seed and the threads; the rest is fixed per scale)."""

    side: int = option(4096, "Side of the square fp32 layer stored in every format.", cli=False, min=1)
    sparsities: tuple[float, ...] = option((0.5, 0.8, 0.9, 0.95, 0.98, 0.99), "Sparsities of that layer.",
                                           cli=False, min=0, max=1, max_open=True, quick=(0.8, 0.9, 0.99))
    zstd_level: int = option(19, "zstd level of the zstd rows.", cli=False, min=1, max=22, quick=3)
    code_side: int = option(4096, "Side of the masks of the coding sweep and the timings.", cli=False, min=4,
                            quick=2048)
    densities: tuple[float, ...] = option((0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95),
                                          "Densities of the coding sweep.", cli=False, min=0, max=1, min_open=True)
    speed_densities: tuple[float, ...] = option((0.05, 0.1, 0.2), "Densities of the codec timings.", cli=False,
                                                min=0, max=1, min_open=True)
    repeats: int = option(5, "Codec timings per density (median).", cli=False, min=1, quick=3)
    resnet: tuple[tuple[str, float], ...] = option(RESNET, "ResNet-50 (distribution, sparsity) pairs.", cli=False,
                                                   quick=(("dense", 0.0), ("erk", 0.9)))
    seed: int = option(0, "Seed of the random masks and values.")
    threads: int = option(1, "torch.set_num_threads while timing (the mask codec is serial).", min=1)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)

    def settings(self) -> dict[str, Any]:
        """The measurement settings as result.json records them (threads and scale are recorded beside them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("threads", "quick")}

    def command(self) -> str:
        """The command line that reproduces this run."""
        quick = " --quick" if self.quick else ""
        return f"sparseflow bench storage --seed {self.seed} --threads {self.threads}{quick}"
