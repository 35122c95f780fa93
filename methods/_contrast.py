"""Source prototypes + contrastive alignment shared by RMT and SANTA (mariodoebler/test-time-adaptation
`classification/methods/rmt.py`, `santa.py`, commit 8b2ed63; SupCon loss of HobbitLong/SupContrast `losses.py`).

Encoder / classifier split, found generically: the classifier is the model's **last `nn.Linear`** (module
order) and the features are its input, read with a forward hook during the normal forward. The official
`split_up_model` cuts every supported architecture at the same place (features = the input of the final linear
classifier: pooled CNN features, ViT class token). A model without a linear layer, or whose output is not that
layer's output, is refused with a TypeError.

Prototypes: class means of the source features of the configured model (BN on batch statistics), over at most the
first `max_proto_samples` source images (the official loop stops once it holds more than 100,000 features).
Projector: Linear(D, d) -> ReLU -> Linear(d, d), trained in its own optimizer group at the adapter's lr.
Contrastive loss: SupCon, mode 'all', no labels: views [nearest source prototype, test features, augmented test
features]; positives are the other views of the same sample; temperature = base temperature.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods.base import Adapter


def classifier_head(model: nn.Module) -> nn.Linear:
    """The last nn.Linear of `model` (its classifier); TypeError when there is none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(
            f"{type(model).__name__} has no nn.Linear classifier: RMT/SANTA split the model at the input of its last "
            "linear layer (encoder features -> classifier) and cannot run on this model."
        )
    return linears[-1]


class HeadTap:
    """Calls the model and returns (features (N,D), logits (N,C)); features = the input of the classifier head."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.head = model, classifier_head(model)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        hook = self.head.register_forward_hook(lambda m, args, out: seen.update(f=args[0], out=out))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        if seen.get("out") is not logits or seen["f"].dim() != 2:
            raise TypeError(
                f"the output of {type(self.model).__name__} is not the output of its last nn.Linear on (N, D) "
                "features; RMT/SANTA need a model that ends with a linear classifier."
            )
        return seen["f"], logits


def sup_contrastive_loss(features: torch.Tensor, projector: nn.Module, temperature: float) -> torch.Tensor:
    """SupCon loss (mode 'all', identity mask) of `features` (N, V, D): the views of each sample are positives."""
    n, views = features.shape[:2]
    mask = torch.eye(n, device=features.device).repeat(views, views)
    contrast = F.normalize(projector(torch.cat(torch.unbind(features, dim=1), dim=0)), p=2, dim=1)
    logits = torch.div(contrast @ contrast.T, temperature)
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(n * views, device=mask.device).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / temperature) * mean_log_prob_pos).view(views, n).mean()


class PrototypeContrast(Adapter):
    """Base of RMT and SANTA: head split, projector, source prototypes (prepare) and the contrastive term."""

    def setup_contrast(self) -> None:
        """Call at the end of configure(), after `self.optimizer` exists."""
        self.tap = HeadTap(self.model)
        head = self.tap.head
        device = head.weight.device
        d, c = head.in_features, head.out_features
        self.projector = nn.Sequential(
            nn.Linear(d, self.hp.projection_dim), nn.ReLU(), nn.Linear(self.hp.projection_dim, self.hp.projection_dim)
        ).to(device)
        self.optimizer.add_param_group(
            {"params": list(self.projector.parameters()), "lr": self.optimizer.param_groups[0]["lr"]}
        )
        self.register_buffer("prototypes", torch.zeros(c, d, device=device))
        self.register_buffer("prototypes_ready", torch.tensor(False, device=device))

    @torch.no_grad()
    def fit_prototypes(self, source: Iterable) -> None:
        """Class means of the source features (official: stop once more than `max_proto_samples` are held)."""
        feats, labels, n = [], [], 0
        for x, y in source:
            feats.append(self.tap(x.to(self.prototypes.device))[0].float())
            labels.append(y.to(self.prototypes.device))
            n += len(x)
            if n > self.hp.max_proto_samples:
                break
        f, y = torch.cat(feats), torch.cat(labels)
        missing = [c for c in range(len(self.prototypes)) if not (y == c).any()]
        if missing:
            raise UserError(
                f"{self.name}: the source data has no image of classes {missing[:10]}; class prototypes need at least "
                "one source image per class."
            )
        for c in range(len(self.prototypes)):
            self.prototypes[c] = f[y == c].mean(0)
        self.prototypes_ready.fill_(True)

    def contrastive(self, feats: torch.Tensor, feats_aug: torch.Tensor) -> torch.Tensor:
        """SupCon over [nearest source prototype, features, augmented features]; 0 before prototypes exist."""
        if not bool(self.prototypes_ready):
            return feats.new_zeros(())
        protos = self.prototypes.unsqueeze(1)  # (C, 1, D)
        with torch.no_grad():
            dist = F.cosine_similarity(protos, feats.detach().unsqueeze(0), dim=-1)  # (C, N)
            indices = dist.topk(1, largest=True, dim=0)[1].squeeze(0)
        views = torch.cat([protos[indices], feats.unsqueeze(1), feats_aug.unsqueeze(1)], dim=1)
        return sup_contrastive_loss(views, self.projector, self.hp.temperature)
