"""`ecotta`: memory-efficient continual TTA via self-distilled regularisation (Song et al., CVPR 2023).

The original network is frozen (parameters *and* buffers: its BN layers stay in eval mode). Its encoder
is split into K contiguous partitions; partition k gets a meta network, as in the authors' sample code
(EcoTTA_sample_code.ipynb, `build_meta_block` / `one_part_of_networks`):

    x̃_k = BN_k(f_k(x_{k-1})) + ReLU(BN'_k(Conv3×3_k(x_{k-1})))     Conv: C_in -> C_out, stride H_in/H_out

f_k is the frozen partition. It runs on a *detached* input, so autograd saves none of its activations:
backpropagation keeps only what the meta networks (and the frozen head) need, which is the method's
memory saving; the entropy gradient reaches earlier meta networks through the Conv branches. The
Conv-BN-ReLU branch saves only its input for backward and recomputes itself there (one extra 3×3 conv
per partition and step; gradients identical), so a partition keeps x_{k-1}, f_k(x_{k-1}) (for the meta
BN) and an int8 sign map (for R_k). Meta BNs always use batch statistics (no running statistics).

Loss per test batch (one SGD step): entropy over the confident samples/pixels (H < e_margin·ln C,
averaged over those kept; EATA's Eq. 3 filter, which the sample code points to for Eq. 2) plus the
self-distilled regulariser λ·Σ_k mean|x̃_k − sg(f_k(x_{k-1}))|. The sample code detaches each partition's
input when computing R_k, so R_k trains meta network k only; here one forward/backward carries both
terms, so R_k also reaches earlier meta networks through the Conv branches.

Partitions: the encoder's residual blocks in order (children of `layer1..N` in ResNets and the DeepLab
backbone, of `block1..N.layer` in WideResNets, else of `features`/`stages`) are split into
K' = min(K, #blocks) near-equal groups, the later ones one block longer when n is not a multiple of K'
(K=4: ResNet-50 [4,4,4,4], WRN-28 [3,3,3,3]; K=5: [3,3,3,3,4], [2,2,2,3,3]). `split` sets the block
counts explicitly, e.g. the sample code's WRN-40 splits `split=3,3,3,3,6` (K=5) and `split=3,3,6,6` (K=4).
K=4 is the default (the paper reports K=4 and K=5): on ResNet-50 its first partition spans the whole
56×56 stage, so no 56×56 partition output is kept, which is most of the memory difference.

Before deployment, `warm_up` trains the meta networks alone on source data with cross-entropy (the
runner calls it through `prepare`, cached). Defaults: K = 4, λ = 0.5 (paper), entropy
margin 0.4·ln C; SGD momentum 0.9 with lr 5e-3 at test time and lr 5e-2 for 10 warm-up epochs (the
values of the public CIFAR reproduction Lily-Le/EcoTTA; the official code is not released).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import register
from methods.base import Adapter, entropy, make_optimizer, train_only
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


def confident_entropy(logits: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy over samples (pixels) with entropy < margin·ln C, and the keep-mask. Logits (N,C,...)."""
    ent = entropy(logits, 1)
    keep = ent < margin * math.log(logits.shape[1])
    return (ent[keep].mean() if keep.any() else ent.sum() * 0.0), keep


@register("ecotta")
class EcoTTA(Adapter):
    """Frozen network + K lightweight meta networks, entropy + self-distilled regularisation."""

    needs_source = True
    defaults = {
        "partitions": 4,
        "split": (),
        "reg_weight": 0.5,
        "e_margin": 0.4,
        "optimizer": "sgd",
        "lr": 5e-3,
        "momentum": 0.9,
        "wd": 0.0,
        "steps": 1,
        "warmup_epochs": 10,
        "warmup_lr": 5e-2,
    }

    def configure(self) -> None:
        self.model.eval()
        train_only(self.model, [])
        blocks = residual_blocks(self.model)
        sizes = partition(len(blocks), self.hp.partitions, self.hp.split)
        groups, i = [], 0
        for s in sizes:
            groups.append((blocks[i], blocks[i + s - 1]))
            i += s
        shapes = _probe(self.model, [g for pair in groups for g in pair])
        metas = []
        for first, last in groups:
            (c_in, h_in), (c_out, h_out) = shapes[id(first)][0], shapes[id(last)][1]
            meta = MetaNet(c_in, c_out, max(1, h_in // h_out)).to(next(self.model.parameters()).device)
            first.register_forward_pre_hook(meta.enter)
            last.register_forward_hook(meta.leave)
            metas.append(meta)
        self.metas = nn.ModuleList(metas)
        self.optimizer = make_optimizer(list(self.metas.parameters()), self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = confident_entropy(outputs, self.hp.e_margin)[0]
            loss = loss + self.hp.reg_weight * self_distilled_loss(self._pairs())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [m.pair for m in self.metas]
        for m in self.metas:
            m.pair = None
        return pairs

    def prepare(self, source: Iterable) -> None:
        warm_up(self, source, epochs=self.hp.warmup_epochs, lr=self.hp.warmup_lr, momentum=self.hp.momentum)


def warm_up(adapter: EcoTTA, loader: Iterable, epochs: int = 10, lr: float = 5e-2, momentum: float = 0.9) -> None:
    """Train only `adapter`'s meta networks on source batches `(x, y)` with cross-entropy (SGD)."""
    opt = torch.optim.SGD(adapter.metas.parameters(), lr=lr, momentum=momentum)
    device = next(adapter.metas.parameters()).device
    with torch.enable_grad():
        for _ in range(epochs):
            for x, y in loader:
                logits = adapter.model(x.to(device))
                adapter._pairs()
                ignore = 255 if logits.dim() > 2 else -100  # segmentation label maps: 255 = void
                loss = F.cross_entropy(logits, y.to(device), ignore_index=ignore)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)


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
