"""C-TPT on the tiny random CLIP: against a restatement of TTA-VLM's ctpt.py + ClipTestTimeTuning (l2_norm_cal)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_tpt import build_tiny, official_avg_entropy, official_select, test_views  # noqa: E402

from tta_bench.methods import CTPT, TPT  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def reference_ctpt(clip, xs, lr, steps, lambda_):
    """Per image: reset ctx + AdamW; loss = avg_entropy(confident) - lambda * mean ||t_c - mean t||; predict."""
    tokens = clip.tokenize([f"a photo of a {n}." for n in clip.class_names])
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
        init = clip.token_embedding(clip.tokenize(["a photo of a"]))[0, 1:5].clone()

    def text(ctx):
        prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(tokens), -1, -1), emb[:, 5:]], dim=1)
        t = clip.encode_prompts(prompts, tokens)
        return t / t.norm(dim=-1, keepdim=True)

    outs, ctxs, atfd = [], [], []
    for x in xs:
        ctx = nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr)
        with torch.no_grad():
            f = clip.encode_image(test_views(x))
        selected_idx = None
        for _ in range(steps):
            t = text(ctx)
            l2_norm_mean = torch.linalg.norm(t - t.mean(0), dim=-1).mean()
            output = clip.logit_scale.exp() * f @ t.t()
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                output, selected_idx = official_select(output, 0.1)
            loss = official_avg_entropy(output) + (-lambda_ * l2_norm_mean)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ctxs.append(ctx.detach().clone())
        with torch.no_grad():
            t = text(ctx)
            atfd.append(float(torch.linalg.norm(t - t.mean(0), dim=-1).mean()))
            outs.append(clip.logit_scale.exp() * f[:1] @ t.t())
    return torch.cat(outs), ctxs, atfd


def tuned_contexts(adapter):
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append(adapter.prompt.ctx.detach().clone())
        reset()

    adapter.reset = recording_reset
    return tuned


def test_ctpt_matches_official(tiny) -> None:
    adapter = CTPT(tiny, steps=3, lr=5e-2, lambda_atfd=50.0)
    adapter.views = test_views
    init = adapter.prompt.ctx.detach().clone()
    tuned = tuned_contexts(adapter)
    xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(21))
    want, ctxs, _ = reference_ctpt(tiny, xs, lr=5e-2, steps=3, lambda_=50.0)
    torch.testing.assert_close(adapter(xs), want)
    for got, ref in zip(tuned[1::2], ctxs):  # resets come in pairs: before and after each image
        torch.testing.assert_close(got, ref)
        assert not torch.equal(got, init)
    assert torch.equal(adapter.prompt.ctx, init)
    assert adapter.trainable_parameters() == [adapter.prompt.ctx]


def test_ctpt_dispersion_term(tiny) -> None:
    xs = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(22))
    plain = TPT(tiny, steps=2, lr=5e-2)
    no_term = CTPT(tiny, steps=2, lr=5e-2, lambda_atfd=0.0)
    plain.views = no_term.views = test_views
    torch.testing.assert_close(no_term(xs), plain(xs))  # lambda 0 is TPT
    # at the official lr the term spreads the class text features apart (tiny CLIP: ~0.43 -> ~0.69, TPT ~0.42)
    _, _, atfd_init = reference_ctpt(tiny, xs, lr=5e-3, steps=0, lambda_=0.0)
    _, _, atfd_tpt = reference_ctpt(tiny, xs, lr=5e-3, steps=2, lambda_=0.0)
    _, _, atfd_ctpt = reference_ctpt(tiny, xs, lr=5e-3, steps=2, lambda_=50.0)
    assert all(c > t + 0.1 and c > i + 0.1 for c, t, i in zip(atfd_ctpt, atfd_tpt, atfd_init))
    weighted = CTPT(tiny, steps=2, lr=5e-2, lambda_atfd=50.0)
    weighted.views = test_views
    assert not torch.allclose(weighted(xs), plain(xs))
