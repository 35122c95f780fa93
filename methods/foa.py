"""`foa`: forward-only test-time adaptation of a ViT (Niu et al., "Test-Time Model Adaptation with Only Forward
Passes", ICML 2024).

Matches mr-eggplant/FOA `tta_library/foa.py` and `models/vpt.py` at 004b02d, step for step. No back-propagation
and no weight changes: `num_prompts` prompt tokens are inserted after the class token (after the position
embedding) and searched by CMA-ES (the `cma` package, as the official code: initial mean 0, step size
`cma_sigma` 1, population `popsize` 27 — the official `4 + 3 ln(3·768)` for ViT-B/16 —, seed 2020). Per test batch:
- the shift direction of the previous batches, `μ_src[-D:] - μ_hist` (Eqn. 8; none on the first batch);
- the `popsize` candidates of `es.ask()` plus the best prompts of the previous batch are each run forward; the
  features are the class token after every block, normalised by the next block's first LayerNorm (the last by
  the final LayerNorm), concatenated `(N, L·D)`;
- fitness (Eqn. 5) = `fitness_lambda` · (Σ (σ_batch - σ_src)² + Σ (μ_batch - μ_src)²) · N / 64 + Σ_samples entropy,
  with σ, μ = `torch.std_mean` over the batch (unbiased σ) and σ_src, μ_src those of the clean source features
  (`prepare`, the official `obtain_origin_stat`);
- the returned logits are those of the lowest-fitness candidate (first one on ties), computed from its last
  class token shifted by the shift direction (activation shifting, Eqn. 7: `head(cls + shift)`);
- `es.tell(candidates, fitnesses)` (all popsize + 1 of them, Eqn. 6); the best candidate becomes the previous best;
- μ_hist ← 0.9 μ_hist + 0.1 · mean over candidates of their batch means of the last class token (Eqn. 9; the
  first batch sets it).

Defaults are the official ImageNet-C ones (`main.py`: 3 prompts, λ 0.4, batch 64; the official code has no CIFAR
configuration, so there are no cifar10-c / cifar100-c presets). Source statistics: the official code uses the
whole ImageNet validation set (`obtain_train_loader`); here at most `source_size` samples of the stream's clean
source split (the paper shows a few hundred suffice).

Deviations, all for the Adapter contract: the initial prompts are drawn from VPT's xavier-uniform range with a
generator seeded by `seed` (the official code uses the global RNG, and its `reset()` draws new ones; `reset()` here
restores the initial ones); CMA-ES draws its normal samples from its own `numpy.random.RandomState(seed)` (the same
numbers the official global `np.random.seed(2020)` gives, without touching the caller's global RNG); a batch of one
sample (no standard deviation) raises a UserError. Used as a library without `prepare`, the fitness is the entropy
alone and there is no activation shift (no source statistics). The ImageNet-R class mask and the quantised-ViT
variant are not ported. Needs a ViT (torchvision or timm, `requires = "vit"`); the `cma` package is a dependency of
tta_bench.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._prompt_vit import PromptViT
from tta_bench.methods.base import Adapter, entropy, opt

FOA_COMMIT = "mr-eggplant/FOA:main.py@004b02d"


@register("foa")
class FOA(Adapter):
    """CMA-ES over input prompt tokens (fitness: entropy + source-statistics discrepancy) and activation shifting."""

    requires: ClassVar[str] = "vit"
    needs_source = True
    options = {
        "num_prompts": opt(3, "prompt tokens inserted after the class token, searched by CMA-ES", ">=1"),
        "fitness_lambda": opt(
            0.4, "weight λ of the activation-statistics discrepancy in the fitness (official 0.2 on ImageNet-R)", ">=0"
        ),
        "popsize": opt(27, "CMA-ES candidates per test batch (the previous best is evaluated too)", ">=2"),
        "cma_sigma": opt(1.0, "CMA-ES initial step size (initial mean: zero prompts)", ">0"),
        "seed": opt(2020, "seed of CMA-ES's normal samples and of the initial prompts", ">=0"),
        "shift_alpha": opt(1.0, "strength of the activation shift added to the last class token (0: none)", ">=0"),
        "source_size": opt(50000, "at most this many clean source samples give the source statistics", ">=2"),
    }
    presets = {
        "imagenet-c": {"source": FOA_COMMIT, "batch_size": 64,
                       "options": {"num_prompts": 3, "fitness_lambda": 0.4, "popsize": 27}},
    }  # fmt: skip

    def configure(self) -> None:
        self.vit = PromptViT(self.model, self.name or "foa")
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        dim, n = self.vit.dim, len(self.vit.blocks)
        ref = next(self.model.parameters())
        g = torch.Generator().manual_seed(self.hp.seed)
        bound = self.vit.prompt_init_bound()
        init = (torch.rand(self.hp.num_prompts, dim, generator=g) * 2 - 1) * bound  # uniform(-bound, bound)
        self.register_buffer("prompts", init.to(device=ref.device, dtype=ref.dtype))
        self.register_buffer("src_std", torch.zeros(n * dim, device=ref.device))
        self.register_buffer("src_mean", torch.zeros(n * dim, device=ref.device))
        self.register_buffer("stats_ready", torch.tensor(False))

    def reset_state(self) -> None:
        try:
            import cma
        except ImportError:  # a dependency of tta_bench; missing only in a hand-made environment
            raise UserError("method 'foa' needs the `cma` package (CMA-ES): pip install cma") from None
        opts = {"seed": np.nan, "popsize": self.hp.popsize, "maxiter": -1, "verbose": -9,
                "randn": np.random.RandomState(self.hp.seed).randn}  # fmt: skip
        self.es = cma.CMAEvolutionStrategy(self.prompts.numel() * [0.0], self.hp.cma_sigma, inopts=opts)
        self.hist_stat: torch.Tensor | None = None  # μ_hist of Eqn. 9

    @torch.no_grad()
    def prepare(self, source: Iterable) -> None:
        """Mean and (unbiased) standard deviation of the prompt-free layer-wise class tokens on clean source data."""
        feats, seen = [], 0
        for x, *_ in source:
            if seen >= self.hp.source_size:
                break
            x = x[: self.hp.source_size - seen].to(self.src_mean.device)
            seen += len(x)
            feats.append(self.vit.features(x, None).float())
        if seen < 2:
            raise UserError("method 'foa' needs at least 2 clean source samples for its source statistics.")
        std, mean = torch.std_mean(torch.cat(feats), dim=0)
        self.src_std.copy_(std)
        self.src_mean.copy_(mean)
        self.stats_ready.fill_(True)

    def _shift(self) -> torch.Tensor | None:
        """Eqn. 8: μ_src of the last class token minus μ_hist (None before the first batch)."""
        if self.hist_stat is None or not bool(self.stats_ready):
            return None
        return self.src_mean[-self.vit.dim :] - self.hist_stat

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] < 2:
            raise UserError(
                "method 'foa' compares a batch's activation standard deviation with the source's; a batch of one "
                "sample has none. Use a batch size of 2 or more (--batch-size)."
            )

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        dim, shape = self.vit.dim, self.prompts.shape
        shift, ready = self._shift(), bool(self.stats_ready)
        candidates = self.es.ask() + [self.prompts.flatten().double().cpu().numpy()]
        best_loss, best_out, best_prompts, losses, means = math.inf, None, None, [], []
        for c in candidates:
            prompts = torch.tensor(c, dtype=torch.float32).reshape(shape).to(self.prompts.device)
            feats = self.vit.features(x, prompts)
            std, mean = torch.std_mean(feats, dim=0)
            discrepancy = ((std - self.src_std) ** 2).sum() + ((mean - self.src_mean) ** 2).sum() if ready else 0.0
            cls = feats[:, -dim:]
            out = self.vit.head(cls)
            loss = (self.hp.fitness_lambda * discrepancy * x.shape[0] / 64 + entropy(out).sum()).item()
            if shift is not None and self.hp.shift_alpha:
                out = self.vit.head(cls + self.hp.shift_alpha * shift)
            means.append(mean[-dim:])
            if best_loss > loss:
                best_loss, best_out, best_prompts = loss, out, prompts
            losses.append(loss)
        if best_out is None:  # every fitness NaN: keep the previous best prompts and tell CMA-ES nothing
            return out
        self.es.tell(candidates, losses)
        self.prompts.copy_(best_prompts)
        batch_mean = torch.stack(means).mean(0)
        self.hist_stat = batch_mean if self.hist_stat is None else 0.9 * self.hist_stat + 0.1 * batch_mean
        return best_out

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The current best prompts and activation shift, no search."""
        cls = self.vit.features(x, self.prompts)[:, -self.vit.dim :]
        shift = self._shift()
        if shift is not None and self.hp.shift_alpha:
            cls = cls + self.hp.shift_alpha * shift
        return self.vit.head(cls)
