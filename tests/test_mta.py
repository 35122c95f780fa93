"""MTA on the tiny random CLIP: against a plain restatement of TTA-VLM's instance_method/mta.py (solve_mta)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_tpt import build_tiny, test_views  # noqa: E402

from tta_bench.kernel import UserError  # noqa: E402
from tta_bench.methods import MTA, create  # noqa: E402
from tta_bench.methods.mta import mean_shift_mode  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_tiny()


def official_solve(image_features, text_features, logit_scale, lambda_y=0.2, lambda_q=4.0):
    """solve_mta, written out (max_iter 5, temperature 1, th 1e-6)."""
    logits = image_features @ text_features.t() * logit_scale
    max_iter, th = 5, 1e-6
    n = image_features.shape[0]
    dist = torch.cdist(image_features, image_features)
    sorted_dist, _ = torch.sort(dist, dim=1)
    k = int(0.3 * (n - 1))
    bandwidth = torch.sqrt(0.5 * torch.mean(sorted_dist[:, 1 : k + 1] ** 2, dim=1))
    affinity = logits.softmax(1) @ logits.softmax(1).t()
    y = torch.ones(n) / n
    mode = image_features[0]

    def kernel(mu):
        return torch.exp(-(torch.norm(image_features - mu, dim=-1, p=2) ** 2) / (2 * bandwidth**2))

    for _ in range(max_iter):
        density = kernel(mode)
        i = 0
        while True:
            i += 1
            old_y = y
            y = F.softmax(1 / lambda_y * (density + lambda_q * torch.sum(affinity * y.unsqueeze(0), dim=1)), dim=-1)
            if torch.norm(old_y - y) < th or i >= max_iter:
                break
        i = 0
        while True:
            i += 1
            old_mode = mode
            weighted = kernel(mode) * y
            mode = torch.sum(weighted.unsqueeze(1) * image_features, dim=0) / torch.sum(weighted)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(old_mode - mode) < th or i >= max_iter:
                break
    return mode.unsqueeze(0) @ text_features.t() * logit_scale, weighted


def test_mta_matches_official(tiny) -> None:
    adapter = MTA(tiny)
    adapter.views = test_views
    torch.testing.assert_close(adapter.text, tiny.text_features, atol=1e-5, rtol=1e-5)  # "a photo of a {}."
    xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(31))
    want = []
    with torch.no_grad():
        for x in xs:
            f = tiny.encode_image(test_views(x))
            want.append(official_solve(f, adapter.text, tiny.logit_scale.exp())[0])
    got = adapter(xs)
    torch.testing.assert_close(got, torch.cat(want))
    assert not torch.allclose(got, tiny(xs), atol=1e-3)  # the mode is not the image's own feature
    assert adapter.trainable_parameters() == [] and "text" not in adapter.state_dict()


def test_mta_mode_weights_outliers() -> None:
    """A tight cluster of views (the image among them) plus far outliers: the mode moves to the cluster's centre,
    the outliers weigh ~0."""
    g = torch.Generator().manual_seed(32)
    center = F.normalize(torch.randn(16, generator=g), dim=0)
    cluster = F.normalize(center + 0.05 * torch.randn(12, 16, generator=g), dim=1)
    outliers = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    feats = torch.cat([cluster[:1], outliers[:1], cluster[1:], outliers[1:]])
    text = F.normalize(torch.randn(5, 16, generator=g), dim=1)
    logits = 100 * feats @ text.T
    mode, weights = mean_shift_mode(feats, logits, 0.2, 4.0)
    assert float(mode @ center) > float((cluster @ center).mean())  # closer to the centre than the views are
    assert abs(float(mode.norm()) - 1) < 1e-5
    assert float(weights[[1, 13, 14, 15]].sum()) < 0.02 * float(weights.sum())  # 4 of 16 views: ~0.5 %
    ref, _ = official_solve(feats, text, 100.0)
    torch.testing.assert_close(100 * mode[None] @ text.T, ref)


def test_mta_needs_views(tiny) -> None:
    with pytest.raises(UserError, match="n_aug"):
        create("mta", tiny, n_aug=0)
    adapter = MTA(tiny, n_aug=2)  # k = max(1, int(0.3 * 2)) = 1 neighbour (the official 0 gives NaN)
    x = torch.rand(2, 3, 32, 32)
    out = adapter.predict(x)
    assert torch.isfinite(out).all() and torch.equal(out, adapter.predict(x))
