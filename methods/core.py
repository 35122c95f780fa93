"""`core`: α-BN statistics + online pairwise class-correlation optimisation (Core; You, Li & Zhao 2021,
"Test-time Batch Statistics Calibration for Covariate Shift", arXiv 2110.04065).

Every BN layer normalises with α-BN's mixed statistics (`methods.alpha_bn`, `source_weight` α = 0.9)
and only the BN affine parameters (γ, β) are trained, one step per batch, with the class-correlation
loss on the batch's softmax predictions. With P ∈ R^{B×C} the probability matrix (rows = samples;
for dense `(N,C,H,W)` logits the N·H·W pixels are the samples, randomly subsampled to at most
`max_pixels`):

    A  = Pᵀ P                         (C×C class correlation; A_ij = Σ_b p_bi p_bj)
    Â_ij = A_ij / Σ_k A_ik            (each class's row normalised to sum 1)
    L  = (1/C) Σ_i Σ_{j≠i} Â_ij       (mean between-class correlation, in [0, 1))

L is 0 when no sample spreads probability over two classes, and it penalises the off-diagonal
(between-class) correlation that the paper's Core minimises. The paper's exact normalisation could not
be retrieved; this row normalisation follows MCC's class-confusion loss (Jin et al., ECCV 2020) without
its entropy re-weighting and temperature. Optimiser defaults are Tent's (Adam, lr 1e-3). The returned
predictions are those of the forward pass before the update (Tent's convention).
A model without BatchNorm (ViT, GroupNorm ResNets) is refused with a UserError (no statistics to calibrate).
No presets: no official configuration of Core could be retrieved.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.alpha_bn import use_mixed_stats
from tta_bench.methods.base import Adapter, make_optimizer, norm_affine_params, opt, optimizer_options, train_only


def class_correlation_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean row-normalised off-diagonal class correlation of softmax(logits), logits (B, C) -> scalar."""
    p = logits.float().softmax(1)
    a = p.t() @ p
    a = a / a.sum(1, keepdim=True).clamp_min(1e-12)
    return (a.sum() - a.diagonal().sum()) / a.shape[0]


def as_samples(logits: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """(N,C) as is; dense (N,C,...) -> (M,C) with M ≤ max_pixels pixels drawn without replacement."""
    if logits.dim() == 2:
        return logits
    flat = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    if flat.shape[0] > max_pixels:
        flat = flat[torch.randperm(flat.shape[0], device=flat.device)[:max_pixels]]
    return flat


@register("core")
class Core(Adapter):
    """α-BN statistics, BN affine parameters trained with the pairwise class-correlation loss."""

    options = {
        "source_weight": opt(
            0.9, "α of the α-BN statistics: α · source (running) statistics + (1 - α) · the test batch's", "[0,1]"
        ),
        **optimizer_options("adam", lr=1e-3),
        "steps": opt(1, "optimizer steps per test batch (the returned logits: the last forward, before its update)"),
        "max_pixels": opt(
            16384, "dense outputs: at most this many randomly drawn pixels per batch enter the loss", ">=1"
        ),
    }

    def configure(self) -> None:
        require_batchnorm(self.model, "core", "'tent' (entropy on LayerNorm/GroupNorm affine parameters) or 'source'")
        use_mixed_stats(self.model, self.hp.source_weight)
        params = train_only(self.model, norm_affine_params(self.model))
        self.optimizer = make_optimizer(params, self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = class_correlation_loss(as_samples(outputs, self.hp.max_pixels))
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs
