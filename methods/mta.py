"""`mta`: MeanShift for Test-time Augmentation (Zanella & Ben Ayed, "On the Test-Time Zero-Shot Generalization of
Vision-Language Models: Do We Really Need Prompt Learning?", CVPR 2024); training-free.

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/mta.py`
(`gaussian_kernel`, `solve_mta`, `MTA`: lambda_q 4, lambda_y 0.2) with `instance_tta.py` (`-b 64`, ctx_init
a_photo_of_a; official MTA: MaxZanella/MTA). Per test image x_i, nothing trained:
  1. the batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as TTA-VLM for
     the fine-grained sets); L2-normalised image features f (N,D); class text features t of the prompt
     "<ctx_init> <class name>." (CoOp's context at its initial value: TTA-VLM's `get_coop`); logits
     = exp(logit_scale) · f · tᵀ;
  2. bandwidth per view: h_n = sqrt(0.5 · mean of the squared distances to its k = int(0.3 · (N−1)) nearest other
     views); affinity A = softmax(logits) · softmax(logits)ᵀ; inlierness y = 1/N; mode m = f_0 (the image);
  3. `max_iter` (5) rounds of: density d_n = exp(−||f_n − m||² / (2 h_n²)); up to 5 inlierness steps
     y = softmax((d + λ_q · A·y) / λ_y) (until ||Δy|| < 1e-6); up to 5 mode steps w = d(m) · y,
     m = Σ w_n f_n / Σ w_n, m = m / ||m|| (until ||Δm|| < 1e-6);
  4. prediction = exp(logit_scale) · m · tᵀ.
Deviations: float32 (the official computes the features under autocast fp16 on CUDA); k is at least 1 (the
official int(0.3 · (N−1)) is 0 below 5 views, and the bandwidths NaN); views from our AugMix/crop port
(methods/_augmix.py). `predict` applies the same rule with views from a fixed seed. Cost per image:
1 + n_aug image-encoder forwards, no backward.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT
from tta_bench.methods._clip_tta import CLIPTestTime
from tta_bench.methods._vlm import PromptLearner
from tta_bench.methods.base import opt

_TTAVLM = "TomSheng21/tta-vlm:instance_method/mta.py@bcc735f"
TOL = 1e-6  # the official convergence threshold of both inner loops


def gaussian_density(mode: torch.Tensor, bandwidth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    return torch.exp(-((feats - mode).norm(dim=-1) ** 2) / (2 * bandwidth**2))


def mean_shift_mode(
    feats: torch.Tensor, logits: torch.Tensor, lambda_y: float, lambda_q: float, max_iter: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """MTA's joint inlierness/mode optimisation over the views' features (N,D): (mode (D,), weights (N,))."""
    n = len(feats)
    k = max(1, int(0.3 * (n - 1)))
    near = torch.sort(torch.cdist(feats, feats), dim=1).values[:, 1 : k + 1] ** 2
    bandwidth = torch.sqrt(0.5 * near.mean(1))
    probs = logits.softmax(1)
    affinity = probs @ probs.T
    y = torch.full((n,), 1.0 / n, dtype=feats.dtype, device=feats.device)
    mode = feats[0]
    weights = y
    for _ in range(max_iter):
        density = gaussian_density(mode, bandwidth, feats)
        for _ in range(max_iter):
            old = y
            y = ((density + lambda_q * (affinity * y[None]).sum(1)) / lambda_y).softmax(-1)
            if (old - y).norm() < TOL:
                break
        for _ in range(max_iter):
            old = mode
            weights = gaussian_density(mode, bandwidth, feats) * y
            mode = (weights[:, None] * feats).sum(0) / weights.sum()
            mode = mode / mode.norm()
            if (old - mode).norm() < TOL:
                break
    return mode, weights


@register("mta")
class MTA(CLIPTestTime):
    """The inlierness-weighted MeanShift mode of the augmented views' features, classified; training-free."""

    options = {
        "n_aug": opt(63, "augmented views of each test image (plus the image itself; at least one, for the "
                         "bandwidths)", ">=1"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM does it for fine-grained sets, not ImageNet)"),
        "lambda_y": opt(0.2, "temperature λ_y of the inlierness softmax", ">0"),
        "lambda_q": opt(4.0, "weight λ_q of the views' prediction affinity in the inlierness scores", ">=0"),
        "max_iter": opt(5, "outer rounds, and the cap of each inner inlierness/mode loop", ">=1"),
        "ctx_init": opt("a photo of a", "prompt before the class name of the text features"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (AugMix on for the fine-grained sets)",
            "options": {"n_aug": 63, "augmix": False, "lambda_y": 0.2, "lambda_q": 4.0, "max_iter": 5,
                        "ctx_init": "a photo of a"},
        }
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        with torch.no_grad():
            text = PromptLearner(self.model, self.hp.ctx_init)(self.model)
        self.register_buffer("text", text, persistent=False)

    @torch.no_grad()
    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(self.views(x))
        logits = self.model.logits(feats, self.text)
        mode, _ = mean_shift_mode(feats, logits, self.hp.lambda_y, self.hp.lambda_q, self.hp.max_iter)
        return self.model.logits(mode[None], self.text)
