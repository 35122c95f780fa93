"""`roid`: universal test-time adaptation through weight ensembling, diversity weighting and prior correction
(Marsden, Döbler & Yang, WACV 2024).

Matches the authors' code in mariodoebler/test-time-adaptation `classification/methods/roid.py` (commit 8b2ed63),
with `utils/losses.py` (SoftLikelihoodRatio, SymmetricCrossEntropy), `utils/misc.py` (ema_update_model),
`augmentations/transforms_cotta.py` (get_tta_transforms(..., padding_mode="reflect", cotta_augs=False)), `conf.py`
(ROID defaults) and `cfgs/{cifar10_c,cifar100_c,imagenet_c}/roid.yaml`, step for step:
- model in eval mode, BatchNorm on test-batch statistics, only normalisation affine parameters trained (Adam lr
  1e-3 on CIFAR; SGD lr 0.00025, momentum 0.9, Nesterov on ImageNet-C).
- weights (no grad): w_div = 1 - cos(p̄, softmax(f(x))), min-max normalised over the batch; samples with
  w_div < mean(w_div) are masked out; w_cert = -H(f(x)) min-max normalised; w = exp(w_div · w_cert / T) (T 1/3),
  0 where masked; p̄ <- 0.9 p̄ + 0.1 mean softmax(f(x)) (p̄ starts uniform).
- loss = Σ_kept w · SLR(f(x)) / B + Σ_kept w · SCE(f(aug(x_kept)), f(x_kept)) / B, SLR = -Σ p log(p/(1-p) + 1e-5)
  with p clipped at 0.99, B the batch size; one optimizer step;
- weight ensembling: θ <- m θ + (1 - m) θ_source for the trained parameters (m 0.99), θ_source = the state after
  construction (`source_state`);
- returned: the pre-update logits times the smoothed prior (p_s = (p + s) / (1 + s C), p the batch mean of
  softmax, s = max(1/B, 1/C) / max(p)), as the official code multiplies its logits.
Deviations: B is the actual batch size (the official divides by the configured TEST.BATCH_SIZE, which differs only
for a final partial batch). With use_weighting off every sample is kept with weight 1 (the official would fail:
its consistency term reads the undefined mask). A batch of one sample has no min-max spread: refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augment import light_augment
from tta_bench.methods._losses import soft_likelihood_ratio, symmetric_cross_entropy
from tta_bench.methods.base import (
    NORM_TYPES,
    Adapter,
    entropy,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/{}.yaml@8b2ed63"
IMAGENET_SGD = {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9, "nesterov": True}


def minmax(v: torch.Tensor) -> torch.Tensor:
    return (v - v.min()) / (v.max() - v.min())


def smoothed_prior(outputs: torch.Tensor) -> torch.Tensor:
    """ROID's prior correction factor (C,) from the batch's logits (N, C)."""
    prior = outputs.softmax(1).mean(0)
    smooth = max(1 / outputs.shape[0], 1 / outputs.shape[1]) / torch.max(prior)
    return (prior + smooth) / (1 + smooth * outputs.shape[1])


@register("roid")
class ROID(Adapter):
    """Certainty/diversity-weighted soft-likelihood-ratio + consistency, weight ensembling, prior correction."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "optimizer steps per test batch, each followed by the weight ensembling"),
        "use_weighting": opt(
            True,
            "weight samples by w = exp(w_div · w_cert / temperature) and drop those below the mean w_div "
            "(off: every sample kept with weight 1)",
        ),
        "use_prior_correction": opt(True, "multiply the returned logits by the smoothed batch-mean softmax prior"),
        "use_consistency": opt(
            True, "add the symmetric cross-entropy between the kept samples' augmented and original predictions"
        ),
        "momentum_src": opt(
            0.99, "weight ensembling after each step: θ <- momentum_src · θ + (1 - momentum_src) · θ_source", "[0,1]"
        ),
        "momentum_probs": opt(
            0.9, "EMA rate of p̄, the moving mean probability that the diversity weight w_div compares with", "[0,1]"
        ),
        "temperature": opt(1 / 3, "temperature T of the sample weights exp(w_div · w_cert / T)", ">0"),
    }
    presets = {
        "cifar10-c": {"source": SUITE.format("cifar10_c", "roid"), "options": {}},
        "cifar100-c": {"source": SUITE.format("cifar100_c", "roid"), "options": {}},
        "imagenet-c": {"source": SUITE.format("imagenet_c", "roid"), "options": IMAGENET_SGD},
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        params = train_only(self.model, norm_affine_params(self.model, NORM_TYPES))
        self.named = [(names[id(p)], p) for p in params]
        self.optimizer = make_optimizer(params, self.hp)

    def reset_state(self) -> None:
        self.class_probs_ema: torch.Tensor | None = None  # p̄, uniform at the first batch

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < 2:
            raise ValueError(f"{self.name} needs batches of at least 2 images (min-max weights over the batch).")
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = self.loss(x, outputs)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.merge()
        outputs = outputs.detach()
        return outputs * smoothed_prior(outputs) if self.hp.use_prior_correction else outputs

    def loss(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        n = len(x)
        keep, weights = torch.ones(n, dtype=torch.bool, device=x.device), outputs.new_ones(n)
        if self.hp.use_weighting:
            keep, weights = self.weights(outputs.detach())
        loss = (soft_likelihood_ratio(outputs) * weights)[keep].sum() / n
        if self.hp.use_consistency:
            outputs_aug = self.model(light_augment(x[keep]))
            loss = loss + (symmetric_cross_entropy(outputs_aug, outputs[keep]) * weights[keep]).sum() / n
        return loss

    @torch.no_grad()
    def weights(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept samples (N,) bool, weights (N,)) and the update of p̄."""
        c = outputs.shape[1]
        if self.class_probs_ema is None:
            self.class_probs_ema = 1 / c * torch.ones(c, device=outputs.device)
        probs = outputs.softmax(1)
        w_div = minmax(1 - F.cosine_similarity(self.class_probs_ema.unsqueeze(0), probs, dim=1))
        mask = w_div < w_div.mean()
        w_cert = minmax(-entropy(outputs))
        weights = torch.exp(w_div * w_cert / self.hp.temperature)
        weights[mask] = 0.0
        m = self.hp.momentum_probs
        self.class_probs_ema = m * self.class_probs_ema + (1 - m) * probs.mean(0)
        return ~mask, weights

    @torch.no_grad()
    def merge(self) -> None:
        """Weight ensembling with the source: θ <- m θ + (1 - m) θ_source (official ema_update_model order)."""
        m = self.hp.momentum_src
        for name, p in self.named:
            p.copy_(m * p + (1 - m) * self.source_state[f"model.{name}"])
