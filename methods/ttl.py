"""`ttl`: Test-Time Low-rank adaptation of CLIP's image encoder (Imam, Gani, Huynh, Fahad & Khan, "Test-Time Low
Rank Adaptation via Confidence Maximization for Zero-Shot Generalization of Vision-Language Models", WACV 2025).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/ttl.py` (`TTL`) with
`clip/custom_clip.py` (`LoRALinear`, `LoRAMultiheadAttention`, `ClipLoraTestTimeTuning_v2.add_lora`: blocks
[9, 10, 11] of ViT-B/16, r 16, lora_alpha 32) and `instance_tta.py` (`-b 64`, `--lr 5e-3`, `--tta_steps 1`,
ctx_init a_photo_of_a; official TTL: Razaimam45/TTL-Test-Time-Low-Rank-Adaptation). Per test image x_i, episodic:
  1. reset the LoRA factors (A to its Xavier-normal initial draw, B to zero) and the AdamW state; the text
     features t of "<ctx_init> <class name>." are computed once;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`, as TTA-VLM
     for the fine-grained sets);
  3. in the attention of the last `lora_blocks` (3) transformer blocks of the image encoder, the query and value
     projections become W x + (α/r) · B̃ Ã x (A (d,r), B (r,d): `x A B`); image features f of ALL views through
     the adapted encoder; logits = exp(logit_scale) · f · tᵀ; per-view entropy H_n; loss = mean_n H_n · exp(0.4 −
     H_n) (the weight detached); one AdamW step (lr 5e-3, torch's defaults betas (0.9, 0.999), wd 0.01) on A, B;
  4. prediction = logits of x_i through the adapted encoder; the factors are reset afterwards.
The caller's CLIP is not changed: the low-rank updates enter as W + (α/r)(AB)ᵀ in the attention's `in_proj_weight`
through `torch.func.functional_call` (the same function as the official separate q/k/v projections).
Deviations: float32 instead of autocast fp16 + GradScaler (CUDA); "the last `lora_blocks` blocks" instead of the
fixed indices 9-11 (the same blocks on a 12-block ViT-B); LoRA dropout (0.05) is inactive, as officially (the
model is in eval mode); views from our AugMix/crop port. `predict` (no adaptation) is zero-shot CLIP (B = 0).
Cost per image: `steps` forward/backward passes of the image encoder over 1 + n_aug views, plus one forward.
Needs a ViT image tower with `nn.MultiheadAttention` blocks (OpenAI/OpenCLIP ViTs, clip-tiny).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT
from tta_bench.methods._clip_tta import CLIPTestTime
from tta_bench.methods._vlm import PromptLearner
from tta_bench.methods.base import make_optimizer, opt, optimizer_options

_TTAVLM = "TomSheng21/tta-vlm:instance_method/ttl.py@bcc735f"


def attention_blocks(visual: nn.Module) -> list[tuple[str, nn.MultiheadAttention]]:
    """(name relative to `visual`, module) of the image transformer's attention layers, in depth order."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
        raise UserError(
            "method 'ttl' adds LoRA to the attention of a ViT image encoder (transformer.resblocks[i].attn, "
            f"nn.MultiheadAttention), but this CLIP's image tower is {type(visual).__name__}. Use a ViT CLIP "
            "(e.g. --model clip-vit-b16 or clip-tiny)."
        )
    return [(f"transformer.resblocks.{i}.attn", b.attn) for i, b in enumerate(blocks)]


@register("ttl")
class TTL(CLIPTestTime):
    """Per image: LoRA on the last blocks' query/value projections, tuned on confidence-weighted entropy, reset."""

    options = {
        **optimizer_options("adamw", lr=5e-3, wd=0.01),
        "steps": opt(1, "AdamW steps on the LoRA factors per test image (reset before each image)"),
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM does it for fine-grained sets, not ImageNet)"),
        "lora_blocks": opt(3, "LoRA in the attention of this many last transformer blocks of the image encoder "
                              "(ViT-B/16: blocks 9-11)", ">=1"),
        "rank": opt(16, "LoRA rank r", ">=1"),
        "lora_alpha": opt(32.0, "LoRA scale numerator α (updates scaled by α / r)", ">0"),
        "entropy_margin": opt(0.4, "the m of the per-view loss weight exp(m − H) (detached)"),
        "ctx_init": opt("a photo of a", "prompt before the class name of the text features"),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (AugMix on for the fine-grained sets)",
            "options": {"optimizer": "adamw", "lr": 5e-3, "betas": (0.9, 0.999), "wd": 0.01, "steps": 1,
                        "n_aug": 63, "augmix": False, "lora_blocks": 3, "rank": 16, "lora_alpha": 32.0,
                        "entropy_margin": 0.4, "ctx_init": "a photo of a"},
        }
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        with torch.no_grad():
            text = PromptLearner(self.model, self.hp.ctx_init)(self.model)
        self.register_buffer("text", text, persistent=False)
        blocks = attention_blocks(self.model.clip.visual)[-self.hp.lora_blocks :]
        self._blocks = [name for name, _ in blocks]
        r = self.hp.rank
        self.lora_A, self.lora_B = nn.ParameterList(), nn.ParameterList()
        for _, attn in blocks:
            d = attn.embed_dim
            for _proj in ("q", "v"):
                a = torch.empty(d, r, device=text.device)
                nn.init.xavier_normal_(a)
                self.lora_A.append(nn.Parameter(a))
                self.lora_B.append(nn.Parameter(torch.zeros(r, d, device=text.device)))
        self.optimizer = make_optimizer([*self.lora_A, *self.lora_B], self.hp)

    def adapted_weights(self) -> dict[str, torch.Tensor]:
        """in_proj_weight of each adapted attention: [W_q + s (A_q B_q)ᵀ; W_k; W_v + s (A_v B_v)ᵀ]."""
        visual, s = self.model.clip.visual, self.hp.lora_alpha / self.hp.rank
        out = {}
        for i, name in enumerate(self._blocks):
            w = visual.get_submodule(name).in_proj_weight
            d = w.shape[1]
            dq = s * (self.lora_A[2 * i] @ self.lora_B[2 * i]).T
            dv = s * (self.lora_A[2 * i + 1] @ self.lora_B[2 * i + 1]).T
            out[f"{name}.in_proj_weight"] = torch.cat([w[:d] + dq, w[d : 2 * d], w[2 * d :] + dv])
        return out

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.model.clip.visual
        feats = torch.func.functional_call(visual, self.adapted_weights(), (self.model.preprocess(x),), strict=False)
        return F.normalize(feats, dim=-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.encode_image(x), self.text)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        views = self.views(x)
        for _ in range(self.hp.steps):
            logits = self.logits(views)
            ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            loss = (ent * torch.exp(self.hp.entropy_margin - ent.detach())).mean(0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            out = self.logits(x[None])
        self.reset()
        return out
