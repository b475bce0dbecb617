"""The features of the conformance battery: one function per feature, run on one :class:`~battery_arch.Arch`.

Each returns when the feature works against its oracle, fails an assertion saying what differs, or lets a
SparseflowError through (the test file decides whether that refusal is an allowed one). The oracles:

- targets: the default selection equals the documented rule (``expected_targets``) and the counts by hand;
- magnitude (GMP, layer-wise) and magnitude_global (one-shot, GLOBAL): exact kept counts per layer (the
  distribution's allocation, or the global top-k), the kept weights the largest by |w| (within a layer, or over
  all layers), the mask only shrinking, pruned weights and AdamW state zero after every step;
- nm_2_4: every 4 consecutive weights along the input axis (the layout's) keep exactly their 2 largest |w|;
- rigl, set: 20 AdamW steps with per-layer counts held exactly, pruned weights zero after each, finite loss,
  and the mask actually moving;
- snip, grasp, synflow: exact total density, zeros outside the mask, finite outputs;
- save: outputs and state identical after sf.save / sf.load into a fresh, perturbed model;
- convert: outputs within 1e-5 relative of the dense ones, every target listed in the inference report;
- signal: one finite row per target; connectivity: per target, dead output units equal to a hand count.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparseflow as sf
from battery_arch import (DEAD_UNITS, SPARSITY, Arch, allocation, check_rows, check_targets, check_zero_outside,
                          dead_units, expected_targets, predict, train_step, DEFAULT_COUNT, MUST_EXCLUDE, MUST_INCLUDE,
                          RECURRENT)


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def _abs(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    return {n: model.get_parameter(n).detach().abs().clone() for n in names}


def _check_top(kept: list[Tensor], dropped: list[Tensor], what: str) -> None:
    lo = min((float(k.min()) for k in kept if k.numel()), default=math.inf)
    hi = max((float(d.max()) for d in dropped if d.numel()), default=-math.inf)
    assert lo >= hi, f"{what}: a kept |w| = {lo:.4g} is below a pruned |w| = {hi:.4g}"


def targets(arch: Arch) -> None:
    chosen = list(sf.prunable(arch.model))
    check_targets(chosen, expected_targets(arch.model), "default targets")
    assert len(chosen) == DEFAULT_COUNT[arch.name], f"{len(chosen)} default targets, {DEFAULT_COUNT[arch.name]} by hand"
    assert all(n in chosen for n in MUST_INCLUDE.get(arch.name, [])) and not set(chosen) & set(MUST_EXCLUDE.get(arch.name, []))
    if arch.name in RECURRENT:
        wide = list(sf.prunable(arch.model, arch.targets))
        check_targets(wide, arch.expected, f"Targets(types=(..., {RECURRENT[arch.name].__name__}))")


def magnitude(arch: Arch) -> None:
    """GMP to 80 % on the cubic schedule (updates at steps 0, 2, 4), layer-wise (uniform), AdamW."""
    model = arch.fresh()
    opt = _adamw(model)
    gmp = sf.GMP(SPARSITY, end=4, every=2, targets=arch.targets)
    gmp.prepare(model, opt)
    check_targets(list(gmp.mask), arch.expected, "GMP targets")
    for step in range(1, 7):
        train_step(model, arch, opt)
        before, w = gmp.mask.clone(), _abs(model, arch.expected)
        gmp.step()
        opt.zero_grad()
        check_zero_outside(model, gmp.mask, opt, f"after step {step}")
        if step in (2, 4):
            s = gmp.schedule.sparsity_at(step, SPARSITY)
            want = allocation(arch, sf.uniform, s, limit=before.counts())
            assert gmp.mask.counts() == want, f"step {step}: kept {gmp.mask.counts()}, allocation {want}"
            for n, m in gmp.mask.items():
                assert not (m & ~before[n]).any(), f"{n}: a pruned weight came back at step {step}"
                _check_top([w[n][m]], [w[n][before[n] & ~m]], f"{n} at step {step}")
    assert gmp.mask.count() == sf.kept_total(arch.numel(), SPARSITY)


def magnitude_global(arch: Arch) -> None:
    model = arch.fresh()
    opt = _adamw(model)
    w = _abs(model, arch.expected)
    mp = sf.MagnitudePruning(SPARSITY, distribution=sf.GLOBAL, targets=arch.targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a layer left with fewer weights than outputs is warned about
        mp.prepare(model, opt)
    check_targets(list(mp.mask), arch.expected, "GLOBAL targets")
    assert mp.mask.count() == sf.kept_total(arch.numel(), SPARSITY)
    _check_top([w[n][m] for n, m in mp.mask.items()], [w[n][~m] for n, m in mp.mask.items()], "global ranking")
    train_step(model, arch, opt)
    mp.step()
    check_zero_outside(model, mp.mask, opt, "after an AdamW step")


def global_empties(arch: Arch) -> list[str]:
    """Targets the global top-k by |w| at SPARSITY leaves with no weight (where a refusal is the right answer)."""
    w = _abs(arch.model, arch.expected)
    k = sf.kept_total(arch.numel(), SPARSITY)
    cut = torch.cat([t.reshape(-1) for t in w.values()]).topk(k).values.min()
    return [n for n, t in w.items() if not (t >= cut).any()]


def nm_incompatible(arch: Arch) -> list[str]:
    """Targets whose input axis (per their layout) is not a multiple of 4."""
    return [n for n in arch.expected
            if arch.layouts[n].canonical_shape(arch.model.get_parameter(n).shape)[1] % 4]


def nm_2_4(arch: Arch) -> None:
    model = arch.fresh()
    opt = _adamw(model)
    w = _abs(model, arch.expected)
    nm = sf.MagnitudePruning(0.5, pattern=sf.NM(2, 4), targets=arch.targets)
    nm.prepare(model, opt)
    bad = nm_incompatible(arch)
    assert not bad, f"NM(2, 4) accepted targets whose input axis is not a multiple of 4: {bad}"
    check_targets(list(nm.mask), arch.expected, "NM targets")
    for n, m in nm.mask.items():
        c, cw = arch.canonical(n, m), arch.canonical(n, w[n])  # (out, in, *rest)
        groups, wg = c.movedim(1, -1).reshape(-1, 4), cw.movedim(1, -1).reshape(-1, 4)
        counts = groups.sum(1)
        assert (counts == 2).all(), f"{n}: a group of 4 along the input axis keeps {int(counts[counts != 2][0])}"
        kept_min = wg.masked_fill(~groups, math.inf).min(1).values
        dropped_max = wg.masked_fill(groups, -math.inf).max(1).values
        assert (kept_min >= dropped_max).all(), f"{n}: a group keeps a smaller |w| than it drops"
    train_step(model, arch, opt)
    nm.step()
    check_zero_outside(model, nm.mask, opt, "after an AdamW step")


def _dynamic(arch: Arch, cls: type[sf.SET]) -> None:
    model = arch.fresh()
    opt = _adamw(model)
    method = cls(SPARSITY, update_every=4, until=16, targets=arch.targets)
    method.prepare(model, opt)
    check_targets(list(method.mask), arch.expected, f"{cls.__name__} targets")
    counts = method.mask.counts()
    want = allocation(arch, sf.erk, SPARSITY)
    assert counts == want, f"initial counts {counts}, ERK allocation {want}"
    initial, moved = method.mask.clone(), False
    for step in range(1, 21):
        train_step(model, arch, opt)
        method.step()
        opt.zero_grad()
        assert method.mask.counts() == counts, f"per-layer counts changed at step {step}"
        check_zero_outside(model, method.mask, opt, f"after step {step}")
        moved = moved or method.mask != initial
    assert moved, "the mask never changed in 20 steps with updates every 4"


def rigl(arch: Arch) -> None:
    _dynamic(arch, sf.RigL)


def set_(arch: Arch) -> None:
    _dynamic(arch, sf.SET)


def _at_init(arch: Arch, method: sf.Method) -> None:
    model = arch.fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a layer left with fewer weights than outputs is warned about
        method.prepare(model)
    check_targets(list(method.mask), arch.expected, f"{type(method).__name__} targets")
    assert method.mask.count() == sf.kept_total(arch.numel(), SPARSITY), "total kept count is not exact"
    check_zero_outside(model, method.mask)
    model.eval()
    out = predict(model, arch)
    assert torch.isfinite(out).all(), "outputs are not finite after pruning"


def snip(arch: Arch) -> None:
    _at_init(arch, sf.SNIP(SPARSITY, data=arch.batch, targets=arch.targets))


def grasp(arch: Arch) -> None:
    # A model that computes its own loss is scored on it: no logits to divide by the temperature.
    kw = {"temperature": 1.0} if arch.is_dict else {}
    _at_init(arch, sf.GraSP(SPARSITY, data=arch.batch, targets=arch.targets, **kw))


def synflow(arch: Arch) -> None:
    x = arch.inputs
    kw = {"example": arch.batch} if arch.is_dict else {"input_shape": tuple(x.shape[1:])}
    _at_init(arch, sf.SynFlow(SPARSITY, rounds=4, targets=arch.targets, **kw))


def _scoring_loss(arch: Arch, model: nn.Module, temperature: float = 1.0) -> Tensor:
    if arch.is_dict:
        return arch.loss(model, arch.batch)  # the model's own loss, as the cells score it (temperature 1)
    x, y = arch.batch
    return F.cross_entropy(model(x) / temperature, y)


def _empties(arch: Arch, scores: list[Tensor]) -> list[str]:
    k = sf.kept_total(arch.numel(), SPARSITY)
    cut = torch.cat([s.reshape(-1) for s in scores]).topk(k).values.min()
    return [n for n, s in zip(arch.expected, scores) if not (s >= cut).any()]


def saliency_empties(arch: Arch, kind: str) -> list[str]:
    """Targets that the global ranking of SNIP's |w ⊙ ∇L| or GraSP's w ⊙ Hg (computed here, in eval mode, as in
    the papers) leaves with no weight at SPARSITY: where refusing the mask is the right answer."""
    model = arch.fresh().eval()
    params = [model.get_parameter(n) for n in arch.expected]
    with sdpa_kernel([SDPBackend.MATH]):  # double backward through attention
        if kind == "snip":
            g = torch.autograd.grad(_scoring_loss(arch, model), params)
            return _empties(arch, [(p * gi).abs().detach() for p, gi in zip(params, g)])
        t = 1.0 if arch.is_dict else 200.0
        g = torch.autograd.grad(_scoring_loss(arch, model, t), params)
        grad = torch.autograd.grad(_scoring_loss(arch, model, t), params, create_graph=True)
        hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, grad)), params, allow_unused=True)
    return _empties(arch, [(p * (h if h is not None else 0)).detach() for p, h in zip(params, hg)])


def _perturbed(arch: Arch) -> nn.Module:
    fresh = arch.fresh().eval()
    stored = fresh.state_dict()
    with torch.no_grad():
        for n, t in [*fresh.named_parameters(), *fresh.named_buffers()]:
            if n in stored and t.is_floating_point():
                t.mul_(1.5).add_(0.01)  # every value changes; positive variances stay positive
    return fresh


def save(arch: Arch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.sfz"
        sf.save(path, arch.sparse, mask=sf.Mask(arch.mask))
        fresh = _perturbed(arch)
        sf.load(path, fresh)
        stored = sf.load_mask(path)
    for n, m in arch.mask.items():
        assert n in stored and torch.equal(stored[n], m), f"stored mask of {n} differs"
    want, got = arch.sparse.state_dict(), fresh.state_dict()
    assert list(want) == list(got)
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, f"tensors differ after load: {differ[:4]}"
    assert torch.equal(predict(arch.sparse, arch), predict(fresh, arch)), "outputs differ after load"


def convert(arch: Arch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left dense are warned about
        fast = sf.convert(arch.sparse, measure=False)
    want, got = predict(arch.sparse, arch), predict(fast, arch)
    assert got.shape == want.shape, f"output shape {tuple(got.shape)}, dense {tuple(want.shape)}"
    err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)
    assert err <= 1e-5, f"converted outputs differ from dense by {err:.3g} (relative)"
    for name, rows in check_rows(arch, list(sf.inference_report(fast)), "inference_report").items():
        assert all(r.plan or r.reason for r in rows), f"{name}: neither a kernel nor a reason"


def signal(arch: Arch) -> None:
    report = sf.signal(arch.sparse, arch.batch)
    for name, rows in check_rows(arch, list(report.layers), "signal").items():
        for r in rows:
            values = [r.q, r.q_in] + ([r.measured] if r.measured is not None else [])
            assert all(v is not None and math.isfinite(v) for v in values), f"{name}: row {r.name} is not finite"


def connectivity(arch: Arch) -> None:
    kw = {} if arch.is_dict else {"input_shape": tuple(arch.inputs.shape[1:])}
    report = sf.connectivity(arch.sparse, **kw)
    for name, rows in check_rows(arch, list(report.layers), "connectivity").items():
        hand = dead_units(arch, name, arch.sparse.get_parameter(name))
        got = [r.no_incoming for r in rows]
        assert sum(hand) >= DEAD_UNITS, "fixture: dead units were cut"
        assert got == hand or (len(got) == 1 and got[0] == sum(hand)), f"{name}: no_incoming {got}, by hand {hand}"


FEATURES = {"targets": targets, "magnitude": magnitude, "magnitude_global": magnitude_global, "nm_2_4": nm_2_4,
            "rigl": rigl, "set": set_, "snip": snip, "grasp": grasp, "synflow": synflow, "save": save,
            "convert": convert, "signal": signal, "connectivity": connectivity}
