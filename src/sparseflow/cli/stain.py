"""``sparseflow stain MODEL_OR_RUN`` (Golgi stain of a sparse network) and ``sparseflow experiment golgi``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sparseflow.cli._app import JsonOpt, QuickOpt, _console, _emit_json, app, experiment_app
from sparseflow.errors import SparseflowError

TRAIN_EXAMPLES = {"digits": 1437, "mnist": 60000}


def _load(path: Path) -> Any:
    """A run directory (its checkpoint, or model.sfz when there is none) or a checkpoint / .sfz file."""
    from sparseflow.analysis.loader import load_for_analysis

    from sparseflow.training.checkpoints import has_checkpoint

    if path.is_dir() and not has_checkpoint(path) and (path / "model.sfz").is_file():
        path = path / "model.sfz"
    return load_for_analysis(path)


@app.command("stain")
def stain_cmd(
    model_or_run: Annotated[Path, typer.Argument(
        help="Run directory of `sparseflow train`, or a .sfz / .safetensors file.")],
    units: Annotated[int, typer.Option(help="How many units to stain (chosen at random from --seed).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the choice of units.")] = 0,
    layer: Annotated[Optional[str], typer.Option(
        help="Layer whose units are stained: a weight layer's name, 'input' or 'output' (default: the middle "
             "hidden layer).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for the PNGs and stain.json (default: RUN/stain, or FILE-stain beside a file).")] = None,
    all_units: Annotated[bool, typer.Option(
        "--all-units", help="Choose among all units of the layer (default: among units on an input-output path).")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Golgi stain: draw a few units' full input and output trees through all layers (kept connections only),
    per-layer masks, the first layer's per-pixel kept fraction and in/out degree histograms. A dense model is
    refused (every tree would be the whole network). --quick is accepted; staining is fast."""
    from sparseflow.analysis import stain_plots
    from sparseflow.analysis.loader import DATASET_SHAPES
    from sparseflow.analysis.stain import stain
    from sparseflow.io import atomic_write_text, json_safe

    del quick
    loaded = _load(model_or_run)
    job = (loaded.config or {}).get("job") or {}
    shape = DATASET_SHAPES[job["dataset"]][0] if job.get("dataset") in DATASET_SHAPES else None
    st = stain(loaded.model, loaded.mask, layer=layer, units=units, seed=seed, input_shape=shape, names=loaded.names,
               any_unit=all_units)
    if out is None:
        out = model_or_run / "stain" if model_or_run.is_dir() else model_or_run.with_name(model_or_run.stem + "-stain")
    if out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {str(out)!r} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{model_or_run.name}: {st.graph.density:.1%} of weights kept, {len(st.trees.units)} units stained"
    files = ["stain.png", "masks.png", "degrees.png"]
    stain_plots.plot_graphs([(title, st)], out / "stain.png")
    stain_plots.plot_masks([(model_or_run.name, st)], out / "masks.png")
    stain_plots.plot_degrees([(model_or_run.name, st)], out / "degrees.png")
    if st.pixels is not None:
        stain_plots.plot_pixels([(model_or_run.name, st)], out / "pixels.png")
        files.append("pixels.png")
    result = {"command": "stain", "path": str(model_or_run), "source": loaded.source,
              "model": type(loaded.model).__name__, **st.to_json(), "out": str(out), "files": files + ["stain.json"]}
    atomic_write_text(out / "stain.json", json.dumps(json_safe(result), indent=2) + "\n")

    console = _console(as_json)
    t = Table(title=f"stained units of {result['layer']} ({result['layer_units']} units, "
                    f"{result['layer_units_on_path']} on an input-output path) in {loaded.source}")
    for col in ("unit", "input tree", "output tree", "inputs reaching it", "outputs it reaches"):
        t.add_column(col, justify="right")
    for r in result["trees"]:
        t.add_row(*(f"{r[k]:,}" for k in ("unit", "input_tree_units", "output_tree_units", "inputs_reaching", "outputs_reached")))
    console.print(t)
    d = Table(title="unit degrees per layer (kept inputs per output unit / kept outputs per input unit)")
    for col in ("layer", "fan-in mean", "fan-in Gini", "no input", "fan-out mean", "fan-out Gini", "no output"):
        d.add_column(col, justify="right" if col != "layer" else "left")
    for r in result["degrees"]:
        fi, fo = r["fan_in"], r["fan_out"]
        d.add_row(r["layer"], f"{fi['mean']:.2f}", f"{fi['gini']:.3f}", f"{fi['zero']:,}", f"{fo['mean']:.2f}",
                  f"{fo['gini']:.3f}", f"{fo['zero']:,}")
    console.print(d)
    if st.pixels is not None:
        console.print(f"input pixels with a kept first-layer connection: {st.pixels.covered:.1%} of "
                      f"{st.pixels.kept_fraction.numel()}", highlight=False)
    console.print(f"wrote {out}/ {', '.join(result['files'])}", highlight=False)
    if as_json:
        _emit_json(result)


@experiment_app.command("golgi")
def experiment_golgi(
    out: Annotated[Path, typer.Option(help="Write results.json, report.md and the PNGs here.")] = Path("runs/golgi"),
    methods: Annotated[str, typer.Option(help="Comma-separated training methods: rigl, gmp.")] = "rigl,gmp",
    sparsity: Annotated[float, typer.Option(help="Fraction of weights pruned in every mask.")] = 0.95,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per training run (default 100 on digits, 20 on MNIST; quick 20 / 2).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Train on MNIST read from this folder (default: the embedded 8x8 digits).")] = None,
    subset: Annotated[Optional[int], typer.Option(help="MNIST training examples (default all; quick 6400).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the training, the random control and the stained units.")] = 0,
    units: Annotated[int, typer.Option(help="Units stained in each mask (1 to 10).")] = 3,
    layer: Annotated[str, typer.Option(help="Layer whose units are stained: layers.0 (first hidden), layers.1, "
                                            "layers.2 (output) or input.")] = "layers.0",
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the estimated time exceeds an hour.")] = False,
    quick: QuickOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stain a trained RigL / GMP mask of LeNet-300-100 next to a random mask with the same per-layer counts."""
    import dataclasses

    from sparseflow.experiments.golgi.run import GolgiConfig, run_golgi
    from sparseflow.experiments.golgi.report import summary_rows, write_outputs
    from sparseflow.training.rundir import check_budget

    if data_dir is not None and not data_dir.is_dir():
        raise SparseflowError(f"--data-dir {str(data_dir)!r} is not a folder; pass the folder holding the MNIST IDX files")
    if out.exists() and not out.is_dir():
        raise SparseflowError(f"--out {str(out)!r} is a file; pass a folder")
    cfg = GolgiConfig.default(quick=quick, data_dir=data_dir)
    changes: dict[str, Any] = {"methods": tuple(m.strip() for m in methods.split(",") if m.strip()),
                               "sparsity": sparsity, "seed": seed, "units": units, "layer": layer}
    if epochs is not None:
        changes["epochs"] = epochs
    if subset is not None:
        changes["subset"] = subset
    cfg = dataclasses.replace(cfg, **changes)
    check_budget(cfg.estimate_s(cfg.subset or TRAIN_EXAMPLES[cfg.dataset]), yes, "experiment golgi")

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    with bar:
        task = bar.add_task("golgi", total=cfg.work_units())
        result = run_golgi(cfg, lambda what: bar.update(task, advance=1, description=what))
    command = "sparseflow " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["experiment"] else None
    figures = write_outputs(result, out, command)

    console = _console(as_json, min_width=120)
    t = Table(title=f"golgi ({'quick' if quick else 'full'} run, {result.config.dataset}, {result.wall_s:.1f} s)")
    for col in ("mask", "test acc", "pixels covered", "reach output", "ρ(fan-out, std)", "low-var share",
                "fan-out Gini", "fan-out var", "input-tree pixels", "no output"):
        t.add_column(col, justify="left" if col == "mask" else "right", no_wrap=col == "mask")
    for row in summary_rows(result):
        t.add_row(*(str(v) for v in row))
    console.print(t)
    c = Table(title="criteria")
    for col in ("criterion", "value", "target", "result"):
        c.add_column(col, justify="right" if col == "value" else "left")
    for name, v in result.criteria().items():
        c.add_row(name, f"{v['value']:.4f}", v["target"], "pass" if v["pass"] else "FAIL")
    console.print(c)
    console.print(f"wrote {out}/report.md, results.json, {', '.join(figures)}", highlight=False)
    if as_json:
        _emit_json(result.to_json() | {"out": str(out), "figures": figures})
