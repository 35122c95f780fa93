"""`adacontrast`: Contrastive test-time adaptation (Chen, Wang, Darrell & Ebrahimi, CVPR 2022).

Matches the online version in mariodoebler/test-time-adaptation `classification/methods/adacontrast.py` (commit
8b2ed63; `AdaMoCo`, `AdaContrast.loss_calculation/forward_and_adapt/update_labels`, `refine_predictions`,
`instance_loss`, `classification_loss`, `div`), which builds on DianCh/AdaContrast (commit c3c8b88, `target.py`,
`moco/builder.py`), with `conf.py` and `cfgs/*/adacontrast.yaml`. Per batch:
- views (`views()`): x_w weak (random horizontal flip: the suite's "plain" Resize+RandomCrop to the input size
  are identities), x_q, x_k strong ("moco-v2-light": ColorJitter(0.4,0.4,0.4,0.1) p 0.8, grayscale p 0.2,
  Gaussian blur σ~U(0.1,2) p 0.5, flip), drawn per image from torch's RNG;
- the model in train mode (BatchNorm on batch statistics, running statistics updated), every parameter trained;
  the feature/head split is the input of the model's last `nn.Linear` (the official `BaseModel` encoder/fc);
- pseudo-labels of x_w: argmax of the model's softmax for the first `warmup_samples` (1024) samples, then soft
  kNN voting: mean softmax of the `num_neighbors` (10) cosine-nearest features in the bank;
- q = normalize(feat(x_q)); the key encoder (EMA of the model, m = 0.999, updated first) gives
  k = normalize(feat(x_k)); logits_ins = [q·k, q·queue] / T (T = 0.07); the queue (features (D, K), pseudo-labels
  (K,), K = 16384) is then updated with (k, ŷ); the instance loss is a cross-entropy towards the positive, with
  queue entries of the same pseudo-label masked out (class-aware, using the just-updated labels);
- loss = α CE(logits_q, ŷ) + β L_ins + η Σ p̄ log(p̄ + 1e-8) (p̄ the batch mean of softmax(logits_q)); one step;
- the bank (features + softmax of the key encoder on x_w, after the step) is appended to up to `queue_size`
  entries, then overwritten as a ring;
- the prediction returned is the model in eval mode (running statistics) on the un-augmented x, after the step.
Source-free init: the queue starts as random unit features with random labels (the official `AdaMoCo`), the
kNN bank starts empty and fills from target features as they arrive (the suite's online rule; DianCh's offline
code instead labels the whole target set before training, impossible on a stream).
Defaults = the suite's cifar10_c config (SGD lr 2e-4, momentum 0.9, wd 1e-4, Nesterov; T 0.07, batch 200).
Deviations: the Gaussian blur is torchvision's tensor blur (kernel 2⌈3σ⌉+1) instead of PIL's; only the
official default modes (class-aware contrast, weak→strong CE, cosine kNN) are implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from tta_bench.methods import register
from tta_bench.methods.base import Adapter, ema_update, frozen_copy, make_optimizer, opt, optimizer_options

_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/adacontrast.yaml@8b2ed63"
_OPTS = {"lr": 2e-4, "momentum": 0.9, "wd": 1e-4, "nesterov": True, "temperature": 0.07}


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear (its classification head), or a TypeError saying why AdaContrast needs it."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise TypeError(
            f"adacontrast splits the model into features and a linear head and found no nn.Linear in "
            f"{type(model).__name__}; use a classifier whose logits come from a final nn.Linear."
        )
    return heads[-1]


def feats_logits(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N,D) = the input of `head`, logits (N,C)) of one forward pass."""
    box = []
    hook = head.register_forward_pre_hook(lambda m, inp: box.append(inp[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return box[-1].flatten(1), logits


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """moco-v2-light on one image (C,H,W) in [0,1]."""
    if torch.rand(1) < 0.8:
        x = T.ColorJitter(0.4, 0.4, 0.4, 0.1)(x)
    if x.shape[0] == 3 and torch.rand(1) < 0.2:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if torch.rand(1) < 0.5:
        sigma = float(torch.empty(1).uniform_(0.1, 2.0))
        x = TF.gaussian_blur(x, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma])
    return TF.hflip(x) if torch.rand(1) < 0.5 else x


@register("adacontrast")
class AdaContrast(Adapter):
    """MoCo-style instance contrast + kNN-refined pseudo-label CE + diversity, with an EMA key encoder."""

    options = {
        **optimizer_options("sgd", **{k: _OPTS[k] for k in ("lr", "momentum", "wd", "nesterov")}),
        "steps": opt(1, "optimizer steps per test batch, on the same augmented views"),
        "queue_size": opt(16384, "entries of the MoCo queue (negatives) and of the kNN feature bank", ">=1"),
        "m": opt(0.999, "EMA rate of the key encoder: key <- m · key + (1 - m) · model", "[0,1]"),
        "temperature": opt(0.07, "temperature T of the instance-contrast logits (cosine similarities / T)", ">0"),
        "num_neighbors": opt(10, "nearest bank features whose mean softmax gives a soft kNN pseudo-label", ">=1"),
        "warmup_samples": opt(
            1024, "samples labelled by the model's own argmax before kNN pseudo-labelling starts", ">=0"
        ),
        "alpha": opt(1.0, "weight of the pseudo-label cross-entropy on the strong query view", ">=0"),
        "beta": opt(1.0, "weight of the class-aware instance-contrast loss", ">=0"),
        "eta": opt(1.0, "weight of the diversity loss Σ p̄ log p̄ (p̄ the batch-mean softmax)", ">=0"),
    }
    presets = {
        f: {"source": _SUITE.format(f.replace("-", "_")), "batch_size": b, "options": dict(_OPTS)}
        for f, b in (("cifar10-c", 200), ("cifar100-c", 200), ("imagenet-c", 64))
    }

    def configure(self) -> None:
        head = last_linear(self.model)
        self.model.train().requires_grad_(True)
        self.momentum = frozen_copy(self.model)
        self.optimizer = make_optimizer(list(self.model.parameters()), self.hp)
        d, c, k = head.in_features, head.out_features, self.hp.queue_size
        self.register_buffer("mem_feat", F.normalize(torch.randn(d, k), dim=0).to(head.weight.device))
        self.register_buffer("mem_labels", torch.randint(0, c, (k,)).to(head.weight.device))

    def reset_state(self) -> None:
        self.queue_ptr, self.seen = 0, 0
        self.bank_feats: torch.Tensor | None = None
        self.bank_probs: torch.Tensor | None = None
        self.bank_ptr = 0

    def heads(self) -> tuple[nn.Linear, nn.Linear]:
        return last_linear(self.model), last_linear(self.momentum)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weak, strong query, strong key) views of the batch x (N,C,H,W), drawn per image."""
        weak = torch.stack([xi.flip(-1) if torch.rand(1) < 0.5 else xi for xi in x])
        return weak, torch.stack([strong_view(xi) for xi in x]), torch.stack([strong_view(xi) for xi in x])

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return out

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        x_w, x_q, x_k = self.views(x)
        self.model.train()
        self.momentum.train()
        for _ in range(self.hp.steps):
            self.step(x_w, x_q, x_k)
        with torch.no_grad():
            return self.infer(x)

    def step(self, x_w: torch.Tensor, x_q: torch.Tensor, x_k: torch.Tensor) -> None:
        head, m_head = self.heads()
        feats_w, logits_w = feats_logits(self.model, head, x_w)
        with torch.no_grad():
            if self.seen >= self.hp.warmup_samples and self.bank_feats is not None:
                pseudo = self.knn_labels(feats_w)
            else:
                pseudo = logits_w.softmax(1).argmax(1)
                self.seen += len(feats_w)
        feats_q, logits_q = feats_logits(self.model, head, x_q)
        q = F.normalize(feats_q, dim=1)
        with torch.no_grad():
            ema_update(self.momentum, self.model, self.hp.m)
            k = F.normalize(feats_logits(self.momentum, m_head, x_k)[0], dim=1)
        logits_ins = torch.cat([(q * k).sum(1, keepdim=True), q @ self.mem_feat.clone()], dim=1) / self.hp.temperature
        self.update_queue(k, pseudo)
        mask = torch.ones_like(logits_ins, dtype=torch.bool)
        mask[:, 1:] = pseudo.view(-1, 1) != self.mem_labels  # class-aware: no same-class negatives
        logits_ins = torch.where(mask, logits_ins, torch.tensor(float("-inf"), device=logits_ins.device))
        loss_ins = F.cross_entropy(logits_ins, torch.zeros(len(q), dtype=torch.long, device=q.device))
        loss_cls = F.cross_entropy(logits_q, pseudo)
        p_mean = logits_q.softmax(1).mean(0)
        loss_div = (p_mean * torch.log(p_mean + 1e-8)).sum() if self.hp.eta > 0 else 0.0
        loss = self.hp.alpha * loss_cls + self.hp.beta * loss_ins + self.hp.eta * loss_div
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats, logits = feats_logits(self.momentum, m_head, x_w)
            self.update_bank(feats, logits.softmax(1))

    @torch.no_grad()
    def knn_labels(self, feats: torch.Tensor) -> torch.Tensor:
        """Soft kNN voting: argmax of the mean bank softmax of the cosine-nearest `num_neighbors` entries."""
        bank = F.normalize(self.bank_feats, dim=1)
        probs = []
        for f in feats.split(64):
            idx = (1 - F.normalize(f, dim=1) @ bank.T).sort()[1][:, : self.hp.num_neighbors]
            probs.append(self.bank_probs[idx, :].mean(1))
        return torch.cat(probs).max(1)[1]

    @torch.no_grad()
    def update_queue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        idx = torch.arange(self.queue_ptr, self.queue_ptr + len(keys), device=keys.device) % self.hp.queue_size
        self.mem_feat[:, idx] = keys.T
        self.mem_labels[idx] = labels
        self.queue_ptr = (self.queue_ptr + len(keys)) % self.hp.queue_size

    @torch.no_grad()
    def update_bank(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        end = self.bank_ptr + len(feats)
        if self.bank_feats is None or len(self.bank_feats) < self.hp.queue_size:
            self.bank_feats = feats if self.bank_feats is None else torch.cat([self.bank_feats, feats])
            self.bank_probs = probs if self.bank_probs is None else torch.cat([self.bank_probs, probs])
        else:
            idx = torch.arange(self.bank_ptr, end, device=feats.device) % len(self.bank_feats)
            self.bank_feats[idx], self.bank_probs[idx] = feats, probs
        self.bank_ptr = end % len(self.bank_feats)
