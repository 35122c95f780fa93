"""`ogen`: OOD GENeralization of finetuned CLIP (Zang et al., "Overcoming the Pitfalls of Vision-Language
Model Finetuning for OOD Generalization", ICLR 2024), on top of CoOp (methods/coop.py).

Class-conditional feature generator (as in apple/ml-ogen `trainers/ogen.py`): to synthesise an image feature
of a class treated as unknown, its text feature w_u (query) attends over the text features of its k = 3
nearest known classes (keys; nearest by cosine similarity of the class image-feature means), the values
being features drawn from those classes' statistics, mean + U(0,1) * std (one noise vector per step); the
output is MLP(query) + attention, L2-normalised. Training (leave-one-out on the known classes): each known
class y of the batch is treated as unknown and its real feature regressed (MSE x D), the reverse direction
synthesises its neighbours from the real feature, and the k new (unseen) classes nearest to y in text space
are synthesised from it. Cross-entropies on the synthesised features (over known prompts, weights 0.25 and
0.25/k; over new-class prompts, 0.5/k) plus 0.25 x CoOp's loss regularise the decision boundary; during the
first 20 % of the epochs only the MSE terms train the generator (the release's schedule). Config
`vit_b16_ep10` of the release's base-to-new scripts: SGD lr 0.002, 10 epochs (methods/_vlm.py).

Adaptive self-distillation (the released trainer builds a teacher but does not publish its update; our
documented choice, following the paper's adaptive local mean teacher): after epoch t (1-based) of T the
learned state (context + generator) is stored; the teacher is the uniform average of the last
m_t = floor((1 + t / T) * m0) stored states (m0 = `window`, the window grows as training matures). From
the end of the warm-up on, KL(teacher || student) of the real features' logits over all classes (known and
unknown names) is added with weight `distill` (the averaged generator is kept as part of the teacher state
but the distillation signal is the class posterior). The stream uses the student, frozen.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._vlm import PromptAdapter
from tta_bench.methods.base import opt


class FeatureGenerator(nn.Module):
    """(n,m,D) queries, (n,j,D) keys and values -> (n*m, D) L2-normalised synthesised image features."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.mlp(q) + self.attn(q, k, v, need_weights=False)[0]
        return F.normalize(out, dim=-1).flatten(0, 1)


def window_size(t: int, total: int, m0: int) -> int:
    """Adaptive window of the local mean teacher after epoch t (1-based) of `total`."""
    return max(1, math.floor((1 + t / total) * m0))


@register("ogen")
class OGEN(PromptAdapter):
    """CoOp + class-conditional unknown-feature synthesis + adaptive self-distillation; frozen on the stream."""

    options = {
        **PromptAdapter.options,
        "k": opt(3, "known classes whose text features the generator attends over (nearest in text space)", ">=1"),
        "heads": opt(4, "attention heads of the feature generator", ">=1"),
        "warmup_frac": opt(0.2, "fraction of the epochs in which only the generator's MSE terms train", "[0,1]"),
        "window": opt(2, "initial window m0 of the adaptive local mean teacher (epoch states averaged)", ">=1"),
        "distill": opt(1.0, "weight of the self-distillation term KL(teacher || student) after the warm-up", ">=0"),
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        d, n = self.model.embed_dim, len(self.model.class_names)
        self.generator = FeatureGenerator(d, self.hp.heads)
        ctx = nn.ParameterDict({"ctx": nn.Parameter(self.prompt.ctx.detach().clone())})
        self.teacher = nn.ModuleDict({"prompt": ctx, "generator": FeatureGenerator(d, self.hp.heads)})
        self.teacher.requires_grad_(False)
        self.register_buffer("feat_mean", torch.zeros(n, d))  # per known class, of L2-normalised features
        self.register_buffer("feat_std", torch.zeros(n, d))
        self.register_buffer("neighbors", torch.full((n, self.hp.k), -1, dtype=torch.long))  # k nearest known
        self.history: list[dict[str, torch.Tensor]] = []

    def learned_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx, *self.generator.parameters()]

    def reset_state(self) -> None:
        self.history = []

    def fit_statistics(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        known = self.known_classes()
        for c in known.tolist():
            f = feats[labels == c]
            self.feat_mean[c] = f.mean(0)
            self.feat_std[c] = f.std(0, unbiased=False)
        m = F.normalize(self.feat_mean[known], dim=-1)
        sim = m @ m.t()
        sim.fill_diagonal_(-float("inf"))
        k = min(self.hp.k, len(known) - 1)
        self.neighbors.fill_(-1)
        if k > 0:
            self.neighbors[known, :k] = known[sim.topk(k, dim=1).indices]
        self.history = []

    def synthesize(self, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of classes `y` (n,) as if unknown, from their nearest known classes.

        `w` (C,D) text features indexed by class id. Returns (synthesised (n,D), neighbour ids (n,k),
        the sampled neighbour features used as values (n,k,D)).
        """
        nb = self.neighbors[y]
        nb = nb[:, : int((nb[0] >= 0).sum())]
        noise = torch.rand(1, w.shape[1], device=w.device)
        values = self.feat_mean[nb] + noise * self.feat_std[nb]
        return self.generator(w[y].detach().unsqueeze(1), w[nb].detach(), values), nb, values

    def step_loss(self, feats: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        if (self.neighbors[labels] < 0).all():  # a single known class: nothing to synthesise from
            return super().step_loss(feats, labels, epoch)
        known, unknown = self.known_classes(), (~self.known_mask).nonzero().flatten()
        clip, d = self.model, feats.shape[1]
        w = torch.zeros(len(self.known_mask), d, device=feats.device, dtype=feats.dtype)
        w = w.index_put((known,), self.prompt(clip, known))
        w_known = w[known]
        pred_u, nb, values = self.synthesize(w, labels)
        k = nb.shape[1]
        # reverse direction: the neighbours synthesised from the real feature
        pred_k = self.generator(w[nb].detach(), w[labels].detach().unsqueeze(1), feats.unsqueeze(1))
        loss = F.mse_loss(pred_u, feats) * d + F.mse_loss(pred_k, values.flatten(0, 1)) * d
        if epoch < int(self.hp.epochs * self.hp.warmup_frac):
            return loss  # generator warm-up: regression only
        loss = loss + 0.25 * F.cross_entropy(clip.logits(pred_u, w_known), self.local(labels))
        loss = loss + 0.25 * F.cross_entropy(clip.logits(feats, w_known), self.local(labels))
        loss = loss + 0.25 / k * F.cross_entropy(clip.logits(pred_k, w_known), self.local(nb.flatten()))
        w_all = w_known
        if len(unknown) > 0:  # unseen classes nearest to y in text space, synthesised from the real feature
            w_new = self.prompt(clip, unknown)
            idx = (w[labels].detach() @ w_new.t()).topk(min(self.hp.k, len(unknown)), dim=1).indices
            pred_n = self.generator(w_new[idx], w[labels].detach().unsqueeze(1), feats.unsqueeze(1))
            loss = loss + 0.5 / k * F.cross_entropy(clip.logits(pred_n, w_new), idx.flatten())
            w_all = torch.cat([w_known, w_new])
        if self.history and self.hp.distill > 0:
            with torch.no_grad():
                t_all = self.prompt(clip, torch.cat([known, unknown]), ctx=self.teacher["prompt"]["ctx"])
                p_t = clip.logits(feats, t_all).softmax(1)
            log_s = clip.logits(feats, w_all).log_softmax(1)
            loss = loss + self.hp.distill * F.kl_div(log_s, p_t, reduction="batchmean")
        return loss

    def learned_state(self) -> dict[str, torch.Tensor]:
        return {"prompt.ctx": self.prompt.ctx, **{f"generator.{n}": p for n, p in self.generator.named_parameters()}}

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        """Store the state; the teacher becomes the mean of the last m_t stored states."""
        self.history.append({n: p.detach().clone() for n, p in self.learned_state().items()})
        m = window_size(epoch + 1, self.hp.epochs, self.hp.window)
        recent = self.history[-m:]
        teacher = dict(self.teacher.named_parameters())
        for name in recent[0]:
            teacher[name].copy_(torch.stack([s[name] for s in recent]).mean(0))
        del self.history[: -max(m, window_size(self.hp.epochs, self.hp.epochs, self.hp.window))]
