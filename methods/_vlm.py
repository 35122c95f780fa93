"""Shared pieces of CLIP prompt learners (CoOp, OGEN): the learned context and the few-shot prepare loop.

`PromptLearner` is CoOp's unified context (Zhou et al., IJCV 2022): M context vectors shared by all
classes, initialised from the embedding of "a photo of a", so that the prompt of class c is
`[SOS] ctx_1 .. ctx_M name_c . [EOS]`; the CLIP text tower maps it to the class weight w_c.

`PromptAdapter` is the adapter skeleton: it needs a `CLIPClassifier` (tta_bench/zoo/clip_zoo.py;
`requires = "clip"`), freezes both encoders, learns in `prepare(source)` and is frozen on the stream
(`adapt(x)` is inference over all classes). The known classes are the labels the source data contains;
every other class of the model is unknown to training (its name is still available).
Schedule (CoOp/OGEN trainer configs `vit_b16_ep10_ctxv1`): SGD, lr 0.002, momentum 0.9, weight decay 5e-4
(dassl's defaults), cosine over the epochs after one warm-up epoch at constant lr 1e-5. The batch size is
the harness's (`--batch-size`; the configs use 32). Augmentation as the configs' `random_resized_crop`
(scale 0.08-1, ratio 3/4-4/3, bicubic) + `random_flip`, so every epoch re-encodes the shots; with
`augment=False` the frozen features are computed once and the epochs run on them (fast).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods.base import Adapter, opt


class NeedsCLIP(UserError, TypeError):
    """A prompt learner given a non-CLIP model: a user error in the CLI (exit 2), a TypeError to library code."""


def require_clip(model: nn.Module, method: str) -> None:
    if not getattr(model, "is_clip", False):
        raise NeedsCLIP(
            f"'{method}' learns CLIP prompts and needs a CLIP model (tta_bench.zoo.clip_zoo.CLIPClassifier, e.g. "
            f"--model clip-vit-b16 or clip-tiny), got {type(model).__name__}."
        )


class PromptLearner(nn.Module):
    """Learned context `ctx` (M,W) shared by all classes; `forward(clip, classes)` -> (len(classes), D) w_c."""

    def __init__(self, clip: nn.Module, ctx_init: str) -> None:
        super().__init__()
        n_ctx = len(ctx_init.split())
        with torch.no_grad():
            init = clip.token_embedding(clip.tokenize([ctx_init]))[0, 1 : 1 + n_ctx]
            tokens = clip.tokenize([f"{ctx_init} {name}." for name in clip.class_names])
            emb = clip.token_embedding(tokens)
        self.ctx = nn.Parameter(init.clone())
        # Fixed token embeddings around the context (derived from the class names: not saved).
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # name . EOS pad
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(
        self, clip: nn.Module, classes: torch.Tensor | None = None, ctx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text features (C',D) of `classes` (default all), with `ctx` (default the learned one)."""
        pre, suf, tok = self.prefix, self.suffix, self.tokens
        if classes is not None:
            pre, suf, tok = pre[classes], suf[classes], tok[classes]
        ctx = (self.ctx if ctx is None else ctx).unsqueeze(0).expand(len(tok), -1, -1)
        return clip.encode_prompts(torch.cat([pre, ctx, suf], dim=1), tok)


def crop_flip(x: torch.Tensor, scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop (back to the input size, bicubic) and horizontal flip per image; (N,C,H,W) in [0,1]."""
    from torchvision.transforms import RandomResizedCrop

    h, w = x.shape[-2:]
    out = []
    for img in x:
        i, j, ch, cw = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        crop = F.interpolate(img[None, :, i : i + ch, j : j + cw], size=(h, w), mode="bicubic", align_corners=False)
        out.append(crop.flip(-1) if torch.rand(()) < 0.5 else crop)
    return torch.cat(out).clamp(0, 1)


def lr_at(epoch: int, hp: Any) -> float:
    """Constant warm-up lr for `warmup_epochs`, then cosine from `lr` over all `epochs` (dassl's schedule)."""
    if epoch < hp.warmup_epochs:
        return hp.warmup_lr
    return 0.5 * hp.lr * (1 + math.cos(math.pi * epoch / hp.epochs))


def _drop_model_keys(module: nn.Module, state: dict, prefix: str, meta: Any) -> None:
    for k in [k for k in state if k.startswith(prefix + "model.")]:
        del state[k]


def _ignore_missing_model_keys(module: nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("model.")]


class FrozenCLIPAdapter(Adapter):
    """An adapter around a frozen CLIPClassifier: refuses other models; the CLIP is not adapter state.

    The frozen CLIP is left out of state_dict(): its weights are already in the prepare-cache key, and leaving
    them out keeps cached prepares and the reset() snapshot to the adapter's own parts.
    """

    requires: ClassVar[str] = "clip"

    def __init__(self, model: nn.Module, **hparams: Any) -> None:
        require_clip(model, self.name or type(self).__name__)
        super().__init__(model, **hparams)

    def freeze_clip(self) -> None:
        """Call first in configure(): CLIP in eval mode without gradients, and out of state_dict()."""
        self.model.eval().requires_grad_(False)
        self.register_state_dict_post_hook(_drop_model_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_model_keys)


class PromptAdapter(FrozenCLIPAdapter):
    """Base of CLIP prompt learners: frozen encoders, prepare() learns, the stream is pure inference."""

    needs_source = True
    # Prompt learning always runs SGD (dassl's), so there is no `optimizer` choice; ranges: COMMON_RANGES by name.
    options = {
        "ctx_init": opt("a photo of a", "initial words of the learned prompt context (its word count is the context "
                                        "length)"),
        "epochs": opt(10, "prompt-learning epochs over the few-shot source data (prepare)"),
        "lr": opt(0.002, "peak SGD learning rate of prompt learning (cosine-decayed over the epochs after the "
                         "warm-up)"),
        "momentum": opt(0.9, "SGD momentum of prompt learning"),
        "wd": opt(5e-4, "SGD weight decay of prompt learning"),
        "warmup_epochs": opt(1, "constant-lr warm-up epochs before the cosine schedule"),
        "warmup_lr": opt(1e-5, "learning rate during the warm-up epochs"),
        "augment": opt(True, "random resized crop + flip of the source images each epoch (else the features are "
                             "encoded once and cached)"),
    }  # fmt: skip

    def configure(self) -> None:
        self.freeze_clip()
        self.prompt = PromptLearner(self.model, self.hp.ctx_init)
        n = len(self.model.class_names)
        self.register_buffer("known_mask", torch.zeros(n, dtype=torch.bool))  # classes seen in prepare
        self._cache: tuple[tuple, torch.Tensor] | None = None

    # --- to override ---------------------------------------------------------------------------------
    def learned_parameters(self) -> list[nn.Parameter]:
        """What prepare() trains (the stream trains nothing)."""
        return [self.prompt.ctx]

    def fit_statistics(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Called once with all source features (N,D) and labels (N,) before training."""

    def step_loss(self, feats: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """CoOp: cross-entropy over the known classes' prompts."""
        known = self.known_classes()
        logits = self.model.logits(feats, self.prompt(self.model, known))
        return nn.functional.cross_entropy(logits, self.local(labels))

    def end_epoch(self, epoch: int) -> None:
        """Called after each prepare epoch (0-based)."""

    # --- the contract ----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return []  # frozen on the stream; see learned_parameters() for the prepare stage

    def known_classes(self) -> torch.Tensor:
        return self.known_mask.nonzero().flatten()

    def local(self, labels: torch.Tensor) -> torch.Tensor:
        """Global class ids -> index among the known classes."""
        return torch.cumsum(self.known_mask.long(), 0)[labels] - 1

    def class_text(self) -> torch.Tensor:
        """(C,D) text features of all classes with the learned context, cached while it is unchanged."""
        key = tuple((p.data_ptr(), p._version) for p in self.learned_parameters())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.prompt(self.model))
        return self._cache[1]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.encode_image(x), self.class_text())

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # frozen at stream time: no online updates
            return self.infer(x)

    @torch.no_grad()
    def encode_source(self, source: Iterable) -> tuple[torch.Tensor, torch.Tensor, int]:
        feats, labels, bs = [], [], 1
        dev = self.known_mask.device
        for x, y in source:
            feats.append(self.model.encode_image(x.to(dev)))
            labels.append(y.to(dev).long())
            bs = max(bs, len(y))
        return torch.cat(feats), torch.cat(labels), bs

    def epoch_batches(self, source: Iterable, feats: torch.Tensor, labels: torch.Tensor, bs: int) -> Iterator:
        """(features, labels) batches of one epoch: re-encoded augmented shots, or the cached features shuffled."""
        if not self.hp.augment:
            for idx in torch.randperm(len(labels)).split(bs):
                idx = idx.to(labels.device)
                yield feats[idx], labels[idx]
            return
        for x, y in source:
            with torch.no_grad():  # (not around the yield: the consumer's loss needs grad mode)
                f = self.model.encode_image(crop_flip(x.to(feats.device)))
            yield f, y.to(labels.device).long()

    def prepare(self, source: Iterable) -> None:
        feats, labels, bs = self.encode_source(source)  # un-augmented: known classes and their statistics
        self.known_mask.zero_()
        self.known_mask[labels.unique()] = True
        self.fit_statistics(feats, labels)
        opt = torch.optim.SGD(
            self.learned_parameters(), lr=self.hp.lr, momentum=self.hp.momentum, weight_decay=self.hp.wd
        )
        self.train()
        self.model.eval()
        for epoch in range(self.hp.epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, self.hp)
            for f, y in self.epoch_batches(source, feats, labels, bs):
                loss = self.step_loss(f, y, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.end_epoch(epoch)
        self.eval()
        self._cache = None

    def prepare_step(self) -> nn.Module:
        """One prepare step (features, loss, backward, SGD step) as a module, for the harness's memory figure."""
        return _PrepareStep(self)


class _PrepareStep(nn.Module):
    """One prepare step as a module, measured by the harness like an adapter (labels: the classes cycled)."""

    def __init__(self, adapter: PromptAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model
        self.optimizer = torch.optim.SGD(adapter.learned_parameters(), lr=1e-9, momentum=adapter.hp.momentum)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.adapter.learned_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adapter
        with torch.no_grad():
            feats = a.model.encode_image(x)
        n = len(a.known_mask)
        labels = torch.arange(len(x), device=x.device) % max(1, n // 2)
        if not a.known_mask.any():
            a.known_mask[: max(1, n // 2)] = True
            a.fit_statistics(feats, labels)
        with torch.enable_grad():
            loss = a.step_loss(feats, labels, a.hp.epochs - 1)
            loss.backward()
        self.optimizer.step()
        return loss.detach()
