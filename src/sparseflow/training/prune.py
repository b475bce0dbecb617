"""One-shot pruning of a trained language model: ``sparseflow prune MODEL``.

MODEL is a run directory of ``sparseflow train`` (a language model on Tiny Shakespeare) or a local Hugging Face
model folder (loaded with ``from_pretrained`` from that path, never downloaded). Calibration windows come from the
training split of the text, validation windows from its last 10 %; a character-level model reads the text as
characters (its vocabulary must be the text's), a folder with a tokenizer through that tokenizer.

:func:`prune_model` prunes with :class:`~sparseflow.Wanda`, :class:`~sparseflow.SparseGPT` or one-shot magnitude,
and measures the validation perplexity before and after, per-layer sparsity and reconstruction error, wall time
and the process's peak memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.errors import SparseflowError
from sparseflow.layouts import call, output_tensor
from sparseflow.methods import LayerPruning, MagnitudePruning, SparseGPT, Wanda
from sparseflow.methods.oneshot import peak_mib
from sparseflow.patterns import NM, Unstructured
from sparseflow.training.options import check, option

METHODS = ("wanda", "wanda-layer", "sparsegpt", "magnitude")


@dataclass(frozen=True)
class PruneConfig:
    """What ``sparseflow prune`` prunes, how, and on which data."""

    model: Path = option(MISSING, "A run directory of `sparseflow train` (a language model) or a local Hugging "
                         "Face model folder.", positional=True)
    method: str = option("sparsegpt", " | ".join(METHODS) + " (wanda compares weights within each output row, as "
                         "the paper does; wanda-layer within each layer)", choices=METHODS)
    sparsity: float = option(0.5, "Fraction of the target weights pruned (with --pattern: 1 - N/M).", min=0, max=1,
                             max_open=True)
    pattern: str | None = option(None, "N:M semi-structured sparsity along the input axis, e.g. 2:4.")
    calibration: int = option(64, "Calibration windows drawn from the training text.", min=1, quick=8)
    eval_windows: int = option(128, "Validation windows the perplexity is measured on.", min=1, quick=16)
    seed: int = option(0, "Seed of the calibration draw.")
    data_dir: Path | None = option(None, "Folder with Tiny Shakespeare's input.txt (e.g. ../shared/data/tinyshakespeare).")
    out: Path | None = option(None, "Output folder (default runs/prune-METHOD-SPARSITY).")

    def __post_init__(self) -> None:
        check(self)
        if self.pattern is not None:
            nm = parse_nm(self.pattern)
            object.__setattr__(self, "sparsity", 1 - nm.n / nm.m)

    @property
    def nm(self) -> NM | None:
        return parse_nm(self.pattern) if self.pattern is not None else None


def parse_nm(text: str) -> NM:
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SparseflowError(f"--pattern takes N:M such as 2:4 (got {text!r}): N of every M weights along the input "
                              "axis are kept")
    return NM(int(parts[0]), int(parts[1]))


@dataclass
class Loaded:
    model: nn.Module
    kind: str  # "run" (a sparseflow GPT) or "hf" (a Hugging Face folder)
    encode: Callable[[str], Tensor]


def load_language_model(path: Path, text: Any) -> Loaded:
    """The model at ``path`` and how it reads ``text`` (a :class:`~sparseflow.training.text.TextDataset`)."""
    path = Path(path)
    if not path.exists():
        raise SparseflowError(f"MODEL {str(path)!r} does not exist: pass a run directory of `sparseflow train` or a "
                              "local Hugging Face model folder")
    if (path / "config.json").is_file() and not (path / "checkpoint.safetensors").is_file():
        from sparseflow.training.hf import require_transformers

        tf = require_transformers()
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise SparseflowError(f"{path} is not a causal language model folder transformers can load: {e}") from None
        vocab = int(model.config.vocab_size)
        if vocab == text.num_classes:
            return Loaded(model, "hf", text.encode)
        try:
            tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            raise SparseflowError(f"{path}: its vocabulary has {vocab} tokens, not the text's {text.num_classes} "
                                  "characters, and it holds no tokenizer to read the text with") from None
        return Loaded(model, "hf", lambda s: torch.tensor(tok(s)["input_ids"], dtype=torch.int64))
    from sparseflow.analysis.loader import load_for_analysis

    loaded = load_for_analysis(path)
    vocab = getattr(getattr(loaded.model, "lm_head", None), "out_features", None)
    if vocab != text.num_classes:
        raise SparseflowError(f"{path} does not hold a language model of the text's {text.num_classes} characters "
                              f"(output size {vocab}); train one with `sparseflow train --dataset tinyshakespeare "
                              "--model gpt`")
    return Loaded(loaded.model, "run", text.encode)


def windows(tokens: Tensor, context: int, count: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``count`` windows (x, y = x shifted by one) of ``context`` tokens: random starts, or evenly spaced."""
    last = len(tokens) - context - 1
    if last < 0:
        raise SparseflowError(f"the text has {len(tokens)} tokens, fewer than a window of {context + 1}")
    if generator is None:
        starts = torch.linspace(0, last, min(count, last + 1)).long()
    else:
        starts = torch.randint(0, last + 1, (count,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def perplexity(model: nn.Module, x: Tensor, y: Tensor, batch: int = 16) -> float:
    """exp(mean next-token cross-entropy) over the windows ``x``, ``y``."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(x), batch):
        logits = output_tensor(call(model, x[i:i + batch]))
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1),
                                       reduction="sum"))
        n += y[i:i + batch].numel()
    return math.exp(min(total / n, 700.0))


def oneshot_method(name: str, sparsity: float, nm: NM | None, calib: Tensor,
                   on_layer: Callable[[LayerPruning], None] | None = None) -> Any:
    """The unprepared one-shot method ``name`` (one of :data:`METHODS`) at ``sparsity`` (or the N:M pattern
    ``nm``), calibrated on the windows ``calib`` in batches of 8 (magnitude reads no data)."""
    pattern = nm or Unstructured()
    if name == "magnitude":
        return MagnitudePruning(sparsity, pattern=pattern)
    data = [(calib[i:i + 8], calib[i:i + 8]) for i in range(0, len(calib), 8)]  # (inputs, unused targets)
    if name in ("wanda", "wanda-layer"):
        return Wanda(sparsity, data=data, batches=len(data), pattern=pattern, on_layer=on_layer,
                     per="layer" if name == "wanda-layer" else "row")
    return SparseGPT(sparsity, data=data, batches=len(data), pattern=pattern, on_layer=on_layer)


@dataclass
class PruneResult:
    method: str
    sparsity: float
    pattern: str | None
    ppl_before: float
    ppl_after: float
    layers: list[LayerPruning]
    density: float
    wall_s: float
    peak_mib: float


def prune_model(model: nn.Module, cfg: PruneConfig, calib: Tensor, val: tuple[Tensor, Tensor],
                on_layer: Callable[[LayerPruning], None] | None = None) -> tuple[PruneResult, Any]:
    """Prune ``model`` in place on the calibration windows ``calib``; (the result, the method)."""
    t0 = time.perf_counter()
    before = perplexity(model, *val)
    method = oneshot_method(cfg.method, cfg.sparsity, cfg.nm, calib, on_layer)
    method.prepare(model)
    layers = list(getattr(method, "report", []))
    after = perplexity(model, *val)
    result = PruneResult(cfg.method, cfg.sparsity, cfg.pattern, before, after, layers, method.density(),
                         time.perf_counter() - t0, peak_mib())
    return result, method
