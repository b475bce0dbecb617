"""What a training job reports: per-layer counts measured from the checkpoint, both accuracies, the health of
the trained network (connectivity, signal at initialisation) and the criteria ``sparseflow train`` checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseflow.analysis.connectivity import Connectivity
from sparseflow.analysis.signal import SignalReport
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


def health_warnings(conn: Connectivity | None, sig: SignalReport | None) -> list[str]:
    """Warnings for the report and the console: a collapsed network, dead units, a signal far from critical."""
    out = []
    if conn is not None:
        if conn.collapsed:
            out.append("layer collapse: no input-output path survives the mask; the output ignores the input")
        dead = [f"{l.name} ({l.unreachable}/{l.out_units})" for l in conn.layers if l.unreachable]
        if dead and not conn.collapsed:
            out.append("units no input reaches: " + ", ".join(dead))
    if sig is not None and sig.verdict != "critical":
        out.append(f"signal at initialisation is {sig.verdict}: gain {sig.gain:.3g} over {len(sig.layers)} layers "
                   f"(critical is 1; see sparseflow.init)")
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
        return health_warnings(self.connectivity, self.signal) + notes

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
