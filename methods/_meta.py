"""EcoTTA's meta networks and partitioning (Song et al., CVPR 2023), used by :mod:`methods.ecotta`.

`MetaNet` splices BN(f_k(x)) + ReLU(BN(Conv3×3(x))) around the frozen partition f_k through forward hooks;
`_Recomputed` keeps only the branch input for backward; `_MeanAbsDiff` keeps an int8 sign map for the
self-distilled L1.

Partitioning (`residual_blocks`, `partition`, `partition_blocks`):
- Blocks: the encoder's blocks in execution order: the children of its numbered stages `layer1..N` (ResNets,
  the DeepLab backbones), `block1..N` (WideResNets: `block1..N.layer`) or `level1..N` (ESPNet's `level2`, `level3`
  ModuleLists), numeric order; else the children of `features`/`stages`. A numbered stage made only of leaf
  layers (a conv-BN-act unit such as ESPNet's stem `level1`) holds no blocks and is skipped.
- Chains: f_k must be a function of the partition's input alone, so a partition is a chain: each of its blocks
  takes the previous block's output. Where block i does not (ESPNet: concatenation, BN and a down-sampling ESP
  between `level2` and `level3`), a partition boundary is forced before block i. `_probe`'s one forward
  records which probed module produced each block's input (`chain_breaks`).
- Sizes: K' = max(#chains, min(K, #blocks)) partitions; each chain gets one, then each further partition goes to
  the chain whose largest partition is largest (ties: higher mean, then the later chain), and a chain is split
  near-equally, the later partitions one block longer. Without forced boundaries this is the plain split
  (K=4: ResNet-50 [4,4,4,4], WRN-28 [3,3,3,3]; K=5: [3,3,3,3,4], [2,2,2,3,3]); ESPNet p=2, q=8 (2 + 8 blocks),
  K=4: `level2` [2], `level3` [2,3,3]. `split` (explicit counts) must not put a forced boundary inside a partition.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError


class MetaNet(nn.Module):
    """Meta network of one partition; its hooks splice it around the frozen blocks of the partition."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_out, track_running_stats=False)
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv_bn = nn.BatchNorm2d(c_out, track_running_stats=False)
        # Fixed per-channel output scale (1 = the sample code's block; identity init sets the source feature
        # std): the trained parameters then act in normalised units, so their SGD steps do not depend on the
        # feature scale of the network (ESPNet's partition outputs have std ~0.03, ResNets' ~1).
        self.register_buffer("scale", torch.ones(c_out))
        self._x: torch.Tensor | None = None
        self.pair: tuple[torch.Tensor, ...] | None = None  # (x̃_k, f_k(x), scale) of the last forward

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_bn(self.conv(x)))

    def forward(self, x: torch.Tensor, frozen_out: torch.Tensor) -> torch.Tensor:
        scale = self.scale.view(1, -1, 1, 1)
        if torch.is_grad_enabled():  # keep only x for the branch's backward; recompute conv-BN-ReLU there
            params = (self.conv.weight, self.conv_bn.weight, self.conv_bn.bias)
            return (self.bn(frozen_out) + _Recomputed.apply(self.branch, x, *params)) * scale
        return (self.bn(frozen_out) + self.branch(x)) * scale

    def enter(self, module: nn.Module, args: tuple) -> tuple:  # pre-hook of the partition's first block
        self._x = args[0]
        return (args[0].detach(),) + tuple(args[1:])

    def leave(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:  # hook of its last block
        x, self._x = self._x, None
        y = self(x, out)
        self.pair = (y, out, self.scale) if torch.is_grad_enabled() else None
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


STAGES = (r"layer(\d+)", r"block(\d+)", r"level(\d+)")  # numbered encoder stages, in this order of preference


def _leaf_unit(m: nn.Module) -> bool:
    """True for a container of leaf layers only (conv-BN-act): a stem unit, not a stage of blocks."""
    return all(next(c.children(), None) is None for c in m.children())


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's blocks in execution order (rule in the module docstring)."""
    for m in model.modules():
        kids = dict(m.named_children())
        for pattern in STAGES:
            stages = sorted((int(g[1]), k) for k in kids if (g := re.fullmatch(pattern, k)))
            out: list[nn.Module] = []
            for _, k in stages:
                s = getattr(kids[k], "layer", kids[k])
                if isinstance(s, (nn.Sequential, nn.ModuleList)):
                    out += [] if _leaf_unit(s) else list(s.children())
                else:
                    out.append(s)
            if out:
                return out
        for name in ("features", "stages"):
            if isinstance(kids.get(name), nn.Sequential):
                return list(kids[name].children())
    raise UserError(
        "EcoTTA found no residual stages (layer1.., block1.., level1.., features, stages) in the model to partition."
    )


def _even(n: int, k: int) -> list[int]:
    """n blocks in k near-equal partitions, the later ones one block longer."""
    return [n // k + (i >= k - n % k) for i in range(k)]


def partition(n: int, k: int, split: tuple[int, ...] = (), breaks: Iterable[int] = ()) -> list[int]:
    """Block counts of the partitions (sum n); `breaks`: indices of blocks that must start a partition."""
    cuts = sorted({int(b) for b in breaks if 0 < int(b) < n})
    if split:
        sizes = [int(s) for s in split]
        if sum(sizes) != n or min(sizes) < 1:
            raise UserError(f"split={split!r} must be positive block counts summing to {n} (--set method.split=...).")
        starts = set(itertools.accumulate(sizes[:-1]))
        if any(c not in starts for c in cuts):
            raise UserError(
                f"split={split!r} puts a stage boundary inside a partition: blocks {cuts} do not take the previous "
                f"block's output (concatenations between stages), so each must start a partition; choose counts "
                f"whose running sums include {cuts} (--set method.split=...)."
            )
        return sizes
    bounds = [0, *cuts, n]
    lens = [b - a for a, b in zip(bounds, bounds[1:])]
    parts = [1] * len(lens)
    for _ in range(max(len(lens), min(k, n)) - len(lens)):
        j = max(range(len(lens)), key=lambda j: (-(-lens[j] // parts[j]), lens[j] / parts[j], j))
        parts[j] += 1
    return [s for length, p in zip(lens, parts) for s in _even(length, p)]


def chain_breaks(blocks: list[nn.Module], shapes: dict[int, tuple]) -> tuple[int, ...]:
    """Indices i ≥ 1 of the blocks whose input is not block i−1's output (from `_probe(model, blocks)`)."""
    return tuple(i for i in range(1, len(blocks)) if shapes[id(blocks[i])][2] != id(blocks[i - 1]))


def partition_blocks(
    model: nn.Module, k: int, split: tuple[int, ...] = ()
) -> tuple[list[tuple[nn.Module, nn.Module]], dict[int, tuple]]:
    """(first, last) block of each partition and the `_probe` record of every block, from one forward."""
    blocks = residual_blocks(model)
    shapes = _probe(model, blocks)
    groups, i = [], 0
    for s in partition(len(blocks), k, split, chain_breaks(blocks, shapes)):
        groups.append((blocks[i], blocks[i + s - 1]))
        i += s
    return groups, shapes


class _MeanAbsDiff(torch.autograd.Function):
    """mean(|y − f| / s) (f constant, s > 0 per channel) that saves only sign(y − f) as int8 for backward,
    not a float copy."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        d = y - f
        ctx.save_for_backward(torch.sign(d).to(torch.int8), s)
        ctx.numel = d.numel()
        return (d.abs() / s).float().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        sign, s = ctx.saved_tensors
        return sign.to(grad.dtype) * (grad / ctx.numel) / s, None, None


def self_distilled_loss(pairs: Iterable[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Σ_k mean|x̃_k − f_k| / σ_k with the frozen outputs f_k as constants: the paper's self-distilled L1,
    measured in units of the partition's source feature scale σ_k (`MetaNet.scale`; 1 unless identity init
    set it, so λ means the same on ESPNet's features of std ~0.03 as on a ResNet's of std ~1). Pairs are
    (x̃_k, f_k) or (x̃_k, f_k, σ_k (C,))."""
    total = 0
    for y, f, *scale in pairs:
        s = scale[0].view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype) if scale else y.new_ones(())
        total = total + _MeanAbsDiff.apply(y, f.detach(), s)
    return total


@torch.no_grad()
def _probe(model: nn.Module, modules: list[nn.Module]) -> dict[int, tuple]:
    """id(module) -> ((C_in, H_in), (C_out, H_out), id of the probed module whose output is its input, or None),
    from one forward of a 2×C×64×64 batch."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    p = next(model.parameters())
    found: dict[int, tuple] = {}
    producer: dict[int, int] = {}  # id(output tensor) -> id(module); `alive` keeps those ids unique
    alive: list[torch.Tensor] = []

    def hook(m, args, out):
        found[id(m)] = ((args[0].shape[1], args[0].shape[2]), (out.shape[1], out.shape[2]), producer.get(id(args[0])))
        producer[id(out)] = id(m)
        alive.append(out)

    handles = [m.register_forward_hook(hook) for m in set(modules)]
    try:
        model(torch.rand(2, conv.in_channels, 64, 64, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return found
