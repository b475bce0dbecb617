"""Reference models of the sparsity literature: LeNet-style MLPs, Conv-2/4/6 and CIFAR-style ResNets.

- :class:`MLP`: fully connected; ``hidden=(300, 100)`` is LeNet-300-100 (LeCun et al. 1998), the MNIST
  network of "The Lottery Ticket Hypothesis" (Frankle & Carbin 2019).
- :class:`ConvNet`: Conv-2 / Conv-4 / Conv-6 of Frankle & Carbin 2019 (VGG-like: pairs of 3x3 convs, each
  pair followed by a 2x2 max-pool, then fully connected 256-256-classes).
- :class:`ResNet`: ResNet-(6n+2) for small images (He et al. 2016, "Deep Residual Learning", section 4.2).
- ``gpt``: a character-level GPT in nanoGPT's shape (:mod:`sparseflow.training.gpt`), and ``hf-gpt2``, the same
  network as a ``transformers`` ``GPT2LMHeadModel`` built from a config (:mod:`sparseflow.training.hf`). Their
  ``input_shape`` is ``(context,)`` and ``num_classes`` the vocabulary size, as a text dataset gives them.

Every model takes ``norm`` in :data:`NORMS` (studied under small batches: Ioffe & Szegedy 2015 "batch",
Ba et al. 2016 "layer", Wu & He 2018 "group"). Convolutional models accept 1-D signals ``(C, L)`` as well
as images ``(C, H, W)``.

Naming contract, relied on by pruning and lottery code: every Linear / Conv module appears in
``named_modules()`` in the order the forward pass calls it, and the classifier comes last among them.
MLP and ConvNet keep their weight layers in one ``layers`` ModuleList (``layers.0`` first, ``layers[-1]``
the classifier) and their normalisation layers in a separate ``norms`` ModuleList registered after it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.errors import SparseflowError

NORMS = ("batch", "layer", "group", "none")
MODELS = ("mlp", "lenet300-100", "conv2", "conv4", "conv6", "resnet", "gpt", "hf-gpt2")
LANGUAGE_MODELS = ("gpt", "hf-gpt2")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise SparseflowError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def _check_positive(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SparseflowError(f"{what} must be a positive integer, got {value!r}")


def group_count(channels: int) -> int:
    """Groups for GroupNorm: Wu & He's default of 32, lowered to the largest divisor of ``channels`` that
    keeps at least 2 channels per group (one channel per group is instance norm, which they found worse).

    64 -> 32, 16 -> 8, 300 -> 30, 100 -> 25, 1 -> 1.
    """
    if channels < 2:
        return 1
    return max(g for g in range(1, min(32, channels // 2) + 1) if channels % g == 0)


def norm_layer(norm: str, channels: int, spatial_dims: int) -> nn.Module:
    """Normalisation over ``channels`` for inputs with 0 (features ``(N, C)``), 1 ``(N, C, L)`` or 2 spatial dims."""
    _check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm1d(channels)
    if norm == "layer":
        # On features LayerNorm; on feature maps GroupNorm(1, C), i.e. over (C, *spatial) as in Wu & He 2018.
        return nn.LayerNorm(channels) if spatial_dims == 0 else nn.GroupNorm(1, channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)  # GroupNorm accepts (N, C) and (N, C, *)
    return nn.Identity()


class MLP(nn.Module):
    """Flatten, then ``Linear -> norm -> ReLU`` per hidden width, then a Linear classifier.

    ``layers`` holds only the Linear layers: ``layers.0`` is the first, ``layers[-1]`` the classifier.
    """

    def __init__(
        self, input_size: int, num_classes: int, hidden: tuple[int, ...] = (300, 100), norm: str = "none"
    ) -> None:
        super().__init__()
        _check_norm(norm)
        _check_positive("input_size", input_size)
        _check_positive("num_classes", num_classes)
        for h in hidden:
            _check_positive("hidden width", h)
        widths = (input_size, *hidden, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(norm_layer(norm, h, 0) for h in hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (N, C, H, W) or (N, C, L) -> (N, input_size)
        for linear, norm in zip(self.layers[:-1], self.norms):
            x = F.relu(norm(linear(x)))
        return self.layers[-1](x)


class ConvNet(nn.Module):
    """Conv-2/4/6 (Frankle & Carbin 2019, fig. 2): ``depth`` 3x3 convs in pairs of widths 64, 128, 256,
    a 2x2 max-pool after each pair, then Linear 256 -> 256 -> ``num_classes``.

    ``input_hw`` is the spatial size, ``(H, W)`` for images or ``(L,)`` for signals (then Conv1d, MaxPool1d).
    A pool is skipped once a spatial size is already 1, so Conv-6 also runs on 8x8 digits.
    ``layers`` holds the convs then the Linears in forward order; conv bias is dropped when a norm follows.
    """

    def __init__(
        self, in_channels: int, num_classes: int, input_hw: tuple[int, ...], depth: int = 2, norm: str = "none"
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if depth not in (2, 4, 6):
            raise SparseflowError(f"ConvNet depth must be 2, 4 or 6 (Conv-2/4/6), got {depth!r}")
        if len(input_hw) not in (1, 2):
            raise SparseflowError(
                f"ConvNet needs 1 or 2 spatial dims, got input_hw={tuple(input_hw)}; use MLP for flat inputs"
            )
        for what, v in (("in_channels", in_channels), ("num_classes", num_classes), ("spatial size", min(input_hw))):
            _check_positive(what, v)
        dims = len(input_hw)
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if dims == 2 else (nn.Conv1d, nn.MaxPool1d)
        widths = (64, 64, 128, 128, 256, 256)[:depth]
        layers: list[nn.Module] = []
        norms: list[nn.Module] = []
        pools: list[bool] = []  # pools[i]: max-pool after conv i
        size, prev = list(input_hw), in_channels
        for i, w in enumerate(widths):
            layers.append(conv(prev, w, kernel_size=3, padding=1, bias=norm == "none"))
            norms.append(norm_layer(norm, w, dims))
            pools.append(i % 2 == 1 and min(size) >= 2)
            if pools[-1]:
                size = [s // 2 for s in size]
            prev = w
        flat = prev * math.prod(size)
        for a, b in ((flat, 256), (256, 256)):
            layers.append(nn.Linear(a, b))
            norms.append(norm_layer(norm, b, 0))
        layers.append(nn.Linear(256, num_classes))
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.pool = pool(2)
        self.pools = tuple(pools)

    def forward(self, x: Tensor) -> Tensor:
        n_conv = len(self.pools)
        for i, (layer, norm) in enumerate(zip(self.layers[:-1], self.norms)):
            if i == n_conv:
                x = x.flatten(1)  # (N, 256, h, w) -> (N, flat) before the first Linear
            x = F.relu(norm(layer(x)))
            if i < n_conv and self.pools[i]:
                x = self.pool(x)
        return self.layers[-1](x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016); a 1x1 strided conv + norm on the shortcut
    when the shape changes (their option B), the identity otherwise."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        bias = norm == "none"  # a norm right after a conv makes its bias redundant
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, out_ch, spatial_dims)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, out_ch, spatial_dims)
        # Registered last because forward calls it last: named_modules() order = call order.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                conv(in_ch, out_ch, 1, stride=stride, bias=bias), norm_layer(norm, out_ch, spatial_dims)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-``depth`` for small inputs (He et al. 2016, sec. 4.2): a 3x3 stem conv of ``width`` channels,
    three stages of n = (depth - 2) / 6 BasicBlocks with widths ``width``, 2x, 4x (stride 2 entering stages
    2 and 3), global average pooling and a Linear classifier ``fc``. ResNet-20 at width 16 has 0.27M weights.

    Convs use He initialisation (He et al. 2015), as in the paper; ``spatial_dims=1`` builds the 1-D variant.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        norm: str = "batch",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise SparseflowError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth!r}")
        if spatial_dims not in (1, 2):
            raise SparseflowError(f"ResNet needs 1 or 2 spatial dims, got spatial_dims={spatial_dims!r}")
        for what, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            _check_positive(what, v)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        n = (depth - 2) // 6
        self.conv = conv(in_channels, width, 3, padding=1, bias=norm == "none")
        self.norm = norm_layer(norm, width, spatial_dims)
        stages: list[nn.Module] = []
        prev = width
        for s in range(3):
            out = width * 2**s
            stride = 1 if s == 0 else 2  # the first block of stages 2 and 3 halves the spatial size
            blocks = [BasicBlock(prev, out, stride, norm, spatial_dims)]
            blocks += [BasicBlock(out, out, 1, norm, spatial_dims) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(F.relu(self.norm(self.conv(x))))
        return self.fc(x.flatten(2).mean(-1))  # global average pool over all spatial positions


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    norm: str = "none",
    hidden: tuple[int, ...] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for examples of ``input_shape`` (no batch axis, e.g.
    ``Dataset.input_shape``). ``hidden`` sets the widths of ``"mlp"`` (default (256, 128)) and only of it.
    With ``seed`` the initial weights are reproducible and the global torch RNG is left untouched.
    """
    if name not in MODELS:
        raise SparseflowError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    _check_norm(norm)
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise SparseflowError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape!r}")
    if hidden is not None and name != "mlp":
        raise SparseflowError(f"hidden={hidden!r} only applies to 'mlp'; {name!r} has fixed widths, leave it unset")
    if name in LANGUAGE_MODELS and (len(shape) != 1 or norm != "none"):
        raise SparseflowError(
            f"{name!r} is a language model: it takes input_shape=(context,) of token ids, got {shape}, and has "
            f"its own LayerNorms (leave norm unset, got {norm!r}); train it on a text dataset such as tinyshakespeare"
        )
    is_conv = name.startswith("conv") or name == "resnet"
    if is_conv and len(shape) not in (2, 3):
        raise SparseflowError(
            f"{name!r} needs inputs of shape (C, L) or (C, H, W), got {shape}; "
            f"use 'mlp' for flat inputs, or reshape them with a channel axis"
        )
    if seed is None:
        return _make(name, shape, num_classes, norm, hidden)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream continues as if nothing happened
        torch.manual_seed(seed)
        return _make(name, shape, num_classes, norm, hidden)


def _make(name: str, shape: tuple[int, ...], num_classes: int, norm: str, hidden: tuple[int, ...] | None) -> nn.Module:
    if name == "gpt":
        from sparseflow.training.gpt import GPT

        return GPT(num_classes, block_size=shape[0])
    if name == "hf-gpt2":
        from sparseflow.training.hf import gpt2_model

        return gpt2_model(num_classes, block_size=shape[0])
    if name == "mlp":
        return MLP(math.prod(shape), num_classes, (256, 128) if hidden is None else tuple(hidden), norm)
    if name == "lenet300-100":
        return MLP(math.prod(shape), num_classes, (300, 100), norm)
    if name == "resnet":
        return ResNet(shape[0], num_classes, norm=norm, spatial_dims=len(shape) - 1)
    return ConvNet(shape[0], num_classes, shape[1:], depth=int(name[-1]), norm=norm)
