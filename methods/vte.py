"""`vte`: Vision-Text-Space Ensemble for CLIP, training-free (Döbler, Marsden, Raichle & Yang, "A Lost
Opportunity for Vision-Language Models: A Comparative Study of Online Test-Time Adaptation for VLMs", 2024).

VTE's official code is the suite's `classification/methods/vte.py` (mariodoebler/test-time-adaptation, commit
8b2ed63) with `models/model.py::ZeroShotCLIP` (`CLIP.PROMPT_MODE: ensemble`), `datasets/prompts.py` and
`cfgs/imagenet_c/vte.yaml` (batch 1, 64 views). (The task named Farina et al. 2024 and mfarina/vte; that paper,
"Frustratingly Easy Test-Time Adaptation of VLMs", is ZERO, a different method whose code is not available here.
VTE is the suite's method, ported here.) Per test image x_i, nothing trained:
  1. text space: class weights t_c = the ensemble of the 80 OpenAI ImageNet templates (`templates="clip80"`,
     see methods/_clip_tta.py), computed once;
  2. vision space: the batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`,
     as the suite does for its fine-grained "generalization" sets); L2-normalised image features f_v and
     logits = exp(logit_scale) · f_v · tᵀ; keep the int(64 · 0.1) = 6 views of lowest softmax entropy;
  3. prediction = exp(logit_scale) · mean_{v selected} f_v · tᵀ (the mean feature is not re-normalised).
Deviations: float32 (the suite's ImageNet-C config loads fp16 weights); at least one view is selected; views from
our AugMix/crop port (methods/_augmix.py). `predict` applies the same rule with views from a fixed seed.
Cost per image: 1 + n_aug image-encoder forwards, no backward.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, select_confident
from tta_bench.methods._clip_tta import CLIPTestTime, ensemble_text_features, templates_of
from tta_bench.methods.base import opt

_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/imagenet_c/vte.yaml@8b2ed63"


@register("vte")
class VTE(CLIPTestTime):
    """Prompt-template ensemble x mean feature of the confident augmented views; training-free."""

    options = {
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views whose mean feature is classified", "(0,1]"),
        "augmix": opt(False, "AugMix on top of crop + flip (the suite does it for fine-grained sets, not ImageNet)"),
        "templates": opt("clip80", "prompt-template ensemble: clip80 (OpenAI's 80 ImageNet templates), tda7 (TDA's "
                                   "7), model (the model's own template)", ("clip80", "tda7", "model")),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _SUITE,
            "batch_size": 1,
            "note": PER_POINT,
            "options": {"n_aug": 63, "templates": "clip80"},
        }
    }

    def configure(self) -> None:
        super().configure()
        text = ensemble_text_features(self.model, templates_of(self.hp.templates, self.model))
        self.register_buffer("text", text, persistent=False)

    @torch.no_grad()
    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(self.views(x))
        selected = select_confident(self.model.logits(feats, self.text), self.hp.selection_p)
        return self.model.logits(feats[selected].mean(0, keepdim=True), self.text)
