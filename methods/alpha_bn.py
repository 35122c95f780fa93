"""`alpha_bn`: test-time batch statistics calibration (α-BN; You, Li & Zhao 2021, arXiv 2110.04065).

Training-free. Every BatchNorm layer normalises with a mix of its source (running) statistics and the
current test batch's statistics, per channel:

    μ  = α·μ_source  + (1 − α)·μ_batch
    σ² = α·σ²_source + (1 − α)·σ²_batch          (α = `source_weight`)

then `y = γ·(x − μ)/sqrt(σ² + eps) + β` with the layer's own affine parameters and eps. The variance is
the plain mix of the two variances as in the paper: it does **not** include the mean-difference term
α(1 − α)(μ_source − μ_batch)² that the variance of the two-component mixture would have. μ_batch and
σ²_batch are the (biased) statistics over every axis but the channel axis (N, H, W for images; N·H·W
pixels for dense inputs), so the method works unchanged for segmentation models. The default α = 0.9
is the paper's; it equals the `(1 − 0.1)·source + 0.1·test` default of `AlphaBatchNorm` in
mariodoebler/test-time-adaptation. α = 1 is the source model, α = 0 is `norm` (pure batch statistics).
Running statistics are never written. A model without BatchNorm (ViT, GroupNorm ResNets) is refused with a
UserError: there are no statistics to mix.

Presets: the suite's `cfgs/*/norm_alpha.yaml` (`BN.ALPHA: 0.1` = 1 − `source_weight`; its official batch size
there is 1, single-sample adaptation).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import BN_TYPES, Adapter, opt

_SUITE = "mariodoebler/test-time-adaptation:"


class MixedBatchNorm(nn.Module):
    """Wraps a BN layer (kept as `.layer`, parameters and buffers untouched); normalises with mixed stats."""

    def __init__(self, layer: nn.Module, source_weight: float) -> None:
        super().__init__()
        if not 0.0 <= source_weight <= 1.0:
            raise UserError(f"source_weight must be in [0, 1], got {source_weight} (--set method.source_weight=0.9).")
        self.layer = layer
        self.source_weight = float(source_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, w = self.layer, self.source_weight
        dims = [d for d in range(x.dim()) if d != 1]
        var_b, mu_b = torch.var_mean(x, dim=dims, correction=0)
        mu = w * bn.running_mean + (1 - w) * mu_b
        var = w * bn.running_var + (1 - w) * var_b
        # y = x·scale + shift per channel: differentiable w.r.t. x (through μ_batch, σ²_batch) and γ, β
        scale = torch.rsqrt(var + bn.eps)
        shift = -mu * scale
        if bn.weight is not None:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)

    def extra_repr(self) -> str:
        return f"source_weight={self.source_weight}"


def use_mixed_stats(model: nn.Module, source_weight: float) -> int:
    """Replace every BN layer of `model` (in place) by a `MixedBatchNorm` around it; returns how many.

    Puts the model in eval mode (dropout off). Layers must have running statistics (a source model)."""
    model.eval()
    swaps = []
    for parent in model.modules():
        if isinstance(parent, MixedBatchNorm):
            continue
        for name, child in parent.named_children():
            if isinstance(child, BN_TYPES):
                if child.running_mean is None:
                    raise ValueError(f"BN layer '{name}' has no running statistics to mix with (a source model?).")
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, MixedBatchNorm(child, source_weight))
    return len(swaps)


@register("alpha_bn")
class AlphaBN(Adapter):
    """α-BN: BN statistics = source_weight·source + (1 − source_weight)·test batch. No training."""

    options = {
        "source_weight": opt(
            0.9, "α: BN mean/variance = α · source (running) statistics + (1 - α) · the test batch's", "[0,1]"
        ),
    }
    presets = {
        fam: {"source": f"{_SUITE}{path}/norm_alpha.yaml@8b2ed63", "batch_size": 1, "options": {"source_weight": 0.9}}
        for fam, path in (("cifar10-c", "classification/cfgs/cifar10_c"),
                          ("cifar100-c", "classification/cfgs/cifar100_c"),
                          ("imagenet-c", "classification/cfgs/imagenet_c"), ("segmentation", "segmentation/cfgs"))
    }  # fmt: skip

    def configure(self) -> None:
        require_batchnorm(self.model, "alpha_bn", "'tent' (trains LayerNorm/GroupNorm affine parameters) or 'source'")
        use_mixed_stats(self.model, self.hp.source_weight)
        self.model.requires_grad_(False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)
