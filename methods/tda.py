"""`tda`: Training-free Dynamic Adapter for CLIP (Karmanov, Guan, Lu, El Saddik & Xing, CVPR 2024).

Matches kdiAAA/TDA (commit e697fb0) `tda_runner.py` (`update_cache`, `compute_cache_logits`, `run_test_tda`),
`utils.py` (`get_clip_logits`, `get_entropy`, `clip_classifier`, `avg_entropy`) and `configs/imagenet.yaml`.
Test images are processed one at a time, in stream order, with two caches that persist over the stream:
  1. features: with `n_aug = 0` (TDA's ImageNet setting) the L2-normalised image feature f of x_i; otherwise
     (its ImageNet-A/V/R/S setting, `n_aug = 63`, AugMix) the views' features, keep the 10 % of lowest entropy,
     f = their mean feature, clip logits = their mean logits, loss = entropy of their mean softmax;
     clip logits = 100 · f · Wᵀ, W = the ensemble of TDA's 7 ImageNet templates (`templates="tda7"`);
  2. pseudo-label ŷ = argmax clip logits; loss = softmax entropy (nats); normalised entropy
     h = loss / log2(C) (the official divides nats by log2 C);
  3. positive cache: per class at most `pos_shot_capacity` (3) (feature, loss) entries sorted by loss; a new
     entry is appended while there is room, else replaces the last (highest-loss) one if its loss is lower;
     negative cache: the same with (feature, loss, mean softmax) and capacity 2, only when
     `neg_entropy_lower` (0.2) < h < `neg_entropy_upper` (0.5);
  4. cache logits A·exp(-β(1 - f·kᵀ))·V: positive V = one-hot labels (α 2, β 5); negative V = 1[0.03 < p < 1]
     of the stored softmax (α 0.117, β 1);
  5. prediction = clip logits + positive logits - negative logits (the caches already hold x_i).
Deviations: float32 (the official runs fp16); 100 is TDA's fixed logit scale (OpenAI CLIP's exp(logit_scale)).
`predict` uses the caches without updating them. The caches are Python state: reset() empties them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augmix import marginal_entropy, seeded_rng, select_confident
from tta_bench.methods._clip_tta import CLIPTestTime, ensemble_text_features, templates_of
from tta_bench.methods.base import opt

_TDA = "kdiAAA/TDA:configs/imagenet.yaml@e697fb0"
SCALE = 100.0


def update_cache(cache: dict, label: int, item: tuple, capacity: int) -> None:
    """TDA's update_cache: per label a list sorted by loss (item[1]) of at most `capacity` items."""
    entries = cache.setdefault(label, [])
    if len(entries) < capacity:
        entries.append(item)
    elif item[1] < entries[-1][1]:
        entries[-1] = item
    entries.sort(key=lambda it: it[1])


def cache_logits(f: torch.Tensor, cache: dict, alpha: float, beta: float, values) -> torch.Tensor:
    """alpha · exp(-beta (1 - f·keysᵀ)) · values, keys in sorted-label order; `values(label, item)` -> (1,C)."""
    items = [(c, it) for c in sorted(cache) for it in cache[c]]
    keys = torch.cat([it[0] for _, it in items])
    vals = torch.cat([values(c, it) for c, it in items]).to(f.dtype)
    return alpha * ((-1) * (beta - beta * (f @ keys.T))).exp() @ vals


@register("tda")
class TDA(CLIPTestTime):
    """Positive and negative dynamic caches of test features on top of zero-shot CLIP; training-free."""

    options = {
        "n_aug": opt(0, "augmented views per image (0: the image alone, TDA's ImageNet setting; 63 for "
                        "ImageNet-A/V/R/S)", ">=0"),
        "augmix": opt(True, "AugMix on top of crop + flip for the views (with n_aug > 0)"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views averaged (with n_aug > 0)", "(0,1]"),
        "templates": opt("tda7", "prompt-template ensemble of the zero-shot weights: tda7 (TDA's 7 ImageNet "
                                 "templates), clip80 (OpenAI's 80), model (the model's own template)",
                         ("tda7", "clip80", "model")),
        "pos_shot_capacity": opt(3, "positive cache entries (feature, entropy) kept per pseudo-class", ">=0"),
        "pos_alpha": opt(2.0, "weight α of the positive cache logits (added to the CLIP logits)", ">=0"),
        "pos_beta": opt(5.0, "sharpness β of the positive cache affinity exp(-β (1 - f·k))", ">=0"),
        "neg_shot_capacity": opt(2, "negative cache entries (feature, entropy, softmax) kept per pseudo-class", ">=0"),
        "neg_alpha": opt(0.117, "weight α of the negative cache logits (subtracted from the CLIP logits)", ">=0"),
        "neg_beta": opt(1.0, "sharpness β of the negative cache affinity exp(-β (1 - f·k))", ">=0"),
        "neg_entropy_lower": opt(0.2, "a test feature enters the negative cache only if its normalised entropy is "
                                      "above this", "[0,1]"),
        "neg_entropy_upper": opt(0.5, "a test feature enters the negative cache only if its normalised entropy is "
                                      "below this", "[0,1]"),
        "neg_mask_lower": opt(0.03, "negative pseudo-label: the classes whose stored probability is above this (and "
                                    "below neg_mask_upper)", "[0,1]"),
        "neg_mask_upper": opt(1.0, "negative pseudo-label: the classes whose stored probability is below this (and "
                                   "above neg_mask_lower)", "[0,1]"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TDA,
            "batch_size": 1,
            "note": "ImageNet (I) config; for -A/-V/-R/-Sketch TDA uses n_aug=63 with AugMix and pos_alpha/pos_beta "
            "2.0/5.0 (A), 1.0/8.0 (V, R), 2.363/7.45 (S) (configs/imagenet_{a,v,r,s}.yaml)",
            "options": {k: o.default for k, o in options.items() if k != "augmix"},
        }
    }

    def configure(self) -> None:
        super().configure()
        text = ensemble_text_features(self.model, templates_of(self.hp.templates, self.model))
        self.register_buffer("text", text, persistent=False)

    def reset_state(self) -> None:
        self.pos_cache: dict[int, list] = {}
        self.neg_cache: dict[int, list] = {}

    def clip_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """(feature (1,D), clip logits (1,C), loss, mean softmax (1,C)) of one image (get_clip_logits)."""
        if self.hp.n_aug == 0:
            f = self.model.encode_image(x[None])
            logits = SCALE * f @ self.text.T
            loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            return f, logits, float(loss), logits.softmax(1)
        feats = self.model.encode_image(self.views(x))
        logits = SCALE * feats @ self.text.T
        idx = select_confident(logits, self.hp.selection_p)
        out = logits[idx]
        f = feats[idx].mean(0, keepdim=True)
        return f, out.mean(0, keepdim=True), float(marginal_entropy(out)), out.softmax(1).mean(0, keepdim=True)

    def final_logits(self, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        hp, n = self.hp, logits.shape[1]
        out = logits.clone()
        if self.pos_cache:
            one_hot = lambda c, it: F.one_hot(torch.tensor([c], device=f.device), n)  # noqa: E731
            out += cache_logits(f, self.pos_cache, hp.pos_alpha, hp.pos_beta, one_hot)
        if self.neg_cache:
            lo, hi = hp.neg_mask_lower, hp.neg_mask_upper
            mask = lambda c, it: ((it[2] > lo) & (it[2] < hi)).to(torch.int8)  # noqa: E731
            out -= cache_logits(f, self.neg_cache, hp.neg_alpha, hp.neg_beta, mask)
        return out

    @torch.no_grad()
    def per_image(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        f, logits, loss, prob_map = self.clip_logits(x)
        if update:
            pred = int(logits.argmax(1))
            h = loss / math.log2(logits.shape[1])
            update_cache(self.pos_cache, pred, (f, loss), self.hp.pos_shot_capacity)
            if self.hp.neg_entropy_lower < h < self.hp.neg_entropy_upper:
                update_cache(self.neg_cache, pred, (f, loss, prob_map), self.hp.neg_shot_capacity)
        return self.final_logits(f, logits)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self._rng = seeded_rng()
            return torch.cat([self.per_image(xi, update=False) for xi in x])
