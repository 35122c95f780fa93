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
self-distilled regulariser λ·Σ_k mean|x̃_k − sg(f_k(x_{k-1}))| / σ_k, with σ_k the partition's per-channel
source feature std from identity init (1 with `meta_init="default"`: the paper's L1 exactly; our choice, so
that λ means the same on ESPNet's features of std ~0.03 as on a ResNet's ~1). The sample code detaches
each partition's input when computing R_k, so R_k trains meta network k only; here one forward/backward
carries both terms, so R_k also reaches earlier meta networks through the Conv branches.

Partitions (rule in methods/_meta.py): the encoder's blocks in order (children of `layer1..N` in ResNets
and the DeepLab backbone, of `block1..N.layer` in WideResNets, of `level1..N` in ESPNet, else of
`features`/`stages`) are split into K' = max(#chains, min(K, #blocks)) partitions. A partition never
crosses a point where a block does not take the previous block's output (ESPNet: the concatenation between
`level2` and `level3`). Within a chain the split is near-equal, the later partitions one block longer
(K=4: ResNet-50 [4,4,4,4], WRN-28 [3,3,3,3], ESPNet p=2, q=8 [2 | 2,3,3]; K=5: [3,3,3,3,4], [2,2,2,3,3]).
`split` sets the block counts explicitly, e.g. the sample code's WRN-40 splits `split=3,3,3,3,6` (K=5) and
`split=3,3,6,6` (K=4). K=4 is the default (the paper reports K=4 and K=5): on ResNet-50 its first
partition spans the whole 56×56 stage, so no 56×56 partition output is kept, which is most of the memory
difference.

Before deployment, `warm_up` trains the meta networks alone on source data with cross-entropy (the
runner calls it through `prepare`, cached). Initialisation (our choice; the paper and sample code use
PyTorch's default, `meta_init="default"`): `meta_init="identity"` first calibrates every meta network on
one source batch so that x̃_k = f_k there (`identity_init`), so the warm-up starts from the source model.
With a small source split (offline CIFAR: 500 held-out test images) the default init overfits and never
gets back to the source accuracy (ResNet-20: 50.2 % clean error after warm-up on other held-out images,
source 17.0 %, identity init 17.0 %; CIFAR-10-C 200/domain mean error 62.7 % vs 37.2 % with identity).
Defaults: K = 4, λ = 0.5 (paper), entropy margin 0.4·ln C; SGD momentum 0.9 with lr 5e-3 at test time
and lr 5e-2 for 10 warm-up epochs (the values of the public CIFAR reproduction Lily-Le/EcoTTA; the
official code is not released).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._meta import MetaNet, partition_blocks, self_distilled_loss
from tta_bench.methods.base import Adapter, entropy, make_optimizer, opt, optimizer_options, train_only


def confident_entropy(logits: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy over samples (pixels) with entropy < margin·ln C, and the keep-mask. Logits (N,C,...)."""
    ent = entropy(logits, 1)
    keep = ent < margin * math.log(logits.shape[1])
    return (ent[keep].mean() if keep.any() else ent.sum() * 0.0), keep


@register("ecotta")
class EcoTTA(Adapter):
    """Frozen network + K lightweight meta networks, entropy + self-distilled regularisation."""

    needs_source = True
    options = {
        "partitions": opt(4, "K: partitions of the frozen encoder, one meta network each", ">=1"),
        "split": opt((), "explicit block counts per partition (e.g. 3,3,6,6); () = near-equal split", ">=1"),
        "reg_weight": opt(0.5, "λ of the self-distilled regulariser (L1 of each meta output to the frozen one)", ">=0"),
        "e_margin": opt(0.4, "confident samples: entropy below e_margin · ln C enter the loss", ">=0"),
        **optimizer_options("sgd", lr=5e-3),
        "steps": opt(1, "optimizer steps per test batch (the returned logits: the last forward, before its update)"),
        "warmup_epochs": opt(10, "epochs of the meta networks' warm-up on source data (prepare; SGD with `momentum`)"),
        "warmup_lr": opt(5e-2, "learning rate of the warm-up"),
        "meta_init": opt(
            "identity",
            "meta network initialisation: identity (calibrated to the source features) or default (PyTorch's)",
            ("identity", "default"),
        ),
    }

    def configure(self) -> None:
        if self.hp.meta_init not in ("identity", "default"):
            raise UserError(f"meta_init={self.hp.meta_init!r}: use 'identity' or 'default' (--set method.meta_init=).")
        self.model.eval()
        train_only(self.model, [])
        groups, shapes = partition_blocks(self.model, self.hp.partitions, self.hp.split)
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

    def _pairs(self) -> list[tuple[torch.Tensor, ...]]:
        pairs = [m.pair for m in self.metas]
        for m in self.metas:
            m.pair = None
        return pairs

    def prepare(self, source: Iterable) -> None:
        if self.hp.meta_init == "identity":
            x = next(iter(source))[0]
            identity_init(self, x.to(next(self.metas.parameters()).device))
        warm_up(self, source, epochs=self.hp.warmup_epochs, lr=self.hp.warmup_lr, momentum=self.hp.momentum)


@torch.no_grad()
def identity_init(adapter: EcoTTA, x: torch.Tensor, gain: float = 0.1, bias: float = 0.1) -> None:
    """Start every partition at x̃_k ≈ f_k(x_{k-1}) on the source batch `x` (N,C,H,W).

    With μ_k, σ_k the per-channel statistics of f_k's output on `x`: the output scale is σ_k, the branch's
    BN gets γ = `gain`, β = `bias` (a small branch whose ReLU is open: gradients flow from the first step,
    also to earlier partitions through it), and the meta BN γ = 1, β = μ_k / σ_k − m_k with m_k the branch's
    per-channel mean on `x`: x̃_k = f_k + σ_k (b_k − m_k), b_k the branch output, a zero-mean perturbation of
    about `gain`·σ_k (exactly f_k when gain = 0). Partitions are calibrated in order, so each sees (almost)
    the source features. Warm-up then starts from the source model, in normalised units.
    """
    seen: dict[str, torch.Tensor] = {}
    for meta in adapter.metas:
        meta.conv_bn.weight.fill_(gain)
        meta.conv_bn.bias.fill_(bias)
        seen.clear()
        hooks = [
            meta.bn.register_forward_pre_hook(lambda m, args: seen.setdefault("f", args[0])),
            meta.conv_bn.register_forward_hook(lambda m, args, out: seen.setdefault("b", F.relu(out))),
        ]
        try:
            adapter.model(x)
        finally:
            for h in hooks:
                h.remove()
            adapter._pairs()
        var, mean = torch.var_mean(seen["f"].transpose(0, 1).flatten(1).float(), 1, unbiased=False)
        std = torch.sqrt(var + meta.bn.eps)
        meta.scale.copy_(std)
        meta.bn.weight.fill_(1.0)
        meta.bn.bias.copy_(mean / std - seen["b"].transpose(0, 1).flatten(1).float().mean(1))


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
