"""``sparseflow prune MODEL``: one-shot pruning of a trained language model with calibration data."""

from __future__ import annotations

import json

from sparseflow.cli._app import app
from sparseflow.cli.generate import Call, command, default_out
from sparseflow.training.prune import PruneConfig


def prune(call: Call) -> None:
    """Prune a trained language model in one shot (Wanda, SparseGPT or magnitude) with calibration windows of
    Tiny Shakespeare; report the validation perplexity before and after, per-layer sparsity and reconstruction
    error, wall time and peak memory; write the pruned model as model.sfz (and, for a Hugging Face folder, as a
    save_pretrained folder hf/)."""
    import torch

    from sparseflow.io import atomic_write_text, json_safe, make_folder
    from sparseflow.storage.container import save
    from sparseflow.training.data import load_dataset
    from sparseflow.training.prune import load_language_model, prune_model, windows

    c = call.config
    out = default_out(c.out, f"prune-{c.method}-{c.pattern.replace(':', 'of') if c.pattern else c.sparsity}", call.quick)
    if c.data_dir is None:
        from sparseflow.errors import SparseflowError

        raise SparseflowError("--data-dir is needed: the folder with Tiny Shakespeare's input.txt "
                              "(e.g. ../shared/data/tinyshakespeare)")
    text = load_dataset("tinyshakespeare", data_dir=c.data_dir)
    loaded = load_language_model(c.model, text)
    make_folder(out, "--out")
    context = int(getattr(getattr(loaded.model, "config", None), "n_positions", 0) or text.context)
    context = min(context, text.context)
    char_level = loaded.encode == text.encode  # (bound methods: equal, never identical)
    train_tokens = text.train_tokens if char_level else None
    val_tokens = text.val_tokens if char_level else None
    if train_tokens is None:  # a tokenizer of its own: read the text through it
        raw = text.decode(torch.cat([text.train_tokens, text.val_tokens]))
        cut = len(text.decode(text.train_tokens))
        train_tokens, val_tokens = loaded.encode(raw[:cut]), loaded.encode(raw[cut:])
    g = torch.Generator().manual_seed(c.seed)
    calib, _ = windows(train_tokens, context, c.calibration, g)
    val = windows(val_tokens, context, c.eval_windows, None)
    with call.run.progress(f"prune ({c.method})", total=None) as tick:
        result, method = prune_model(loaded.model, c, calib, val, on_layer=lambda row: tick(row.name))
    rows = [(r.name, f"{r.density:.3f}", f"{r.error:.4f}", f"{r.seconds:.2f}", f"{r.peak_mib:,.0f}")
            for r in result.layers] or [(n, f"{float(m.float().mean()):.3f}", "-", "-", "-")
                                        for n, m in method.mask.items()]
    call.run.table(f"{c.model}: {c.method} at {c.pattern or c.sparsity}", ("layer", "density", "relative error",
                   "seconds", "peak MiB"), rows)
    call.run.print(f"validation perplexity {result.ppl_before:.3f} -> {result.ppl_after:.3f} "
                   f"({len(val[0])} windows of {context}); {result.wall_s:.1f} s, peak {result.peak_mib:,.0f} MiB")
    save(out / "model.sfz", loaded.model, mask=method.mask)
    files = ["model.sfz"]
    if loaded.kind == "hf":
        from transformers.utils import logging as hf_logging

        from sparseflow.training.hf import save_pretrained

        hf_logging.disable_progress_bar()  # its bars would mix with ours
        save_pretrained(loaded.model, out / "hf")
        files.append("hf")
    obj = {"command": "prune", "model": str(c.model), "method": c.method, "sparsity": c.sparsity,
           "pattern": c.pattern, "calibration": c.calibration, "seed": c.seed,
           "perplexity_before": result.ppl_before, "perplexity_after": result.ppl_after,
           "density": result.density, "wall_s": result.wall_s, "peak_mib": result.peak_mib,
           "layers": [{"name": r.name, "density": r.density, "error": r.error, "seconds": r.seconds}
                      for r in result.layers], "out": str(out), "files": files}
    atomic_write_text(out / "result.json", json.dumps(json_safe(obj), indent=2) + "\n")
    call.run.finish(obj)


command(app, "prune", prune, config=PruneConfig)
