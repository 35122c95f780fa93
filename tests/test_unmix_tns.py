"""UnMix-TNS: step for step against devavratTomar/unmixtns@8e12b9f `unmixtns.py` (BaseNormLayer init, UnMixTNS2d /
UnMixTNS1d forward, replace_bn_layers' momentum correction) written out on a tiny model; distinctive behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import UnMixTNSAdapter


def tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (m[1], m[4], m[9]):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def batches(n: int, seed: int, bs: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, 8, 8, generator=g) * (1 + i * 0.3) + 0.2 * i for i in range(n)]


# --- the official rule, written out ----------------------------------------------------------------------------
def ref_init(bn, K):
    coeff = 0.5
    rm, rv = bn.running_mean.repeat(K, 1), bn.running_var.repeat(K, 1)
    if K == 1:
        noise, coeff = 0, 0
    else:
        noise = math.sqrt(coeff * K / (K - 1)) * rv.sqrt() * torch.randn_like(rm)
    return {"rm": rm + noise, "rv": (1 - coeff) * rv, "bn": bn}


def ref_2d(x, s, M):
    inst_mean, inst_var = x.mean(dim=[2, 3]), x.var(dim=[2, 3], unbiased=False)
    sim = torch.einsum("bc,kc->bk", F.normalize(inst_mean, dim=1), F.normalize(s["rm"], dim=1))
    probs = torch.softmax(sim / 0.07, dim=1)
    mean_mat = (1.0 - probs.unsqueeze(-1)) * s["rm"].unsqueeze(0) + probs.unsqueeze(-1) * inst_mean.unsqueeze(1)
    var_mat = (1.0 - probs.unsqueeze(-1)) * s["rv"].unsqueeze(0) + probs.unsqueeze(-1) * inst_var.unsqueeze(1)
    mean = torch.mean(mean_mat, dim=1)
    var = torch.mean(var_mat, dim=1) + torch.mean(mean_mat**2, dim=1) - torch.mean(mean_mat, dim=1) ** 2
    s["rm"] = s["rm"] + M * torch.mean(probs.unsqueeze(-1) * (inst_mean.unsqueeze(1) - s["rm"].unsqueeze(0)), dim=0)
    s["rv"] = s["rv"] + M * torch.mean(probs.unsqueeze(-1) * (inst_var.unsqueeze(1) - s["rv"].unsqueeze(0)), dim=0)
    b, c = mean.shape
    y = (x - mean.view(b, c, 1, 1)) / torch.sqrt(var.view(b, c, 1, 1) + s["bn"].eps)
    return y * s["bn"].weight.view(1, -1, 1, 1) + s["bn"].bias.view(1, -1, 1, 1)


def ref_1d(x, s):
    bn = s["bn"]
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_unmix_tns_matches_official_over_steps() -> None:
    model, K, bs, bs_max = tiny(), 4, 6, 64
    torch.manual_seed(3)
    adapter = UnMixTNSAdapter(model, num_components=K, batch_size_max=bs_max)
    torch.manual_seed(3)
    st = [ref_init(model[i], K) for i in (1, 4, 9)]  # replace_bn_layers: named_modules order, one draw each
    M = 1 - (1 - 0.1) ** (bs / bs_max)
    with torch.no_grad():
        for x in batches(4, seed=1, bs=bs):
            h = F.relu(ref_2d(model[0](x), st[0], M))
            h = F.relu(ref_2d(model[3](h), st[1], M))
            want = model[10](ref_1d(model[8](h.mean((2, 3))), st[2]))
            torch.testing.assert_close(adapter(x), want, atol=1e-5, rtol=1e-5)
    for i, s in zip((1, 4), st[:2]):
        torch.testing.assert_close(adapter.model[i].means, s["rm"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapter.model[i].vars, s["rv"], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(adapter.model[i].means, model[i].running_mean.repeat(K, 1))
    assert not adapter.trainable_parameters() and adapter.optimizer is None
    torch.testing.assert_close(model[1].running_mean, tiny()[1].running_mean)  # the caller's model untouched


def test_one_component_is_instance_normalisation_and_momentum_correction() -> None:
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.2]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    a = UnMixTNSAdapter(nn.Sequential(bn), num_components=1, batch_size_max=16)
    assert torch.equal(a.model[0].vars, bn.running_var.view(1, 3))  # K = 1: no noise, alpha 0
    var, mu = torch.var_mean(x, dim=(2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(a(x), (x - mu) / torch.sqrt(var + bn.eps), atol=1e-5, rtol=1e-5)
    m = 1 - 0.9 ** (4 / 16)  # p = 1 for the single component
    want = bn.running_mean + m * (mu.view(4, 3).mean(0) - bn.running_mean)
    torch.testing.assert_close(a.model[0].means, want.view(1, 3))
    b = UnMixTNSAdapter(nn.Sequential(bn), num_components=1, batch_size_max=16, momentum=0.5)
    b(x)
    m = 1 - 0.5 ** (4 / 16)  # momentum 0.5 replaces the layer's 0.1
    torch.testing.assert_close(
        b.model[0].means, (bn.running_mean + m * (mu.view(4, 3).mean(0) - bn.running_mean)).view(1, 3)
    )


def test_a_sample_is_normalised_independently_of_its_batch() -> None:
    """Unlike test-batch BN, a sample's output depends on the components and itself, not on the other samples."""
    torch.manual_seed(0)
    a = UnMixTNSAdapter(tiny(), num_components=8)
    x = batches(1, seed=4)[0]
    skewed = torch.cat([x[:1], x[1:].flip(0) * 3])
    with torch.no_grad():
        alone = a.predict(x[:1])
        torch.testing.assert_close(a.predict(x)[:1], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.predict(skewed)[:1], alone, atol=1e-5, rtol=1e-5)


def test_predict_leaves_components_and_reset_restores_them() -> None:
    torch.manual_seed(1)
    a = UnMixTNSAdapter(tiny(), num_components=4)
    x0, x1 = batches(2, seed=5)
    init = a.model[1].means.clone()
    a.predict(x0)
    assert torch.equal(a.model[1].means, init)
    out = a(x0)
    assert not torch.equal(a.model[1].means, init)
    a.reset()
    assert torch.equal(a.model[1].means, init)
    torch.testing.assert_close(a(x0), out, rtol=0, atol=0)
    # the components drift toward the stream: after more batches, a second pass over x1 normalises it differently
    p1 = a.predict(x1)
    for _ in range(5):
        a(x1)
    assert not torch.allclose(a.predict(x1), p1, atol=1e-4)


def test_refusals() -> None:
    with pytest.raises(UserError, match="no BatchNorm"):
        UnMixTNSAdapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)))
    with pytest.raises(UserError, match="running statistics"):
        UnMixTNSAdapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
