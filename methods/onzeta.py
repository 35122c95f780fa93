"""`onzeta`: Online Zero-Shot Transfer for CLIP (OnZeta; Qian & Hu, ECCV 2024).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `online_method/onzeta.py`
(`OnZeta.prepare_model_and_optimization`, `adaptation_process`) with the settings of `online_tta.py` (no views:
the resized, centre-cropped image; README `-b 1 --ctx_init a_photo_of_a`). Test images one at a time, in stream
order; state: a label-distribution dual ρ (C) (zeros), a vision proxy w (D,C) (initially the text features W)
and the image counter i (0-based). For image i with normalised feature f:
  1. step sizes lr = cw/√(i+1) (cw 0.5), rlr = cr/√(i+1) (cr 20), mixing β_i = β·√((i+1)/N) (β 0.8 for
     ImageNet and its variants, 0.4 for the fine-grained sets; N the stream length, the official `loader_len`);
  2. text label t = softmax(f·W / τ_t) ⊙ exp(ρ), renormalised (τ_t 0.01); ρ ← max(0, ρ - rlr (t - α/C)) (α 1:
     online label-distribution estimation towards the uniform prior);
  3. vision label v = softmax(f·w / τ_i) (τ_i 0.04); prediction = β_i v + (1 - β_i) t;
  4. w ← normalize_cols(w - (lr/τ_i) · f ⊗ (v - t)) (online proxy learning).
Returned as log(prediction) (its softmax is the prediction). Deviations: float32 (the official runs under CUDA
autocast); the adapter cannot see the stream length, so N is the option `stream_length` (default 50,000, the
ImageNet validation set the preset is for; set it to the stream's length) and i + 1 is capped at N so that β_i
never exceeds β. `predict` uses the current ρ, w and β_i without updating them; reset() restores them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._clip_tta import CLIPTestTime, ensemble_text_features, templates_of
from tta_bench.methods.base import opt

_ONZETA = "TomSheng21/tta-vlm:online_method/onzeta.py@bcc735f"


@register("onzeta")
class OnZeta(CLIPTestTime):
    """Online label-distribution dual and an online-learned vision proxy mixed with zero-shot CLIP; no backprop."""

    options = {
        "templates": opt("model", "prompt templates of the text features: model (the model's own 'a photo of a' "
                                  "template, TTA-VLM's), tda7, clip80", ("model", "tda7", "clip80")),
        "cw": opt(0.5, "step size of the vision proxy at image 0 (decays as 1/sqrt(i+1))", ">=0"),
        "cr": opt(20.0, "step size of the label-distribution dual ρ at image 0 (decays as 1/sqrt(i+1))", ">=0"),
        "beta": opt(0.8, "final weight of the vision proxy's label (grows as sqrt((i+1)/stream_length)); 0.4 for "
                         "fine-grained sets", "[0,1]"),
        "alpha": opt(1.0, "target mass α/C of every class in the dual update (0: no label-distribution prior)",
                     ">=0"),
        "tau_i": opt(0.04, "temperature of the vision proxy's softmax", ">0"),
        "tau_t": opt(0.01, "temperature of the text (zero-shot) softmax", ">0"),
        "stream_length": opt(50000, "N of the β schedule: the number of test images (the official's loader length; "
                                    "50,000 for ImageNet)", ">=1"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _ONZETA,
            "batch_size": 1,
            "note": "ImageNet and variants (len(test_sets) <= 1): beta 0.8; fine-grained sets 0.4, Caltech101 alpha "
            "0; set stream_length to the stream's image count (50,000 for the ImageNet validation set)",
            "options": {k: o.default for k, o in options.items()},
        }
    }

    def configure(self) -> None:
        super().configure()
        text = ensemble_text_features(self.model, templates_of(self.hp.templates, self.model))
        self.register_buffer("text", text, persistent=False)

    def reset_state(self) -> None:
        self.w = self.text.T.clone()
        self.rho = torch.zeros(1, self.text.shape[0], device=self.text.device)
        self.i = 0

    @torch.no_grad()
    def per_image(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        hp, n_cls = self.hp, self.text.shape[0]
        i = min(self.i + 1, hp.stream_length)
        lr, rlr, beta = (
            hp.cw / math.sqrt(self.i + 1),
            hp.cr / math.sqrt(self.i + 1),
            hp.beta * math.sqrt(i / hp.stream_length),
        )
        f = self.model.encode_image(x[None])
        t = F.softmax(f @ self.text.T / hp.tau_t, dim=-1) * torch.exp(self.rho)
        t = t / t.sum()
        v = F.softmax(f @ self.w / hp.tau_i, dim=-1)
        out = beta * v + (1 - beta) * t
        if update:
            self.rho = (self.rho - rlr * (t - hp.alpha / n_cls)).clamp(min=0)
            self.w = F.normalize(self.w - (lr / hp.tau_i) * torch.outer(f[0], (v - t)[0]), dim=0)
            self.i += 1
        return out.log()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.per_image(xi, update=False) for xi in x])
