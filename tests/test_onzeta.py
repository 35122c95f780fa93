"""OnZeta on the tiny random CLIP: against a plain restatement of TTA-VLM's online_method/onzeta.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tda import stream  # noqa: E402
from test_tpt import build_tiny  # noqa: E402

from tta_bench.methods import OnZeta  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def reference_onzeta(clip, xs, loader_len, cw=0.5, cr=20, beta0=0.8, alpha=1, tau_i=0.04, tau_t=0.01):
    """OnZeta.prepare_model_and_optimization + adaptation_process (TomSheng21/tta-vlm@bcc735f), fp32, -b 1."""
    clip_weights = clip.text_features.t().clone()
    num_class = clip_weights.shape[1]
    w = clip.text_features.t().clone()
    rho = torch.zeros(num_class).unsqueeze(0)
    outs = []
    with torch.no_grad():
        for ii, x in enumerate(xs):
            lr = cw / math.sqrt(ii + 1)
            rlr = cr / math.sqrt(ii + 1)
            beta = beta0 * math.sqrt((ii + 1) / loader_len)
            image_features = clip.encode_image(x[None])  # forward_features: already L2-normalised
            tlabel = F.softmax(image_features @ clip_weights / tau_t, dim=-1)
            tlabel = tlabel * torch.exp(rho)
            tlabel /= torch.sum(tlabel)
            rho -= rlr * (tlabel - alpha / num_class)
            rho[rho < 0] = 0
            vision_label = F.softmax(image_features @ w / tau_i, dim=-1)
            outs.append(beta * vision_label + (1 - beta) * tlabel)
            grad = torch.outer(image_features.squeeze(), (vision_label - tlabel).squeeze())
            w -= (lr / tau_i) * grad
            w = F.normalize(w, dim=0)
    return torch.cat(outs), w, rho


@pytest.mark.parametrize("kw", [{}, {"alpha": 0.0, "beta": 0.4}])
def test_onzeta_matches_official(tiny, kw: dict) -> None:
    xs = stream(10, seed=51)
    adapter = OnZeta(tiny, stream_length=10, **kw)
    want, w, rho = reference_onzeta(tiny, xs, 10, alpha=kw.get("alpha", 1), beta0=kw.get("beta", 0.8))
    got = adapter(xs)
    # (τ_t 0.01 and cr 20 amplify float rounding: margins for other float paths)
    torch.testing.assert_close(got.exp(), want, atol=3e-4, rtol=1e-3)
    torch.testing.assert_close(adapter.w, w, atol=3e-4, rtol=1e-3)
    torch.testing.assert_close(adapter.rho, rho, atol=1e-3, rtol=1e-3)
    assert adapter.i == 10 and not torch.allclose(w, tiny.text_features.t(), atol=1e-3)  # the proxy moved
    if kw.get("alpha", 1) == 0:
        assert float(rho.abs().sum()) == 0.0  # alpha 0: t - 0 >= 0 only ever lowers ρ, clamped at 0
    else:
        assert float(rho.sum()) > 0  # the dual moved


def test_onzeta_first_image_is_zero_shot_and_beta_capped(tiny) -> None:
    xs = stream(4, seed=52)
    adapter = OnZeta(tiny, stream_length=2)
    zs = F.softmax(tiny.encode_image(xs[:1]) @ adapter.text.T / 0.01, dim=-1)
    v = F.softmax(tiny.encode_image(xs[:1]) @ adapter.text.T / 0.04, dim=-1)
    b = 0.8 * math.sqrt(1 / 2)
    torch.testing.assert_close(adapter(xs[:1]).exp(), (b * v + (1 - b) * zs).detach(), atol=1e-6, rtol=1e-5)
    adapter(xs[1:])  # images 2-4 of a "2-image" stream: β stays at 0.8 (capped), the output still sums to 1
    assert adapter.i == 4
    p = adapter.predict(xs)
    torch.testing.assert_close(p.exp().sum(1), torch.ones(4))
    w, rho = adapter.w.clone(), adapter.rho.clone()
    torch.testing.assert_close(adapter.predict(xs), p)
    assert torch.equal(adapter.w, w) and torch.equal(adapter.rho, rho) and adapter.i == 4  # predict changes nothing
    adapter.reset()
    assert adapter.i == 0 and torch.equal(adapter.w, adapter.text.T) and float(adapter.rho.abs().sum()) == 0
