"""LAME: no parameter/buffer changes; output = the official Laplacian solution (fiveai/LAME lame.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_eata import confident_cnn, data

from tta_bench.methods import LAME
from tta_bench.methods.lame import affinity


def reference_lame(model, x, kind="rbf", knn=5, lam=1.0, steps=100):
    """run_step + laplacian_optimization of lame.py, written out: features = the fc input of the eval model."""
    model.eval()
    with torch.no_grad():
        feats = F.normalize(model.pool(model.features((x - 0.5) / 0.5)).flatten(1), p=2, dim=-1)
        probas = model(x).softmax(1)
        unary = -torch.log(probas + 1e-10)
        dist = torch.cdist(feats, feats)
        n = len(x)
        if kind == "rbf":
            sigma = dist.sort(1).values[:, min(knn, n) - 1].mean()
            kernel = torch.exp(-(dist**2) / (2 * sigma**2))
        else:
            kernel = torch.zeros(n, n)
            kernel.scatter_(1, dist.argsort(1)[:, 1 : knn + 1], 1.0)
        y, old = (-unary).softmax(-1), float("inf")
        for i in range(steps):
            pairwise = lam * kernel @ y
            y = (-unary + pairwise).softmax(-1)
            e = (unary * y - lam * pairwise * y + y * torch.log(y.clip(1e-20))).sum().item()
            if i > 1 and abs(e - old) <= 1e-8 * abs(old):
                break
            old = e
    return y


def test_lame_changes_nothing_and_matches_official() -> None:
    model = confident_cnn()
    adapter = LAME(model)
    source = {k: v.clone() for k, v in adapter.state_dict().items()}
    xs = data(3, seed=16, bs=32)
    for x in xs:
        out = adapter(x)
        torch.testing.assert_close(out.softmax(1), reference_lame(model, x), atol=1e-5, rtol=1e-4)
    assert all(torch.equal(v, source[k]) for k, v in adapter.state_dict().items())
    assert not adapter.trainable_parameters()
    # the correction is not the identity: the probabilities move substantially
    assert (adapter(xs[0]).softmax(1) - model(xs[0]).softmax(1)).abs().max() > 0.1


def test_lame_knn_affinity_and_probs_output() -> None:
    model = confident_cnn()
    x = data(1, seed=17, bs=16)[0]
    adapter = LAME(model, affinity="knn", knn=3, output="probs")
    y = adapter(x)
    torch.testing.assert_close(y.sum(1), torch.ones(16))
    torch.testing.assert_close(y, reference_lame(model, x, kind="knn", knn=3), atol=1e-5, rtol=1e-4)
    w = affinity(F.normalize(torch.randn(10, 4), dim=-1), "knn", 3)
    assert torch.equal(w.sum(1), torch.full((10,), 3.0)) and torch.equal(w.diagonal(), torch.zeros(10))


def test_lame_batch_size_one_returns_model_probabilities() -> None:
    model = confident_cnn()
    x = data(1, seed=18, bs=1)[0]
    torch.testing.assert_close(LAME(model)(x).softmax(1), model.eval()(x).softmax(1))
