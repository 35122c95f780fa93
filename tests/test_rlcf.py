"""RLCF on the tiny random CLIP: against a plain restatement of TTA-VLM's instance_method/rlcf.py (CLIPRewards)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tpt import build_tiny, official_select, test_views  # noqa: E402

from tta_bench.kernel import UserError  # noqa: E402
from tta_bench.methods import RLCF, create  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def reference_rlcf(clip, reward, xs, lr=7e-3, steps=3, sample_k=3):
    tokens = clip.tokenize([f"a photo of a {n}." for n in clip.class_names])
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
        init = clip.token_embedding(clip.tokenize(["a photo of a"]))[0, 1:5].clone()
        cf = reward.clip.encode_text(reward.tokenize([f"a photo of a {n}." for n in clip.class_names])).float()
        class_features = cf / cf.norm(dim=1, keepdim=True)

    def model(f, ctx):
        prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(tokens), -1, -1), emb[:, 5:]], dim=1)
        return clip.logit_scale.exp() * f @ clip.encode_prompts(prompts, tokens).t()

    outs, ctxs = [], []
    for x in xs:
        ctx = nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr=lr, weight_decay=5e-4)
        images = test_views(x)
        with torch.no_grad():
            f = clip.encode_image(images)
        selected_idx = None
        for _ in range(steps):
            if selected_idx is not None:
                output = model(f[selected_idx], ctx)
            else:
                output = model(f, ctx)
                output, selected_idx = official_select(output, 0.1)
                with torch.no_grad():
                    image_features = reward.encode_image(images[selected_idx]).float()
            bs = output.shape[0]
            _, index = torch.topk(output, sample_k, dim=-1)
            flatten_index = index.flatten()
            image_rep = torch.repeat_interleave(image_features, sample_k, dim=0)
            similarity = 2.5 * torch.sum(class_features[flatten_index] * image_rep, dim=-1)
            clip_score = torch.maximum(similarity, torch.zeros_like(similarity)).squeeze().reshape(bs, -1)
            rewards = (clip_score - torch.mean(clip_score, dim=-1, keepdim=True)).flatten()
            all_loss = F.cross_entropy(
                torch.repeat_interleave(output, sample_k, dim=0), flatten_index, reduction="none"
            )
            loss = torch.mean(rewards * all_loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ctxs.append(ctx.detach().clone())
        with torch.no_grad():
            outs.append(model(f[:1], ctx))
    return torch.cat(outs), ctxs


def run(adapter, xs):
    adapter.views = test_views
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append(adapter.prompt.ctx.detach().clone())
        reset()

    adapter.reset = recording_reset
    return adapter(xs), tuned[1::2]


def test_rlcf_matches_official(tiny) -> None:
    xs = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(81))
    adapter = RLCF(tiny, lr=5e-2)
    got, tuned = run(adapter, xs)
    want, ctxs = reference_rlcf(tiny, tiny, xs, lr=5e-2)
    torch.testing.assert_close(got, want)
    init = adapter.prompt.ctx.detach().clone()
    for c, ref in zip(tuned, ctxs):
        torch.testing.assert_close(c, ref)
        assert not torch.equal(c, init)
    assert "reward_text" not in adapter.state_dict() and not any("_reward" in k for k in adapter.state_dict())


def test_rlcf_separate_reward_model(tiny) -> None:
    """A second reward CLIP (clip-tiny with another seed stands in for a larger one) changes the rewards."""
    from tta_bench.zoo.clip_zoo import clip_tiny

    other = clip_tiny(type("S", (), {"name": "r", "class_names": tiny.class_names})(), None, init_seed=1)
    xs = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(82))
    adapter = RLCF(tiny, lr=5e-2)
    adapter.use_reward_model(other)
    adapter.snapshot()
    assert adapter._reward[0] is other and not any(p.requires_grad for p in other.parameters())
    assert "reward_text" not in adapter.state_dict()
    got, _ = run(adapter, xs)
    want, _ = reference_rlcf(tiny, other, xs, lr=5e-2)
    torch.testing.assert_close(got, want)
    same, _ = reference_rlcf(tiny, tiny, xs, lr=5e-2)
    assert not torch.allclose(got, same)


def test_rlcf_reward_model_option_is_self_only(tiny) -> None:
    with pytest.raises(UserError, match="reward_model"):
        create("rlcf", tiny, reward_model="clip-tiny")
