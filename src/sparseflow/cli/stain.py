"""``sparseflow stain MODEL_OR_RUN``: the Golgi stain of a sparse network (:mod:`sparseflow.analysis.stain`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command
from sparseflow.training.options import check, option


@dataclass(frozen=True)
class StainOptions:
    """Which model, which units of which layer, and where the figures go."""

    model_or_run: Path = option(dataclasses.MISSING, "Run directory of `sparseflow train`, or a .sfz / .safetensors file.",
                                positional=True, metavar="MODEL_OR_RUN")
    units: int = option(3, "How many units to stain (chosen at random from --seed).", min=1)
    seed: int = option(0, "Seed of the choice of units.")
    layer: str | None = option(None, "Layer whose units are stained: a weight layer's name, 'input' or 'output' "
                                     "(default: the middle hidden layer).")
    out: Path | None = option(None, "Folder for the PNGs and stain.json (default: RUN/stain, or FILE-stain beside a file).")
    all_units: bool = option(False, "Choose among all units of the layer (default: among units on an input-output path).")

    def __post_init__(self) -> None:
        check(self)


def _load(path: Path) -> Any:
    """A run directory (its checkpoint, or model.sfz when there is none) or a checkpoint / .sfz file."""
    from sparseflow.analysis.loader import load_for_analysis
    from sparseflow.training.checkpoints import has_checkpoint

    if path.is_dir() and not has_checkpoint(path) and (path / "model.sfz").is_file():
        path = path / "model.sfz"
    return load_for_analysis(path)


def stain_cmd(call: Call) -> None:
    """Golgi stain: draw a few units' full input and output trees through all layers (kept connections only),
    per-layer masks, the first layer's per-pixel kept fraction and in/out degree histograms. A dense model is
    refused (every tree would be the whole network). --quick is accepted; staining is fast."""
    from sparseflow.analysis import stain_plots
    from sparseflow.analysis.loader import DATASET_SHAPES
    from sparseflow.analysis.stain import stain
    from sparseflow.io import atomic_write_text, json_safe, make_folder, removed_on_failure

    o: StainOptions = call.options
    path = o.model_or_run
    loaded = _load(path)
    job = (loaded.config or {}).get("job") or {}
    shape = DATASET_SHAPES[job["dataset"]][0] if job.get("dataset") in DATASET_SHAPES else None
    st = stain(loaded.model, loaded.mask, layer=o.layer, units=o.units, seed=o.seed, input_shape=shape,
               names=loaded.names, any_unit=o.all_units)
    out = o.out if o.out is not None else path / "stain" if path.is_dir() else path.with_name(path.stem + "-stain")
    with removed_on_failure(out):  # a failure while plotting leaves no empty folder
        make_folder(out, "--out")
        title = f"{path.name}: {st.graph.density:.1%} of weights kept, {len(st.trees.units)} units stained"
        files = ["stain.png", "masks.png", "degrees.png"]
        stain_plots.plot_graphs([(title, st)], out / "stain.png")
        stain_plots.plot_masks([(path.name, st)], out / "masks.png")
        stain_plots.plot_degrees([(path.name, st)], out / "degrees.png")
        if st.pixels is not None:
            stain_plots.plot_pixels([(path.name, st)], out / "pixels.png")
            files.append("pixels.png")
        result = {"command": "stain", "path": str(path), "source": loaded.source,
                  "model": type(loaded.model).__name__, **st.to_json(), "out": str(out), "files": files + ["stain.json"]}
        atomic_write_text(out / "stain.json", json.dumps(json_safe(result), indent=2) + "\n")

    run = call.run
    run.table(f"stained units of {result['layer']} ({result['layer_units']} units, "
              f"{result['layer_units_on_path']} on an input-output path) in {loaded.source}",
              ("unit", "input tree", "output tree", "inputs reaching it", "outputs it reaches"),
              [[f"{r[k]:,}" for k in ("unit", "input_tree_units", "output_tree_units", "inputs_reaching", "outputs_reached")]
               for r in result["trees"]], left=())
    rows = [[r["layer"], f"{r['fan_in']['mean']:.2f}", f"{r['fan_in']['gini']:.3f}", f"{r['fan_in']['zero']:,}",
             f"{r['fan_out']['mean']:.2f}", f"{r['fan_out']['gini']:.3f}", f"{r['fan_out']['zero']:,}"]
            for r in result["degrees"]]
    run.table("unit degrees per layer (kept inputs per output unit / kept outputs per input unit)",
              ("layer", "fan-in mean", "fan-in Gini", "no input", "fan-out mean", "fan-out Gini", "no output"), rows)
    if st.pixels is not None:
        run.print(f"input pixels with a kept first-layer connection: {st.pixels.covered:.1%} of "
                  f"{st.pixels.kept_fraction.numel()}")
    run.print(f"wrote {out}/ {', '.join(result['files'])}")
    run.finish(result, criteria=False)


command(app, "stain", stain_cmd, options=StainOptions)
