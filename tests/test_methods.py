"""Methods: a conformance battery over every method (in the style of scikit-learn's check_estimator),
oracles for the counts (the documented rounding rule, recomputed here), PyTorch's own global pruning,
gradient masking, exact resume, and bad input.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils import prune

import sparseflow as sf
from sparseflow import GLOBAL, GMP, NM, SET, Block, MagnitudePruning, MaskError, RandomSparse, RigL, SparseflowError
from sparseflow import SNIP, GraSP, SynFlow, Targets, Unstructured, er, erk, uniform
from sparseflow.patterns import _as_matrix

from conftest import build_tiny_convnet, build_tiny_mlp
from test_saliency import grasp_scores, snip_scores, synflow_iterative


# ==================================================================================================
# Oracles, written from the documentation (distributions.py module docstring), not from the code.
# ==================================================================================================
def units_of(pattern, shape: tuple[int, ...]) -> int:
    """Selectable units: weights, or r x c tiles of the (out, prod(rest)) matrix view."""
    n = math.prod(shape)
    if isinstance(pattern, Block):
        return (shape[0] // pattern.r) * (n // shape[0] // pattern.c)
    return n


def largest_remainder(units: dict[str, int], dens: dict[str, float], total: int, cap: dict[str, int]) -> dict[str, int]:
    """floor(density * n) each, then one unit each to the largest fractional parts (ties: earlier layer)."""
    order_index = {n: i for i, n in enumerate(units)}
    ideal = {n: min(1.0, dens[n]) * units[n] for n in units}
    counts = {n: min(cap[n], math.floor(ideal[n] + 1e-9)) for n in units}  # 1e-9: ideal computed in floats
    left = total - sum(counts.values())
    assert left >= 0
    order = sorted(units, key=lambda n: (-(ideal[n] - counts[n]), order_index[n]))
    while left > 0:
        before = left
        for n in order:
            if left and counts[n] < cap[n]:
                counts[n] += 1
                left -= 1
        assert left < before
    return counts


def expected_counts(
    method: sf.Method, weights: dict[str, Tensor], sparsity: float, cap: dict[str, int]
) -> dict[str, int]:
    """Kept units per layer at ``sparsity`` for a magnitude ranking; see :func:`expected_counts_by`."""
    return expected_counts_by(method, {n: w.abs() for n, w in weights.items()}, sparsity, cap)


def expected_counts_by(
    method: sf.Method, scores: dict[str, Tensor], sparsity: float, cap: dict[str, int]
) -> dict[str, int]:
    """Kept units per layer at ``sparsity``; ``cap`` = units kept so far (pruning only removes).

    ``scores`` (higher = keep) has the positions pruned before excluded (set to NaN); only GLOBAL reads them.
    """
    shapes = {n: tuple(w.shape) for n, w in scores.items()}
    units = {n: units_of(method.pattern, sh) for n, sh in shapes.items()}
    if isinstance(method.pattern, NM):
        return {n: units[n] * method.pattern.n // method.pattern.m for n in units}
    n_total = sum(units.values())
    total = n_total - math.floor(sparsity * n_total + 0.5)
    if method.distribution is GLOBAL:  # brute force: sort every surviving score of every layer together
        assert isinstance(method.pattern, Unstructured)
        ranked = sorted(
            ((float(v), name) for name, w in scores.items() for v in w.reshape(-1) if not math.isnan(float(v))),
            reverse=True,
        )
        counts = {n: 0 for n in scores}
        for _, name in ranked[:total]:
            counts[name] += 1
        return counts
    return largest_remainder(units, method.distribution(shapes, sparsity), total, cap)


def kept_units(pattern, mask: Tensor) -> int:
    return int(mask.sum()) // (pattern.r * pattern.c if isinstance(pattern, Block) else 1)


def assert_pattern(pattern, name: str, mask: Tensor) -> None:
    """NM: exactly n of every m consecutive inputs; Block: whole tiles only."""
    mat = _as_matrix(mask)
    if isinstance(pattern, NM):
        assert (mat.reshape(-1, pattern.m).sum(-1) == pattern.n).all(), name
    elif isinstance(pattern, Block):
        rows, cols = mat.shape
        tiles = mat.reshape(rows // pattern.r, pattern.r, cols // pattern.c, pattern.c).float().mean(dim=(1, 3))
        assert ((tiles == 0) | (tiles == 1)).all(), f"{name}: a tile is partly kept"


def assert_top_magnitude(
    method: sf.Method, before: dict[str, Tensor], prev: dict[str, Tensor], new: dict[str, Tensor]
) -> None:
    """Among the units kept before (``prev``), the new mask keeps the largest |w| (per layer or globally)."""
    assert_top_scores(method, {n: w.abs() for n, w in before.items()}, prev, new)


def assert_top_scores(
    method: sf.Method, scores: dict[str, Tensor], prev: dict[str, Tensor], new: dict[str, Tensor]
) -> None:
    """Among the units kept before (``prev``), the new mask keeps the highest scores (per layer or globally)."""
    pattern = method.pattern
    groups: list[tuple[Tensor, Tensor]] = []  # (scores of kept units, scores of dropped units)
    for n in new:
        assert not (new[n] & ~prev[n]).any(), f"{n}: pruning grew weights"
        a, p, k = _as_matrix(scores[n]), _as_matrix(prev[n]), _as_matrix(new[n])
        if isinstance(pattern, NM):
            a, p, k = (t.reshape(-1, pattern.m) for t in (a, p, k))
            for row in range(a.shape[0]):
                groups.append((a[row][k[row]], a[row][p[row] & ~k[row]]))
            continue
        if isinstance(pattern, Block):
            rows, cols = a.shape
            shape4 = (rows // pattern.r, pattern.r, cols // pattern.c, pattern.c)
            a, p, k = (t.reshape(shape4).sum(dim=(1, 3)) for t in (a, p.float(), k.float()))
            p, k = p > 0, k > 0
        groups.append((a[k], a[p & ~k]))
    if method.distribution is GLOBAL and not isinstance(pattern, NM):  # N:M ranks within groups whatever the distribution
        groups = [(torch.cat([g[0] for g in groups]), torch.cat([g[1] for g in groups]))]
    for kept, dropped in groups:
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()


# ==================================================================================================
# The battery
# ==================================================================================================
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], sf.Method]
    by_magnitude: bool = True
    dynamic: bool = False  # SET/RigL: a random initial mask, then drop-and-regrow at fixed counts
    # Pruning at initialisation: make(in_shape) (SNIP/GraSP get a batch, SynFlow the input shape), and
    # scores(model, in_shape) is the oracle ranking of the pruning in prepare (NaN: pruned in an earlier round).
    at_init: bool = False
    scores: Callable[[nn.Module, tuple[int, ...]], dict[str, Tensor]] | None = None

    def new(self, in_shape: tuple[int, ...]) -> sf.Method:
        return self.make(in_shape) if self.at_init else self.make()


def _gmp(**kw) -> Callable[[], sf.Method]:
    # prunes at steps 0, 10, 20, 30, 40, 50: six mask updates inside a 60-step run
    return lambda: GMP(0.8, initial_sparsity=0.1, start=0, end=50, every=10, **kw)


def _dynamic(cls, **kw) -> Callable[[], sf.Method]:
    # drops and regrows at steps 10, 20, 30, 40, 50: five mask updates inside a 60-step run
    return lambda: cls(0.7, update_every=10, until=50, alpha=0.5, seed=3, **kw)


CASES = [
    Case("magnitude-uniform", lambda: MagnitudePruning(0.7)),
    Case("magnitude-er", lambda: MagnitudePruning(0.7, distribution=er)),
    Case("magnitude-erk", lambda: MagnitudePruning(0.7, distribution=erk)),
    Case("magnitude-global", lambda: MagnitudePruning(0.7, distribution=GLOBAL)),
    Case("magnitude-at-step-25", lambda: MagnitudePruning(0.6, distribution=erk, at_step=25)),
    Case("magnitude-nm24", lambda: MagnitudePruning(0.5, pattern=NM(2, 4))),
    Case("magnitude-block22", lambda: MagnitudePruning(0.6, pattern=Block(2, 2))),
    Case("gmp-uniform", _gmp()),
    Case("gmp-erk", _gmp(distribution=erk)),
    Case("gmp-global", _gmp(distribution=GLOBAL)),
    Case("gmp-block22", _gmp(pattern=Block(2, 2), distribution=er)),
    Case("random-uniform", lambda: RandomSparse(0.7, distribution=uniform, seed=3), by_magnitude=False),
    Case("random-er", lambda: RandomSparse(0.7, distribution=er, seed=3), by_magnitude=False),
    Case("random-erk", lambda: RandomSparse(0.7, seed=3), by_magnitude=False),
    Case("random-nm24", lambda: RandomSparse(0.5, pattern=NM(2, 4), seed=3), by_magnitude=False),
    Case("set-erk", _dynamic(SET), by_magnitude=False, dynamic=True),
    Case("set-uniform", _dynamic(SET, distribution=uniform), by_magnitude=False, dynamic=True),
    Case("rigl-erk", _dynamic(RigL), by_magnitude=False, dynamic=True),
    Case("rigl-er", _dynamic(RigL, distribution=er), by_magnitude=False, dynamic=True),
]

def _at_init(id: str, make: Callable[[tuple[int, ...]], sf.Method], scores) -> Case:
    return Case(id, make, by_magnitude=False, at_init=True, scores=scores)


CASES += [
    _at_init("snip-global", lambda sh: SNIP(0.7, data=_batch(0, sh)), lambda m, sh: snip_scores(m, [_batch(0, sh)])),
    _at_init("snip-erk", lambda sh: SNIP(0.7, distribution=erk, data=_batch(0, sh)), lambda m, sh: snip_scores(m, [_batch(0, sh)])),
    _at_init("snip-nm24", lambda sh: SNIP(0.5, pattern=NM(2, 4), data=_batch(0, sh)), lambda m, sh: snip_scores(m, [_batch(0, sh)])),
    _at_init("grasp-global", lambda sh: GraSP(0.7, data=_batch(0, sh)), lambda m, sh: grasp_scores(m, _batch(0, sh))),
    _at_init(
        "grasp-block22",
        lambda sh: GraSP(0.6, distribution=uniform, pattern=Block(2, 2), data=_batch(0, sh)),
        lambda m, sh: grasp_scores(m, _batch(0, sh)),
    ),
    _at_init(
        "synflow-global",
        lambda sh: SynFlow(0.7, rounds=10, input_shape=sh),
        lambda m, sh: synflow_iterative(m, 0.7, 10, sh)[0],
    ),
]
MODELS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda seed: build_tiny_mlp(seed=seed), (8,)),
    "conv": (lambda seed: build_tiny_convnet(seed=seed), (4, 6, 6)),
}


class DriftSGD(torch.optim.SGD):
    """Not mask-safe: moves every weight, pruned or not, and keeps a dense state buffer."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                drift = self.state[p].setdefault("drift", torch.zeros_like(p))
                drift.add_(1e-3)
                p.add_(drift)
        return loss


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0),  # not in MASK_SAFE_OPTIMIZERS
    "drift-sgd": lambda ps: DriftSGD(ps, lr=0.05, momentum=0.9),  # a subclass: not in it either
}


def test_unsafe_optimizers_are_really_outside_the_safe_list() -> None:
    assert torch.optim.Adadelta not in sf.MASK_SAFE_OPTIMIZERS and DriftSGD not in sf.MASK_SAFE_OPTIMIZERS


def _batch(step: int, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, *in_shape, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, method: sf.Method, step: int, in_shape) -> None:
    x, y = _batch(step, in_shape)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    method.step()
    opt.zero_grad()


def _snapshot_weights(method: sf.Method) -> dict[str, Tensor]:
    params = dict(method.model.named_parameters())
    return {n: params[n].detach().clone() for n in method.mask}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_prepare_gives_exact_counts(case: Case, model_name: str) -> None:
    build, in_shape = MODELS[model_name]
    model = build(0)
    method = case.new(in_shape)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(sf.prunable(model))
    ranked = case.scores(model, in_shape) if case.scores else {n: before[n].abs() for n in names}
    method.prepare(model)
    mask = method.mask
    targets = sf.prunable(model)
    assert list(mask) == list(targets)
    mask.check(model)
    s0 = method.target_sparsity(0)
    full = {n: units_of(method.pattern, tuple(p.shape)) for n, p in targets.items()}
    if s0 is None or (s0 == 0 and not isinstance(method.pattern, NM)):
        assert all(m.all() for m in mask.values())  # nothing pruned yet
    else:
        want = expected_counts_by(method, {n: ranked[n] for n in targets}, s0, full)
        assert {n: kept_units(method.pattern, m) for n, m in mask.items()} == want
        if not isinstance(method.pattern, NM):
            assert sum(want.values()) == sum(full.values()) - math.floor(s0 * sum(full.values()) + 0.5)
    params = dict(model.named_parameters())
    for n, m in mask.items():
        assert m.dtype == torch.bool and m.shape == params[n].shape
        assert_pattern(method.pattern, n, m)
        want_w = torch.where(m, before[n], torch.zeros(()))
        if method.sparse_init_applied == "rescaled":  # each output unit back to its dense squared norm
            dense = before[n].double().reshape(m.shape[0], -1).square().sum(1)
            kept = want_w.double().reshape(m.shape[0], -1).square().sum(1)
            factor = torch.where(kept > 0, (dense / kept.clamp(min=1e-300)).sqrt(), torch.zeros(()).double())
            want_w = (want_w.double() * factor.reshape((-1,) + (1,) * (m.dim() - 1))).float()
            torch.testing.assert_close(params[n].detach(), want_w, rtol=1e-6, atol=0, msg=n)
        elif method.sparse_init_applied == "calibrated":  # one positive factor per layer (calibrate_)
            got, ref = params[n].detach().double()[m], want_w.double()[m]
            c = float(got @ ref / (ref @ ref))
            assert c > 0 and bool((params[n].detach()[~m] == 0).all()), n
            torch.testing.assert_close(got, c * ref, rtol=1e-5, atol=1e-7, msg=n)
        else:
            assert torch.equal(params[n].detach(), want_w), n
    for n in set(params) - set(mask):  # biases untouched
        assert torch.equal(params[n].detach(), before[n])
    if case.by_magnitude or case.scores:  # the highest oracle scores among those still eligible are kept
        assert_top_scores(method, ranked, {n: ~ranked[n].isnan() for n in mask}, mask.to_dict())
    else:  # a random mask depends on the seed only, not on the weights
        other = case.new(in_shape)
        other.prepare(build(123))
        assert other.mask == mask


def _assert_invariant(method: sf.Method, opt: torch.optim.Optimizer) -> int:
    """Pruned weights are zero, and so is every parameter-shaped optimizer state; returns #states seen."""
    params = dict(method.model.named_parameters())
    seen = 0
    for n, m in method.mask.items():
        p = params[n]
        assert not p.detach()[~m].any(), f"{n}: pruned weight is nonzero"
        for key, v in opt.state.get(p, {}).items():
            if isinstance(v, Tensor) and v.shape == p.shape:
                seen += 1
                assert not v[~m].any(), f"{n}: optimizer state {key!r} nonzero at pruned positions"
    return seen


TRAINING = [("mlp", o) for o in OPTIMIZERS] + [("conv", "adam"), ("conv", "drift-sgd")]


@pytest.mark.parametrize(("model_name", "opt_name"), TRAINING, ids=[f"{m}-{o}" for m, o in TRAINING])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_training_keeps_the_invariant(case: Case, model_name: str, opt_name: str) -> None:
    _check_training(case, model_name, OPTIMIZERS[opt_name])


# Every optimizer in MASK_SAFE_OPTIMIZERS (with its options that touch state), and Adamax, which is not in
# it because its exp_inf becomes eps at pruned positions.
MORE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd-dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, weight_decay=1e-2),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2, weight_decay=1e-2),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.1, weight_decay=1e-3),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
}


def test_every_mask_safe_optimizer_is_covered() -> None:
    covered = {type(make([nn.Parameter(torch.zeros(1))])) for make in MORE_OPTIMIZERS.values()}
    assert set(sf.MASK_SAFE_OPTIMIZERS) <= covered


@pytest.mark.parametrize("opt_name", MORE_OPTIMIZERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("gmp-uniform", "gmp-global", "rigl-erk")], ids=lambda c: c.id)
def test_training_keeps_the_invariant_under_more_optimizers(case: Case, opt_name: str) -> None:
    _check_training(case, "mlp", MORE_OPTIMIZERS[opt_name])


def _check_training(case: Case, model_name: str, make_opt: Callable[..., torch.optim.Optimizer]) -> None:
    build, in_shape = MODELS[model_name]
    model = build(0)
    opt = make_opt(model.parameters())
    method = case.new(in_shape)
    method.prepare(model, opt)
    start = _snapshot_weights(method)
    cap = {n: kept_units(method.pattern, m) for n, m in method.mask.items()}
    updates = moved_connections = 0
    for step in range(1, 61):
        x, y = _batch(step, in_shape)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        before, prev = _snapshot_weights(method), method.mask.clone().to_dict()
        method.step()
        opt.zero_grad()
        assert _assert_invariant(method, opt) > 0  # the optimizer does keep parameter-shaped state
        if case.dynamic and method.is_update_step(step):  # type: ignore[attr-defined]
            updates += 1
            assert method.mask.counts() == cap, f"step {step}: drop-and-regrow changed a layer's count"
            after = _snapshot_weights(method)
            params = dict(model.named_parameters())
            for n, m in method.mask.items():
                born = m & ~prev[n]
                moved_connections += int(born.sum())
                assert not after[n][born].any(), f"{n}: a grown weight is not zero"
                for key, v in opt.state.get(params[n], {}).items():
                    if isinstance(v, Tensor) and v.shape == m.shape:
                        assert not v[born].any(), f"{n}: optimizer state {key!r} nonzero at a grown position"
            continue
        s = method.target_sparsity(step)
        if s is None or (s == 0 and not isinstance(method.pattern, NM)):
            assert method.mask == prev
            continue
        updates += 1
        surviving = {n: torch.where(prev[n], before[n], torch.full((), math.nan)) for n in before}
        want = expected_counts(method, surviving, s, cap)
        cap = {n: kept_units(method.pattern, m) for n, m in method.mask.items()}
        assert cap == want, f"step {step}"
        for n, m in method.mask.items():
            assert_pattern(method.pattern, n, m)
        if case.by_magnitude:
            assert_top_magnitude(method, before, prev, method.mask.to_dict())
    assert updates == (5 if isinstance(method, (GMP, SET)) else 1 if case.id == "magnitude-at-step-25" else 0)
    assert (moved_connections > 0) == case.dynamic
    assert method.step_count == 60
    final = method.sparsity
    n_units = sum(units_of(method.pattern, tuple(m.shape)) for m in method.mask.values())
    assert sum(cap.values()) == n_units - math.floor(final * n_units + 0.5)
    moved = _snapshot_weights(method)  # training did something to the kept weights
    assert any(not torch.equal(moved[n][m], start[n][m]) for n, m in method.mask.items())


@pytest.mark.parametrize("opt_name", ["sgd-nesterov-wd", "adamw", "drift-sgd"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_state_dict_resumes_bit_for_bit(case: Case, opt_name: str) -> None:
    total, k = 60, 23
    build, in_shape = MODELS["conv" if case.id in ("gmp-erk", "magnitude-nm24", "rigl-erk") else "mlp"]

    def fresh(seed: int):
        model = build(seed)
        opt = OPTIMIZERS[opt_name](model.parameters())
        method = case.new(in_shape)
        method.prepare(model, opt)
        return model, opt, method

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_a, opt_a, method_a = fresh(0)
        for step in range(1, total + 1):
            _train_step(model_a, opt_a, method_a, step, in_shape)

        model_b, opt_b, method_b = fresh(0)
        for step in range(1, k + 1):
            _train_step(model_b, opt_b, method_b, step, in_shape)
        buf = io.BytesIO()
        torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "method": method_b.state_dict()}, buf)
        del model_b, opt_b, method_b
        buf.seek(0)
        saved = torch.load(buf, weights_only=True)

        model_c, opt_c, method_c = fresh(7)  # other weights: everything must come from the checkpoint
        model_c.load_state_dict(saved["model"])
        opt_c.load_state_dict(saved["opt"])
        method_c.load_state_dict(saved["method"])
        assert method_c.step_count == k
        for step in range(k + 1, total + 1):
            _train_step(model_c, opt_c, method_c, step, in_shape)
    finally:
        torch.set_num_threads(threads)

    assert method_c.mask == method_a.mask
    for (na, pa), (nc, pc) in zip(model_a.named_parameters(), model_c.named_parameters()):
        assert na == nc and torch.equal(pa, pc), na
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        sa, sc = opt_a.state[pa], opt_c.state[pc]
        assert sa.keys() == sc.keys()
        assert all(torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sc[key])) for key in sa)


def test_gmp_resumes_from_a_checkpoint_taken_at_an_update_step() -> None:
    make = _gmp()
    model_a = build_tiny_mlp(seed=0)
    opt_a = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    method_a = make()
    method_a.prepare(model_a, opt_a)
    for step in range(1, 21):  # step 20 changes the mask
        _train_step(model_a, opt_a, method_a, step, (8,))
    state = copy.deepcopy({"m": model_a.state_dict(), "o": opt_a.state_dict(), "s": method_a.state_dict()})
    for step in range(21, 41):
        _train_step(model_a, opt_a, method_a, step, (8,))

    model_b = build_tiny_mlp(seed=5)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    method_b = make()
    method_b.prepare(model_b, opt_b)
    method_b.load_state_dict(state["s"])  # method first, then the rest: order does not matter
    model_b.load_state_dict(state["m"])
    opt_b.load_state_dict(state["o"])
    for step in range(21, 41):
        _train_step(model_b, opt_b, method_b, step, (8,))
    assert method_b.mask == method_a.mask
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


@dataclass(eq=False)
class RandomScoreGMP(GMP):
    """GMP whose score ignores the weights: pruned positions often outrank kept ones."""

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return torch.rand(weight.shape, generator=torch.Generator().manual_seed(self.step_count))


@dataclass(eq=False)
class SmallestMagnitude(MagnitudePruning):
    def scores(self, name: str, weight: Tensor) -> Tensor:
        return -weight.abs()


def test_score_override_point_and_pruned_stays_pruned() -> None:
    model = build_tiny_mlp(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    smallest = SmallestMagnitude(0.5)
    smallest.prepare(model)
    for n, m in smallest.mask.items():  # kept = the smallest |w| of every layer
        assert before[n].abs()[m].max() <= before[n].abs()[~m].min()
    method = RandomScoreGMP(0.8, initial_sparsity=0.2, end=4, every=1)
    model = build_tiny_mlp(seed=0)
    method.prepare(model)
    counts = [method.mask.count()]
    for _ in range(4):
        prev = method.mask.clone()
        method.step()
        assert all(not (m & ~prev[n]).any() for n, m in method.mask.items())  # nothing regrows
        counts.append(method.mask.count())
    schedule = [0.2, 0.8 - 0.6 * 0.75**3, 0.8 - 0.6 * 0.5**3, 0.8 - 0.6 * 0.25**3, 0.8]  # cubic, n = 4
    assert counts == [368 - math.floor(s * 368 + 0.5) for s in schedule]


# ==================================================================================================
# Properties over random shapes and sparsities
# ==================================================================================================
@st.composite
def random_model(draw) -> nn.Sequential:
    """A random stack (depth 1-4, widths 1-40), sometimes led by a Conv2d; weights distinct by design.

    The layers need not chain: prepare() reads parameters only. Distinct |w| make rankings unambiguous.
    """
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers.append(nn.Conv2d(draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))))
    widths = draw(st.lists(st.integers(1, 40), min_size=2, max_size=5))
    layers += [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    model = nn.Sequential(*layers)
    weights = [m.weight for m in model]
    n = sum(w.numel() for w in weights)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = (torch.randperm(n, generator=g).float() + 1) / n * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        for w, chunk in zip(weights, values.split([w.numel() for w in weights])):
            w.copy_(chunk.reshape(w.shape))
    return model


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=random_model(),
    sparsity=st.one_of(st.floats(0.0, 0.99, exclude_max=True), st.floats(0.9, 0.99, exclude_max=True)),
    dist=st.sampled_from([uniform, er, erk, GLOBAL]),
    random=st.booleans(),
)
def test_counts_exact_for_random_models(model: nn.Sequential, sparsity: float, dist, random: bool) -> None:
    if random and dist is not GLOBAL:
        method: sf.Method = RandomSparse(sparsity, distribution=dist, seed=1, sparse_init=False)  # weights oracle below
    else:
        method = MagnitudePruning(sparsity, distribution=dist)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    full = {n: w.numel() for n, w in before.items()}
    want = expected_counts(method, before, sparsity, full)
    if sparsity > 0 and min(want.values()) == 0:  # a layer would be cut: loud error, not an empty layer
        event("a layer would be cut")
        with pytest.raises(MaskError, match="would keep no weights"):
            method.prepare(model)
        return
    event("counts checked")
    method.prepare(model)
    mask = method.mask
    assert mask.counts() == want
    n = sum(full.values())
    assert mask.count() == n - math.floor(sparsity * n + 0.5)
    assert mask.numel() == n and mask.density() == pytest.approx(mask.count() / n)
    mask.check(model)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert m.dtype == torch.bool and m.shape == params[name].shape
        assert torch.equal(params[name].detach(), torch.where(m, before[name], torch.zeros(())))
    if not random:
        assert_top_magnitude(method, before, {k: torch.ones_like(m) for k, m in mask.items()}, mask.to_dict())


def test_a_layer_that_would_get_no_weights_raises() -> None:
    # uniform at 0.9: N = 1600 + 1 = 1601, kept 1601 - floor(1440.9 + 0.5) = 160; ideals 160.0 and 0.1:
    # the 1-weight layer gets floor(0.1) = 0 and no remainder unit is left for it.
    model = nn.Sequential(nn.Linear(40, 40), nn.Linear(1, 1))
    with pytest.raises(MaskError, match=r"\['1.weight'\]"):
        MagnitudePruning(0.9).prepare(model)
    MagnitudePruning(0.9, distribution=erk).prepare(nn.Sequential(nn.Linear(40, 40), nn.Linear(1, 1)))  # ERK keeps it
    # GLOBAL: a layer whose weights are all smaller than the kept ones
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(0.5, 1.0, 100).reshape(10, 10))
        model[1].weight.copy_(torch.linspace(-0.1, 0.1, 100).reshape(10, 10))
    with pytest.raises(MaskError, match=r"\['1.weight'\]"):
        MagnitudePruning(0.5, distribution=GLOBAL).prepare(model)


# ==================================================================================================
# Oracle: PyTorch's own global magnitude pruning
# ==================================================================================================
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.85])
def test_global_magnitude_equals_torch_global_unstructured(model_name: str, sparsity: float) -> None:
    model = MODELS[model_name][0](4)
    reference = copy.deepcopy(model)
    n = sum(p.numel() for p in sf.prunable(model).values())
    assert abs(sparsity * n - math.floor(sparsity * n) - 0.5) > 1e-6  # not x.5: both roundings agree
    MagnitudePruning(sparsity, distribution=GLOBAL).prepare(model)
    modules = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=sparsity)
    names = list(sf.prunable(model))
    ours = sf.prunable(model)
    for name, (module, _) in zip(names, modules):
        assert torch.equal(module.weight_mask.bool(), ours[name].detach() != 0), name
        assert torch.equal(module.weight.detach(), ours[name].detach())


# ==================================================================================================
# Gradient masking
# ==================================================================================================
def test_gradients_are_masked_and_dense_layers_untouched() -> None:
    model = build_tiny_mlp(widths=(8, 16, 12, 6, 4), seed=2)
    method = MagnitudePruning(0.6, targets=Targets(first_layer=False))  # 0.weight stays dense
    method.prepare(model)
    mask = method.mask.clone()
    mask["4.weight"] = torch.ones_like(mask["4.weight"])  # dense although a target
    method.set_mask(mask)
    reference = build_tiny_mlp(widths=(8, 16, 12, 6, 4), seed=99)  # no hooks
    reference.load_state_dict(model.state_dict())
    x, y = _batch(0, (8,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if name in ("2.weight", "6.weight"):  # sparse layers: the dense gradient times the mask
            m = method.mask[name]
            assert bool(ref[name].grad[~m].ne(0).any())  # there was something to mask
            assert not p.grad[~m].any()
            assert torch.equal(p.grad[m], ref[name].grad[m])
        else:  # dense target, excluded first layer, biases: exactly PyTorch's gradient
            assert torch.equal(p.grad, ref[name].grad), name
    # after remove() the hooks are gone
    method.remove()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert torch.equal(dict(model.named_parameters())["2.weight"].grad, ref["2.weight"].grad)


# ==================================================================================================
# Bad input
# ==================================================================================================
METHOD_CLASSES = [
    lambda s: MagnitudePruning(s),
    lambda s: GMP(s, end=10, every=5),
    lambda s: RandomSparse(s),
    lambda s: SET(s, until=100),
    lambda s: RigL(s, until=100),
    lambda s: SNIP(s, data=_batch(0, (8,))),
    lambda s: GraSP(s, data=_batch(0, (8,))),
    lambda s: SynFlow(s),
]


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "0.5", None])
@pytest.mark.parametrize("make", METHOD_CLASSES, ids=["magnitude", "gmp", "random", "set", "rigl", "snip", "grasp", "synflow"])
def test_bad_sparsity(make, bad) -> None:
    with pytest.raises(MaskError, match="sparsity"):
        make(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GMP(0.5, initial_sparsity="0.1", end=10, every=5),
        lambda: GMP(0.5, initial_sparsity=0.6, end=10, every=5),
        lambda: GMP(0.5, initial_sparsity=-0.1, end=10, every=5),
        lambda: GMP(0.5, start=5, end=9, every=5),  # would prune once
        lambda: GMP(0.5),  # end missing
        lambda: GMP(0.5, end=10, every=0),
        lambda: GMP(0.5, end=10.0, every=5),
        lambda: MagnitudePruning(0.5, at_step=-1),
        lambda: MagnitudePruning(0.5, pattern="nm_2,4"),
        lambda: MagnitudePruning(0.5, distribution="erk"),
        lambda: MagnitudePruning(0.5, targets=("*.weight",)),
        lambda: MagnitudePruning(0.7, pattern=NM(2, 4)),  # NM fixes sparsity at 0.5
        lambda: RandomSparse(0.6, pattern=NM(1, 4)),
    ],
)
def test_bad_constructor_arguments(make) -> None:
    with pytest.raises(SparseflowError):
        make()


def test_nm_and_block_name_the_layer_that_does_not_fit() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3), nn.Linear(6, 2))  # 2.weight: 6 inputs
    with pytest.raises(MaskError, match="'2.weight'"):
        MagnitudePruning(0.5, pattern=NM(2, 4)).prepare(model)
    with pytest.raises(MaskError, match="'1.weight'"):  # 3 x 4 into 2 x 2 tiles
        MagnitudePruning(0.5, pattern=Block(2, 2)).prepare(model)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3))  # 3 input channels
    with pytest.raises(MaskError, match="'0.weight'"):
        MagnitudePruning(0.5, pattern=NM(2, 4)).prepare(conv)
    assert all((p != 0).all() for p in model.parameters())  # a failed prepare pruned nothing


def test_no_prunable_parameters() -> None:
    with pytest.raises(MaskError, match="no prunable parameters"):
        GMP(0.5, end=10, every=5).prepare(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))


def test_set_mask_validates_before_changing_anything() -> None:
    model = build_tiny_mlp(seed=0)
    method = MagnitudePruning(0.5)
    method.prepare(model)
    before = method.mask.clone()
    weights = _snapshot_weights(method)
    ones = {n: torch.ones_like(m) for n, m in before.items()}
    bad = dict(ones, **{"2.weight": torch.ones(12, 15, dtype=torch.bool)})
    with pytest.raises(MaskError) as e:
        method.set_mask(bad)
    assert "'2.weight'" in str(e.value) and "(12, 15)" in str(e.value) and "(12, 16)" in str(e.value)
    assert method.mask == before and all(torch.equal(weights[n], w) for n, w in _snapshot_weights(method).items())
    with pytest.raises(MaskError, match="0.weight"):
        method.set_mask({k: v for k, v in ones.items() if k != "0.weight"})
    with pytest.raises(MaskError, match="'0.weight'"):
        method.set_mask(dict(ones, **{"0.weight": torch.ones(16, 8)}))  # float, not bool
    # a valid set_mask zeroes outside the new mask
    new = {n: ~m for n, m in before.items()}
    method.set_mask(new)
    assert all(not w[m].any() for w, m in zip(_snapshot_weights(method).values(), before.values()))


def test_nan_weights_at_a_mask_update_name_the_layer() -> None:
    model = build_tiny_mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = _gmp()()
    method.prepare(model, opt)
    for step in range(1, 10):
        _train_step(model, opt, method, step, (8,))
    with torch.no_grad():
        model[2].weight[method.mask["2.weight"]] = torch.nan  # kept weights diverged
    with pytest.raises(SparseflowError, match="'2.weight'") as e:
        method.step()  # step 10 prunes
    assert "NaN" in str(e.value)
    with pytest.raises(SparseflowError, match="'0.weight'"):
        bad = build_tiny_mlp(seed=0)
        with torch.no_grad():
            bad[0].weight[0, 0] = torch.inf
        MagnitudePruning(0.5).prepare(bad)


def test_a_failed_prepare_leaves_the_method_detached() -> None:
    method = MagnitudePruning(0.5, pattern=NM(2, 4))
    method.prepare(build_tiny_mlp(seed=0))
    with pytest.raises(MaskError):
        method.prepare(nn.Sequential(nn.Linear(6, 4)))
    with pytest.raises(SparseflowError, match="prepare"):
        method.step()


def test_methods_need_prepare_first() -> None:
    method = MagnitudePruning(0.5)
    for call in (method.step, method.state_dict, lambda: method.set_mask({}), lambda: method.load_state_dict({})):
        with pytest.raises(SparseflowError, match="prepare"):
            call()
    with pytest.raises(SparseflowError):
        method.prepare("not a model")  # type: ignore[arg-type]
    with pytest.raises(SparseflowError):
        method.prepare(build_tiny_mlp(), optimizer="sgd")  # type: ignore[arg-type]


def test_load_state_dict_rejects_foreign_states() -> None:
    model = build_tiny_mlp(seed=0)
    gmp = _gmp()()
    gmp.prepare(model)
    state = gmp.state_dict()
    other = MagnitudePruning(0.7)
    other.prepare(build_tiny_mlp(seed=0))
    with pytest.raises(SparseflowError, match="GMP"):
        other.load_state_dict(state)
    with pytest.raises(SparseflowError):
        other.load_state_dict({"weights": 1})
    with pytest.raises(MaskError):  # a state for another architecture
        other.load_state_dict(_state_for((8, 16, 4)))


def _state_for(widths: tuple[int, ...]) -> dict:
    method = MagnitudePruning(0.7)
    method.prepare(build_tiny_mlp(widths=widths, seed=0))
    return method.state_dict()


def test_a_random_mask_does_not_follow_the_weights_drawn_from_the_same_seed() -> None:
    # torch.manual_seed(s) then nn.Linear draws the uniform stream a Generator seeded s would give the mask:
    # the mask must come from its own stream, so the kept |w| are a random sample of all |w|.
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(256, 256))
        w = model[0].weight.detach().abs().clone()
        RandomSparse(0.9, seed=seed, sparse_init=False).prepare(model)
        kept = w[model[0].weight != 0]
        assert abs(float(kept.mean()) / float(w.mean()) - 1) < 0.05
