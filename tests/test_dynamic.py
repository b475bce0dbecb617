"""SET and RigL against a direct implementation written here from the papers and the RigL reference code.

Oracle (plain Python over the flattened layer): k = floor(f(t) · n_active) with f(t) = (α/2)(1 + cos(π t/T));
drop the k active weights of smallest |w| (ties: higher index first); grow the k best-scored positions among
all positions not kept (ties: lower index first), where RigL's score is |dense gradient| of the step and SET's
is a uniform draw from the method's seeded generator (one tensor per sparse layer per update, in order).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparseflow as sf
from sparseflow import GLOBAL, NM, SET, Block, RigL, SparseflowError, uniform
from sparseflow.methods.pruning import mask_seed

from conftest import build_tiny_convnet, build_tiny_mlp


def _batch(step: int, in_shape: tuple[int, ...] = (8,)) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(16, *in_shape, generator=g), torch.randint(0, 4, (16,), generator=g)


def _weights(model: nn.Module, names) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def oracle_update(active: Tensor, w: Tensor, score: Tensor, frac: float) -> tuple[Tensor, int]:
    """The new mask of one layer by the rule in the module docstring, by sorting Python lists."""
    act_flat, w_flat, s_flat = active.reshape(-1).tolist(), w.reshape(-1).tolist(), score.reshape(-1).tolist()
    n = len(act_flat)
    act = [i for i in range(n) if act_flat[i]]
    k = math.floor(frac * len(act) + 1e-9)
    dropped = sorted(act, key=lambda i: (abs(w_flat[i]), -i))[:k]
    kept = set(act) - set(dropped)
    candidates = [i for i in range(n) if i not in kept]  # includes the just-dropped (RigL reference)
    grown = sorted(candidates, key=lambda i: (-s_flat[i], i))[:k]
    new = torch.zeros(n, dtype=torch.bool)
    new[sorted(kept | set(grown))] = True
    return new.reshape(active.shape), k


def hand_drop_fraction(t: int, alpha: float, until: int) -> float:
    return alpha / 2 * (1 + math.cos(math.pi * t / until))


def _run_against_oracle(method: SET, steps: int, scores_for) -> list[int]:
    """Train a tiny MLP with ``method``; at every update compare the mask with the oracle's. Returns the ks."""
    model, ref = build_tiny_mlp(seed=0), build_tiny_mlp(seed=0)  # ref: no hooks, for the dense gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.prepare(model, opt)
    names = list(method.mask)
    ks: list[int] = []
    for step in range(1, steps + 1):
        x, y = _batch(step)
        ref.load_state_dict(model.state_dict())
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        dense = {n: p.grad.clone() for n, p in ref.named_parameters() if n in names}
        F.cross_entropy(model(x), y).backward()
        opt.step()
        w, prev = _weights(model, names), method.mask.clone()
        method.step()
        opt.zero_grad()
        if not method.is_update_step(step):
            assert method.mask == prev
            continue
        frac = hand_drop_fraction(step, method.alpha, method.until)
        assert method.drop_fraction(step) == pytest.approx(frac, abs=1e-15)
        for n in names:
            score = scores_for(n, dense[n])
            want, k = oracle_update(prev[n], w[n], score, frac)
            ks.append(k)
            assert torch.equal(method.mask[n], want), f"{n} at step {step}"
            assert int(method.mask[n].sum()) == int(prev[n].sum())
    return ks


def test_rigl_update_equals_the_direct_implementation() -> None:
    method = RigL(0.5, distribution=uniform, update_every=10, until=50, alpha=0.5)
    ks = _run_against_oracle(method, 55, lambda n, g: g.abs())
    assert len(ks) == 5 * 3 and sum(ks) > 0 and ks[-3:] == [0, 0, 0]  # f(until) = 0


def test_set_update_equals_the_direct_implementation_with_the_same_draws() -> None:
    seed = 11
    method = SET(0.5, distribution=uniform, update_every=10, until=45, alpha=0.5, seed=seed)
    g = torch.Generator().manual_seed(mask_seed(seed))  # the method's own stream (not the weights')
    model = build_tiny_mlp(seed=0)
    initial = {n: torch.rand(p.shape, generator=g) for n, p in sf.prunable(model).items()}  # prepare's draws
    probe = copy.deepcopy(method)
    probe.prepare(model)
    for n, r in initial.items():  # the initial mask keeps the largest draws, counts per layer exact
        count = int(probe.mask[n].sum())
        assert count == r.numel() // 2
        assert torch.equal(probe.mask[n].reshape(-1), sf.patterns.topk_mask(r.reshape(-1), count))
    # at every update: one uniform tensor per (sparse) layer, in order
    ks = _run_against_oracle(method, 50, lambda n, grad: torch.rand(grad.shape, generator=g))
    assert len(ks) == 4 * 3 and all(k > 0 for k in ks[:3])


def test_set_masks_depend_on_the_seed() -> None:
    def run(seed: int):
        model = build_tiny_convnet(seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        method = SET(0.8, update_every=5, until=30, alpha=0.5, seed=seed)
        method.prepare(model, opt)
        history = []
        for step in range(1, 31):
            x, y = _batch(step, (4, 6, 6))
            F.cross_entropy(model(x), y).backward()
            opt.step()
            method.step()
            opt.zero_grad()
            history.append(method.mask.clone())
        return history

    a, b, c = run(1), run(1), run(2)
    assert all(x == y for x, y in zip(a, b))  # same seed: same masks
    assert any(x != y for x, y in zip(a, c))  # another seed: other masks


# ==================================================================================================
# Counts, zeros at grown positions, the dropped-and-regrown rule
# ==================================================================================================
@pytest.mark.parametrize("cls", [SET, RigL])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_counts_fixed_and_grown_positions_start_at_zero(cls, opt_name: str) -> None:
    model = build_tiny_convnet(seed=1)
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2)}
    opt = make[opt_name](model.parameters())
    method = cls(0.8, update_every=4, until=30, alpha=0.4, seed=2)
    method.prepare(model, opt)
    counts = method.mask.counts()
    params = dict(model.named_parameters())
    updates = grown_total = 0
    for step in range(1, 41):
        x, y = _batch(step, (4, 6, 6))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        prev = method.mask.clone()
        if method.is_update_step(step):
            # Make the explicit zeroing observable: garbage in weights and state wherever inactive.
            with torch.no_grad():
                for n, m in prev.items():
                    params[n][~m] = 7.0
                    for v in opt.state[params[n]].values():
                        if v.shape == m.shape:
                            v[~m] = 3.0
        method.step()
        opt.zero_grad()
        assert method.mask.counts() == counts, f"step {step}"
        if not method.is_update_step(step):
            continue
        updates += 1
        for n, m in method.mask.items():
            born = m & ~prev[n]
            grown_total += int(born.sum())
            p = params[n].detach()
            assert not p[born].any(), f"{n}: grown weight not zero at step {step}"
            state = [v for v in opt.state[params[n]].values() if v.shape == m.shape]
            assert len(state) == (1 if opt_name == "sgd" else 2)
            for v in state:
                assert not v[born].any(), f"{n}: state nonzero at a grown position at step {step}"
                assert not v[~m & prev[n]].any(), f"{n}: state nonzero at a dropped position at step {step}"
            assert not p[~m & prev[n]].any()  # dropped weights are zero
    assert updates == 7 and grown_total > 0


def test_a_dropped_connection_with_a_top_gradient_is_regrown_and_keeps_its_weight() -> None:
    # One 4 x 4 layer, 8 active with |w| = 1..8; k = floor(f(1) * 8) = floor(0.25 * 8) = 2 drops |w| = 1, 2.
    layer = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: the weights stay put
    method = RigL(0.5, distribution=uniform, update_every=1, until=2, alpha=0.5)
    method.prepare(model, opt)
    active = method.mask["0.weight"].reshape(-1).nonzero().squeeze(1).tolist()
    inactive = (~method.mask["0.weight"]).reshape(-1).nonzero().squeeze(1).tolist()
    w = torch.zeros(16)
    w[active] = torch.arange(1.0, 9.0)
    with torch.no_grad():
        layer.weight.copy_(w.reshape(4, 4))
    g = torch.full((16,), 0.01)
    g[active[0]] = 5.0  # |w| = 1, dropped, but the top gradient: regrown, keeps w = 1
    g[inactive[3]] = -4.0  # grown, starts at 0
    (layer.weight * g.reshape(4, 4)).sum().backward()  # dL/dW = g
    opt.step()
    method.step()
    new = method.mask["0.weight"].reshape(-1)
    assert new[active[0]] and not new[active[1]] and new[inactive[3]]
    assert int(new.sum()) == 8
    flat = layer.weight.detach().reshape(-1)
    assert flat[active[0]] == 1.0 and flat[active[1]] == 0.0 and flat[inactive[3]] == 0.0
    buf = opt.state[layer.weight]["momentum_buffer"].reshape(-1)
    assert buf[active[0]] == 5.0 and buf[inactive[3]] == 0.0 and buf[active[1]] == 0.0


# ==================================================================================================
# The dense gradient: only at update steps, and a loud error when it is missing
# ==================================================================================================
def test_dense_gradient_is_kept_only_for_update_steps() -> None:
    model = build_tiny_mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rigl = RigL(0.6, distribution=uniform, update_every=7, until=30)
    rigl.prepare(model, opt)
    sparse = set(rigl.mask)
    stashed_at = []
    for step in range(1, 46):
        x, y = _batch(step)
        F.cross_entropy(model(x), y).backward()
        if rigl._grads:
            assert set(rigl._grads) == sparse
            stashed_at.append(step)
        opt.step()
        rigl.step()
        opt.zero_grad()
        assert not rigl._grads  # released right after the update
    assert stashed_at == [7, 14, 21, 28]
    set_ = SET(0.6, distribution=uniform, update_every=7, until=30)
    set_.prepare(build_tiny_mlp(seed=0))
    F.cross_entropy(set_.model(_batch(0)[0]), _batch(0)[1]).backward()
    for _ in range(6):
        set_.step()
    F.cross_entropy(set_.model(_batch(0)[0]), _batch(0)[1]).backward()
    assert not set_._grads  # SET never copies gradients


def test_missing_gradient_at_an_update_names_the_layer_and_step() -> None:
    model = build_tiny_mlp(seed=0)
    rigl = RigL(0.6, update_every=5, until=20)
    rigl.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = rigl.mask.clone()
    for _ in range(4):
        rigl.step()
    with pytest.raises(SparseflowError, match=r"'0\.weight'.*step 5"):
        rigl.step()  # no backward ran
    assert rigl.mask == before
    # a target the forward never uses: found at the first backward, long before the first update
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    rigl = RigL(0.5, distribution=uniform, update_every=100, until=500)
    rigl.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model[0](torch.randn(3, 8)).sum().backward()
    with pytest.raises(SparseflowError, match=r"no gradient in the first backward pass: \['1\.weight'\].*skip_no_grad=True"):
        rigl.step()


def test_skip_no_grad_keeps_the_unused_layers_mask_and_updates_the_others() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(0.5, distribution=uniform, update_every=2, until=10, skip_no_grad=True)
    rigl.prepare(model, opt)
    before = rigl.mask.clone()
    with pytest.warns(UserWarning, match=r"keep their mask fixed: \[.1\.weight.\]"):
        for _ in range(6):
            model[0](torch.randn(3, 8)).pow(2).sum().backward()
            opt.step(); rigl.step(); opt.zero_grad()
    assert torch.equal(rigl.mask["1.weight"], before["1.weight"])  # never updated
    assert not torch.equal(rigl.mask["0.weight"], before["0.weight"])  # regrown by its gradient
    assert rigl.mask.count() == before.count()


# ==================================================================================================
# Schedule
# ==================================================================================================
def test_update_steps_and_cosine_values() -> None:
    m = RigL(0.9, update_every=10, until=45, alpha=0.3)
    assert [t for t in range(0, 200) if m.is_update_step(t)] == [10, 20, 30, 40]
    for t in (10, 20, 30, 40):
        assert m.drop_fraction(t) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / 45)), abs=1e-15)
    assert m.drop_fraction(0) == pytest.approx(0.3) and m.drop_fraction(46) == 0.0
    started = SET(0.9, update_every=10, until=50, start=5)
    assert [t for t in range(0, 200) if started.is_update_step(t)] == [5, 15, 25, 35, 45]
    assert [t for t in range(0, 100) if SET(0.9, update_every=25, until=75).is_update_step(t)] == [25, 50, 75]


@pytest.mark.parametrize("cls", [SET, RigL])
def test_no_mask_change_after_until(cls) -> None:
    model = build_tiny_mlp(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method = cls(0.7, update_every=10, until=45, alpha=0.5)
    method.prepare(model, opt)
    changed_at = []
    for step in range(1, 81):
        x, y = _batch(step)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        prev = method.mask.clone()
        method.step()
        opt.zero_grad()
        if method.mask != prev:
            changed_at.append(step)
    # (at step 40, f = 0.25 (1 + cos(40π/45)) = 0.015 drops floor(0.015 · n_active) = 0 in these small layers)
    assert changed_at == [10, 20, 30]
    assert not any(method.is_update_step(t) for t in range(41, 1000))


# ==================================================================================================
# Resume
# ==================================================================================================
@pytest.mark.parametrize("cls", [SET, RigL])
@pytest.mark.parametrize("k", [20, 24])  # at an update step, and between updates
def test_state_dict_resumes_bit_identically_across_updates(cls, k: int) -> None:
    total = 45

    def fresh(seed: int):
        model = build_tiny_mlp(seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        method = cls(0.7, update_every=10, until=40, alpha=0.5, seed=4)
        method.prepare(model, opt)
        return model, opt, method

    def train(model, opt, method, steps):
        for step in steps:
            x, y = _batch(step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            method.step()
            opt.zero_grad()

    a = fresh(0)
    train(*a, range(1, total + 1))
    b = fresh(0)
    train(*b, range(1, k + 1))
    saved = copy.deepcopy({"m": b[0].state_dict(), "o": b[1].state_dict(), "s": b[2].state_dict()})
    assert "generator" in saved["s"]["extra"]
    c = fresh(9)  # other weights and another generator position: all must come from the checkpoint
    c[2].step()
    c[0].load_state_dict(saved["m"])
    c[1].load_state_dict(saved["o"])
    c[2].load_state_dict(saved["s"])
    train(*c, range(k + 1, total + 1))
    assert c[2].mask == a[2].mask
    assert all(torch.equal(p, q) for p, q in zip(a[0].parameters(), c[0].parameters()))


# ==================================================================================================
# Bad input
# ==================================================================================================
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "until"),
        ({"until": 50, "update_every": 0}, "update_every.*0"),
        ({"until": 50, "update_every": -3}, "update_every.*-3"),
        ({"until": 50, "update_every": 2.5}, "update_every.*2.5"),
        ({"until": -5}, "until.*-5"),
        ({"until": 0}, "until.*0"),
        ({"until": 50}, "until=50.*update_every=100"),  # default ΔT = 100 > until
        ({"until": 40, "start": 45, "update_every": 10}, "until=40"),
        ({"until": 50, "update_every": 10, "start": -1}, "start.*-1"),
        ({"until": 50, "update_every": 10, "alpha": -0.1}, "alpha.*-0.1"),
        ({"until": 50, "update_every": 10, "alpha": 1.5}, "alpha.*1.5"),
        ({"until": 50, "update_every": 10, "alpha": float("nan")}, "alpha.*nan"),
        ({"until": 50, "update_every": 10, "alpha": "0.3"}, "alpha.*'0.3'"),
        ({"until": 50, "update_every": 10, "total_steps": 40}, "until=50.*total_steps=40"),
        ({"until": 50, "update_every": 10, "total_steps": 0}, "total_steps.*0"),
        ({"until": 50, "update_every": 10, "pattern": NM(2, 4)}, "Unstructured"),
        ({"until": 50, "update_every": 10, "pattern": Block(2, 2)}, "Unstructured"),
        ({"until": 50, "update_every": 10, "distribution": GLOBAL}, "GLOBAL"),
    ],
)
@pytest.mark.parametrize("cls", [SET, RigL])
def test_bad_input(cls, kwargs: dict, match: str) -> None:
    sparsity = 0.5 if "pattern" in kwargs else 0.9
    with pytest.raises(SparseflowError, match=match):
        cls(sparsity, **kwargs)


def test_good_edge_values() -> None:
    SET(0.9, until=100, total_steps=100)  # until == total_steps; one update at 100
    SET(0.9, until=50, update_every=100, start=50)  # one update at the start step
    RigL(0.0, until=10, update_every=10, alpha=1.0)
    RigL(0.9, until=10, update_every=10, alpha=0)  # no drops: a static mask


# ==================================================================================================
# The fast CPU selection equals plain top-k (exactly: same sets, ties included)
# ==================================================================================================
def _plain(magnitude: Tensor, active: Tensor, grow: Tensor, k: int) -> tuple[Tensor, Tensor]:
    n_active = int(active.sum())
    kept = sf.patterns.topk_mask(magnitude.masked_fill(~active, -math.inf), n_active - k)
    grown = sf.patterns.topk_mask(grow.masked_fill(kept, -math.inf), k)
    return (active & ~kept).nonzero().squeeze(1), grown.nonzero().squeeze(1)


@pytest.mark.parametrize("n", [1000, 20000, 235200])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5])
@pytest.mark.parametrize("kind", ["distinct", "ties", "adversarial"])
def test_fast_drop_and_grow_equals_plain_topk(n: int, density: float, kind: str) -> None:
    from sparseflow.methods.dynamic import _drop_and_grow

    g = torch.Generator().manual_seed(n + int(density * 100))
    active = torch.rand(n, generator=g) < density
    magnitude = torch.randn(n, generator=g).abs() * active
    grow = torch.randn(n, generator=g).abs()
    if kind == "ties":  # few distinct values: ties at every threshold
        magnitude = (magnitude * 4).round() * active
        grow = (grow * 3).round()
    elif kind == "adversarial":  # the strided sample sees only the largest scores: the fallback path
        grow[:: max(1, n // 4096)] = 1e6
    n_active = int(active.sum())
    for frac in (0.01, 0.3, 1.0):
        k = math.floor(frac * n_active)
        dropped, grown = _drop_and_grow(magnitude, active, grow, k)
        want_dropped, want_grown = _plain(magnitude, active, grow, k)
        assert torch.equal(dropped, want_dropped) and torch.equal(grown, want_grown), (kind, frac)
        assert len(dropped) == len(grown) == k
