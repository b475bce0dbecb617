"""Mistakes through the Python API: each raises the project's exception (a SparseflowError subclass) with a
one-line message that names the offending value, and leaves the model, the method and the files as they were.
Facts that are legal but rarely meant (a second prepare) warn instead, saying what happens."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import sparseflow as sf
from sparseflow.errors import DataError, MaskError, SparseflowError


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def prepared(model: nn.Module | None = None) -> sf.MagnitudePruning:
    method = sf.MagnitudePruning(0.5)
    method.prepare(model if model is not None else mlp())
    return method


def ones(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


def int_weight_model() -> nn.Sequential:
    model = mlp()
    model[0].weight = nn.Parameter(torch.randint(-5, 5, (16, 8), dtype=torch.int32), requires_grad=False)
    return model


def batch(n_in: int = 8, label: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, n_in), torch.full((4,), label)


_DIGITS: list[sf.Dataset] = []


def digits() -> sf.Dataset:
    if not _DIGITS:
        _DIGITS.append(sf.load_dataset("digits"))
    return _DIGITS[0]


Case = tuple[str, Callable[[], Any], type[SparseflowError], tuple[str, ...]]
CASES: list[Case] = [
    # sparsity and method settings
    ("GMP sparsity 1.0", lambda: sf.GMP(sparsity=1.0, end=10), SparseflowError, ("sparsity", "1.0")),
    ("GMP sparsity as text", lambda: sf.GMP(sparsity="0.5", end=10), SparseflowError, ("'0.5'",)),
    ("GMP sparsity nan", lambda: sf.GMP(sparsity=math.nan, end=10), SparseflowError, ("nan",)),
    ("GMP without end", lambda: sf.GMP(sparsity=0.5), SparseflowError, ("end",)),
    ("GMP end 0", lambda: sf.GMP(sparsity=0.5, end=0), SparseflowError, ("end", "0")),
    ("MagnitudePruning -0.1", lambda: sf.MagnitudePruning(-0.1), SparseflowError, ("-0.1",)),
    ("MagnitudePruning True", lambda: sf.MagnitudePruning(True), SparseflowError, ("True",)),
    ("RigL without until", lambda: sf.RigL(sparsity=0.9), SparseflowError,
     ("until=None", "last optimizer step", "sf.RigL(sparsity=0.9, until=int(0.75 * epochs * len(train_loader)))")),
    ("SET without until", lambda: sf.SET(sparsity=0.8), SparseflowError, ("until=None", "sf.SET(sparsity=0.8, until=")),
    ("RigL until past total", lambda: sf.RigL(sparsity=0.9, until=100, total_steps=50), SparseflowError,
     ("until=100", "total_steps=50")),
    ("RigL N:M", lambda: sf.RigL(sparsity=0.5, until=10, pattern=sf.NM(2, 4)), SparseflowError, ("NM(n=2, m=4)",)),
    ("RigL GLOBAL", lambda: sf.RigL(sparsity=0.5, until=10, distribution=sf.GLOBAL), SparseflowError, ("GLOBAL",)),
    ("RigL alpha 2", lambda: sf.RigL(sparsity=0.5, until=10, alpha=2.0), SparseflowError, ("alpha", "2.0")),
    ("RigL update_every 0", lambda: sf.RigL(sparsity=0.5, until=10, update_every=0), SparseflowError,
     ("update_every", "0")),
    ("RigL until -1", lambda: sf.RigL(sparsity=0.5, until=-1), SparseflowError, ("until", "-1")),
    ("NM(3, 2)", lambda: sf.NM(3, 2), SparseflowError, ("NM(3, 2)",)),
    ("NM(0, 4)", lambda: sf.NM(0, 4), SparseflowError, ("NM(0, 4)",)),
    ("NM(2.0, 4)", lambda: sf.NM(2.0, 4), SparseflowError, ("2.0",)),
    ("Block(0, 2)", lambda: sf.Block(0, 2), SparseflowError, ("Block(0, 2)",)),
    ("N:M fixes the sparsity", lambda: sf.MagnitudePruning(0.5, pattern=sf.NM(1, 4)), MaskError,
     ("sparsity=0.5", "pass sparsity=0.75")),
    ("distribution as text", lambda: sf.MagnitudePruning(0.5, distribution="erk"), MaskError, ("'erk'",)),
    ("pattern as text", lambda: sf.MagnitudePruning(0.5, pattern="2:4"), MaskError, ("'2:4'",)),
    ("targets as text", lambda: sf.MagnitudePruning(0.5, targets="*.weight"), MaskError, ("'*.weight'",)),
    ("min_density without GLOBAL", lambda: sf.MagnitudePruning(0.5, min_density=0.1), SparseflowError,
     ("min_density", "uniform")),
    ("sparse_init as text", lambda: sf.MagnitudePruning(0.5, sparse_init="yes"), SparseflowError, ("'yes'",)),
    ("RandomSparse seed as text", lambda: sf.RandomSparse(0.5, seed="a"), SparseflowError, ("seed", "'a'")),
    ("Targets include as text", lambda: sf.Targets(include="*.weight"), MaskError, ("'*.weight'",)),
    ("Cubic end before start", lambda: sf.Cubic(start=10, end=5, every=1), SparseflowError, ("10", "5")),
    ("CosineDrop alpha 1.5", lambda: sf.CosineDrop(until=10, alpha=1.5), SparseflowError, ("alpha", "1.5")),
    ("Layout with one axis twice", lambda: sf.Layout(out_axis=1, in_axis=1), SparseflowError,
     ("out_axis=1", "in_axis=1")),
    ("Layout groups 0", lambda: sf.Layout(groups=0), SparseflowError, ("groups", "0")),
    ("uniform sparsity -0.5", lambda: sf.uniform({"w": (4, 4)}, -0.5), SparseflowError, ("-0.5",)),
    ("erk sparsity 1.5", lambda: sf.erk({"w": (4, 4)}, 1.5), SparseflowError, ("1.5",)),
    # masks
    ("Mask of floats", lambda: sf.Mask({"w": torch.ones(3)}), MaskError, ("'w'", "torch.float32")),
    ("Mask of a list", lambda: sf.Mask({"w": [1, 2]}), MaskError, ("'w'", "list")),
    ("Mask entry reshaped", lambda: sf.Mask({"w": ones(3)}).__setitem__("w", ones(4)), MaskError, ("(4,)", "(3,)")),
    ("Mask missing name", lambda: sf.Mask()["x"], MaskError, ("'x'",)),
    ("Mask delete missing name", lambda: sf.Mask().__delitem__("x"), MaskError, ("'x'",)),
    ("Mask.check unknown name", lambda: sf.Mask({"nope.weight": ones(3)}).check(mlp()), MaskError, ("'nope.weight'",)),
    ("Mask.check wrong shape", lambda: sf.Mask({"0.weight": ones(3)}).check(mlp()), MaskError, ("(3,)", "(16, 8)")),
    ("Mask.apply_ unknown name", lambda: sf.Mask({"nope.weight": ones(3)}).apply_(mlp()), MaskError,
     ("'nope.weight'",)),
    ("method.mask['nope.weight'] = ...", lambda: prepared().mask.__setitem__("nope.weight", ones(3)), MaskError,
     ("read-only", "'nope.weight'", "MagnitudePruning.set_mask")),
    ("method.mask['0.weight'] = ...", lambda: prepared().mask.__setitem__("0.weight", ones(16, 8)), MaskError,
     ("read-only", "'0.weight'", "set_mask")),
    ("del method.mask[...]", lambda: prepared().mask.__delitem__("0.weight"), MaskError, ("read-only", "'0.weight'")),
    ("method.mask.update", lambda: prepared().mask.update({"0.weight": ones(16, 8)}), MaskError,
     ("read-only", "'0.weight'")),
    ("method.mask.pop", lambda: prepared().mask.pop("2.weight"), MaskError, ("read-only", "'2.weight'")),
    ("method.mask.clear", lambda: prepared().mask.clear(), MaskError, ("read-only",)),
    ("set_mask unknown name", lambda: prepared().set_mask({"nope.weight": ones(3)}), MaskError, ("'nope.weight'",)),
    ("set_mask wrong shape", lambda: prepared().set_mask({"0.weight": ones(3), "2.weight": ones(4, 16)}), MaskError,
     ("'0.weight'", "(3,)")),
    # prepare and step
    ("prepare a number", lambda: sf.MagnitudePruning(0.5).prepare(3), SparseflowError, ("int",)),
    ("prepare with optimizer text", lambda: sf.MagnitudePruning(0.5).prepare(mlp(), "sgd"), SparseflowError,
     ("str",)),
    ("step before prepare", lambda: sf.MagnitudePruning(0.5).step(), SparseflowError, ("prepare",)),
    ("state_dict before prepare", lambda: sf.MagnitudePruning(0.5).state_dict(), SparseflowError, ("prepare",)),
    ("load_state_dict of junk", lambda: prepared().load_state_dict({"x": 1}), SparseflowError, ("keys ['x']", "MagnitudePruning.state_dict()")),
    ("no prunable parameters", lambda: sf.MagnitudePruning(0.5).prepare(nn.Sequential(nn.ReLU())), MaskError,
     ("no prunable parameters",)),
    ("int32 weight", lambda: sf.MagnitudePruning(0.5).prepare(int_weight_model()), MaskError,
     ("0.weight (torch.int32)", "floating point", "exclude=('0.weight',)")),
    ("int32 weight under RigL", lambda: sf.RigL(0.5, until=200).prepare(int_weight_model()), MaskError,
     ("torch.int32",)),
    ("FixedMask unknown name", lambda: sf.FixedMask(keep={"nope.weight": ones(3)}).prepare(mlp()), MaskError,
     ("nope.weight",)),
    # data-driven methods
    ("SNIP without data", lambda: sf.SNIP(sparsity=0.5), SparseflowError, ("SNIP needs a data batch",)),
    ("SNIP data is a tensor", lambda: sf.SNIP(sparsity=0.5, data=torch.randn(4, 8)), SparseflowError,
     ("SNIP", "single tensor")),
    ("SNIP batch of the wrong width", lambda: sf.SNIP(sparsity=0.5, data=batch(5)).prepare(mlp()), SparseflowError,
     ("SNIP", "inputs (4, 5)")),
    ("SNIP labels out of range", lambda: sf.SNIP(sparsity=0.5, data=batch(8, 9)).prepare(mlp()), SparseflowError,
     ("SNIP", "labels (4,) in [9, 9]", "outputs (4, 4)")),
    ("SNIP batches 0", lambda: sf.SNIP(sparsity=0.5, data=batch(), batches=0), SparseflowError, ("batches", "0")),
    ("GraSP without data", lambda: sf.GraSP(sparsity=0.5), SparseflowError, ("GraSP needs a data batch",)),
    ("GraSP batch of the wrong width", lambda: sf.GraSP(sparsity=0.5, data=batch(5)).prepare(mlp()),
     SparseflowError, ("GraSP", "inputs (4, 5)")),
    ("SynFlow wrong input shape", lambda: sf.SynFlow(sparsity=0.5, input_shape=(5,)).prepare(mlp()), SparseflowError,
     ("SynFlow", "shape (1, 5)", "input_shape=")),
    ("SynFlow rounds 0", lambda: sf.SynFlow(sparsity=0.5, rounds=0), SparseflowError, ("rounds", "0")),
    # analysis, inference, init
    ("connectivity of a number", lambda: sf.connectivity(3), MaskError, ("connectivity()", "int", "'3'")),
    ("connectivity with a list mask", lambda: sf.connectivity(mlp(), [1]), MaskError, ("connectivity()", "list")),
    ("connectivity unknown mask name", lambda: sf.connectivity(mlp(), {"nope.weight": ones(3)}), MaskError,
     ("'nope.weight'",)),
    ("connectivity empty mask", lambda: sf.connectivity(mlp(), {}), MaskError, ("the mask is empty",)),
    ("connectivity analysis name", lambda: sf.connectivity(mlp(), analysis="fast"), SparseflowError, ("'fast'",)),
    ("repair_mask of a number", lambda: sf.repair_mask(3), MaskError, ("repair_mask()", "int")),
    ("repair_mask unknown mask name", lambda: sf.repair_mask(mlp(), {"nope.weight": ones(3)}), MaskError,
     ("'nope.weight'",)),
    ("signal on a wrong batch", lambda: sf.signal(mlp(), torch.randn(4, 5)), SparseflowError, ("(4, 5)",)),
    ("stain a dense model", lambda: sf.stain(mlp()), SparseflowError, ("dense",)),
    ("sparse_init_ per", lambda: sf.sparse_init_(mlp(), None, per="x"), SparseflowError, ("'x'",)),
    ("rescale_ unknown mask name", lambda: sf.rescale_(mlp(), {"nope.weight": ones(3)}), SparseflowError,
     ("nope.weight",)),
    ("convert backend name", lambda: sf.convert(mlp(), backend="x"), SparseflowError, ("backend", "'x'")),
    ("convert batch sizes", lambda: sf.convert(mlp(), batch_sizes=(0,)), SparseflowError, ("(0,)",)),
    ("Hopfield of 0 units", lambda: sf.Hopfield(0), SparseflowError, ("n must be", "0")),
    ("Hopfield connectivity 2", lambda: sf.Hopfield(10, c=2.0), SparseflowError, ("connectivity c", "2.0")),
    ("random_patterns coding 1.5", lambda: sf.random_patterns(3, 10, 1.5, torch.Generator()), SparseflowError,
     ("1.5",)),
    ("corrupt overlap 2", lambda: sf.corrupt(torch.ones(3, 10), 2.0, 0.5, torch.Generator()), SparseflowError,
     ("m0", "2.0")),
    # training jobs and data
    ("load_dataset cifar", lambda: sf.load_dataset("cifar"), SparseflowError, ("'cifar'",)),
    ("load_dataset mnist without data_dir", lambda: sf.load_dataset("mnist"), DataError, ("data_dir", "'mnist'")),
    ("load_dataset missing files", lambda: sf.load_dataset("mnist", "nowhere"), DataError, ("nowhere lacks",)),
    ("load_dataset subset 0", lambda: sf.load_dataset("digits", subset=0), SparseflowError, ("subset", "0")),
    ("build_model vgg", lambda: sf.build_model("vgg", (64,), 10), SparseflowError, ("'vgg'",)),
    ("build_model width 0", lambda: sf.build_model("mlp", (64,), 10, hidden=(0,)), SparseflowError, ("hidden width", "got 0")),
    ("build_model hidden for LeNet", lambda: sf.build_model("lenet300-100", (64,), 10, hidden=(5,)), SparseflowError,
     ("(5,)", "'lenet300-100'")),
    ("loaders batch size 0", lambda: sf.loaders(digits(), 0, seed=0), SparseflowError, ("batch_size", "0")),
    ("TrainConfig epochs 0", lambda: sf.TrainConfig(epochs=0), SparseflowError, ("epochs", "0")),
    ("TrainConfig lr -1", lambda: sf.TrainConfig(lr=-1.0), SparseflowError, ("lr", "-1.0")),
    ("TrainConfig optimizer lion", lambda: sf.TrainConfig(optimizer="lion"), SparseflowError, ("'lion'",)),
    ("fit resume without run_dir", lambda: sf.fit(mlp(), [], [], sf.TrainConfig(epochs=1), resume=True),
     SparseflowError, ("resume=True needs a run_dir",)),
    ("fit with a method name", lambda: sf.fit(mlp(), [], [], sf.TrainConfig(epochs=1), method="gmp"),
     SparseflowError, ("'gmp'",)),
    ("fit on batches of the wrong width", lambda: sf.fit(mlp(), [batch(n_in=5)], [batch()], sf.TrainConfig(epochs=1),
                                                         progress=False),
     SparseflowError, ("cannot train on the first batch", "float32 (4, 5)", "int64 (4,)")),
    ("fit with float targets", lambda: sf.fit(mlp(), [(torch.randn(4, 8), torch.rand(4, 3))], [batch()],
                                              sf.TrainConfig(epochs=1), progress=False),
     SparseflowError, ("cannot train on the first batch", "targets float32 (4, 3)")),
    ("fit with a label past the classes", lambda: sf.fit(mlp(), [batch(label=9)], [batch()], sf.TrainConfig(epochs=1),
                                                         progress=False),
     SparseflowError, ("cannot train on the first batch",)),
    ("evaluate on batches of the wrong width", lambda: sf.evaluate(mlp(), [batch(n_in=3)]), SparseflowError,
     ("cannot evaluate on the first batch", "float32 (4, 3)")),
    ("Sweep seeds empty", lambda: sf.Sweep(seeds=()), SparseflowError, ("seeds is empty (got ())",)),
    ("Sweep method unknown", lambda: sf.Sweep(methods=("x",)), SparseflowError, ("'x'",)),
    ("Sweep N:M with another sparsity", lambda: sf.Sweep(pattern="2:4", sparsities=(0.9,)), SparseflowError,
     ("sparsity=0.9",)),
    ("LotteryJob prune_fraction 1", lambda: sf.LotteryJob(prune_fraction=1.0), SparseflowError,
     ("prune_fraction", "1.0")),
    ("LotteryJob seeds repeated", lambda: sf.LotteryJob(seeds=(0, 0)), SparseflowError, ("(0, 0)",)),
]


@pytest.mark.parametrize("call, error, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_api_input_raises_one_clear_error(call: Callable[[], Any], error: type[SparseflowError],
                                              needles: tuple[str, ...], tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            call()
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_refused_write_to_method_mask_changes_nothing() -> None:
    model = mlp()
    method = prepared(model)
    before, weights = method.mask.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    density = method.density()
    for write in (lambda m: m.__setitem__("nope.weight", ones(3)), lambda m: m.__setitem__("0.weight", ones(16, 8)),
                  lambda m: m.__delitem__("0.weight")):
        with pytest.raises(MaskError):
            write(method.mask)
    assert method.mask == before and method.density() == density
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    copy = method.mask.clone()  # a copy is an ordinary, writable Mask
    copy["0.weight"] = ones(16, 8)
    method.set_mask(copy)  # and set_mask is the way to change the method's own
    assert method.mask["0.weight"].all() and method.mask == copy


def test_a_refused_int_weight_leaves_the_model_untouched() -> None:
    model = int_weight_model()
    before = model[0].weight.clone()
    method = sf.MagnitudePruning(0.5)
    with pytest.raises(MaskError):
        method.prepare(model)
    assert torch.equal(model[0].weight, before)
    with pytest.raises(SparseflowError, match="prepare"):
        method.step()  # a failed prepare leaves the method detached


def test_prepare_twice_warns() -> None:
    model = mlp()
    method = prepared(model)
    with pytest.warns(UserWarning, match=r"MagnitudePruning.prepare\(\) was called again on the same model"):
        method.prepare(model)


def test_prepare_on_a_second_model_warns_that_the_first_is_left() -> None:
    method = prepared()
    with pytest.warns(UserWarning, match="detaches it from the first .* no longer masked; use one MagnitudePruning"):
        method.prepare(mlp())


def test_one_prepare_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared()
