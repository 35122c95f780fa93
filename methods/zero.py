"""`zero`: ZERO, test-time augmentation with zero temperature (Farina, Franchi, Iacca, Mancini & Ricci,
"Frustratingly Easy Test-Time Adaptation of Vision-Language Models", NeurIPS 2024); training-free.

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/zero.py` (`ZERO`:
gamma 0.3, `confidence_filter`, `greedy_break`) with `instance_tta.py` (`-b 64`, ctx_init a_photo_of_a; official
ZERO: FarinaMatteo/zero). Per test image x_i, nothing trained:
  1. the batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as TTA-VLM for
     the fine-grained sets); logits l = exp(logit_scale) · f · tᵀ with the prompt "<ctx_init> <class name>."
     (fp32 also officially: "do not use amp for ZERO");
  2. sort the views by softmax entropy −Σ p log p; keep the int(N · gamma) = int(64 · 0.3) = 19 most confident;
  3. zero temperature: p̄ = Σ_kept softmax(l / eps) (eps = the dtype's machine epsilon), i.e. the vote count of
     each class among the kept views' argmaxes;
  4. ties for the most votes: the first of the remaining (less confident) views, in entropy order, whose argmax
     is a tied class decides, and that class gets one more vote;
  5. output = p̄ (1,C), the votes (not logits: the argmax is the prediction; softmax of it is what ECE sees).
Deviations: when no remaining view predicts a tied class, the tie goes to the tied class that x_i's own logits
rank highest (TTA-VLM's `break_sample_tie` masks every class and so always returns class 0; the intent of the
official code is the image's argmax among the ties); at least one view is kept (int(N · gamma) is 0 below 4
views); the entropy uses log_softmax (the official log of the softmax gives NaN where a probability underflows,
which sorts last); views from our AugMix/crop port. `predict` applies the same rule with views from a fixed seed.
Cost per image: 1 + n_aug image-encoder forwards, no backward.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT
from tta_bench.methods._clip_tta import CLIPTestTime
from tta_bench.methods._vlm import PromptLearner
from tta_bench.methods.base import opt

_TTAVLM = "TomSheng21/tta-vlm:instance_method/zero.py@bcc735f"


def zero_vote(logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """ZERO's output (C,) for the logits (N,C) of one image's views, the image first."""
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    order = torch.argsort(ent, descending=False)
    k = max(1, int(len(logits) * gamma))
    votes = (logits[order[:k]] / torch.finfo(logits.dtype).eps).softmax(1).sum(0)
    top = votes.max()
    ties = (votes == top).nonzero().flatten().tolist()
    if len(ties) > 1:
        pred = next((p for p in logits[order[k:]].argmax(1).tolist() if p in ties), None)
        if pred is None:
            pred = max(ties, key=lambda c: float(logits[0, c]))
        votes = votes.clone()
        votes[pred] += 1
    return votes


@register("zero")
class ZERO(CLIPTestTime):
    """Argmax votes of the most confident augmented views (zero-temperature marginal); training-free."""

    options = {
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM does it for fine-grained sets, not ImageNet)"),
        "gamma": opt(0.3, "fraction of lowest-entropy views whose argmax votes are counted", "(0,1]"),
        "ctx_init": opt("a photo of a", "prompt before the class name of the text features"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (AugMix on for the fine-grained sets)",
            "options": {"n_aug": 63, "augmix": False, "gamma": 0.3, "ctx_init": "a photo of a"},
        }
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        with torch.no_grad():
            text = PromptLearner(self.model, self.hp.ctx_init)(self.model)
        self.register_buffer("text", text, persistent=False)

    @torch.no_grad()
    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(self.model.encode_image(self.views(x)), self.text)
        return zero_vote(logits, self.hp.gamma)[None]
