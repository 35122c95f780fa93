"""CLIP models through `open_clip` (the `vlm` extra), as zero-shot classifiers over a stream's class names.

`clip-vit-b16`, `clip-vit-b32`, `clip-vit-l14`, `clip-rn50`: OpenAI CLIP (Radford et al., ICML 2021) with
open_clip's pretrained tag (`--set model.pretrained=openai`, or any tag `open_clip.list_pretrained()` lists
for the architecture). Weights come from `--set model.weights=PATH`, else `$TTA_BENCH_WEIGHTS/open_clip/
<arch>-<tag>.{bin,pt,safetensors}`, else open_clip's download (cached under `$TTA_BENCH_WEIGHTS/open_clip`).
`clip-tiny`: a tiny randomly initialised CLIP (seeded) for tests and offline checks; its tokenizer is
open_clip's SimpleTokenizer, whose BPE vocabulary ships inside the package (no download).

The model built is a `CLIPClassifier`: images in [0,1] -> logits over all `spec.class_names` with the
prompt template (`--set model.template="a photo of a {}."`). It exposes the pieces prompt learners need:
`encode_image`, `tokenize`, `token_embedding`, `encode_prompts` (the text tower from token embeddings),
`logit_scale`, `text_features` (the zero-shot classifier).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, describe, sha256_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPLATE = "a photo of a {}."
# open_clip model configs of the tiny test model (vision: 16 patches of 8x8 at 32x32; text: 32 tokens).
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ARCHS = {"clip-vit-b16": "ViT-B-16", "clip-vit-b32": "ViT-B-32", "clip-vit-l14": "ViT-L-14", "clip-rn50": "RN50"}


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise UserError(
            "CLIP models need the open_clip package: pip install 'tta_bench[vlm]' (or pip install open_clip_torch "
            "torch==<your torch version>)."
        ) from None
    return open_clip


class CLIPClassifier(nn.Module):
    """Zero-shot CLIP classifier. Input (N,3,H,W) in [0,1] (resized to `image_size` inside) -> logits (N,C).

    logits = exp(logit_scale) * <f_img, f_text> with both features L2-normalised; `text_features` (C,D) is
    the template prompt of every class name, computed once at construction with the frozen text tower.
    """

    is_clip = True  # what CLIP prompt learners check (methods/_vlm.py)

    def __init__(self, clip: nn.Module, tokenizer: Any, class_names: list[str], template: str, image_size: int):
        super().__init__()
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.class_names = [n.replace("_", " ") for n in class_names]
        self.template = template
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        with torch.no_grad():
            tf = self.clip.encode_text(self.tokenize([template.format(n) for n in self.class_names]), normalize=True)
        self.register_buffer("text_features", tf)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.clip.token_embedding

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.text_features.shape[1])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), context_length) token ids on the model's device (SOT ... EOT, zero padded)."""
        return self.tokenizer(texts).to(self.mean.device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True)
            x = x.clamp(0, 1)
        return (x - self.mean) / self.std

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) in [0,1] -> (N,D) L2-normalised image features."""
        return F.normalize(self.clip.encode_image(self.preprocess(x)), dim=-1)

    def encode_prompts(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower from token embeddings (C,L,W) (learned context inside); `tokens` (C,L) locate EOT.

        Returns (C,D) L2-normalised text features; equals `clip.encode_text(tokens)` when `embeddings` is
        `token_embedding(tokens)`.
        """
        c = self.clip
        cast = c.transformer.get_cast_dtype()
        x = embeddings.to(cast) + c.positional_embedding.to(cast)
        x = c.ln_final(c.transformer(x, attn_mask=c.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # EOT has the largest id
        proj = c.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(x), self.text_features)


def _class_names(spec) -> list[str]:
    if not spec.class_names:
        raise UserError(
            f"CLIP models classify by class names, and stream '{spec.name}' gives none (StreamSpec.class_names). "
            "Use a stream with class names (e.g. digits-b2n, cifar100-b2n, imagenet-b2n)."
        )
    return list(spec.class_names)


def _local_weights(ctx: ModelContext, arch: str, tag: str) -> Path | None:
    for ext in ("bin", "pt", "pth", "safetensors"):
        p = ctx.weights_dir / "open_clip" / f"{arch}-{tag}.{ext}"
        if p.exists():
            return p
    return None


def pretrained_clip(arch: str, tag: str, weights: str | None, ctx: ModelContext) -> tuple[nn.Module, dict]:
    """open_clip model `arch` with pretrained `tag`, from a local file when there is one, else downloaded."""
    oc = _open_clip()
    tags = oc.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise UserError(f"open_clip has no pretrained tag '{tag}' for {arch}; tags: {', '.join(tags)}.")
    cfg = oc.get_pretrained_cfg(arch, tag) or {}
    quick_gelu = bool(cfg.get("quick_gelu", False))  # OpenAI's checkpoints use QuickGELU; a file path can't say so
    path = Path(weights) if weights else _local_weights(ctx, arch, tag)
    if path is not None:
        if not path.exists():
            raise UserError(f"CLIP weights file {path} (--set model.weights) does not exist.")
        model = oc.create_model(arch, pretrained=str(path), force_quick_gelu=quick_gelu)
        return model, {"weights": str(path), "sha256": sha256_file(path)}
    cache = ctx.weights_dir / "open_clip"
    hub = cfg.get("hf_hub", "").strip("/")
    try:
        model = oc.create_model(
            arch, pretrained=tag, cache_dir=str(cache), require_pretrained=True, force_quick_gelu=quick_gelu
        )
    except Exception as e:  # noqa: BLE001  (network, HF hub, disk: all end in the same advice)
        src = f"open_clip_pytorch_model.bin of huggingface.co/{hub}" if hub else f"open_clip's '{tag}' release"
        raise UserError(
            f"Could not load open_clip {arch} with pretrained tag '{tag}' ({type(e).__name__}: {str(e)[:160]}). "
            f"Offline: download {src} elsewhere and place it at {cache}/{arch}-{tag}.bin (or pass --set "
            f"model.weights=PATH); online, open_clip downloads it into {cache} on first use."
        ) from None
    tag_hash = hashlib.sha256(f"open_clip:{arch}:{tag}".encode()).hexdigest()
    return model, {"weights": f"open_clip:{arch}:{tag}", "sha256": tag_hash, "cache": str(cache)}


def _make_factory(arch: str):
    def factory(
        spec, ctx: ModelContext, *, pretrained: str = "openai", weights: str | None = None, template: str = TEMPLATE
    ) -> nn.Module:
        oc = _open_clip()
        clip, info = pretrained_clip(arch, pretrained, weights, ctx)
        if not isinstance(clip, oc.CLIP):
            raise UserError(f"open_clip '{arch}' is not a plain CLIP model (custom text tower); it is not supported.")
        size = clip.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        model = CLIPClassifier(clip, oc.get_tokenizer(arch), _class_names(spec), template, size)
        return describe(model, arch=arch, pretrained=pretrained, template=template, **info)

    factory.__doc__ = f"CLIP {arch} (open_clip) zero-shot classifier over the stream's class names."
    return factory


for _name, _arch in ARCHS.items():
    MODELS.register(_name)(_make_factory(_arch))


@MODELS.register("clip-tiny")
def clip_tiny(spec, ctx: ModelContext, *, template: str = TEMPLATE, init_seed: int = 0) -> nn.Module:
    """Tiny randomly initialised CLIP (32x32 ViT, 2+2 layers, width 64) for tests; offline tokenizer."""
    oc = _open_clip()
    from open_clip.tokenizer import SimpleTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        clip = oc.CLIP(TINY["embed_dim"], TINY["vision_cfg"], TINY["text_cfg"])
    tok = SimpleTokenizer(context_length=TINY["text_cfg"]["context_length"])
    model = CLIPClassifier(clip, tok, _class_names(spec), template, TINY["vision_cfg"]["image_size"])
    ident = hashlib.sha256(json.dumps({"cfg": TINY, "seed": init_seed}, sort_keys=True).encode()).hexdigest()
    return describe(model, arch="clip-tiny", weights=f"random-init(seed={init_seed})", sha256=ident, template=template)
