"""`tps`: Test-time Prototype Shifting for CLIP (Sui, Wang, Kiros, Volkovs & Ma, "Just Shift It: Test-Time
Prototype Shifting for Zero-Shot Generalization with Vision-Language Models", WACV 2025).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/tps.py` (`TPS`) with
`clip/custom_clip.py` (`Shifter`, `ClipShifterTestTimeTuning_v2`: `add_shifter`, `inference`) and
`instance_tta.py` (`-b 64`, `--selection_p 0.1`, `--tta_steps 1`, ctx_init a_photo_of_a; official TPS:
elaine-sui/TPS). Per test image x_i, episodic:
  1. the class prototypes t_c (L2-normalised text features of "<ctx_init> <class name>.") are computed once; the
     per-class shift s (C,D) is reset to zero, and the AdamW state too;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as TTA-VLM
     for the fine-grained sets); frozen image features f;
  3. logits = exp(logit_scale) · f · normalize(t + s)ᵀ; keep the int(64 · 0.1) = 6 lowest-entropy views (fixed
     over the steps); loss = entropy of their mean softmax; one AdamW step (lr 5e-3 on ImageNet and its variants,
     1e-3 on the fine-grained sets; torch's defaults betas (0.9, 0.999), wd 0.01) on s;
  4. prediction = logits of x_i with the shifted prototypes; s is reset again afterwards.
Deviations: float32 instead of the official fp16 shift under autocast + GradScaler (CUDA); at least one view is
selected (int(N·p) is empty below 10 views); views from our AugMix/crop port. `predict` (no adaptation) is
zero-shot CLIP (s = 0). Cost per image: 1 + n_aug image-encoder forwards, no text-encoder pass after configure.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, marginal_entropy
from tta_bench.methods._clip_tta import CLIPTestTime
from tta_bench.methods._vlm import PromptLearner
from tta_bench.methods.base import make_optimizer, opt, optimizer_options

_TTAVLM = "TomSheng21/tta-vlm:instance_method/tps.py@bcc735f"


@register("tps")
class TPS(CLIPTestTime):
    """Per image: tune a per-class shift of the text prototypes on the confident views' marginal entropy, reset."""

    options = {
        **optimizer_options("adamw", lr=5e-3, wd=0.01),
        "steps": opt(1, "AdamW steps on the prototype shift per test image (the shift is reset before each image)"),
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views kept for the loss (selected once, before the "
                                "first step)", "(0,1]"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM does it for fine-grained sets, not ImageNet)"),
        "ctx_init": opt("a photo of a", "prompt before the class name of the prototypes"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (fine-grained sets: lr 1e-3 and augmix)",
            "options": {"optimizer": "adamw", "lr": 5e-3, "betas": (0.9, 0.999), "wd": 0.01, "steps": 1,
                        "n_aug": 63, "selection_p": 0.1, "augmix": False, "ctx_init": "a photo of a"},
        }
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        with torch.no_grad():
            text = PromptLearner(self.model, self.hp.ctx_init)(self.model)
        self.register_buffer("text", text, persistent=False)
        self.shift = nn.Parameter(torch.zeros_like(text))
        self.optimizer = make_optimizer([self.shift], self.hp)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.logits(feats, F.normalize(self.text + self.shift, dim=-1))

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.model.encode_image(x))

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        with torch.no_grad():
            feats = self.model.encode_image(self.views(x))
        self.tune_on_views(feats, marginal_entropy)
        with torch.no_grad():
            out = self.logits(feats[:1])
        self.reset()
        return out
