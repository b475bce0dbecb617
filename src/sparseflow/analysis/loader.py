"""Rebuild a model from a run directory or a checkpoint file, for analysis (no pickle, no training state).

Accepted:
- a run directory written by ``sparseflow train`` (``config.json`` + its newest valid checkpoint, see
  :func:`sparseflow.training.checkpoints.load_checkpoint`): the model is
  rebuilt from the TrainJob in the config, its weights loaded, and the method's saved mask used as structure;
- an ``.sfz`` file written by ``sparseflow.save`` or ``sparseflow export`` (its masks are the structure);
- a ``.safetensors`` file: a sparseflow state file (a train checkpoint, or a repaired file written by
  ``sparseflow analyze --repair``) or a plain safetensors state dict. Its model is rebuilt from a
  ``config.json`` beside it or stored in its header; without one, the 2-D weights must chain (each one's
  input size is the previous one's output size) and are read as an MLP. Their order is the stored order for
  a sparseflow state file; a plain safetensors file keeps none, so names are sorted with their numbers
  compared as numbers (``fc2`` before ``fc10``, ``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from torch import Tensor, nn

from sparseflow.training.checkpoints import load_checkpoint
from sparseflow.errors import SparseflowError
from sparseflow.io import load_state, save_state
from sparseflow.mask import Mask

# One example's shape and the classes of each dataset of sparseflow.training.data (fixed by the dataset, not the run).
DATASET_SHAPES = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10), "mnist": ((1, 28, 28), 10),
                  "fashion-mnist": ((1, 28, 28), 10),
                  "tinyshakespeare": ((128,), 65)}  # (context, vocabulary): what `sparseflow train` uses


@dataclass(frozen=True)
class Loaded:
    """A rebuilt model, the saved mask (if any), where it came from, and the run config (if any).

    ``names`` maps the model's parameter names to the checkpoint's (they differ for an inferred MLP chain).
    """

    model: nn.Module
    mask: Mask | None
    source: str
    config: dict[str, Any] | None
    names: dict[str, str]


def load_for_analysis(path: str | Path) -> Loaded:
    path = Path(path)
    if not path.exists():
        raise SparseflowError(f"{str(path)!r} does not exist; pass a run directory written by `sparseflow train` "
                              "or a .safetensors checkpoint")
    config: dict[str, Any] | None = None
    if path.is_dir():  # its newest valid checkpoint (the previous one, with a warning, if the newest is damaged)
        ckpt = load_checkpoint(path)
        state, meta, path = ckpt.state, ckpt.meta, ckpt.path
    else:
        state, meta = _read(path)
    if (path.parent / "config.json").is_file():
        try:
            config = json.loads((path.parent / "config.json").read_text())
        except ValueError as e:
            raise SparseflowError(f"{str(path.parent / 'config.json')!r} is not valid JSON ({e})") from None
    elif isinstance(meta.get("config"), dict):
        config = meta["config"]
    weights, mask = _split(state, path)
    if config is not None and isinstance(config.get("job"), dict):
        model, names = _from_job(config["job"], weights, path), {}
    else:
        model, names = _mlp_chain(weights, path)
        config = None
        if mask is not None:
            back = {v: k for k, v in names.items()}
            mask = Mask({back[n]: m for n, m in mask.items() if n in back}) or None
    return Loaded(model, mask, str(path), config, names)


def _read(path: Path) -> tuple[Any, dict[str, Any]]:
    try:
        return load_state(path)
    except SparseflowError as first:
        from sparseflow.storage.container import is_sparse_file, read_bytes

        data = path.read_bytes()
        if is_sparse_file(data):  # written by sparseflow.save / sparseflow export
            stored = read_bytes(data, where=str(path))
            return {"model": stored.tensors, "mask": dict(stored.mask) or None}, stored.meta
        try:
            plain = safetensors_load(path.read_bytes())  # a plain state dict, in no particular order
        except Exception:
            raise SparseflowError(f"{str(path)!r} is not a checkpoint: {first}") from None
        return {k: plain[k] for k in sorted(plain, key=_natural)}, {}


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _split(state: Any, path: Path) -> tuple[dict[str, Tensor], Mask | None]:
    """(weights, mask) from a train checkpoint, a repaired file or a plain state dict."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        weights = state["model"]
        saved = state.get("mask")
        if saved is None and isinstance(state.get("method"), dict):
            saved = state["method"].get("mask")
        mask = Mask({k: v.bool() for k, v in saved.items()}) if isinstance(saved, dict) and saved else None
    else:
        weights, mask = state, None
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, Tensor) for v in weights.values()):
        raise SparseflowError(f"{str(path)!r} holds no model weights (expected a state dict of tensors)")
    return weights, mask


def _from_job(job: dict[str, Any], weights: dict[str, Tensor], path: Path) -> nn.Module:
    from sparseflow.training.job import TrainJob
    from sparseflow.training.models import build_model

    try:
        j = TrainJob(**job)
    except TypeError as e:
        raise SparseflowError(f"the config of {str(path)!r} is not a sparseflow train config ({e})") from None
    shape, classes = DATASET_SHAPES[j.dataset]
    model = build_model(j.model, shape, classes, norm=j.norm, hidden=j.hidden)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise SparseflowError(f"the weights in {str(path)!r} do not fit the model its config describes "
                              f"({j.model} on {j.dataset}): {str(e).splitlines()[0]}") from None
    return model.eval()


class _Chain(nn.Module):
    """Linear layers named ``layers.0``, ``layers.1``, ... with ReLU between them (the shape of an MLP)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def _mlp_chain(weights: dict[str, Tensor], path: Path) -> tuple[nn.Module, dict[str, str]]:
    big = [n for n, w in weights.items() if w.dim() > 2]
    if big:
        raise SparseflowError(f"{str(path)!r} has {weights[big[0]].dim()}-D weights ({big[0]!r}): the architecture "
                              "of a convolutional checkpoint cannot be inferred; analyse its run directory (with "
                              "config.json) instead")
    names = [n for n, w in weights.items() if w.dim() == 2]
    if not names:
        raise SparseflowError(f"{str(path)!r} has no 2-D weight matrix to analyse")
    for a, b in zip(names, names[1:]):
        if weights[b].shape[1] != weights[a].shape[0]:
            raise SparseflowError(
                f"the weights of {str(path)!r} do not chain as an MLP: {a!r} has {weights[a].shape[0]} outputs but "
                f"the next, {b!r}, reads {weights[b].shape[1]} inputs; analyse its run directory (with config.json)"
            )
    layers, mapping = [], {}
    for i, n in enumerate(names):
        w = weights[n]
        bias_name = n[: -len("weight")] + "bias" if n.endswith("weight") else None
        bias = weights.get(bias_name) if bias_name else None
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias)
        layers.append(lin)
        mapping[f"layers.{i}.weight"] = n
        if bias is not None:
            mapping[f"layers.{i}.bias"] = bias_name
    return _Chain(layers), mapping


def save_repaired(path: Path, model: nn.Module, mask: Mask, loaded: Loaded) -> None:
    """Write ``model``'s weights and ``mask`` under the checkpoint's names (sparseflow state file, atomic)."""
    rename = lambda n: loaded.names.get(n, n)  # noqa: E731
    state = {"model": {rename(k): v for k, v in model.state_dict().items() if _keep(k, loaded)},
             "mask": {rename(k): v for k, v in mask.items()}}
    meta = {"kind": "repaired-weights", "source": loaded.source}
    if loaded.config is not None:
        meta["config"] = loaded.config
    save_state(path, state, meta=meta)


def _keep(key: str, loaded: Loaded) -> bool:
    # An inferred chain holds only the checkpoint's weights and biases.
    return not loaded.names or key in loaded.names
