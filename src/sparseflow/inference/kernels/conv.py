"""``SparseConv``: a groups=1 Conv1d/2d/3d as one sparse product over patches.

A convolution with weight W [out, in, *k] is ``rows @ W.reshape(out, in * prod(k)).T`` where each row is one
output position's receptive field (in x k, flattened in W's order) -- im2col. 1x1 kernels need no patches,
only the strided pixels; 2-D patches come from ``F.unfold``, 1-D and 3-D ones from ``Tensor.unfold`` over each
spatial axis. Padding of every kind ``nn.Conv*d`` accepts (numbers, ``"same"``, ``"valid"``; zeros, reflect,
replicate, circular) is applied first with ``F.pad``, as torch itself does for the non-zero modes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparseflow.errors import SparseflowError
from sparseflow.inference.kernels.modules import SparseLinear, StubWeight

__all__ = ["SparseConv", "conv_pads"]


def conv_pads(conv: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """``conv``'s padding as ``F.pad`` takes it: (left, right) per spatial axis, the last axis first."""
    k, d = conv.kernel_size, conv.dilation
    if conv.padding == "same":  # torch puts the odd extra element on the right
        per_axis = [((di * (ki - 1)) // 2, di * (ki - 1) - (di * (ki - 1)) // 2) for ki, di in zip(k, d)]
    elif conv.padding == "valid":
        per_axis = [(0, 0)] * len(k)
    else:
        per_axis = [(p, p) for p in conv.padding]
    return tuple(v for pair in reversed(per_axis) for v in pair)


class SparseConv(nn.Module):
    """A groups=1 ``nn.Conv1d/2d/3d`` (``kind``) running ``linear`` (a SparseLinear over patches)."""

    def __init__(self, conv: nn.modules.conv._ConvNd, linear: SparseLinear) -> None:
        super().__init__()
        if conv.groups != 1:
            raise SparseflowError(f"SparseConv needs groups=1, got groups={conv.groups}")
        self.kind = f"Conv{len(conv.kernel_size)}d"
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)  # as given, for deconvert
        self.padding_mode = conv.padding_mode
        self.pads = conv_pads(conv)
        self.linear = linear

    @property
    def weight(self) -> StubWeight:
        return StubWeight.of((self.out_channels, self.in_channels, *self.kernel_size))

    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """im2col of a padded [N, C, *spatial] input: ([N * prod(out), C * prod(k)], out spatial shape)."""
        k, s, d = self.kernel_size, self.stride, self.dilation
        if all(ki == 1 for ki in k):
            xs = x[(slice(None), slice(None), *(slice(None, None, si) for si in s))]
            out = tuple(xs.shape[2:])
            return xs.movedim(1, -1).reshape(-1, self.in_channels), out
        out = tuple((n - di * (ki - 1) - 1) // si + 1 for n, ki, si, di in zip(x.shape[2:], k, s, d))
        if len(k) == 2:
            cols = F.unfold(x, k, d, 0, s)                                    # [N, C*kh*kw, L]
            return cols.transpose(1, 2).reshape(-1, cols.shape[1]), out
        p = x
        for axis, (ki, si, di) in enumerate(zip(k, s, d)):                  # window of each axis appended last
            p = p.unfold(2 + axis, di * (ki - 1) + 1, si)
            if di > 1:
                p = p[..., ::di]
        nd = len(k)                                                         # [N, C, *out, *k] -> [N, *out, C, *k]
        p = p.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
        return p.reshape(-1, self.in_channels * math.prod(k)), out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.kernel_size)
        unbatched = x.dim() == nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != nd + 2 or x.shape[1] != self.in_channels:
            raise SparseflowError(f"input of shape {tuple(x.shape)} does not fit a {self.kind} layer with "
                                  f"in_channels={self.in_channels}: need [N, {self.in_channels}, *{nd} spatial dims]")
        if any(self.pads):
            x = F.pad(x, self.pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        rows, out = self._rows(x)
        y = self.linear(rows)                                               # [N * prod(out), out_channels]
        y = y.reshape(x.shape[0], *out, self.out_channels).movedim(-1, 1)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.kind}: {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"padding_mode={self.padding_mode!r}")
