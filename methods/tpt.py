"""`tpt`: Test-time Prompt Tuning for CLIP (Shu et al., NeurIPS 2022).

Matches azshue/TPT (commit 63ecbac) `tpt_classification.py` (`select_confident_samples`, `avg_entropy`,
`test_time_tuning`, `test_time_adapt_eval`; `scripts/test_tpt.sh`: batch 64, ctx_init a_photo_of_a) and the
suite's port (mariodoebler/test-time-adaptation `classification/methods/tpt.py`, `cfgs/imagenet_c/tpt.yaml`).
Per test image x_i, episodic:
  1. reset the prompt context to its initial value (the embedding of "a photo of a", 4 tokens, CoOp's unified
     context `methods._vlm.PromptLearner`: prompt = [SOS] ctx "<class name>." [EOS]) and the optimiser state;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as the
     official does for the fine-grained sets, not for ImageNet and its variants); frozen image features f;
  3. logits = exp(logit_scale) · f · t(ctx)ᵀ; keep the int(64 · 0.1) = 6 views of lowest softmax entropy
     (selection fixed over the steps); loss = entropy of their mean softmax (`avg_entropy`); one AdamW step
     (lr 5e-3, betas (0.9, 0.999), wd 0.01: torch's AdamW default, which TPT uses) on the context;
  4. prediction = logits of x_i itself with the tuned context; the context is reset again afterwards.
Deviations: float32 instead of TPT's autocast fp16 + GradScaler; at least one view is selected (the official
int(N·p) is empty, hence NaN, below 10 views); the views come from our AugMix/crop port (methods/_augmix.py).
`predict` (no adaptation) is zero-shot CLIP with the initial context. Cost per image: 1 + n_aug image-encoder
forwards plus `steps` text-encoder forward/backward passes over all class prompts.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, marginal_entropy
from tta_bench.methods._clip_tta import CLIPTestTime
from tta_bench.methods._vlm import PromptLearner
from tta_bench.methods.base import make_optimizer, opt, optimizer_options

_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/imagenet_c/tpt.yaml@8b2ed63"


@register("tpt")
class TPT(CLIPTestTime):
    """Per image: tune the prompt context on the confident views' marginal entropy, predict, reset."""

    options = {
        **optimizer_options("adamw", lr=5e-3, wd=0.01),
        "steps": opt(1, "AdamW steps on the prompt context per test image (the context is reset before each image)"),
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views kept for the loss (selected once, before the "
                                "first step)", "(0,1]"),
        "augmix": opt(False, "AugMix on top of crop + flip (the official does it for fine-grained sets, not "
                             "ImageNet)"),
        "ctx_init": opt("a photo of a", "initial prompt context (its token count is the context length)"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _SUITE,
            "batch_size": 1,
            "note": PER_POINT,
            "options": {"optimizer": "adamw", "lr": 5e-3, "wd": 0.01, "n_aug": 63},
        }
    }

    def configure(self) -> None:
        super().configure()
        self.prompt = PromptLearner(self.model, self.hp.ctx_init)
        self.optimizer = make_optimizer([self.prompt.ctx], self.hp)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.logits(feats, self.prompt(self.model))

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
