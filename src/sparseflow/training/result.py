"""What a training job reports: per-layer counts measured from the checkpoint, both accuracies, the health of
the trained network (connectivity, signal at initialisation) and the criteria ``sparseflow train`` checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseflow.analysis.connectivity import Connectivity
from sparseflow.analysis.signal import GAIN_BAND, SignalReport
from sparseflow.training.job import TrainJob
from sparseflow.training.state import TrainResult


@dataclass(frozen=True)
class LayerStats:
    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    target: bool  # pruned by the method (False: kept dense)

    @property
    def density(self) -> float:
        return self.nonzeros / self.numel

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "numel": self.numel,
                "nonzeros": self.nonzeros, "density": self.density, "pruned": self.target}


def layer_stats(state_dict: dict[str, torch.Tensor], names: list[str], targets: set[str]) -> list[LayerStats]:
    """Per-layer nonzero counts measured from saved weights; ``targets`` are the layers the method prunes."""
    out = []
    for n in names:
        w = state_dict[n]
        out.append(LayerStats(n, tuple(w.shape), w.numel(), int(torch.count_nonzero(w)), n in targets))
    return out


def _perplexity(run: TrainResult | None) -> float | None:
    loss = None if run is None else run.test_loss
    return None if loss is None else math.exp(min(loss, 700.0))  # (exp overflows a float past ~709)


WASTE_WARN = 0.01  # warn when at least this fraction of the kept weights lies on no input-output path
_SHOWN = 4  # layers named in a warning


def _listed(items: list[str]) -> str:
    more = f", and {len(items) - _SHOWN} more layers" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def connectivity_warnings(conn: Connectivity, run_dir: str | None = None) -> list[str]:
    """What the mask's structure costs this network, and what changes it (see :func:`health_warnings`)."""
    repair = f"`sparseflow analyze {run_dir or 'RUN_DIR'} --repair FILE.safetensors`"
    if conn.collapsed:
        return ["layer collapse: no input-output path survives the mask, so the output ignores the input and the "
                "accuracy stays at chance. Lower --sparsity, keep the first or last layer dense (--no-prune-first, "
                "--no-prune-last; sf.Targets(first_layer=False)), or give every unit an input and an output at the "
                f"same weight count with {repair} (sf.repair_mask; sequential models)"]
    if conn.analysis != "graph":  # layer-local: no paths, only units with no kept incoming weight
        dead = [(f"{layer.name}" + (f" [{layer.chunk}]" if layer.chunk else ""), layer.no_incoming, layer.out_units)
                for layer in conn.layers if layer.no_incoming]
        units = sum(layer.out_units for layer in conn.layers) or 1
        if not dead or sum(d[1] for d in dead) / units < WASTE_WARN:
            return []
        names = [d[0].split(" [")[0] for d in dead]
        return [f"units with no kept incoming weight output a constant (their bias), so they carry nothing from "
                f"the input: {_listed([f'{n} {a}/{b}' for n, a, b in dead])}. Lower the sparsity of those layers, or "
                f"leave them dense with sf.Targets(exclude={tuple(sorted(set(names))[:_SHOWN])!r}) (paths were not analysed: "
                f"{conn.reason})"]
    if conn.effective is None or not conn.nonzeros:
        return []
    wasted = conn.nonzeros - conn.effective
    if wasted / conn.nonzeros < WASTE_WARN:
        return []
    no_in = [f"{layer.name} {layer.unreachable}/{layer.out_units}" for layer in conn.layers if layer.unreachable]
    no_out = [f"{layer.name} {layer.dead_end}/{layer.out_units}" for layer in conn.layers if layer.dead_end]
    units = " or ".join(([f"units no input reaches ({_listed(no_in)})"] if no_in else [])
                        + ([f"units that reach no output ({_listed(no_out)})"] if no_out else []))
    return [f"{wasted:,} of the {conn.nonzeros:,} kept weights ({wasted / conn.nonzeros:.1%}) do no work, so the "
            f"effective sparsity is {conn.effective_sparsity:.4f}, not {conn.sparsity:.4f}: they feed or read {units}. "
            f"To move them onto working units at the same count per layer: {repair} (sf.repair_mask, "
            "sf.apply_repair_; sequential models), then fine-tune; or train at a lower --sparsity"]


def signal_warnings(sig: SignalReport, reference: SignalReport | None = None, starts_dense: bool = False) -> list[str]:
    """A warning when the signal at initialisation is far from critical *because of the mask*.

    ``reference`` is the same network dense with the same initialisation. No warning when the method starts
    dense (magnitude, GMP: the signal is then the dense initialisation's, not an effect of sparsity), nor when
    the dense network has the same verdict and the mask changes the gain less than tenfold: PyTorch's default
    initialisation is sub-critical in deep ReLU networks whether or not they are sparse (χ = 1/6 per layer).
    """
    if starts_dense or sig.verdict in ("critical", "unknown"):
        return []
    layers = len(sig.layers)
    effect = ("the first steps learn slowly or not at all" if sig.verdict == "vanishing"
              else "the first steps may diverge")
    he = ("--sparse-init he (sf.sparse_init_) redraws the kept weights from N(0, 2/kept fan-in), critical for "
          "ReLU networks")
    if reference is None:
        return [f"signal at initialisation is {sig.verdict}: end-to-end gain {sig.gain:.3g} over {layers} layers "
                f"(critical is 1), so {effect}. {he}; sf.calibrate_ rescales each layer on a data batch"]
    ratio = sig.gain / reference.gain if reference.gain > 0 and math.isfinite(reference.gain) else math.nan
    if reference.verdict == sig.verdict and GAIN_BAND[0] <= ratio <= GAIN_BAND[1]:
        return []  # the initialisation's verdict, not the mask's (the report says so)
    return [f"signal at initialisation is {sig.verdict}: the mask takes the end-to-end gain over {layers} layers to "
            f"{sig.gain:.3g}, from {reference.gain:.3g} for the same weights dense, so {effect}. --sparse-init "
            f"rescale (sf.rescale_) gives each unit back its dense norm; {he}"]


def signal_note(sig: SignalReport, reference: SignalReport | None, starts_dense: bool, method: str) -> str:
    """One sentence for the report: whose signal this is, and when it is not a warning, why."""
    if starts_dense:
        text = (f"{method} starts from the dense network, so this is the signal of the dense initialisation, "
                "not an effect of the mask.")
    elif reference is not None:
        text = (f"The same weights dense: gain {reference.gain:.3g}, **{reference.verdict}**"
                + (": the mask does not change the verdict." if reference.verdict == sig.verdict else "."))
    else:
        return ""
    if sig.verdict == "vanishing" and (starts_dense or reference is not None and reference.verdict == "vanishing"):
        text += (" PyTorch's default initialisation is sub-critical in ReLU networks (χ = 1/6 per layer); "
                 "`--sparse-init he` (`sf.sparse_init_`) starts from He's, which is critical.")
    return text


def health_warnings(conn: Connectivity | None, sig: SignalReport | None, *, reference: SignalReport | None = None,
                    starts_dense: bool = False, run_dir: str | None = None) -> list[str]:
    """Warnings for the report and the console, each saying what it means for the run and what changes it: a
    collapsed network, kept weights on no input-output path (units without input or output), a signal at
    initialisation far from critical because of the mask (see :func:`signal_warnings` for ``reference`` and
    ``starts_dense``). ``run_dir`` makes the suggested commands concrete."""
    out = connectivity_warnings(conn, run_dir) if conn is not None else []
    if sig is not None:
        out += signal_warnings(sig, reference, starts_dense)
    return out


@dataclass(frozen=True)
class JobResult:
    job: TrainJob
    run_dir: Path
    accuracy: float
    dense_accuracy: float | None
    sparsity: float
    layers: list[LayerStats]
    sparse: TrainResult
    dense: TrainResult | None
    wall_s: float
    mask_sparsity: float = 0.0  # from the saved mask (the method's state), not the weights
    schedule: dict[str, Any] = field(default_factory=dict)
    connectivity: Connectivity | None = None  # of the final sparse model
    signal: SignalReport | None = None  # of the sparse model when training started (None when resumed)
    signal_reference: SignalReport | None = None  # of the same weights dense (None: the run started dense)
    starts_dense: bool = False  # the method trains the dense network first (dense, magnitude, gmp)
    storage: dict[str, Any] | None = None  # sizes of OUT/model.sfz against dense fp32 and the entropy bound
    sample: str | None = None  # a language model's generated text (None for a classifier)
    pretrained: str | None = None  # the Hugging Face folder the model was also saved to

    @property
    def language_model(self) -> bool:
        return self.sample is not None

    @property
    def perplexity(self) -> float | None:
        """exp of the mean validation cross-entropy per token (language models)."""
        return _perplexity(self.sparse) if self.language_model else None

    @property
    def dense_perplexity(self) -> float | None:
        if not self.language_model:
            return None
        if self.dense is not None:
            return _perplexity(self.dense)
        return self.perplexity if self.job.method == "dense" else None  # a dense run is its own baseline

    @property
    def warnings(self) -> list[str]:
        notes = [*self.sparse.notes, *(self.dense.notes if self.dense is not None else ())]
        return health_warnings(self.connectivity, self.signal, reference=self.signal_reference,
                               starts_dense=self.starts_dense, run_dir=str(self.run_dir)) + notes

    def to_json(self) -> dict[str, Any]:
        target = self.job.sparsity
        n = sum(layer.numel for layer in self.layers if layer.target) or sum(layer.numel for layer in self.layers)
        return {
            "command": "train",
            "run_dir": str(self.run_dir),
            "method": self.job.method,
            "dataset": self.job.dataset,
            "model": self.job.model,
            "target_sparsity": target,
            "sparsity": self.sparsity,  # over the pruned layers, measured from the checkpoint
            "overall_sparsity": 1 - sum(x.nonzeros for x in self.layers) / sum(x.numel for x in self.layers),
            "accuracy": self.accuracy,
            "dense_accuracy": self.dense_accuracy,
            "accuracy_gap": None if self.dense_accuracy is None else self.dense_accuracy - self.accuracy,
            "test_loss": self.sparse.test_loss,
            "dense_test_loss": None if self.dense is None else self.dense.test_loss,
            **({"perplexity": self.perplexity, "dense_perplexity": self.dense_perplexity, "sample": self.sample,
                "pretrained": self.pretrained} if self.language_model else {}),
            "layers": [layer.to_dict() for layer in self.layers],
            "steps": self.sparse.steps,
            "wall_s": self.wall_s,
            "schedule": self.schedule,
            "mask_sparsity": self.mask_sparsity,
            "connectivity": None if self.connectivity is None else self.connectivity.to_json(),
            "signal": None if self.signal is None else self.signal.to_json(),
            "signal_starts_dense": self.starts_dense,
            "signal_dense_reference": None if self.signal_reference is None else {
                "gain": self.signal_reference.gain, "verdict": self.signal_reference.verdict},
            "warnings": self.warnings,
            "storage": self.storage,
            "criteria": {
                # The exact-count rule rounds the total to whole weights: the mask is within 1/N of target,
                # and no weight outside it is nonzero (a kept weight may still be exactly zero, e.g. one
                # just regrown on an input that is always 0), so the measured sparsity is at least that.
                "sparsity_reached": {
                    "value": self.sparsity,
                    "target": f">= {target:g} - 1/N (N = {n} target weights)",
                    "pass": self.sparsity >= target - 1.0 / n - 1e-12,
                },
                "mask_count_exact": {
                    "value": self.mask_sparsity,
                    "target": f"within 1/N of {target:g}",
                    "pass": abs(self.mask_sparsity - target) <= 1.0 / n + 1e-12,
                },
            },
        }
