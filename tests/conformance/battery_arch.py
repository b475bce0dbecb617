"""One architecture of the conformance battery, built once, and the oracles every cell shares.

:func:`build` turns ``realmodels.ARCHS[name]`` into an :class:`Arch`: the pristine model (never modified by a
cell), its batch and loss, the targets the method cells prune and their names as this file's own oracle computes
them (:func:`expected_targets`, written from the documented rule, not from ``sparseflow.targets``), their weight
layouts, and a fixed sparse copy (80 % of every target's weights zero, output units 0 and 1 of every target cut
off) on which storage, inference and analysis are checked independently of any pruning method.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

import realmodels
import sparseflow as sf
from sparseflow.layouts import call, output_tensor, split_batch
from sparseflow.targets import DEFAULT_TYPES

SPARSITY = 0.8
DEAD_UNITS = 2  # output units 0 and 1 of every target get no input in the fixed sparse copy
RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU}  # the battery prunes these weights too (opt-in by type)
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

# Default targets counted by hand from the builders in realmodels.py (tied parameters once, and only when every
# module holding them is a target type: a tied embedding/output head stays dense).
DEFAULT_COUNT = {
    "gpt2": 8,  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj), all HF Conv1D; lm_head is tied to wte
    "bert": 14,  # 2 x (query, key, value, attention.output, intermediate, output) + pooler + classifier
    "llama": 15,  # 2 x (q, k, v, o, gate, up, down) + lm_head
    "llama_tied": 14,  # lm_head tied to embed_tokens
    "vit": 14,  # patch conv + 2 x (q, k, v, o, fc1, fc2) + classifier
    "t5": 32,  # encoder 2 x (q, k, v, o, wi, wo) + decoder 2 x (self q, k, v, o, cross q, k, v, o, wi, wo)
    "hf_resnet": 7,  # embedder conv, 2 + shortcut + 2 block convs, classifier
    "transformer_encoder": 9,  # 2 x (in_proj_weight, out_proj, linear1, linear2) + head
    "transformer_decoder": 13,  # 2 x (self in_proj, out_proj, cross in_proj, out_proj, linear1, linear2) + head
    "mha": 3, "lstm": 1, "gru": 1,  # in_proj_weight, out_proj, head; the recurrent weights are opt-in
    "depthwise_conv": 5, "conv1d": 3, "conv3d": 3,
}
MUST_INCLUDE = {
    "gpt2": ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"],
    "llama": ["lm_head.weight"],
    "transformer_encoder": ["body.layers.0.self_attn.in_proj_weight", "body.layers.1.self_attn.out_proj.weight"],
    "transformer_decoder": ["body.dec.layers.0.multihead_attn.in_proj_weight"],
    "mha": ["body.attn.in_proj_weight"],
    "depthwise_conv": ["2.weight", "7.weight"],  # depthwise and grouped convolutions
}
MUST_EXCLUDE = {
    "gpt2": ["transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"],
    "llama": ["model.embed_tokens.weight"],
    "llama_tied": ["model.embed_tokens.weight", "lm_head.weight"],
    "t5": ["shared.weight", "lm_head.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
    "bert": ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"],
    "vit": ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings"],
    "mha": ["body.attn.in_proj_bias"],
    "lstm": ["body.weight_ih_l0"],
    "depthwise_conv": ["3.weight"],  # BatchNorm
}


def _target_kind(module: nn.Module, leaf: str, recurrent: type[nn.Module] | None) -> bool:
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)):
        return leaf == "weight"
    if isinstance(module, nn.MultiheadAttention):
        return leaf in MHA_WEIGHTS
    if recurrent is not None and isinstance(module, recurrent):
        return leaf.startswith(("weight_ih_l", "weight_hh_l"))
    return False


def expected_targets(model: nn.Module, recurrent: type[nn.Module] | None = None) -> list[str]:
    """The documented default rule: weight matrices of Linear, Conv1d/2d/3d, HF Conv1D and MultiheadAttention
    (plus ``recurrent``'s), each parameter once under its first name, a tied one only if all its holders qualify."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((module, leaf))
    return [name for name, p in model.named_parameters()
            if p.dim() >= 2 and all(_target_kind(m, leaf, recurrent) for m, leaf in holders[id(p)])]


def check_targets(got: list[str], want: list[str], what: str) -> None:
    missing, extra = [n for n in want if n not in got], [n for n in got if n not in want]
    assert not missing and not extra, f"{what}: missing {missing[:4]}, not targets {extra[:4]}"
    assert got == want, f"{what}: order differs from module order"


@dataclass
class Arch:
    name: str
    model: nn.Module
    batch: Any
    loss: Callable[[nn.Module, Any], Tensor]
    targets: sf.Targets
    expected: list[str]
    layouts: dict[str, sf.Layout]
    mask: dict[str, Tensor]
    sparse: nn.Module

    @property
    def inputs(self) -> Any:
        return split_batch(self.batch)[0]

    @property
    def is_dict(self) -> bool:
        return isinstance(self.batch, dict)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def param(self, model: nn.Module, name: str) -> Tensor:
        return model.get_parameter(name)

    def canonical(self, name: str, t: Tensor) -> Tensor:
        """``t`` (shaped like target ``name``) viewed as (out, in, *rest)."""
        return self.layouts[name].canonical(t)

    def numel(self) -> int:
        return sum(self.model.get_parameter(n).numel() for n in self.expected)


def fixed_mask(model: nn.Module, names: list[str], layouts: dict[str, sf.Layout], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        lay = layouts[name]
        keep = torch.rand(lay.canonical_shape(model.get_parameter(name).shape), generator=g) >= SPARSITY
        keep[:DEAD_UNITS] = False
        out[name] = lay.restore(keep)
    return out


def build(name: str) -> Arch:
    model, batch, loss = realmodels.ARCHS[name]()
    recurrent = RECURRENT.get(name)
    targets = sf.Targets(types=(*DEFAULT_TYPES, recurrent)) if recurrent else sf.Targets()
    expected = expected_targets(model, recurrent)
    layouts = sf.parameter_layouts(model)
    mask = fixed_mask(model, expected, layouts)
    sparse = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, m in mask.items():
            sparse.get_parameter(n).mul_(m)
    return Arch(name, model, batch, loss, targets, expected, layouts, mask, sparse)


# --- shared checks ------------------------------------------------------------------------------------------
def predict(model: nn.Module, arch: Arch) -> Tensor:
    with torch.no_grad():
        return output_tensor(call(model, arch.inputs))


def train_step(model: nn.Module, arch: Arch, opt: torch.optim.Optimizer) -> float:
    loss = arch.loss(model, arch.batch)
    loss.backward()
    opt.step()
    value = float(loss.detach())
    assert math.isfinite(value), f"loss is {value}"
    return value


def check_zero_outside(model: nn.Module, mask: sf.Mask, opt: torch.optim.Optimizer | None = None, when: str = "") -> None:
    """Every target weight outside the mask is exactly zero, and so is every optimizer state tensor shaped like it."""
    for n, m in mask.items():
        p = model.get_parameter(n)
        assert m.shape == p.shape, f"mask of {n} has shape {tuple(m.shape)}, weight {tuple(p.shape)}"
        stray = int(torch.count_nonzero(p.detach()[~m]))
        assert stray == 0, f"{n}: {stray} pruned weights are nonzero {when}"
        for k, v in (opt.state.get(p, {}) if opt is not None else {}).items():
            if isinstance(v, Tensor) and v.shape == p.shape:
                assert not v[~m].any(), f"{n}: optimizer state {k!r} nonzero at pruned positions {when}"


def allocation(arch: Arch, distribution: Callable[..., dict[str, float]], sparsity: float,
               limit: dict[str, int] | None = None) -> dict[str, int]:
    """The per-layer kept counts a method owes: the distribution over the (out, in, *rest) shapes, then the
    documented largest-remainder rule for the exact total."""
    shapes = {n: arch.layouts[n].canonical_shape(arch.model.get_parameter(n).shape) for n in arch.expected}
    units = {n: math.prod(s) for n, s in shapes.items()}
    total = sf.kept_total(sum(units.values()), sparsity)
    return sf.allocate(units, distribution(shapes, sparsity), total, limit=limit)


def dead_units(arch: Arch, name: str, weight: Tensor) -> list[int]:
    """Per chunk (one entry when the layout has none): output units whose incoming weights are all zero."""
    lay = arch.layouts[name]
    c = lay.canonical(weight.detach() != 0)
    alive = c.reshape(c.shape[0], -1).any(1)
    parts = alive.chunk(len(lay.chunks)) if lay.chunks else (alive,)
    return [int((~p).sum()) for p in parts]


def rows_for(name: str, layout: sf.Layout, rows: list[Any]) -> list[Any]:
    """The report rows that cover target ``name``: one row named by the parameter or its module, or one row per
    chunk of a chunked weight (``<param>[q]``, ``<module>.q_proj`` or ``<module>.q``)."""
    module = name.rpartition(".")[0]
    whole = [r for r in rows if r.name in (name, module)]
    if whole or not layout.chunks:
        return whole
    chunk_names = [{f"{name}[{c}]", f"{module}.{c}_proj", f"{module}.{c}"} for c in layout.chunks]
    return [r for names in chunk_names for r in rows if r.name in names]


def check_rows(arch: Arch, rows: list[Any], what: str) -> dict[str, list[Any]]:
    """Every target is covered by exactly one row, or exactly one row per chunk; returns target -> its rows."""
    out = {}
    for name in arch.expected:
        lay = arch.layouts[name]
        got = rows_for(name, lay, rows)
        assert len(got) in ((1, len(lay.chunks)) if lay.chunks else (1,)), \
            f"{what}: target {name} has {len(got)} rows (row names: {[r.name for r in rows][:6]}...)"
        out[name] = got
    return out
