"""`dmn`: Dual Memory Networks for CLIP, training-free zero-shot variant (Zhang, Huang, Zhu, Sun & Zhang, CVPR 2024).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `online_method/dmn.py` (`MemoryBank`,
`Entropy`, `select_confident_samples`, `DMN.adaptation_process`; `dmn_weak.py` is `n_aug = 0`) with the settings of
`online_tta.py` (64 views per image: `AugMixAugmenter(n_views=63, augmix=len(dset) > 1)`, `--selection_p 0.1`,
README: `--ctx_init a_photo_of_a`, batch 1). Test images one at a time, in stream order, with a dynamic memory that
persists over the stream:
  1. views = the image and `n_aug` (63) augmented views; L2-normalised features F, logits = s · F · Wᵀ with
     s = exp(logit_scale) and W the text features (`templates="model"`: the model's "a photo of a {}." prompt,
     the official CoOp prompt with ctx_init a_photo_of_a); p0 = softmax of the image's own logits;
  2. pseudo-label ŷ = argmax of the mean logits of the int(64 · 0.1) = 6 lowest-entropy views; its entropy
     e = -Σ q log(q + 1e-5) of q = softmax(mean logits);
  3. memory update with the image's own feature f: class ŷ holds at most `memory_size` (50) (feature, e)
     entries; while there is room the entry is appended, otherwise it ALWAYS replaces the entry of highest
     stored entropy (even when its own entropy is higher);
  4. read-out per class c: M_c = normalize([memory_c; w_c]) (the text feature is always a key),
     a = exp(-β (1 - f · M_cᵀ)), class prototype d_c = normalize(a · M_c) (β 5.5);
  5. prediction = p0 + α · softmax(s · f · Dᵀ) (α 1); returned as log((p0 + α p_d) / (1 + α)), whose softmax
     is the normalised official score (same argmax).
What is not ported: the original YBZh/DMN also has a static memory of few-shot training features and learnable
projections (DMN-FS/DMN-TF); TTA-VLM (and the issue) evaluate the zero-shot, training-free dynamic memory only.
Deviations: float32 (the official runs under CUDA autocast fp16); at least one view is selected (official: none,
hence NaN, below 10 views); the per-class read-out is computed for all classes at once with empty slots masked
(the same sums). `predict` reads the memory without updating it; reset() empties it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, seeded_rng, select_confident
from tta_bench.methods._clip_tta import CLIPTestTime, ensemble_text_features, templates_of
from tta_bench.methods.base import opt

_DMN = "TomSheng21/tta-vlm:online_method/dmn.py@bcc735f"


def dmn_entropy(p: torch.Tensor) -> torch.Tensor:
    """TTA-VLM's Entropy: -Σ p log(p + 1e-5) per row."""
    return -(p * torch.log(p + 1e-5)).sum(1)


def read_out(f: torch.Tensor, memory: torch.Tensor, counts: torch.Tensor, text: torch.Tensor, beta: float):
    """(1,D) feature, (C,L,D) memory with `counts` filled slots per class, (C,D) text -> (C,D) class prototypes."""
    keys = F.normalize(torch.cat([memory, text[:, None]], 1), dim=-1)  # (C, L+1, D), the text key last
    n_slots = memory.shape[1]
    filled = torch.arange(n_slots + 1, device=f.device)[None] < counts[:, None]
    filled[:, n_slots] = True  # the text feature is always a key
    f = F.normalize(f, dim=-1)
    weights = torch.exp(-beta * (1 - torch.einsum("d,cld->cl", f[0], keys))) * filled
    return F.normalize(torch.einsum("cl,cld->cd", weights, keys), dim=-1)


@register("dmn")
class DMN(CLIPTestTime):
    """A per-class dynamic memory of test features read out as attention-weighted class prototypes; training-free."""

    options = {
        "n_aug": opt(63, "augmented views per image (plus the image itself); 0 is TTA-VLM's dmn_weak (the image "
                         "alone)", ">=0"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM: for the fine-grained sets, not ImageNet)"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views whose mean logits give the pseudo-label and its "
                                "entropy", "(0,1]"),
        "templates": opt("model", "prompt templates of the text features: model (the model's own 'a photo of a' "
                                  "template, the official), tda7, clip80", ("model", "tda7", "clip80")),
        "memory_size": opt(50, "memory entries (feature, entropy) kept per pseudo-class", ">=1"),
        "alpha": opt(1.0, "weight α of the memory prediction added to the zero-shot softmax", ">=0"),
        "beta": opt(5.5, "sharpness β of the memory attention exp(-β (1 - f·m))", ">=0"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _DMN,
            "batch_size": 1,
            "note": PER_POINT + "; online_tta.py: 64 views (AugMix only for the fine-grained sets), selection_p 0.1",
            "options": {k: o.default for k, o in options.items()},
        }
    }

    def configure(self) -> None:
        super().configure()
        text = ensemble_text_features(self.model, templates_of(self.hp.templates, self.model))
        self.register_buffer("text", text, persistent=False)

    def reset_state(self) -> None:
        c, d = self.text.shape
        self.memory = torch.zeros(c, self.hp.memory_size, d, device=self.text.device)
        self.ent_mem = torch.zeros(c, self.hp.memory_size, device=self.text.device)
        self.counts = torch.zeros(c, dtype=torch.long, device=self.text.device)

    def update(self, f: torch.Tensor, label: int, ent: torch.Tensor) -> None:
        """MemoryBank.update: append while there is room, else replace the highest-entropy entry."""
        n = int(self.counts[label])
        if n < self.hp.memory_size:
            slot = n
            self.counts[label] += 1
        else:
            slot = int(torch.sort(self.ent_mem[label], descending=True)[1][0])
        self.memory[label, slot] = f[0]
        self.ent_mem[label, slot] = ent

    @torch.no_grad()
    def per_image(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        scale = self.model.logit_scale.exp()
        images = self.views(x) if self.hp.n_aug else x[None]
        feats = self.model.encode_image(images)
        logits = scale * feats @ self.text.T
        f = feats[:1]
        if update:
            mean = logits[select_confident(logits, self.hp.selection_p)].mean(0, keepdim=True)
            self.update(f, int(mean.argmax(1)), dmn_entropy(mean.softmax(1))[0])
        protos = read_out(f, self.memory, self.counts, self.text, self.hp.beta)
        p = logits[:1].softmax(1) + self.hp.alpha * (scale * f @ protos.T).softmax(1)
        return (p / (1 + self.hp.alpha)).log()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self._rng = seeded_rng()
            return torch.cat([self.per_image(xi, update=False) for xi in x])
