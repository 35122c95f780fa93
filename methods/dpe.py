"""`dpe`: Dual Prototype Evolving for CLIP (Zhang, Stepputtis, Sycara & Xie, NeurIPS 2024).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `online_method/dpe.py` (`update_cache`,
`cache_key_value`, `compute_cache_logits`, `TextResidue`, `PositiveCacheResidue`, `InfoNCELoss`, `DPE`) with the
settings of `online_tta.py` (64 views per image, AugMix only for the fine-grained sets, README `--ctx_init
a_photo_of_a`) and its ImageNet ('I') values. Test images one at a time, in stream order; state over the stream: the
global text prototypes W (D,C) (initially the L2-normalised text features) and a positive cache.
Per image:
  1. views = the image and `n_aug` (63) views; normalised features F; logits = s · F · normalize_cols(W) with
     s = exp(logit_scale); keep the int(64 · 0.1) = 6 lowest-entropy views: f_x = their mean feature,
     l = their mean logits, ŷ = argmax l, h = -Σ q log(q + 1e-5) / log2(C), q = softmax(l);
  2. positive cache (TDA's rule): per class at most `pos_shot_capacity` (3) (f_x, h), sorted by h, a new entry
     appended while there is room, else replacing the last one if its h is lower;
  3. image prototypes: per cached class (sorted) the mean of its cached features, K (D,n); a zero text residual
     R_t (D,C) and a zero cache residual R_c (D,n), fresh for every image; W' = normalize_cols(W + R_t),
     K' = normalize_cols(K + R_c);
  4. `steps` (1) AdamW steps (a new optimizer per step; eps 1e-3, weight decay 0.1, lr `text_lr`/`image_lr`
     6e-4/6e-4) on loss = H(softmax(l + α exp(-β (1 - f_x · K')) · onehot)) + `align` (0.5) · InfoNCE(K'ᵀ,
     W'[:, cached classes]ᵀ) (InfoNCE of the info-nce-pytorch package: both sides L2-normalised, temperature
     0.01, the other classes' prototypes as negatives); α `pos_alpha` 6, β `pos_beta` 5. l is a constant (computed
     before the residuals), so the entropy term trains R_c and the alignment term both;
  5. prediction with the tuned residuals: 100 · f · W' + α exp(-β (1 - f · K')) · onehot, f = the image's own
     feature (`predict_views=True`: f = f_x and the confident views' mean logits under W', the official branch for
     ImageNet-A); 100 is the official fixed scale;
  6. text evolution: if the prediction's softmax entropy / log2(C) < `evolve_threshold` (0.1), count n += 1 and
     W ← W · n/(n+1) + W' / (n+1) (not renormalised; step 1 normalises the columns).
What is not ported: the original zhangce01/DPE-CLIP's prompt-ensemble text features (TTA-VLM uses the single
CoOp prompt; `templates` offers the ensembles) and the per-dataset tables for the fine-grained sets (presets
cover ImageNet). Deviations: float32 (the official runs CUDA autocast fp16, fp16 residuals); at least one view
is selected. `predict` uses W and the cache prototypes with zero residuals (no step, nothing updated). reset()
restores W and empties the cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, marginal_entropy, seeded_rng, select_confident
from tta_bench.methods._clip_tta import CLIPTestTime, ensemble_text_features, templates_of
from tta_bench.methods.base import opt
from tta_bench.methods.tda import update_cache

_DPE = "TomSheng21/tta-vlm:online_method/dpe.py@bcc735f"
SCALE = 100.0


def dpe_entropy(p: torch.Tensor) -> torch.Tensor:
    """TTA-VLM's Entropy: -Σ p log(p + 1e-5) per row."""
    return -(p * torch.log(p + 1e-5)).sum(1)


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """info-nce-pytorch without negative keys: CE of the cosine matrix / temperature, positives on the diagonal."""
    logits = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T
    return F.cross_entropy(logits / temperature, torch.arange(len(query), device=query.device))


@register("dpe")
class DPE(CLIPTestTime):
    """Evolving text prototypes and cached image prototypes, with per-image residuals tuned by entropy + alignment."""

    options = {
        "n_aug": opt(63, "augmented views per image (plus the image itself)", ">=0"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM: for the fine-grained sets, not ImageNet)"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views averaged into the cached feature and the logits",
                           "(0,1]"),
        "templates": opt("model", "prompt templates of the initial text prototypes: model (the model's own 'a photo "
                                  "of a' template, TTA-VLM's), tda7, clip80", ("model", "tda7", "clip80")),
        "pos_shot_capacity": opt(3, "cache entries (feature, normalised entropy) kept per pseudo-class", ">=1"),
        "pos_alpha": opt(6.0, "weight α of the cache logits", ">=0"),
        "pos_beta": opt(5.0, "sharpness β of the cache affinity exp(-β (1 - f·k))", ">=0"),
        "text_lr": opt(6e-4, "AdamW learning rate of the per-image text-prototype residual", ">=0"),
        "image_lr": opt(6e-4, "AdamW learning rate of the per-image cache-prototype residual", ">=0"),
        "align": opt(0.5, "weight of the InfoNCE alignment of cache and text prototypes", ">=0"),
        "steps": opt(1, "AdamW steps on the residuals per image (a fresh optimizer each step)", ">=0"),
        "eps": opt(1e-3, "AdamW epsilon", ">0"),
        "wd": opt(0.1, "AdamW weight decay of the residuals", ">=0"),
        "evolve_threshold": opt(0.1, "the text prototypes evolve towards the tuned ones when the prediction's "
                                     "normalised entropy is below this", "[0,1]"),
        "predict_views": opt(False, "predict from the confident views (TTA-VLM's ImageNet-A branch) instead of the "
                                    "image's own feature"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _DPE,
            "batch_size": 1,
            "note": PER_POINT + "; ImageNet ('I') row of pos_params/lr_params; for -A: pos_alpha 6, text/image lr "
            "3e-4, align 2.5, predict_views; -R: pos_beta 8, align 0; -V: pos_alpha 3, pos_beta 8, lr 5e-4",
            "options": {k: o.default for k, o in options.items()},
        }
    }

    def configure(self) -> None:
        super().configure()
        text = ensemble_text_features(self.model, templates_of(self.hp.templates, self.model))
        self.register_buffer("text", text, persistent=False)

    def reset_state(self) -> None:
        self.weights = self.text.T.clone()  # (D,C) evolving text prototypes
        self.num_avg = 0
        self.pos_cache: dict[int, list] = {}

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """cache_key_value: (D,n) per-class mean cached features, (n,C) one-hot values, the cached classes."""
        classes = sorted(self.pos_cache)
        keys = torch.cat([sum(it[0] / len(self.pos_cache[c]) for it in self.pos_cache[c]) for c in classes]).T
        values = F.one_hot(torch.tensor(classes, device=keys.device), self.text.shape[0]).float()
        return keys, values, classes

    def cache_logits(self, f: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.hp.pos_alpha * torch.exp(-(self.hp.pos_beta - self.hp.pos_beta * (f @ keys))) @ values

    def per_image(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        hp = self.hp
        with torch.no_grad():
            feats = self.model.encode_image(self.views(x) if hp.n_aug else x[None])
            logits = self.model.logit_scale.exp() * feats @ F.normalize(self.weights, dim=0)
            idx = select_confident(logits, hp.selection_p)
            f_x = feats[idx].mean(0, keepdim=True)
            clip_logits = logits[idx].mean(0, keepdim=True)
            n_cls = logits.shape[1]
            if update:
                h = float(dpe_entropy(clip_logits.softmax(1))[0]) / math.log2(n_cls)
                update_cache(self.pos_cache, int(clip_logits.argmax(1)), (f_x, h), hp.pos_shot_capacity)
        base = self.weights.detach()
        res_t = torch.zeros_like(base, requires_grad=True)
        if self.pos_cache:
            keys, values, classes = self.prototypes()
        else:  # predict() before any update: no cache yet
            keys, values, classes = base.new_zeros(base.shape[0], 0), base.new_zeros(0, n_cls), []
        res_c = torch.zeros_like(keys, requires_grad=True)
        for _ in range(hp.steps if update else 0):
            opt = torch.optim.AdamW(
                [
                    {"params": [res_t], "lr": hp.text_lr, "eps": hp.eps, "weight_decay": hp.wd},
                    {"params": [res_c], "lr": hp.image_lr, "eps": hp.eps, "weight_decay": hp.wd},
                ]
            )
            opt.zero_grad()
            w_new = F.normalize(base + res_t, dim=0)
            k_new = F.normalize(keys + res_c, dim=0)
            loss = marginal_entropy(clip_logits + self.cache_logits(f_x, k_new, values))
            loss = loss + hp.align * info_nce(k_new.T, w_new[:, classes].T)
            loss.backward()
            opt.step()
        with torch.no_grad():
            w_new = F.normalize(base + res_t, dim=0)
            if hp.predict_views:
                out = SCALE * feats @ w_new
                out = out[select_confident(out, hp.selection_p)].mean(0, keepdim=True)
                f = f_x
            else:
                f = feats[:1]
                out = SCALE * f @ w_new
            out = out + self.cache_logits(f, F.normalize(keys + res_c, dim=0), values)
            if update and float(marginal_entropy(out)) / math.log2(n_cls) < hp.evolve_threshold:
                self.num_avg += 1
                self.weights = self.weights * (self.num_avg / (self.num_avg + 1)) + w_new / (self.num_avg + 1)
        return out

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self._rng = seeded_rng()
            return torch.cat([self.per_image(xi, update=False) for xi in x])
