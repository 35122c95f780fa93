"""A ViT with input prompt tokens, and the per-layer CLS features FOA measures (its `models/vpt.py`).

`PromptViT(model, num_prompts)` finds the ViT in `model`: a torchvision `VisionTransformer` or a timm
`VisionTransformer` (token pooling), alone or behind the zoo's input normalisation (`Normalized`, any depth). It
keeps no weights of its own: `features(x, prompts)` runs the embedding, inserts `prompts` `(P, D)` right after the
class token (after the position embedding, VPT-shallow as FOA's `prompt_injection`), runs the blocks and returns
the class token of every block's output normalised by the next block's first LayerNorm (the last one by the final
LayerNorm), concatenated: `(N, L·D)`. `head(cls)` maps the last `D` of them to logits. A model of another kind
raises a UserError naming the method.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from tta_bench.kernel import UserError


def _unwrap(model: nn.Module) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], nn.Module]:
    """The chain of input normalisations ((mean, std) per `Normalized` wrapper) and the module under them."""
    norms = []
    while type(model).__name__ == "Normalized" and hasattr(model, "mean") and hasattr(model, "model"):
        norms.append((model.mean, model.std))
        model = model.model
    return norms, model


class PromptViT:
    """Prompt insertion and layer-wise CLS features for a torchvision or timm ViT (no parameters of its own)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.norms, vit = _unwrap(model)
        self.vit = vit
        kind = type(vit).__module__
        if type(vit).__name__ == "VisionTransformer" and kind.startswith("torchvision"):
            self.kind = "torchvision"
            self.blocks = list(vit.encoder.layers)
            self.next_norms = [b.ln_1 for b in self.blocks[1:]] + [vit.encoder.ln]
            self.dim, self.patch = vit.hidden_dim, vit.patch_size
        elif type(vit).__name__ == "VisionTransformer" and kind.startswith("timm"):
            if getattr(vit, "global_pool", "token") != "token":
                raise UserError(
                    f"method '{method}' reads the class token of a ViT, but this timm ViT pools with "
                    f"global_pool={vit.global_pool!r}; use a ViT with token pooling (e.g. --model vit-b-16-timm)."
                )
            self.kind = "timm"
            self.blocks = list(vit.blocks)
            self.next_norms = [b.norm1 for b in self.blocks[1:]] + [vit.norm]
            self.dim, self.patch = vit.embed_dim, math.prod(vit.patch_embed.patch_size) ** 0.5
        else:
            raise UserError(
                f"method '{method}' needs a Vision Transformer (torchvision or timm VisionTransformer, optionally "
                f"behind the zoo's input normalisation; it reads the class token), but the model is "
                f"{type(vit).__name__}. Use a ViT model, e.g. --model vit-b-16 (python -m tta_bench list models)."
            )

    def prompt_init_bound(self) -> float:
        """VPT's xavier-uniform bound sqrt(6 / (3·patch² + D)) FOA draws its initial prompts from."""
        return math.sqrt(6.0 / float(3 * self.patch * self.patch + self.dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input normalisation, patch and position embedding (class token first): `(N, 1 + HW, D)`."""
        for mean, std in self.norms:
            x = (x - mean) / std
        vit = self.vit
        if self.kind == "torchvision":
            x = vit._process_input(x)
            x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            return vit.encoder.dropout(x + vit.encoder.pos_embedding)
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        return vit.patch_drop(x) if hasattr(vit, "patch_drop") else x

    def features(self, x: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """Per-block normalised class tokens, concatenated `(N, L·D)`, with `prompts` `(P, D)` (or none) inserted."""
        x = self.embed(x)
        if prompts is not None and prompts.numel():
            x = torch.cat([x[:, :1], prompts.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        if self.kind == "timm":
            x = self.vit.norm_pre(x)
        out = []
        for block, norm in zip(self.blocks, self.next_norms):
            x = block(x)
            out.append(norm(x[:, 0]))
        return torch.cat(out, dim=1)

    def head(self, cls: torch.Tensor) -> torch.Tensor:
        """Logits of final-LayerNorm class tokens `(N, D)` (torchvision `heads`, timm `head`)."""
        return self.vit.heads(cls) if self.kind == "torchvision" else self.vit.head(cls)
