"""EcoTTA's meta networks and partitioning (Song et al., CVPR 2023), used by :mod:`methods.ecotta`.

`MetaNet` splices BN(f_k(x)) + ReLU(BN(Conv3×3(x))) around the frozen partition f_k through forward hooks;
`_Recomputed` keeps only the branch input for backward; `_MeanAbsDiff` keeps an int8 sign map for the
self-distilled L1. `residual_blocks` / `partition` implement the split rule documented in methods/ecotta.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.errors import UserError


class MetaNet(nn.Module):
    """Meta network of one partition; its hooks splice it around the frozen blocks of the partition."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_out, track_running_stats=False)
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv_bn = nn.BatchNorm2d(c_out, track_running_stats=False)
        self._x: torch.Tensor | None = None
        self.pair: tuple[torch.Tensor, torch.Tensor] | None = None  # (x̃_k, f_k(x)) of the last forward

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_bn(self.conv(x)))

    def forward(self, x: torch.Tensor, frozen_out: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # keep only x for the branch's backward; recompute conv-BN-ReLU there
            params = (self.conv.weight, self.conv_bn.weight, self.conv_bn.bias)
            return self.bn(frozen_out) + _Recomputed.apply(self.branch, x, *params)
        return self.bn(frozen_out) + self.branch(x)

    def enter(self, module: nn.Module, args: tuple) -> tuple:  # pre-hook of the partition's first block
        self._x = args[0]
        return (args[0].detach(),) + tuple(args[1:])

    def leave(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:  # hook of its last block
        x, self._x = self._x, None
        y = self(x, out)
        self.pair = (y, out) if torch.is_grad_enabled() else None
        return y


class _Recomputed(torch.autograd.Function):
    """y = fn(x) saving only x; backward recomputes fn (deterministic: conv + batch-stat BN) with autograd."""

    @staticmethod
    def forward(ctx, fn, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, dev = fn, x.device.type
        ctx.amp = (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))  # replayed in backward
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        x, *params = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        xd = x.detach().requires_grad_(need[0])
        dev, dtype, on = ctx.amp
        with torch.enable_grad(), torch.autocast(dev, dtype, enabled=on):
            y = ctx.fn(xd)  # fn reads the same parameters, so grads w.r.t. `params` are theirs
        wanted = [t for t, n in zip([xd, *params], need) if n]
        got = iter(torch.autograd.grad(y, wanted, grad) if wanted else [])
        return (None, *[next(got) if n else None for n in need])


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's blocks in execution order (rule in the module docstring)."""
    for m in model.modules():
        kids = dict(m.named_children())
        for pattern in (r"layer\d+", r"block\d+"):
            stages = sorted((k for k in kids if re.fullmatch(pattern, k)), key=lambda k: int(k[5:]))
            if stages:
                out = []
                for s in (kids[k] for k in stages):
                    s = getattr(s, "layer", s)
                    out += list(s.children()) if isinstance(s, nn.Sequential) else [s]
                return out
        for name in ("features", "stages"):
            if isinstance(kids.get(name), nn.Sequential):
                return list(kids[name].children())
    raise UserError("EcoTTA found no residual stages (layer1.., block1.., features) in the model to partition.")


def partition(n: int, k: int, split: tuple[int, ...] = ()) -> list[int]:
    """Block counts of the partitions (sum n)."""
    if split:
        sizes = [int(s) for s in split]
        if sum(sizes) != n or min(sizes) < 1:
            raise UserError(f"split={split!r} must be positive block counts summing to {n} (--set method.split=...).")
        return sizes
    k = max(1, min(k, n))
    return [n // k + (i >= k - n % k) for i in range(k)]


class _MeanAbsDiff(torch.autograd.Function):
    """mean|y − f| (f constant) that saves only sign(y − f) as int8 for backward, not a float copy."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        d = y - f
        ctx.save_for_backward(torch.sign(d).to(torch.int8))
        ctx.numel = d.numel()
        return d.abs().float().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (sign,) = ctx.saved_tensors
        return sign.to(grad.dtype) * (grad / ctx.numel), None


def self_distilled_loss(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ_k mean|x̃_k − f_k| with the frozen outputs f_k as constants (the paper's self-distilled L1)."""
    return sum(_MeanAbsDiff.apply(y, f.detach()) for y, f in pairs)


@torch.no_grad()
def _probe(model: nn.Module, modules: list[nn.Module]) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    """(channels, height) of the input and output of each module, from one forward of a 2×C×64×64 batch."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    p = next(model.parameters())
    found: dict[int, tuple] = {}

    def hook(m, args, out):
        found[id(m)] = ((args[0].shape[1], args[0].shape[2]), (out.shape[1], out.shape[2]))

    handles = [m.register_forward_hook(hook) for m in set(modules)]
    try:
        model(torch.rand(2, conv.in_channels, 64, 64, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return found
