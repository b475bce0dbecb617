"""``sparseflow analyze``: connectivity of a run or checkpoint, and its repair."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.errors import SparseflowError
from sparseflow.training.options import check, option


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``sparseflow analyze`` reads, and where and how it writes the repaired weights."""

    path: Path = option(MISSING, "Run directory of `sparseflow train`, or a .safetensors checkpoint.", positional=True)
    repair: Path | None = option(
        None, "Write weights repaired so that every hidden unit has an input and an output (same count per layer).")
    seed: int = option(0, "Seed for the repair's tie-breaking and the signs of moved weights.")

    def __post_init__(self) -> None:
        check(self)
        if self.repair is not None and self.repair.suffix != ".safetensors":
            raise SparseflowError(f"--repair writes a .safetensors file; got {str(self.repair)!r}")


def analyze(call: Call) -> None:
    """Connectivity per layer: dead units, unreachable units, inputs reaching an output, effective sparsity,
    layer collapse (Vysogorets & Kempe 2023; Tanaka et al. 2020). --quick is accepted; the analysis is fast."""
    from sparseflow.analysis.loader import load_for_analysis, save_repaired
    from sparseflow.analysis.connectivity import connectivity
    from sparseflow.analysis.repair import apply_repair_, repair_mask
    from sparseflow.io import check_file_target

    path, repair, seed, run = call.config.path, call.config.repair, call.config.seed, call.run
    if repair is not None:  # refused before the analysis, not after it
        check_file_target(repair, "--repair")
    loaded = load_for_analysis(path)
    if repair is not None and _same_file(repair, path):
        raise SparseflowError(f"--repair {str(repair)!r} is the checkpoint being analysed; write the repaired "
                              "weights to another file, such as repaired.safetensors")
    c = connectivity(loaded.model, loaded.mask)
    show = lambda n: loaded.names.get(n, n)  # noqa: E731  (checkpoint names for an inferred MLP)
    run.table(f"connectivity of {loaded.source} ({type(loaded.model).__name__})",
              ("layer", "in", "out", "nonzeros", "no in", "no out", "unreached", "dead end", "const", "effective"),
              [(show(r.name) + (f" [{r.chunk}]" if getattr(r, "chunk", None) else ""),
                *("-" if v is None else f"{v:,}"  # None: a layer-local analysis has no paths to count
                  for v in (r.in_units, r.out_units, r.nonzeros, r.no_incoming, r.no_outgoing, r.unreachable,
                            r.dead_end, r.constant, r.effective)))
               for r in c.layers])
    run.print(c.summary())
    result = {"command": "analyze", "path": str(path), "source": loaded.source, "model": type(loaded.model).__name__,
              **c.to_json()}
    for row in result["layers"]:
        row["name"] = show(row["name"])
    if repair is not None:
        new_mask, report = repair_mask(loaded.model, loaded.mask, seed=seed)
        apply_repair_(loaded.model, new_mask, seed=seed)
        save_repaired(repair, loaded.model, new_mask, loaded)
        after = connectivity(loaded.model, new_mask)
        run.table(f"repair (written to {repair})",
                  ("layer", "kept", "units given an input", "units before given an output", "moved", "unfixed"),
                  [(show(r.name), *(f"{v:,}" for v in (r.kept, r.given_input, r.given_output, r.moved, r.unfixed)))
                   for r in report.layers])
        run.print(f"after repair: {after.summary()}")
        rep = report.to_json()
        for row in rep["layers"]:
            row["name"] = show(row["name"])
        result["repair"] = {**rep, "out": str(repair), "after": after.to_json()}
    run.finish(result)


def _same_file(out: Path, source: Path) -> bool:
    """Whether writing ``out`` would overwrite ``source`` (a checkpoint, or a run directory's checkpoints)."""
    out = out.resolve()
    if source.is_dir():
        return out.parent == source.resolve() and out.name.startswith("checkpoint")
    return out == source.resolve()


command(app, "analyze", analyze, config=AnalyzeConfig)
