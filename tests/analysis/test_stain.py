"""Golgi stain (`sparseflow.analysis.stain`, `sparseflow stain`): trees against brute-force reachability on
hand-built masks, degrees against mask sums, the pixel map against the first-layer mask mean, seeded unit
choice, and the command's files, JSON and exit status 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import RunCli, build_tiny_convnet, build_tiny_mlp
from sparseflow.analysis.stain import (choose_units, degree_stats, gini, layer_graph, on_path, pixel_map, stain,
                                       trees)
from sparseflow.errors import SparseflowError
from sparseflow.io import save_state
from sparseflow.training.job import TrainJob
from sparseflow.mask import Mask
from sparseflow.training.models import build_model


def random_mask(model: nn.Module, density: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()
                 if n.endswith("weight") and p.dim() > 1})


def brute_reach(masks: list[torch.Tensor], layer: int, unit: int) -> tuple[list[set[int]], list[set[int]]]:
    """Depth-first search over (layer, unit) nodes of an MLP: masks[l] is (out, in) from layer l to l+1."""
    up: list[set[int]] = [set() for _ in range(len(masks) + 1)]
    down: list[set[int]] = [set() for _ in range(len(masks) + 1)]
    stack = [(layer, unit)]
    while stack:  # downstream: follow kept (o, i) from i in layer l to o in layer l+1
        l, i = stack.pop()
        if i in down[l]:
            continue
        down[l].add(i)
        if l < len(masks):
            stack += [(l + 1, int(o)) for o in torch.nonzero(masks[l][:, i]).flatten()]
    stack = [(layer, unit)]
    while stack:
        l, o = stack.pop()
        if o in up[l]:
            continue
        up[l].add(o)
        if l > 0:
            stack += [(l - 1, int(i)) for i in torch.nonzero(masks[l - 1][o]).flatten()]
    return up, down


def as_sets(rows: tuple[torch.Tensor, ...], j: int) -> list[set[int]]:
    return [set(torch.nonzero(r[j]).flatten().tolist()) for r in rows]


def test_trees_on_a_hand_built_mask() -> None:
    # 3 inputs -> 2 -> 2. Kept: in0->h0, in1->h0, in2->h1; h0->o1 only. Unit h0: input tree {in0, in1}, output {o1}.
    model = build_tiny_mlp((3, 2, 2))
    mask = Mask({"0.weight": torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool),
                 "2.weight": torch.tensor([[0, 0], [1, 0]], dtype=torch.bool)})
    g = layer_graph(model, mask)
    t = trees(g, 1, [0, 1])
    assert as_sets(t.up, 0) == [{0, 1}, {0}, set()] and as_sets(t.down, 0) == [set(), {0}, {1}]
    assert as_sets(t.up, 1) == [{2}, {1}, set()] and as_sets(t.down, 1) == [set(), {1}, set()]  # h1 is a dead end
    assert t.sizes(0) == (2, 1) and t.sizes(1) == (1, 0)
    assert [p.tolist() for p in on_path(g)] == [[True, True, False], [True, False], [False, True]]


@pytest.mark.parametrize("seed", range(4))
def test_trees_equal_brute_force_reachability(seed: int) -> None:
    model = build_tiny_mlp((8, 16, 12, 4), seed=seed)
    mask = random_mask(model, 0.15, seed)
    masks = [mask[n] for n in ("0.weight", "2.weight", "4.weight")]
    g = layer_graph(model, mask)
    assert g.sizes == (8, 16, 12, 4)
    alive = on_path(g)
    for space, size in enumerate(g.sizes):
        t = trees(g, space, range(size))  # every unit at once
        for u in range(size):
            up, down = brute_reach(masks, space, u)
            assert as_sets(t.up, u) == up and as_sets(t.down, u) == down
            assert bool(alive[space][u]) == (bool(up[0]) and bool(down[-1]))
            edges_in = sum(int(t.input_edges(l, u).sum()) for l in g.links)
            # A kept (o, i) is in the input tree when o is in it (then i is too).
            want = sum(int(masks[l][sorted(up[l + 1])].sum()) if up[l + 1] else 0 for l in range(3))
            assert edges_in == want


def test_conv_channels_are_units_and_flatten_expands() -> None:
    model = build_tiny_convnet()  # Conv(4, 8, 3) -> Conv(8, 4, 3) -> Flatten (4 x 16) -> Linear(64, 4)
    mask = random_mask(model, 0.08, 3)
    g = layer_graph(model, mask)
    assert g.sizes == (4, 8, 4, 64, 4)
    # Channel level: (o, i) kept when any kernel weight is; feature j of the flattened map is channel j // 16.
    expand = (torch.arange(64)[:, None] // 16) == torch.arange(4)[None, :]
    chain = [mask["0.weight"].flatten(2).any(-1), mask["2.weight"].flatten(2).any(-1), expand, mask["5.weight"]]
    for space in range(5):
        t = trees(g, space, range(g.sizes[space]))
        for u in range(g.sizes[space]):
            up, down = brute_reach(chain, space, u)
            assert as_sets(t.up, u) == up and as_sets(t.down, u) == down


def test_degrees_equal_mask_sums() -> None:
    model = build_tiny_mlp((8, 16, 12, 4))
    mask = random_mask(model, 0.3, 1)
    st = stain(model, mask, units=2, seed=0)
    for d, name in zip(st.degrees, ("0.weight", "2.weight", "4.weight")):
        m = mask[name]
        assert torch.equal(d.fan_in, m.sum(1)) and torch.equal(d.fan_out, m.sum(0))
        s = degree_stats(d.fan_in)
        assert s["histogram"] == [int((m.sum(1) == k).sum()) for k in range(int(m.sum(1).max()) + 1)]
        assert s["zero"] == int((m.sum(1) == 0).sum()) and s["mean"] == pytest.approx(float(m.sum(1).double().mean()))
    conv = build_tiny_convnet()
    cmask = random_mask(conv, 0.1, 2)
    d = stain(conv, cmask, units=1).degrees[0]
    assert torch.equal(d.fan_in, cmask["0.weight"].flatten(2).any(-1).sum(1))


def test_gini_against_the_mean_absolute_difference() -> None:
    rand = torch.rand(37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for x in (torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 5.0]), rand):
        x, n = x.double(), len(x)
        want = float((x[:, None] - x[None, :]).abs().sum() / (2 * n * n * x.mean()))
        assert gini(x) == pytest.approx(want, abs=1e-12)
    assert gini(torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(2 / 3) and gini(torch.zeros(4)) == 0.0


def test_pixel_map_is_the_first_layer_mask_mean_reshaped() -> None:
    model = build_model("mlp", (1, 28, 28), 10, hidden=(40, 20), seed=0)
    mask = random_mask(model, 0.05, 5)
    px = pixel_map(layer_graph(model, mask), (1, 28, 28))
    first = mask["layers.0.weight"]
    assert torch.allclose(px.kept_fraction, first.float().mean(0).reshape(28, 28))
    assert torch.equal(px.fields[7], first[7].float().reshape(28, 28))
    assert px.covered == pytest.approx(float(first.any(0).double().mean()))
    assert pixel_map(layer_graph(build_tiny_convnet(), random_mask(build_tiny_convnet(), 0.5, 0))) is None


def test_unit_choice_is_seeded_and_prefers_units_on_a_path() -> None:
    assert choose_units(100, 5, seed=3) == choose_units(100, 5, seed=3)
    assert choose_units(100, 5, seed=3) != choose_units(100, 5, seed=4)
    units = choose_units(100, 5, seed=3)
    assert len(set(units)) == 5 and all(0 <= u < 100 for u in units) and list(units) == sorted(units)
    among = torch.zeros(100, dtype=torch.bool)
    among[[10, 20, 30, 40]] = True
    assert set(choose_units(100, 3, seed=0, among=among)) <= {10, 20, 30, 40}
    assert {10, 20, 30, 40} < set(choose_units(100, 6, seed=0, among=among))  # the rest fills up
    model = build_tiny_mlp((8, 16, 12, 4))
    mask = random_mask(model, 0.25, 0)
    a, b = (stain(model, mask, units=3, seed=7) for _ in range(2))
    assert a.trees.units == b.trees.units and all(on_path(a.graph)[a.trees.space][list(a.trees.units)])


def test_bad_values_raise() -> None:
    model = build_tiny_mlp((8, 16, 12, 4))
    with pytest.raises(SparseflowError, match="dense"):
        stain(model)
    mask = random_mask(model, 0.3, 0)
    with pytest.raises(SparseflowError, match="cannot stain 17 units of a layer of 16"):
        stain(model, mask, layer="0", units=17)
    with pytest.raises(SparseflowError, match="no layer 'fc9'"):
        stain(model, mask, layer="fc9")


def make_run(path: Path, density: float) -> tuple[nn.Module, Mask]:
    """A run directory laid out as `sparseflow train` writes it (config.json + checkpoint with the mask)."""
    job = TrainJob(method="random", model="mlp", hidden=(32, 16), dataset="digits", epochs=1)
    model = build_model("mlp", (1, 8, 8), 10, hidden=(32, 16), seed=0)
    mask = random_mask(model, density, 0)
    mask.apply_(model)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"job": job.to_dict(), "schedule": {}}))
    save_state(path / "checkpoint.safetensors", {"model": model.state_dict(), "method": {"mask": dict(mask), "step": 0}})
    return model, mask


def test_cli_writes_figures_and_json(tmp_path: Path, run_cli: RunCli) -> None:
    model, mask = make_run(tmp_path / "run", 0.1)
    code, out, err = run_cli(["stain", str(tmp_path / "run"), "--units", "2", "--seed", "1", "--json"])
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    folder = tmp_path / "run" / "stain"
    for f in ("stain.png", "masks.png", "degrees.png", "pixels.png", "stain.json"):
        assert (folder / f).stat().st_size > 0 and f in got["files"]
    assert json.loads((folder / "stain.json").read_text())["trees"] == got["trees"]
    want = stain(model, mask, units=2, seed=1)
    assert got["units"] == list(want.trees.units) and got["layer"] == "layers.1"
    masks = [mask[f"layers.{i}.weight"] for i in range(3)]
    for row in got["trees"]:
        up, down = brute_reach(masks, 2, row["unit"])
        assert row["inputs_reaching"] == len(up[0]) and row["outputs_reached"] == len(down[3])
    assert got["degrees"][0]["fan_out"]["histogram"] == torch.bincount(masks[0].sum(0)).tolist()
    assert got["pixels"]["shape"] == [8, 8]  # from the run's dataset


def test_cli_sfz_file_and_layer(tmp_path: Path, run_cli: RunCli) -> None:
    import sparseflow as sf

    model = build_model("mlp", (1, 8, 8), 10, hidden=(32, 16), seed=0)
    mask = random_mask(model, 0.2, 4)
    mask.apply_(model)
    sf.save(tmp_path / "m.sfz", model, mask=mask)
    code, out, err = run_cli(["stain", str(tmp_path / "m.sfz"), "--layer", "layers.0", "--units", "32",
                              "--out", str(tmp_path / "o"), "--json"])
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["units"] == list(range(32)) and (tmp_path / "o" / "stain.png").is_file()
    assert [r["inputs_reaching"] for r in got["trees"]] == mask["layers.0.weight"].sum(1).tolist()


@pytest.mark.parametrize("case", ["missing", "not a model", "dense", "too many units", "unknown layer"])
def test_cli_bad_input_exits_2(tmp_path: Path, run_cli: RunCli, case: str) -> None:
    args = ["stain", str(tmp_path / "nothing")]
    if case == "not a model":
        (tmp_path / "notes.safetensors").write_text("hello")
        args = ["stain", str(tmp_path / "notes.safetensors")]
    elif case == "dense":
        make_run(tmp_path / "run", 1.01)
        args = ["stain", str(tmp_path / "run")]
    elif case in ("too many units", "unknown layer"):
        make_run(tmp_path / "run", 0.1)
        args = ["stain", str(tmp_path / "run")] + (["--units", "17"] if case == "too many units" else ["--layer", "conv9"])
    code, out, err = run_cli(args + ["--out", str(tmp_path / "o")])
    assert code == 2 and err.startswith("error:") and out == ""
    assert {"missing": "does not exist", "not a model": "not a checkpoint", "dense": "nothing to stain",
            "too many units": "cannot stain 17 units", "unknown layer": "no layer 'conv9'"}[case] in " ".join(err.split())
    assert not (tmp_path / "o").exists()


def test_degree_legends_stay_within_their_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long titles (run directories, file names) go to one legend above the figure; each axes' legend holds the
    statistics only, so no legend runs past its axes or over another panel."""
    from sparseflow.analysis import stain_plots

    model = build_tiny_mlp(seed=0)
    long_title = "rigl (trained, 30.0% kept) " + "train-digits-mlp-rigl-s0.98-8f3a5b2c1d" * 2
    panels = [(long_title, stain(model, random_mask(model, 0.3, 0), units=1)),
              ("random control with the same per-layer counts", stain(model, random_mask(model, 0.3, 1), units=1))]
    seen = {}

    def check(fig, path):  # noqa: ANN001, ANN202 (save_figure's signature)
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_legend() is not None]
        for ax in axes:
            legend, box = ax.get_legend().get_window_extent(r), ax.get_window_extent(r)
            assert box.x0 - 1 <= legend.x0 and legend.x1 <= box.x1 + 1, "legend wider than its axes"
            assert not any(legend.overlaps(o.get_window_extent(r)) for o in fig.axes if o is not ax)
        top = fig.legends[0]
        assert [t.get_text().replace("\n", "") for t in top.get_texts()] == [t for t, _ in panels]
        assert top.get_window_extent(r).x1 <= fig.bbox.x1 and not any(
            top.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes)
        seen["axes"] = len(axes)
        import matplotlib.pyplot as plt

        plt.close(fig)

    monkeypatch.setattr(stain_plots, "save_figure", check)
    stain_plots.plot_degrees(panels, tmp_path / "degrees.png")
    assert seen["axes"] == 2 * len(panels[0][1].degrees)  # fan-in and fan-out per weight layer
