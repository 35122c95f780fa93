"""R-TPT on the tiny random CLIP: against a plain restatement of TTA-VLM's instance_method/rtpt.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tpt import build_tiny, official_select, test_views  # noqa: E402

from tta_bench.methods import RTPT, TPT  # noqa: E402
from tta_bench.methods.r_tpt import reliability_weights  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_weights(clip_features, k=20):
    """get_top_sim + softmax(score / 0.01); the diagonal set to 1 first (what fp16 rounding gives officially)."""
    sim = torch.bmm(clip_features.unsqueeze(0), clip_features.unsqueeze(0).permute(0, 2, 1))
    sim[0].fill_diagonal_(1.0)
    sim[sim >= 1.0] = float("-inf")
    score = sim.topk(k, dim=-1)[0].mean(dim=-1)
    return torch.nn.functional.softmax(score / 0.01, dim=-1)


def reference_rtpt(clip, xs, lr, steps):
    tokens = clip.tokenize([f"a photo of a {n}." for n in clip.class_names])
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
        init = clip.token_embedding(clip.tokenize(["a photo of a"]))[0, 1:5].clone()

    def model(f, ctx):
        prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(tokens), -1, -1), emb[:, 5:]], dim=1)
        return clip.logit_scale.exp() * f @ clip.encode_prompts(prompts, tokens).t()

    outs, ctxs = [], []
    for x in xs:
        ctx = nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr)
        with torch.no_grad():
            clip_features = clip.encode_image(test_views(x))
        selected_idx = None
        for _ in range(steps):
            output = model(clip_features, ctx)
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                output, selected_idx = official_select(output, 0.1)
            loss = (-(output.softmax(1) * output.log_softmax(1)).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        ctxs.append(ctx.detach().clone())
        with torch.no_grad():
            tuned_outputs = model(clip_features, ctx)
            weight = official_weights(clip_features, k=19)  # 20 views: 19 others (the official k=20 needs 21+)
            outs.append(torch.bmm(weight.unsqueeze(-1).transpose(1, 2), tuned_outputs.unsqueeze(0)).squeeze(1))
    return torch.cat(outs), ctxs


def test_rtpt_matches_official(tiny) -> None:
    adapter = RTPT(tiny, steps=2, lr=5e-2)
    adapter.views = test_views
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append(adapter.prompt.ctx.detach().clone())
        reset()

    adapter.reset = recording_reset
    xs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(61))
    want, ctxs = reference_rtpt(tiny, xs, lr=5e-2, steps=2)
    got = adapter(xs)
    torch.testing.assert_close(got, want)
    for c, ref in zip(tuned[1::2], ctxs):
        torch.testing.assert_close(c, ref)
    plain = TPT(tiny, steps=2, lr=5e-2)
    plain.views = test_views
    assert not torch.allclose(got, plain(xs), atol=1e-3)  # its own loss and ensemble


def test_rtpt_reliability_weights() -> None:
    """Views in a tight cluster get the weight; an isolated view gets ~0; rows sum to 1."""
    g = torch.Generator().manual_seed(62)
    center = F.normalize(torch.randn(8, generator=g), dim=0)
    cluster = F.normalize(center + 0.1 * torch.randn(6, 8, generator=g), dim=1)
    lone = F.normalize(-center + 0.1 * torch.randn(1, 8, generator=g), dim=1)
    feats = torch.cat([lone, cluster])
    w = reliability_weights(feats, top_k=20, temperature=0.01)  # top_k capped at 6 others
    assert abs(float(w.sum()) - 1) < 1e-6 and float(w[0]) < 1e-6
    torch.testing.assert_close(w, official_weights(feats, k=6)[0])
    w3 = reliability_weights(feats, top_k=3, temperature=0.01)
    torch.testing.assert_close(w3, official_weights(feats, k=3)[0])
