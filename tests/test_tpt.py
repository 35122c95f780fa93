"""TPT on the tiny random CLIP: against a plain restatement of azshue/TPT's test_time_tuning + evaluation loop."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("open_clip")

from test_coop import NAMES  # noqa: E402
from test_memo import fixed_views  # noqa: E402

from tta_bench import methods  # noqa: E402
from tta_bench.methods import TPT  # noqa: E402
from tta_bench.models import ModelContext  # noqa: E402
from tta_bench.zoo.clip_zoo import clip_tiny  # noqa: E402


def build_tiny() -> nn.Module:
    """The tiny random CLIP (tta_bench.zoo.clip_zoo.clip_tiny) over six class names."""
    ctx = ModelContext(Path("/nonexistent"), Path("/nonexistent"), torch.device("cpu"))
    return clip_tiny(SimpleNamespace(name="t", class_names=NAMES), ctx)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def test_views(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[None], fixed_views(x, 19)])  # the image + 19 views: int(20 * 0.1) = 2 selected


test_views.__test__ = False  # a helper, not a test


def official_select(logits, top):
    batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(batch_entropy, descending=False)[: int(batch_entropy.size()[0] * top)]
    return logits[idx], idx


def official_avg_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def reference_tpt(clip, xs, lr=5e-3, steps=2):
    """Per image: reset ctx + AdamW, tune on the confident views (selection fixed), predict the image."""
    tokens = clip.tokenize([f"a photo of a {n}." for n in clip.class_names])
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
        init = clip.token_embedding(clip.tokenize(["a photo of a"]))[0, 1:5].clone()

    def text(ctx):
        prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(tokens), -1, -1), emb[:, 5:]], dim=1)
        return clip.encode_prompts(prompts, tokens)

    outs, ctxs = [], []
    for x in xs:
        ctx = nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr)  # TPT: torch's AdamW defaults (wd 0.01)
        with torch.no_grad():
            f = clip.encode_image(test_views(x))
        selected_idx = None
        for _ in range(steps):
            output = clip.logit_scale.exp() * f @ text(ctx).t()
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                output, selected_idx = official_select(output, 0.1)
            loss = official_avg_entropy(output)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ctxs.append(ctx.detach().clone())
        with torch.no_grad():
            outs.append(clip.logit_scale.exp() * f[:1] @ text(ctx).t())
    return torch.cat(outs), ctxs


def test_tpt_matches_official(tiny) -> None:
    adapter = TPT(tiny, steps=2, lr=5e-2)
    adapter.views = test_views
    init = adapter.prompt.ctx.detach().clone()
    tuned, reset = [], adapter.reset

    def recording_reset():
        tuned.append(adapter.prompt.ctx.detach().clone())
        reset()

    adapter.reset = recording_reset
    g = torch.Generator().manual_seed(11)
    xs = torch.rand(3, 3, 32, 32, generator=g)
    want, ctxs = reference_tpt(tiny, xs, lr=5e-2, steps=2)
    torch.testing.assert_close(adapter(xs), want)
    for got, ref in zip(tuned[1::2], ctxs):  # resets come in pairs: before and after each image
        torch.testing.assert_close(got, ref)
        assert not torch.equal(got, init)
    assert torch.equal(adapter.prompt.ctx, init)  # reset after each sample: the rest state is the initial context
    assert adapter.trainable_parameters() == [adapter.prompt.ctx]


def test_tpt_resets_per_sample(tiny) -> None:
    adapter = TPT(tiny, lr=5e-2)
    adapter.views = test_views
    g = torch.Generator().manual_seed(12)
    xs = torch.rand(4, 3, 32, 32, generator=g)
    together = adapter(xs)
    alone = torch.cat([adapter(x[None]) for x in xs.flip(0)]).flip(0)
    torch.testing.assert_close(together, alone)
    zero_shot = adapter.predict(xs)  # no tuning: CLIP with the "a photo of a {}." prompts
    torch.testing.assert_close(zero_shot, tiny(xs), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together, zero_shot)


def test_tpt_refuses_plain_models() -> None:
    with pytest.raises(TypeError, match="CLIP model"):
        methods.create("tpt", nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)))


def test_tpt_real_views(tiny) -> None:
    adapter = TPT(tiny, n_aug=5)
    x = torch.rand(2, 3, 32, 32)
    assert adapter.views(x[0]).shape == (6, 3, 32, 32)
    torch.manual_seed(0)
    a = adapter(x)
    torch.manual_seed(0)
    torch.testing.assert_close(adapter(x), a)
