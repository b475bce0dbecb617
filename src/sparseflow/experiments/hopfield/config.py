"""Settings of ``sparseflow experiment hopfield``: the full run and, through each field's ``quick``, the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from sparseflow.errors import SparseflowError
from sparseflow.training.options import check, option

CODINGS = (0.5, 0.2, 0.1, 0.05, 0.02)
SIZES = (500, 1000, 2000, 4000)
DILUTION = (1.0, 0.5, 0.25, 0.1)
# Seconds per N^2 for one capacity search at a = 1/2 (one recall per load), measured on 2 shared cores under
# load, one thread; a sparse search costs theta_steps / 2 times more (thresholds tried per load).
S_PER_N2 = 1.3e-6


@dataclass(frozen=True)
class HopConfig:
    """One capacity search per (a, N, seed), then the dilution curve (see :mod:`.run` for the protocol)."""

    seeds: int = option(3, "Seeds per (a, N), >= 2 (a t-interval needs two).", min=2)
    codings: tuple[float, ...] = option(CODINGS, "Coding levels a in (0, 0.5], e.g. 0.5,0.1,0.02.", min=0,
                                        min_open=True, max=0.5, distinct=True, quick=(0.5, 0.1, 0.05, 0.02))
    sizes: tuple[int, ...] = option(SIZES, "Network sizes N (units >= 50, increasing), e.g. 500,1000,2000,4000.",
                                    min=50, increasing=True, quick=(400, 800))
    cues: int = option(50, "Stored patterns tested per load.", min=1)
    m0: float = option(0.8, "Overlap of the corrupted cue.", min=0, min_open=True, max=1, flag="--m0")
    mode: str = option("async", "Recall dynamics: async or sync.", choices=("async", "sync"))
    connectivity: float = option(1.0, "Connectivity c of the grid.", min=0, min_open=True, max=1)
    dilution: tuple[float, ...] = option(DILUTION, "Connectivities of the dilution curve, e.g. 1,0.5,0.25,0.1, or "
                                         "'none'.", min=0, min_open=True, max=1, nonempty=False, quick=())
    tol: float = option(0.01, "Resolution of P_max (relative).", min=0, min_open=True, max=0.5, max_open=True,
                        quick=0.02)
    min_overlap: float = option(0.95, "Overlap a recalled pattern reaches.", min=0, min_open=True, max=1, cli=False)
    min_fraction: float = option(0.9, "Fraction of cues recalled for a load to succeed.", min=0, min_open=True,
                                 max=1, cli=False)
    theta_steps: int = option(7, "Thresholds tried per load for sparse patterns.", min=1, cli=False)
    dilution_coding: float = option(0.1, "Coding level of the dilution curve.", min=0, min_open=True, max=0.5,
                                    cli=False)
    dilution_size: int = option(1000, "Network size of the dilution curve.", min=1, cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        for a in self.codings:
            for n in self.sizes:
                if round(a * n) < 5:
                    raise SparseflowError(f"a = {a:g} at N = {n} leaves {round(a * n)} active units; "
                                          "use a larger N or a (a N >= 5)")

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds themselves: 0 .. seeds - 1."""
        return tuple(range(self.seeds))

    def runs(self) -> int:
        return (len(self.codings) * len(self.sizes) + len(self.dilution)) * self.seeds

    def estimate_s(self) -> float:
        """Seconds on 2 shared cores: per search S_PER_N2 x N^2, times theta_steps / 2 for sparse patterns."""
        def one(n: int, a: float) -> float:
            return (1 if a == 0.5 else self.theta_steps / 2) * n * n * S_PER_N2 * self.cues / 50

        grid = sum(one(n, a) for n in self.sizes for a in self.codings)
        dil = sum(one(self.dilution_size, self.dilution_coding) for _ in self.dilution)
        return (grid + dil) * self.seeds
