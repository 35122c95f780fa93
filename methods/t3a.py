"""`t3a`: test-time template adjuster (Iwasawa & Matsuo, NeurIPS 2021): back-prop-free classifier adjustment.

Matches matsuolab/T3A@ff8cde5 `domainbed/adapt_algorithms.py` (`T3A`) and its port in LINs-lab/ttab@19cb3ce
`ttab/model_adaptation/t3a.py`. The model is split at the input of its last `nn.Linear` (features z (N,D) ->
classifier), the split of both official codes (DomainBed's featurizer/classifier, TTAB's `pre_logits`); the model
stays in eval mode (source BN statistics) and nothing is trained.

- Support set, initialised with the classifier's weight rows W (C,D) as features, their labels the one-hot argmax
  of classifier(W) (bias included) and their entropies.
- Per test batch: z and the model's logits p = classifier(z); append (z, one-hot argmax p, entropy(p)) to the
  support set; then keep, per pseudo-class, the `filter_K` supports of lowest entropy (ascending order, class by
  class) and drop the rest from memory; prototypes w_c = Σ normalize(z_s) over the kept supports of class c; the
  returned logits are z @ normalize(w, dim 0) (features not normalised, no bias), so the batch itself is among the
  supports that classify it.
- `predict(x)` / `infer`: the same prototypes from the current support set, without adding x.

Defaults: `filter_K` 100 is TTAB's `top_M` (`ttab/configs/algorithms.py`); DomainBed selects it per dataset from
{1, 5, 20, 50, 100, -1} (`domainbed/scripts/unsupervised_adaptation.py`). The official code has no CIFAR-C or
ImageNet-C configuration, so there are no presets.

Deviations: `filter_K = -1` keeps every support (the paper's "no filtering"); the official `select_supports` sets
the all-indices list for -1 and then overwrites it, so its `[:filter_K]` slice drops the highest-entropy support of
every class. Entropy ties are sorted stably here (torch.sort's default order is unspecified). `reset()` restores
the warm-up supports (the official `reset`). Supports are kept in float32 on the model's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._contrast import HeadTap
from tta_bench.methods.base import Adapter, entropy, opt

_NEEDS_HEAD = (
    "method 't3a' replaces the model's final linear classifier by prototypes of the features it receives, but the "
    "output of {} is not the output of a last nn.Linear on (N, D) features. Use a model whose logits come from a "
    "final linear layer, or a method that needs no classifier split (e.g. 'tent')."
)


def select_supports(
    supports: torch.Tensor, labels: torch.Tensor, ent: torch.Tensor, filter_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pseudo-class (argmax of the one-hot `labels` (S,C)), the `filter_k` lowest-entropy supports (-1: all)."""
    y = labels.argmax(1)
    order = torch.sort(ent, stable=True)[1]
    order = order[torch.sort(y[order], stable=True)[1]]  # grouped by class (ascending), each by entropy
    if filter_k == -1:
        idx = order
    else:
        counts = torch.bincount(y, minlength=labels.shape[1])
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=order.device) - starts[y[order]]  # position within its class
        idx = order[rank < filter_k]
    return supports[idx], labels[idx], ent[idx]


def prototype_logits(z: torch.Tensor, supports: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z (N,D) @ normalize(Σ_c normalize(supports)), the class prototypes as columns (D,C) -> logits (N,C)."""
    weights = F.normalize(supports, dim=1).T @ labels
    return z @ F.normalize(weights, dim=0)


@register("t3a")
class T3A(Adapter):
    """Prototype classifier from a support set of entropy-filtered test features; no gradient, no optimizer."""

    options = {
        "filter_K": opt(
            100,
            "supports kept per pseudo-class: the filter_K of lowest prediction entropy (-1: all, no filtering)",
            ">=-1",
        ),
    }

    def configure(self) -> None:
        if self.hp.filter_K == 0:
            raise UserError(
                "method 't3a' option 'filter_K' must be -1 (all) or >= 1, got 0 (--set method.filter_K=100)."
            )
        self.model.eval()
        self.model.requires_grad_(False)
        try:
            self.tap = HeadTap(self.model)
        except TypeError:
            raise UserError(_NEEDS_HEAD.format(type(self.model).__name__)) from None
        head = self.tap.head
        with torch.no_grad():
            w = head.weight.detach().float().clone()
            p = head(head.weight).float()  # the official feeds the weight rows through the classifier
        # buffers, so that they follow the adapter to its device (the runner moves it after construction)
        self.register_buffer("warmup_supports", w, persistent=False)
        self.register_buffer("warmup_labels", F.one_hot(p.argmax(1), w.shape[0]).float(), persistent=False)
        self.register_buffer("warmup_ent", entropy(p), persistent=False)

    def reset_state(self) -> None:
        self.supports, self.labels, self.ent = self.warmup_supports, self.warmup_labels, self.warmup_ent

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            z, p = self.tap(x)
        except TypeError:
            raise UserError(_NEEDS_HEAD.format(type(self.model).__name__)) from None
        if self.supports.device != z.device:  # the adapter moved since the last reset (the official's .to())
            self.supports, self.labels, self.ent = (t.to(z.device) for t in (self.supports, self.labels, self.ent))
        return z.float(), p.float()

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self.features(x)
        supports, labels, _ = select_supports(self.supports, self.labels, self.ent, self.hp.filter_K)
        return prototype_logits(z, supports, labels)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        z, p = self.features(x)
        self.supports = torch.cat([self.supports, z])
        self.labels = torch.cat([self.labels, F.one_hot(p.argmax(1), p.shape[1]).float()])
        self.ent = torch.cat([self.ent, entropy(p)])
        self.supports, self.labels, self.ent = select_supports(self.supports, self.labels, self.ent, self.hp.filter_K)
        return prototype_logits(z, self.supports, self.labels)
