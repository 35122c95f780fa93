"""`spa`: self-bootstrapping test-time adaptation of a ViT (Niu et al., "Self-Bootstrapping for Versatile Test-Time
Adaptation", ICML 2025).

Matches mr-eggplant/SPA `tta_library/spa.py`, `models/maskers.py`, `models/byol_wrapper.py` and the `spa` branch of
`main.py` at b4a66ea (ViT-B/16, timm), step for step. Per test batch, in the model's input space (after the input
normalisation, where the official code works):
- the clean forward gives the returned logits (before the update) and the targets;
- two deteriorated views go through the model with a BYOL-style predictor (a bias-free D×D linear layer,
  identity-initialised, between the final class token and the head): (1) Fourier amplitude masking — the
  amplitudes of the low-frequency centre (a `0.2·H × 0.2·W` square of the shifted spectrum) are each kept with
  probability 1 - `freq_mask_ratio`, the mask made conjugate-symmetric, high frequencies and phases untouched;
  (2) learnable patch erasing — patch k becomes (1 - α_k²)·x + α_k²·ε (ε ~ N(0, 1), one draw per patch shared by
  the batch), clipped to the image range;
- loss per view: KL(softmax(clean) ‖ softmax(view)) (batch mean, targets detached) over the samples whose clean
  confidence exceeds the view's; optionally + 0.1 · Tent's entropy (`aux=tent`, the official `spa+tent`) or
  + 0.1 · ETA's loss (`aux=eta`, `spa+eta`: reliable and non-redundant samples, as methods/eata.py);
- one SGD step (momentum 0.9) on the LayerNorm/GroupNorm/BatchNorm affine parameters (lr `lr`, 0.01) and the
  predictor (lr `predictor_lr`, 0.05); the α get the negated gradient (they maximise the loss) through their own
  SGD (lr 1, momentum 0.9), are rescaled so that mean(α²) = `noise_ratio`, and clipped to [-1, 1].
The model is in train mode (BatchNorm on batch statistics, as the official `configure_model`).

Defaults and the `imagenet-c` preset are the official ViT-B/16 ones (`main.py`: lrs 0.01 / 0.05, mask ratio 0.2,
noise ratio 0.4, batch 64); the official code has no CIFAR configuration (no cifar presets).

Deviations: the patch erasing uses the ViT's own patch size and image size (the official hard-codes 16 and 224, i.e.
ViT-B/16's) and clips to the range of [0, 1] images after the model's input normalisation (the official clips to
[-1, 1], the same thing for its mean/std 0.5 models); a view that keeps no sample (no clean prediction more
confident than the view's) adds 0 (the official's `KLDivLoss(batchmean)` of an empty batch is NaN); `reset()` also
clears ETA's moving average; `spa+eata` (the Fisher term) and the ResNet-50-GN variant (lrs 0.0025 / 0.025, ratios
0.1 / 0.1) are not ported. Needs a ViT (torchvision or timm, `requires = "vit"`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._prompt_vit import PromptViT
from tta_bench.methods.base import (
    NORM_TYPES,
    Adapter,
    entropy,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)
from tta_bench.methods.eata import update_model_probs

SPA_COMMIT = "mr-eggplant/SPA:main.py@b4a66ea"


def low_frequency_mask(n: int, c: int, h: int, w: int, keep_prob: float, device, ratio: float = 0.2) -> torch.Tensor:
    """SPA's amplitude mask (shifted spectrum): the centre square kept with probability keep_prob, symmetric."""
    ph, pw = max(int(h * ratio), 1), max(int(w * ratio), 1)
    pad_h, pad_w = (h - ph) // 2, (w - pw) // 2
    low = torch.zeros(1, c, h, w, device=device)
    low[:, :, h - pad_h - ph : h - pad_h, w - pad_w - pw : w - pad_w] = 1.0
    mask = low * torch.empty(n, c, h, w, device=device).bernoulli_(keep_prob) + (1 - low)
    sh, sw = 1 - h % 2, 1 - w % 2  # the odd-sized block around the spectrum's centre
    sub = mask[:, :, sh:, sw:]
    mh, mw = sub.shape[-2] // 2, sub.shape[-1] // 2
    sub[:, :, -mh:, :] = 1
    sub[:, :, mh, :mw] = 1
    mask[:, :, sh:, sw:] = sub * torch.flip(sub, dims=[-1, -2])  # kept where the frequency and its mirror are kept
    return mask


def fourier_mask(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """View 1: x with low-frequency amplitudes randomly dropped (phase kept)."""
    fft = torch.fft.fft2(x, dim=(-2, -1))
    amp, pha = torch.fft.fftshift(torch.abs(fft)), torch.angle(fft)
    amp = amp * low_frequency_mask(*x.shape, keep_prob, x.device)
    amp = torch.fft.ifftshift(amp)
    return torch.fft.ifft2(torch.complex(torch.cos(pha) * amp, torch.sin(pha) * amp), dim=(-2, -1)).real


@register("spa")
class SPA(Adapter):
    """Consistency between clean and deteriorated (Fourier-masked, adversarially patch-erased) views, ViT norms."""

    requires: ClassVar[str] = "vit"
    options = {
        **optimizer_options("sgd", lr=0.01, momentum=0.9),
        "predictor_lr": opt(0.05, "learning rate of the BYOL predictor (identity-initialised D×D linear layer)", ">=0"),
        "freq_mask_ratio": opt(0.2, "probability of dropping each low-frequency amplitude (view 1)", "[0,1]"),
        "noise_ratio": opt(0.4, "mean α² of the learnable patch erasing (view 2): the average noise share", "(0,1]"),
        "aux": opt("none", "extra loss: none, tent (0.1·entropy) or eta (0.1·ETA's loss)", ("none", "tent", "eta")),
        "e_margin_frac": opt(0.4, "aux=eta: reliable samples have entropy below e_margin_frac · ln C", ">=0"),
        "d_margin": opt(0.05, "aux=eta: non-redundant samples have |cos(p̄, p)| below d_margin", ">=0"),
    }
    presets = {
        "imagenet-c": {"source": SPA_COMMIT, "batch_size": 64,
                       "options": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "wd": 0.0,
                                   "predictor_lr": 0.05, "freq_mask_ratio": 0.2, "noise_ratio": 0.4, "aux": "none"}},
    }  # fmt: skip

    def configure(self) -> None:
        self.vit = PromptViT(self.model, self.name or "spa")
        vit = self.vit.vit
        if self.vit.kind == "torchvision":
            size, patch = vit.image_size, vit.patch_size
        else:
            size, patch = vit.patch_embed.img_size[0], vit.patch_embed.patch_size[0]
        self.erase_patch, n = patch, (size // patch) ** 2
        use_batch_stats(self.model)
        self.model.train()
        ref = next(self.model.parameters())
        self.predictor = nn.Linear(self.vit.dim, self.vit.dim, bias=False).to(ref.device)
        nn.init.eye_(self.predictor.weight)
        self.alpha = nn.Parameter(torch.full((n,), math.sqrt(self.hp.noise_ratio), device=ref.device))
        norms = train_only(self.model, norm_affine_params(self.model, NORM_TYPES))
        groups = [{"params": norms, "lr": self.hp.lr}, {"params": [self.predictor.weight], "lr": self.hp.predictor_lr}]
        self.optimizer = torch.optim.SGD(
            groups, lr=self.hp.lr, momentum=self.hp.momentum, weight_decay=self.hp.wd, nesterov=self.hp.nesterov
        )
        self.patch_optimizer = torch.optim.SGD([self.alpha], 1, momentum=0.9)
        lo, hi = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)  # the range of [0, 1] images in the model's space
        for mean, std in self.vit.norms:
            lo, hi = (lo.to(mean) - mean) / std, (hi.to(mean) - mean) / std
        self.range = (lo, hi) if self.vit.norms else (-1.0, 1.0)  # a bare ViT: the official [-1, 1]

    def reset_state(self) -> None:
        self.patch_optimizer.state.clear()
        self.probs: torch.Tensor | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]] + [self.alpha]

    # --- the model's pieces (input space = after the input normalisation) -------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        for mean, std in self.vit.norms:
            x = (x - mean) / std
        return x

    def clean(self, z: torch.Tensor) -> torch.Tensor:
        return self.vit.vit(z)

    def with_predictor(self, z: torch.Tensor) -> torch.Tensor:
        """The official BYOLWrapper(use_predictor=True): final class token -> predictor -> head."""
        vit = self.vit.vit
        if self.vit.kind == "torchvision":
            t = vit._process_input(z)
            t = vit.encoder(torch.cat([vit.class_token.expand(t.shape[0], -1, -1), t], dim=1))[:, 0]
            return vit.heads(self.predictor(t))
        return vit.head(self.predictor(vit.fc_norm(vit.forward_features(z)[:, 0])))

    def erase(self, z: torch.Tensor) -> torch.Tensor:
        """View 2: learnable patch erasing (one N(0,1) draw per patch, shared by the batch), clipped to the range."""
        p, c = self.erase_patch, z.shape[1]
        side = z.shape[-1] // p
        if z.shape[-1] != z.shape[-2] or side * side != self.alpha.numel():
            raise UserError(f"method 'spa' erases {p}-pixel patches of square images of the ViT's size; got {z.shape}.")
        out = torch.empty_like(z)
        for k in range(side * side):
            i, j = (k // side) * p, (k % side) * p
            v = torch.empty([c, p, p], dtype=torch.float32, device=z.device).normal_()
            a2 = self.alpha[k] ** 2
            out[..., i : i + p, j : j + p] = (1 - a2) * z[..., i : i + p, j : j + p] + a2 * v
        lo, hi = self.range
        if isinstance(lo, float):
            return out.clip_(lo, hi)
        return torch.maximum(torch.minimum(out, hi), lo)

    def consistency(self, view: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        low = self.with_predictor(view)
        conf, low_conf = outputs.softmax(-1).max(-1)[0], low.softmax(-1).max(-1)[0]
        ids = torch.where(conf > low_conf)[0]
        if ids.numel() == 0:
            return low.sum() * 0.0
        target = outputs[ids].softmax(-1).detach()
        return F.kl_div(low[ids].log_softmax(-1), target, reduction="batchmean")

    def aux_loss(self, outputs: torch.Tensor) -> torch.Tensor | float:
        if self.hp.aux == "tent":
            return 0.1 * entropy(outputs).mean()
        if self.hp.aux == "eta":
            e_margin = self.hp.e_margin_frac * math.log(outputs.shape[1])
            ent = entropy(outputs)
            ids1 = torch.where(ent < e_margin)[0]
            ent, probs = ent[ids1], outputs[ids1].softmax(1)
            if self.probs is not None:
                ids2 = torch.where(F.cosine_similarity(self.probs.unsqueeze(0), probs, dim=1).abs() < self.hp.d_margin)
                ent, probs = ent[ids2[0]], probs[ids2[0]]
            self.probs = update_model_probs(self.probs, probs)
            if ent.numel() == 0:
                return 0.0
            return 0.1 * ent.mul(1 / torch.exp(ent.detach() - e_margin)).mean(0)
        return 0.0

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalise(x)
        outputs = self.clean(z)
        loss = self.consistency(fourier_mask(z, 1 - self.hp.freq_mask_ratio), outputs)
        loss = loss + self.consistency(self.erase(z), outputs)
        loss = loss + self.aux_loss(outputs)
        loss.backward()
        self.alpha.grad = -self.alpha.grad
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.patch_optimizer.step()
        self.patch_optimizer.zero_grad()
        with torch.no_grad():
            self.alpha /= torch.sqrt((self.alpha**2).mean() / self.hp.noise_ratio)
            self.alpha.clip_(-1, 1)
        return outputs

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.clean(self.normalise(x))
