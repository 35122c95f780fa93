"""`unmix_tns`: un-mixing test-time normalization statistics (Tomar et al., UnMix-TNS, ICLR 2024).

Matches devavratTomar/unmixtns@8e12b9f (`tta_experiments/unmixtns.py` `UnMixTNS2d`/`UnMixTNS1d`/`replace_bn_layers`,
applied by `test_time.py` to the source model and run with `methods/source.py`: no training, nothing but the
normalisation layers adapts). Every BatchNorm2d becomes an UnMix-TNS layer with K statistics components:

- init (per layer, in `named_modules` order, one `torch.randn_like` draw each): component means μ_k = μ_src +
  sqrt(α·K/(K−1))·σ_src·n_k (n_k ~ N(0, 1); no noise when K = 1), component variances σ²_k = (1 − α)·σ²_src (α 0.5,
  the official constant; α = 0 for K = 1);
- per forward, for each sample b: instance mean/variance (biased) over the positions, its assignment probabilities
  p_bk = softmax_k(cos(μ_b, μ_k) / τ) (τ 0.07, computed without gradient), mixed statistics
  μ̄_bk = (1 − p_bk)·μ_k + p_bk·μ_b, σ̄²_bk = (1 − p_bk)·σ²_k + p_bk·σ²_b, and the sample is normalised with
  mean_K μ̄_bk and mean_K σ̄²_bk + mean_K μ̄²_bk − (mean_K μ̄_bk)² (then the source affine weights);
- then the components move: μ_k += m·mean_b p_bk (μ_b − μ_k), σ²_k += m·mean_b p_bk (σ²_b − σ²_k), with
  m = 1 − (1 − bn.momentum)^(B / B_max) (B the batch size, B_max `batch_size_max`; the official's batch-size
  correction of the layer's BN momentum, 0.1 in PyTorch models).

BatchNorm1d layers become the official `UnMixTNS1d`: plain normalisation with the source statistics. The update
happens on every forward (train or eval mode), so `predict(x)` restores the components afterwards (the harness's
no-side-effect prediction). Only BatchNorm models (UserError otherwise).

Presets: `tta_experiments/run.sh` (8e12b9f) with `conf.py` defaults: cifar10_c and cifar100_c TEST.BATCH_SIZE 64,
imagenet_c 16 with UNMIXTNS.BATCH_SIZE_MAX 16; UNMIXTNS.NUM_COMPONENTS 16 (run.sh uses 128 only for the
mixed-domains setting; set `--set method.num_components=128` there).

Deviations: the official fixes m once from the configured TEST.BATCH_SIZE; here m comes from each batch's size
(identical for a constant batch size; a stream's last, smaller batch moves the components less). `momentum` can
override the layers' BN momentum (None: the layer's own, as the official). The components are updated in place
(the official rebinds the buffers; same values).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import Adapter, opt

_RUN = "devavratTomar/unmixtns:tta_experiments/run.sh@8e12b9f"


class UnMixTNS(nn.Module):
    """UnMix-TNS around a source BatchNorm layer: K statistics components (buffers), the source affine weights."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: int, momentum: float, batch_size_max: int,
                 alpha: float, tau: float) -> None:  # fmt: skip
        super().__init__()
        self.k, self.momentum, self.batch_size_max, self.tau, self.eps = k, momentum, batch_size_max, tau, bn.eps
        self.dense = not isinstance(bn, nn.BatchNorm1d)
        self.register_buffer("source_mean", bn.running_mean.detach().clone())
        self.register_buffer("source_var", bn.running_var.detach().clone())
        means, var = bn.running_mean.detach().repeat(k, 1), bn.running_var.detach().repeat(k, 1)
        if k > 1:
            means = means + math.sqrt(alpha * k / (k - 1)) * var.sqrt() * torch.randn_like(means)
        else:
            alpha = 0.0
        self.register_buffer("means", means)  # (K, C)
        self.register_buffer("vars", (1 - alpha) * var)
        self.weight, self.bias = bn.weight, bn.bias  # the source affine parameters (None without affine)

    def _affine(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if not self.dense:  # UnMixTNS1d: the source statistics
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = (x - self.source_mean.view(shape)) / torch.sqrt(self.source_var.view(shape) + self.eps)
            return self._affine(y, shape)
        inst_var, inst_mean = torch.var_mean(x.flatten(2), dim=2, unbiased=False)  # (B, C)
        with torch.no_grad():
            sim = F.normalize(inst_mean, dim=1) @ F.normalize(self.means, dim=1).T  # (B, K)
            p = torch.softmax(sim / self.tau, dim=1).unsqueeze(-1)  # (B, K, 1)
        mean_mat = (1 - p) * self.means + p * inst_mean.unsqueeze(1)  # (B, K, C)
        var_mat = (1 - p) * self.vars + p * inst_var.unsqueeze(1)
        mean = mean_mat.mean(1)
        var = var_mat.mean(1) + (mean_mat**2).mean(1) - mean**2
        with torch.no_grad():
            m = 1 - (1 - self.momentum) ** (x.shape[0] / self.batch_size_max)
            d_mean = (p * (inst_mean.unsqueeze(1) - self.means)).mean(0)
            d_var = (p * (inst_var.unsqueeze(1) - self.vars)).mean(0)
            self.means.add_(m * d_mean)
            self.vars.add_(m * d_var)
        shape = (x.shape[0], c) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return self._affine(y, (1, c) + (1,) * (x.dim() - 2))


@register("unmix_tns")
class UnMixTNSAdapter(Adapter):
    """BN statistics per sample from K online-updated components mixed with its own statistics; nothing trained."""

    options = {
        "num_components": opt(
            16, "K, the number of statistics components per BN layer (official: 128 for mixed domains)", ">=1"
        ),  # fmt: skip
        "batch_size_max": opt(64, "B_max of the momentum correction m = 1 - (1 - momentum)^(B / B_max)", ">=1"),
        "momentum": opt(
            None,
            "BN momentum before the batch-size correction; None: each layer's own (0.1 in PyTorch models)",
            "(0,1]",
        ),  # fmt: skip
        "alpha": opt(
            0.5,
            "init: share of the source variance moved into the spread of the component means (official constant 0.5)",
            "[0,1)",
        ),  # fmt: skip
        "tau": opt(
            0.07, "temperature of the softmax over cosine similarities to the components (official 0.07)", ">0"
        ),  # fmt: skip
    }
    presets = {
        "cifar10-c": {"source": _RUN, "batch_size": 64, "options": {"num_components": 16, "batch_size_max": 64}},
        "cifar100-c": {"source": _RUN, "batch_size": 64, "options": {"num_components": 16, "batch_size_max": 64}},
        "imagenet-c": {"source": _RUN, "batch_size": 16, "options": {"num_components": 16, "batch_size_max": 16}},
    }

    def configure(self) -> None:
        require_batchnorm(self.model, "unmix_tns", "'tent' (trains LayerNorm/GroupNorm affine parameters) or 'source'")
        self.model.eval()
        self.model.requires_grad_(False)
        names = [n for n, m in self.model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        for name in names:
            bn = self.model.get_submodule(name)
            momentum = self.hp.momentum if self.hp.momentum is not None else bn.momentum
            if bn.running_mean is None or momentum is None:
                raise UserError(
                    f"Method 'unmix_tns' starts its components from BatchNorm running statistics and the layer's "
                    f"momentum, but layer '{name}' has no running statistics or a cumulative (None) momentum. Use a "
                    "model with running statistics, or set --set method.momentum=0.1."
                )
            layer = UnMixTNS(bn, self.hp.num_components, float(momentum), self.hp.batch_size_max, self.hp.alpha,
                             self.hp.tau)  # fmt: skip
            if name:
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
            else:
                self.model = layer

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
