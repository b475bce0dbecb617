"""Symbolic tracing shared by the unit graph and the mean-field routes, and plain words for why it failed.

:class:`LayoutTracer` is ``torch.fx``'s tracer with two changes: every module whose ``weight`` has a known
layout is a leaf (so a Hugging Face ``Conv1D`` appears as one call, like ``nn.Linear``, instead of the
``addmm`` inside it), and it remembers the innermost module it was in when tracing failed. Nodes remember the
module that created them (``where``) and their source line.

:func:`failure` turns torch.fx's internal errors ("co_varnames is too small", "Proxy object cannot be
iterated", ...) into the construct that stopped the trace: the module path, what Python did there, and the
source line.
"""

from __future__ import annotations

import inspect
import os
import traceback

import torch
import torch.fx as fx
from torch import nn

from sparseflow.layouts import layout_of

_TORCH_DIR = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(__file__)


class LayoutTracer(fx.Tracer):
    """torch.fx tracer: layout-known weight modules are leaves; ``failed_in`` is the innermost module path that
    was being traced when an exception escaped ('' for the model's own forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return layout_of(m, "weight") is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001, ANN201 (fx signature)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise

    def where(self, node: fx.Node) -> str:
        """Module path that created ``node`` ('' at the top level)."""
        return self.node_name_to_scope.get(node.name, ("", None))[0]


def source_line(node: fx.Node) -> str:
    """``file:line `code``` of the user code (not torch's) that created ``node``, or ''."""
    lines = (node.stack_trace or "").strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        head = lines[i].strip()
        if head.startswith("File ") and not _internal(head.split('"')[1] if head.count('"') >= 2 else ""):
            code = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].strip().startswith("File ") else ""
            return _frame(head, code)
    return ""


def _internal(path: str) -> bool:
    return path.startswith(_TORCH_DIR) or path.startswith(_HERE)


def _frame(header: str, code: str) -> str:
    # header: 'File "/path/x.py", line 12, in forward'
    parts = header.strip().split('"')
    path = parts[1] if len(parts) > 2 else header
    line = header.rsplit("line ", 1)[-1].split(",")[0]
    return f"{os.path.basename(path)}:{line} `{code}`" if code else f"{os.path.basename(path)}:{line}"


def _user_frame(e: BaseException) -> str:
    """The innermost traceback frame outside torch and this package: the code that did the untraceable thing."""
    for f in reversed(traceback.extract_tb(e.__traceback__)):
        if not _internal(f.filename):
            return _frame(f'File "{f.filename}", line {f.lineno}', (f.line or "").strip())
    return ""


def _what(model: nn.Module, e: BaseException) -> str:
    msg = str(e).strip()
    if "co_varnames" in msg:
        sig = inspect.signature(model.forward)
        kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        wrapped = hasattr(type(model).forward, "__wrapped__")
        why = "; ".join(w for w, hit in (("wrapped by a decorator", wrapped), ("takes **kwargs", kwargs)) if hit)
        return f"torch.fx cannot give its forward symbolic inputs ({why or 'its code object is unusual'})"
    if "cannot be iterated" in msg:
        return "iteration over a tensor (a for loop, *args/**kwargs forwarding or tuple unpacking)"
    if "inputs to control flow" in msg:
        return "Python control flow (if, while, bool()) on a tensor value"
    if "item assignment" in msg:
        return "item assignment into a tensor (x[i] = ...)"
    first = msg.splitlines()[0] if msg else ""
    return f"{type(e).__name__}: {first[:160]}"


def failure(model: nn.Module, tracer: LayoutTracer, e: BaseException) -> str:
    """Why ``model`` could not be traced: the module path, the construct, the source line."""
    path = tracer.failed_in
    if path:
        owner = f"module {path!r} ({type(model.get_submodule(path)).__name__})"
    else:
        owner = f"{type(model).__name__}.forward"
    frame = _user_frame(e)
    return f"{owner}: {_what(model if not path else model.get_submodule(path), e)}" + (f" at {frame}" if frame else "")
