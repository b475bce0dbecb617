"""The char GPT as a Hugging Face ``transformers`` model: built from a config, converted, saved with ``save_pretrained``.

``transformers`` is optional (the ``hf`` extra: ``pip install 'sparseflow[hf]'``); every function here says so
when it is missing. Nothing is downloaded: models are built from a ``GPT2Config`` and saved to, or loaded
from, local folders.

- :func:`gpt2_model`: a ``GPT2LMHeadModel`` of :class:`~sparseflow.training.gpt.GPT`'s default shape
  (``build_model("hf-gpt2", ...)``), dropout off as in the GPT, the head tied to the token embedding.
- :func:`to_gpt2`: a :class:`~sparseflow.training.gpt.GPT` as a ``GPT2LMHeadModel`` computing the same logits.
  The parameter names are the same (nanoGPT chose GPT-2's); GPT-2's ``Conv1D`` stores its weight as
  (in, out), the transpose of a Linear's, so ``c_attn``, ``c_proj`` and ``c_fc`` weights are transposed.
- :func:`save_pretrained`: either model as a local folder that ``GPT2LMHeadModel.from_pretrained(folder)``
  loads (``config.json``, ``model.safetensors``), written beside the destination and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from sparseflow.errors import SparseflowError

_TRANSPOSED = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # Linear (out, in) <-> Conv1D (in, out)


def require_transformers() -> Any:
    """The transformers package, or one clear error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise SparseflowError("Hugging Face models need the transformers package: pip install 'sparseflow[hf]' "
                              "(or pip install transformers)") from None
    return transformers


def gpt2_config(vocab_size: int, block_size: int = 128, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                dropout: float = 0.0) -> Any:
    """A ``GPT2Config`` of the GPT's shape: vocabulary, context (``n_positions``), depth, heads, width, dropout."""
    tf = require_transformers()
    return tf.GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=n_embd, n_layer=n_layer,
                         n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                         bos_token_id=None, eos_token_id=None)  # a character vocabulary has no such tokens


def gpt2_model(vocab_size: int, block_size: int = 128, **shape: Any) -> nn.Module:
    """A freshly initialised ``GPT2LMHeadModel`` (GPT-2's initialisation, from torch's RNG)."""
    return require_transformers().GPT2LMHeadModel(gpt2_config(vocab_size, block_size, **shape))


def to_gpt2(model: nn.Module) -> nn.Module:
    """The :class:`~sparseflow.training.gpt.GPT` ``model`` as a ``GPT2LMHeadModel`` with the same weights (on the CPU)."""
    from sparseflow.training.gpt import GPT

    if not isinstance(model, GPT):
        raise SparseflowError(f"to_gpt2 converts a sparseflow GPT, got {type(model).__name__}")
    hf = gpt2_model(model.vocab_size, model.block_size, n_layer=model.n_layer, n_head=model.n_head,
                    n_embd=model.n_embd, dropout=model.dropout)
    state = {k: (v.t() if k.endswith(_TRANSPOSED) else v).detach().cpu() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # the tied head may be listed as missing (it is the embedding); anything else means the shapes drifted apart
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SparseflowError(f"to_gpt2: parameters differ from GPT2LMHeadModel's (missing {missing}, "
                              f"unexpected {unexpected})")
    return hf.train(model.training)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` (a GPT, or a ``transformers`` model) with ``save_pretrained`` to ``directory``; return it.

    The folder is written next to ``directory`` and renamed into place, so it is complete or absent; an
    earlier save there is replaced, a non-empty folder that holds no ``config.json`` is refused.
    """
    from sparseflow.training.gpt import GPT

    tf = require_transformers()
    hf = to_gpt2(model) if isinstance(model, GPT) else model
    if not isinstance(hf, tf.PreTrainedModel):
        raise SparseflowError(f"save_pretrained needs a sparseflow GPT or a transformers model, got "
                              f"{type(model).__name__}")
    dest = Path(directory)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / "config.json").is_file())):
        raise SparseflowError(f"{dest} exists and is not a save_pretrained folder; choose a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        hf.save_pretrained(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
            os.replace(dest, old / "d")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
