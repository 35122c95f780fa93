"""EATA / ETA: step-for-step against a plain restatement of mr-eggplant/EATA (eata.py + main.py's Fisher)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from test_adapter_contract import N_CLASSES, tiny_cnn

from tta_bench.methods import EATA, ETA
from tta_bench.methods.base import BN_TYPES, norm_affine_params


def confident_cnn() -> torch.nn.Module:
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)  # spread entropies so that both filters select some samples
    return model


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def logit_model() -> torch.nn.Module:
    """Logits = a BatchNorm of the input (N,5,1,1): controlled, diverse predictions for the filter tests."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(N_CLASSES), torch.nn.Flatten())
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    return model


def logit_data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    """Noisy one-hot inputs of random classes and confidences, shape (bs,5,1,1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, N_CLASSES, (bs,), generator=g)
        scale = torch.rand(bs, 1, generator=g) * 4
        x = F.one_hot(y, N_CLASSES) * scale + torch.randn(bs, N_CLASSES, generator=g) * 0.5
        out.append(x.view(bs, N_CLASSES, 1, 1))
    return out


def reference_fisher(model, xs):
    """main.py: CE against the model's own argmax, grads² summed over batches, / number of batches."""
    params = norm_affine_params(model, BN_TYPES)
    fishers = [torch.zeros_like(p) for p in params]
    for x in xs:
        out = model(x)
        loss = F.cross_entropy(out, out.max(1)[1])
        for f, g in zip(fishers, torch.autograd.grad(loss, params)):
            f += g**2
    return [f / len(xs) for f in fishers], [p.detach().clone() for p in params]


def reference_eata(model, xs, e_margin, d_margin, fishers=None, alpha=2000.0):
    """forward_and_adapt_eata + update_model_probs, written out plainly; returns outputs and counts."""
    params = norm_affine_params(model, BN_TYPES)
    opt = torch.optim.SGD(params, 0.00025, momentum=0.9)
    probs, outs, counts = None, [], []
    for x in xs:
        outputs = model(x)
        ent = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)
        keep1 = ent < e_margin
        ent, sel = ent[keep1], outputs[keep1].softmax(1)
        if probs is not None:
            keep2 = F.cosine_similarity(probs[None], sel, dim=1).abs() < d_margin
            ent, sel = ent[keep2], sel[keep2]
        if len(sel):
            probs = sel.mean(0).detach() if probs is None else (0.9 * probs + (1 - 0.9) * sel.mean(0)).detach()
        loss = (ent * torch.exp(e_margin - ent.detach())).mean()
        if fishers is not None:
            for p, f, p0 in zip(params, *fishers):
                loss = loss + alpha * (f * (p - p0) ** 2).sum()
        if len(ent):
            loss.backward()
            opt.step()
        opt.zero_grad()
        outs.append(outputs.detach())
        counts.append((int(keep1.sum()), len(ent)))
    return outs, counts, probs


def test_eata_matches_official_with_fisher_and_filters() -> None:
    adapter = EATA(logit_model(), e_margin_frac=0.4, d_margin=0.4, fisher_size=40)
    ref = copy.deepcopy(adapter.model)
    source = logit_data(3, seed=5)  # 48 samples, truncated to fisher_size=40: batches of 16, 16, 8
    adapter.prepare([(x, torch.zeros(len(x))) for x in source])
    fishers = reference_fisher(ref, [source[0], source[1], source[2][:8]])
    for i, (f, p0) in enumerate(zip(*fishers)):
        torch.testing.assert_close(getattr(adapter, f"fisher_{i}"), f)
        torch.testing.assert_close(getattr(adapter, f"fisher_anchor_{i}"), p0)
    xs = logit_data(4, seed=6)
    outs, counts, probs = reference_eata(ref, xs, 0.4 * math.log(N_CLASSES), 0.4, fishers)
    n1 = n2 = 0
    for x, o, (c1, c2) in zip(xs, outs, counts):
        torch.testing.assert_close(adapter(x), o)
        n1, n2 = n1 + c1, n2 + c2
        assert (adapter.num_samples_update_1, adapter.num_samples_update_2) == (n1, n2)
    assert counts[0][1] > 0 and all(0 < c2 < c1 for c1, c2 in counts[1:])  # both filters active
    torch.testing.assert_close(adapter.probs, probs)
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_eata_drops_unreliable_samples_and_keeps_params_when_none_selected() -> None:
    adapter = ETA(confident_cnn(), e_margin_frac=1e-6)  # nothing is reliable
    before = [p.detach().clone() for p in adapter.trainable_parameters()]
    adapter(data(1, seed=1)[0])
    assert adapter.num_samples_update_1 == 0 and adapter.probs is None
    assert all(torch.equal(p, b) for p, b in zip(adapter.trainable_parameters(), before))


def test_eata_redundancy_filter_uses_moving_average() -> None:
    adapter = ETA(confident_cnn(), e_margin_frac=1.0, d_margin=0.4)
    x1, x2 = data(2, seed=2)
    adapter(x1)
    p_bar = adapter.probs.clone()
    out = adapter.predict(x2)  # what the second forward sees (before its update)
    probs = out.softmax(1)
    expected = (F.cosine_similarity(p_bar[None], probs, dim=1).abs() < 0.4).sum().item()
    n2 = adapter.num_samples_update_2
    adapter(x2)
    assert adapter.num_samples_update_2 - n2 == expected
    assert adapter.num_samples_update_1 == 32  # e_margin = ln C: every non-uniform sample is reliable


def test_eata_without_prepare_is_eta_and_reset_clears_probs() -> None:
    a, b = EATA(confident_cnn(), e_margin_frac=1.0), ETA(confident_cnn(), e_margin_frac=1.0)
    for x in data(2, seed=3):
        torch.testing.assert_close(a(x), b(x))
    a.reset()
    assert a.probs is None and a.num_samples_update_1 == 0
