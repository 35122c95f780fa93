"""`rlcf`: Reinforcement Learning with CLIP Feedback, episodic prompt tuning (Zhao, Wang, Shao, Chen, Li, Zhu &
Zhang, "Test-Time Adaptation with CLIP Reward for Zero-Shot Generalization in Vision-Language Models", ICLR 2024).

Matches the TTA-VLM benchmark's port (TomSheng21/tta-vlm, commit bcc735f) `instance_method/rlcf.py` (`RLCF`:
sample_k 3, amplify_rewards 0, reward_process 1, process_batch 0, AdamW lr 7e-3 wd 5e-4, tta_steps 3,
selection_p 0.1; `CLIPRewards`: clipscore_weight 2.5, `CLIPScore(pairwise=False)`, `rewards_post_process`) with
`instance_tta.py` (`-b 64`, ctx_init a_photo_of_a; official RLCF: mzhaoshuai/RLCF). Per test image x_i, episodic:
  1. reset the prompt context ("a photo of a", CoOp's unified context, methods/tpt.py) and the AdamW state;
  2. the test batch = x_i and `n_aug` (63) views (RandomResizedCrop + flip; AugMix only with `augmix`); frozen
     image features f; keep the int(64 · 0.1) = 6 lowest-entropy views (selected once, with the initial context);
  3. the reward CLIP's L2-normalised image features g of the kept views and its text features u_c of
     "<ctx_init> <class name>." (the prompts' tokens through its own text tower);
  4. `steps` (3) times: logits of the kept views with the current context; per view the top-`sample_k` (3)
     classes c_nj; reward r_nj = max(0, 2.5 · g_n·u_c_nj) minus the mean over j (per view); loss =
     mean_nj r_nj · CE(logits_n, c_nj); one AdamW step (lr 7e-3, betas (0.9, 0.999), wd 5e-4) on the context;
  5. prediction = logits of x_i with the tuned context; the context is reset afterwards.
The reward model (`reward_model`): "self" = the adapted CLIP's own frozen towers (TTA-VLM builds the reward CLIP
with the main model's architecture, `arch=args.arch`). A larger reward CLIP (the RLCF paper's ViT-L/14 for a ViT-B/16
policy) is given in library use with `adapter.use_reward_model(clip)`; the harness does not build a second model
for a method (methods import only the kernel), so the CLI offers "self" only.
Deviations: float32 instead of autocast fp16 + GradScaler (CUDA); at least one view is kept; views from our
AugMix/crop port. `predict` (no adaptation) is
zero-shot CLIP with the initial context. Cost per image: 1 + n_aug image-encoder forwards (+ the kept views through
the reward CLIP), `steps` text-encoder forward/backward passes over all class prompts.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, select_confident
from tta_bench.methods._vlm import require_clip
from tta_bench.methods.base import opt, optimizer_options
from tta_bench.methods.tpt import TPT

_TTAVLM = "TomSheng21/tta-vlm:instance_method/rlcf.py@bcc735f"


def clip_rewards(
    image_feats: torch.Tensor, class_feats: torch.Tensor, classes: torch.Tensor, weight: float, standardize: bool
) -> torch.Tensor:
    """(N·K,) rewards of the sampled classes (N,K): max(0, weight · g_n·u_c) minus the per-view mean (/ std)."""
    n, k = classes.shape
    g = torch.repeat_interleave(image_feats, k, dim=0)
    score = (weight * (class_feats[classes.flatten()] * g).sum(-1)).clamp(min=0).reshape(n, k)
    if k > 1:
        score = score - score.mean(-1, keepdim=True)
        if standardize:
            score = score / (score.std(-1, keepdim=True) + 1e-5)
    return score.flatten()


@register("rlcf")
class RLCF(TPT):
    """Per image: tune the prompt context by REINFORCE with CLIP-score rewards of the sampled classes, reset."""

    options = {
        **optimizer_options("adamw", lr=7e-3, wd=5e-4),
        "steps": opt(3, "AdamW steps on the prompt context per test image (the context is reset before each image)"),
        "n_aug": opt(63, "augmented views of each test image (plus the image itself)", ">=0"),
        "selection_p": opt(0.1, "fraction of lowest-entropy views kept (selected once, with the initial context)",
                           "(0,1]"),
        "augmix": opt(False, "AugMix on top of crop + flip (TTA-VLM does it for fine-grained sets, not ImageNet)"),
        "ctx_init": opt("a photo of a", "initial prompt context (its token count is the context length)"),
        "sample_k": opt(3, "classes sampled per view (its top-k) and rewarded", ">=1"),
        "clipscore_weight": opt(2.5, "CLIPScore weight w of the reward max(0, w · cos)", ">0"),
        "standardize": opt(False, "divide the mean-subtracted rewards by their std (RLCF's amplify_rewards)"),
        "reward_model": opt("self", "the reward CLIP: self (the adapted CLIP's frozen towers, as TTA-VLM); a larger "
                                    "one in library use: adapter.use_reward_model(clip)", ("self",)),
    }  # fmt: skip
    presets = {
        "imagenet-c": {
            "source": _TTAVLM,
            "batch_size": 1,
            "note": PER_POINT + "; the ImageNet ('I') setting of TTA-VLM (AugMix on for the fine-grained sets)",
            "options": {"optimizer": "adamw", "lr": 7e-3, "betas": (0.9, 0.999), "wd": 5e-4, "steps": 3,
                        "n_aug": 63, "selection_p": 0.1, "augmix": False, "ctx_init": "a photo of a",
                        "sample_k": 3, "clipscore_weight": 2.5, "standardize": False, "reward_model": "self"},
        }
    }  # fmt: skip

    def configure(self) -> None:
        super().configure()
        self.use_reward_model(self.model)

    def use_reward_model(self, reward: nn.Module) -> None:
        """Score with `reward` (a CLIP classifier for the same class names, e.g. a larger one: the RLCF paper's
        ViT-L/14 for a ViT-B/16 policy), frozen and kept out of the adapter's state. The harness uses the adapted
        CLIP itself (`reward_model=self`, TTA-VLM's choice); a second model is the library user's to build."""
        if reward is not self.model:
            require_clip(reward, "rlcf (reward model)")
            reward = reward.eval().requires_grad_(False)
        self._reward = (reward,)  # a tuple: not a submodule, so not adapter state
        with torch.no_grad():  # the reward tower's features of the prompts' tokens ("<ctx_init> <name>.")
            tokens = self.prompt.tokens
            if reward is not self.model:
                tokens = reward.tokenize([f"{self.hp.ctx_init} {n}." for n in self.model.class_names])
            text = F.normalize(reward.clip.encode_text(tokens.to(self.prompt.ctx.device)).float(), dim=-1)
        if "reward_text" in self._buffers:
            self.reward_text = text
        else:
            self.register_buffer("reward_text", text, persistent=False)

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        views = self.views(x)
        with torch.no_grad():
            feats = self.model.encode_image(views)
            selected = select_confident(self.logits(feats), self.hp.selection_p)
            reward_img = self._reward[0].encode_image(views[selected]).float()
        k = min(self.hp.sample_k, len(self.model.class_names))
        for _ in range(self.hp.steps):
            logits = self.logits(feats[selected])
            classes = logits.detach().topk(k, dim=-1).indices
            rewards = clip_rewards(reward_img, self.reward_text, classes, self.hp.clipscore_weight,
                                   self.hp.standardize)  # fmt: skip
            ce = F.cross_entropy(torch.repeat_interleave(logits, k, dim=0), classes.flatten(), reduction="none")
            loss = (rewards * ce).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            out = self.logits(feats[:1])
        self.reset()
        return out
