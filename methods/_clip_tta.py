"""Shared pieces of the CLIP test-time adapters (TPT, VTE, TDA): views, prompt-template ensembles, the skeleton.

`CLIPTestTime` is an Adapter over a `CLIPClassifier` (tta_bench/zoo/clip_zoo.py; `requires = "clip"`) whose
encoders stay frozen; the frozen CLIP is kept out of `state_dict()` (as in methods/_vlm.py), so `reset()` and
snapshots cover only what the method changes. `views(x_i)` is the official TPT/VTE/TDA test batch of one image:
the image itself first, then `n_aug` augmented views (`methods._augmix.augmix_views`, RandomResizedCrop + flip,
AugMix on top when `augmix`), as `AugMixAugmenter` in azshue/TPT `data/datautils.py`, kdiAAA/TDA
`datasets/augmix_ops.py`/`utils.py` and the suite's `augmentations/transforms_augmix.py`.

`ensemble_text_features(model, templates)`: per class, the mean of the L2-normalised text embeddings of every
template, L2-normalised again (OpenAI CLIP's prompt ensembling; TDA `utils.py::clip_classifier`, the suite's
`ZeroShotCLIP` with `PROMPT_MODE: ensemble`). Template sets: "clip80" (OpenAI's 80 ImageNet templates, the
suite's `datasets/prompts.py::imagenet_templates`), "tda7" (TDA's 7 ImageNet templates, `datasets/imagenet.py`),
"model" (the model's own single template).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods._augmix import augmix_views, seeded_rng, select_confident
from tta_bench.methods._vlm import FrozenCLIPAdapter

CLIP80 = (
    "a bad photo of a {}.|a photo of many {}.|a sculpture of a {}.|a photo of the hard to see {}.|"
    "a low resolution photo of the {}.|a rendering of a {}.|graffiti of a {}.|a bad photo of the {}.|"
    "a cropped photo of the {}.|a tattoo of a {}.|the embroidered {}.|a photo of a hard to see {}.|"
    "a bright photo of a {}.|a photo of a clean {}.|a photo of a dirty {}.|a dark photo of the {}.|"
    "a drawing of a {}.|a photo of my {}.|the plastic {}.|a photo of the cool {}.|a close-up photo of a {}.|"
    "a black and white photo of the {}.|a painting of the {}.|a painting of a {}.|a pixelated photo of the {}.|"
    "a sculpture of the {}.|a bright photo of the {}.|a cropped photo of a {}.|a plastic {}.|"
    "a photo of the dirty {}.|a jpeg corrupted photo of a {}.|a blurry photo of the {}.|a photo of the {}.|"
    "a good photo of the {}.|a rendering of the {}.|a {} in a video game.|a photo of one {}.|a doodle of a {}.|"
    "a close-up photo of the {}.|a photo of a {}.|the origami {}.|the {} in a video game.|a sketch of a {}.|"
    "a doodle of the {}.|a origami {}.|a low resolution photo of a {}.|the toy {}.|a rendition of the {}.|"
    "a photo of the clean {}.|a photo of a large {}.|a rendition of a {}.|a photo of a nice {}.|"
    "a photo of a weird {}.|a blurry photo of a {}.|a cartoon {}.|art of a {}.|a sketch of the {}.|"
    "a embroidered {}.|a pixelated photo of a {}.|itap of the {}.|a jpeg corrupted photo of the {}.|"
    "a good photo of a {}.|a plushie {}.|a photo of the nice {}.|a photo of the small {}.|"
    "a photo of the weird {}.|the cartoon {}.|art of the {}.|a drawing of the {}.|a photo of the large {}.|"
    "a black and white photo of a {}.|the plushie {}.|a dark photo of a {}.|itap of a {}.|graffiti of the {}.|"
    "a toy {}.|itap of my {}.|a photo of a cool {}.|a photo of a small {}.|a tattoo of the {}."
).split("|")
TDA7 = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def templates_of(name: str, model: nn.Module) -> list[str]:
    sets = {"clip80": CLIP80, "tda7": TDA7, "model": [model.template]}
    if name not in sets:
        raise UserError(f"method option 'templates' must be one of {sorted(sets)}, got {name!r}.")
    return list(sets[name])


@torch.no_grad()
def ensemble_text_features(model: nn.Module, templates: list[str], chunk: int = 1024) -> torch.Tensor:
    """(C,D): per class, normalize(mean_t normalize(text(template_t(class)))) over `templates`."""
    texts = [t.format(name) for name in model.class_names for t in templates]
    emb = torch.cat([model.clip.encode_text(model.tokenize(texts[i : i + chunk])) for i in range(0, len(texts), chunk)])
    emb = F.normalize(emb.float(), dim=-1).view(len(model.class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


class CLIPTestTime(FrozenCLIPAdapter):
    """Skeleton: a frozen CLIPClassifier, per-image views, the CLIP itself kept out of the adapter's state."""

    def configure(self) -> None:
        self.freeze_clip()
        self._rng = seeded_rng()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("model.")]

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The test batch of one image x (C,H,W): (1 + n_aug, C, H, W), the image first."""
        aug = augmix_views(x, self.hp.n_aug, self._rng, crop="resized", augmix=self.hp.augmix)
        return torch.cat([x[None], aug])

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (1,C) for one image; subclasses implement the method here."""
        raise NotImplementedError

    def tune_on_views(self, feats: torch.Tensor, loss_fn) -> None:
        """TPT's per-image loop (azshue/TPT `test_time_tuning`): `steps` optimizer steps on `loss_fn` of the
        confident views' logits (`self.logits(feats)`), the views selected once, on the first step's logits (the
        official selects on the first output and reuses the indices). Used by TPT, TPS and R-TPT."""
        selected = None
        for _ in range(self.hp.steps):
            logits = self.logits(feats)
            if selected is None:
                selected = select_confident(logits.detach(), self.hp.selection_p)
            loss = loss_fn(logits[selected])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._rng = seeded_rng()
        return torch.cat([self.per_image(xi) for xi in x])

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The same rule with views drawn from a fixed seed (deterministic; torch's RNG left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.adapt(x)
