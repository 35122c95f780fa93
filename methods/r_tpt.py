"""`r_tpt`: Robust Test-time Prompt Tuning for CLIP (Sheng, Liang, Tan & Ma, "R-TPT: Improving Adversarial
Robustness of Vision-Language Models through Test-Time Prompt Tuning", CVPR 2025).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f; its authors wrote R-TPT)
`instance_method/rtpt.py` (`RTPT`, `entropy_avg`, `get_top_sim`) with `instance_tta.py` (`-b 64`, `--lr 5e-3`,
`--selection_p 0.1`, `--tta_steps 1`, ctx_init a_photo_of_a). Per test image x_i, episodic:
  1. reset the prompt context ("a photo of a", CoOp's unified context, methods/tpt.py) and the AdamW state;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as TTA-VLM
     for the fine-grained sets); frozen L2-normalised image features f (N,D);
  3. keep the int(64 · 0.1) = 6 lowest-entropy views (fixed over the steps); loss = the MEAN of their softmax
     entropies (not TPT's entropy of the mean); one AdamW step (lr 5e-3, torch's defaults) on the context;
  4. reliability-based ensemble: S = f · fᵀ, self-similarities masked (−inf); score_n = mean of the `top_k` (20)
     largest S_n,m; w = softmax(score / `temperature` (0.01)); prediction = Σ_n w_n · logits_n of all views with
     the tuned context; the context is reset afterwards.
Deviations: float32 instead of autocast fp16 + GradScaler (CUDA). The official masks `S >= 1.0`, which in fp16 is
the diagonal (and exact duplicates); in float32 the diagonal can round below 1, so the diagonal is masked
explicitly as well as every S >= 1. top_k is at most N − 1 (with fewer views the official mean is −inf, NaN
weights). At least one view is selected (int(N·p) is empty below 10 views). Views from our AugMix/crop port.
`predict` (no adaptation) is zero-shot CLIP with the initial context. Cost per image as TPT.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT
from tta_bench.methods.base import opt
from tta_bench.methods.tpt import TPT

_TTAVLM = "TomSheng21/tta-vlm:instance_method/rtpt.py@bcc735f"


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the softmax entropy (R-TPT's `entropy_avg`)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


def reliability_weights(feats: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """(N,) softmax(mean of each view's top-k similarities to the other views / temperature)."""
    sim = feats @ feats.T
    eye = torch.eye(len(feats), dtype=torch.bool, device=feats.device)
    sim = sim.masked_fill(eye | (sim >= 1.0), float("-inf"))
    k = max(1, min(top_k, len(feats) - 1))
    return (sim.topk(k, dim=-1).values.mean(-1) / temperature).softmax(-1)


@register("r_tpt")
class RTPT(TPT):
    """Per image: tune the context on the confident views' mean entropy; similarity-weighted view ensemble."""

    options = {
        **TPT.options,
        "top_k": opt(20, "neighbours whose similarity is averaged into a view's reliability score", ">=1"),
        "temperature": opt(0.01, "softmax temperature of the reliability weights", ">0"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (AugMix on for the fine-grained sets)",
            "options": {"optimizer": "adamw", "lr": 5e-3, "betas": (0.9, 0.999), "wd": 0.01, "n_aug": 63,
                        "selection_p": 0.1, "steps": 1, "ctx_init": "a photo of a", "augmix": False, "top_k": 20,
                        "temperature": 0.01},
        }
    }  # fmt: skip

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        with torch.no_grad():
            feats = self.model.encode_image(self.views(x))
        self.tune_on_views(feats, mean_entropy)
        with torch.no_grad():
            w = reliability_weights(feats, self.hp.top_k, self.hp.temperature)
            out = w[None] @ self.logits(feats)
        self.reset()
        return out
