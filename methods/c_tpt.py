"""`c_tpt`: Calibrated Test-time Prompt Tuning for CLIP (Yoon et al., "C-TPT: Calibrated Test-Time Prompt Tuning
for Vision-Language Models via Text Feature Dispersion", ICLR 2024).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/ctpt.py` (`CTPT`,
`avg_entropy`, `select_confident_samples`), `clip/custom_clip.py::ClipTestTimeTuning.inference` (`l2_norm_cal`:
the average text feature dispersion) and `instance_tta.py` (`-b 64`, `--lr 5e-3`, `--selection_p 0.1`,
`--tta_steps 1`, `--ctx_init a_photo_of_a`; official C-TPT: hee-suk-yoon/C-TPT). TPT (methods/tpt.py) with one
extra term. Per test image x_i, episodic:
  1. reset the prompt context ("a photo of a", 4 tokens, CoOp's unified context) and the AdamW state;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip, AugMix only with `augmix`, which
     TTA-VLM turns on for the fine-grained sets); frozen image features f;
  3. text features t_c (L2-normalised) of every class with the current context; ATFD = mean_c ||t_c - mean_c' t_c'||
     (the average text feature dispersion, `l2_norm_mean_training`); logits = exp(logit_scale) · f · tᵀ; keep the
     int(64 · 0.1) = 6 lowest-entropy views (selection fixed over the steps);
     loss = entropy of their mean softmax − λ · ATFD (λ = `lambda_atfd`: 20 for ImageNet, 50 for the fine-grained
     sets, `lambda_ = 50 if len(args.test_sets) > 1 else 20`); one AdamW step (lr 5e-3, torch's defaults: betas
     (0.9, 0.999), wd 0.01) on the context;
  4. prediction = logits of x_i with the tuned context; the context is reset again afterwards.
Deviations: float32 instead of autocast fp16 + GradScaler (the CPU path; on CUDA the official runs fp16); at least
one view is selected (the official int(N·p) is empty below 10 views); views from our AugMix/crop port.
`predict` (no adaptation) is zero-shot CLIP with the initial context. Cost per image as TPT.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, marginal_entropy, select_confident
from tta_bench.methods.base import opt
from tta_bench.methods.tpt import TPT

_TTAVLM = "TomSheng21/tta-vlm:instance_tta.py@bcc735f"


def text_dispersion(text: torch.Tensor) -> torch.Tensor:
    """ATFD: the mean L2 distance of the (C,D) text features to their centroid."""
    return torch.linalg.norm(text - text.mean(0), dim=-1).mean()


@register("c_tpt")
class CTPT(TPT):
    """Per image: tune the prompt context on marginal entropy minus λ · text feature dispersion, predict, reset."""

    options = {
        **TPT.options,
        "lambda_atfd": opt(20.0, "weight λ of the average text feature dispersion subtracted from the loss (TTA-VLM: "
                                 "20 on ImageNet, 50 on the fine-grained sets)", ">=0"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (for fine-grained sets: lambda_atfd 50 "
            "and augmix)",
            "options": {"optimizer": "adamw", "lr": 5e-3, "betas": (0.9, 0.999), "wd": 0.01, "n_aug": 63,
                        "selection_p": 0.1, "steps": 1, "ctx_init": "a photo of a", "augmix": False,
                        "lambda_atfd": 20.0},
        }
    }  # fmt: skip

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        with torch.no_grad():
            feats = self.model.encode_image(self.views(x))
        selected = None
        for _ in range(self.hp.steps):
            text = self.prompt(self.model)
            logits = self.model.logits(feats, text)
            if selected is None:
                selected = select_confident(logits.detach(), self.hp.selection_p)
            loss = marginal_entropy(logits[selected]) - self.hp.lambda_atfd * text_dispersion(text)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            out = self.logits(feats[:1])
        self.reset()
        return out
