"""NOTE: sample by sample against the official rule (TaesikGong/NOTE@a714a2a learner/note.py, utils/iabn.py,
utils/memory.py PBRS) written out on a functional two-layer model; IABN, PBRS and the update schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import NOTE
from tta_bench.methods.note import PBRS, InstanceAwareBatchNorm


def tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def stream(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * 1.3 + 0.4


# --- the official rule, written out ----------------------------------------------------------------------------
def ref_iabn(x, st, training, k=4.0, eps=1e-5, m=0.01):
    """utils/iabn.py InstanceAwareBatchNorm2d.forward (skip_thres 1), _bn's running update included."""
    b, c, h, w = x.size()
    sigma2, mu = torch.var_mean(x, dim=[2, 3], keepdim=True, unbiased=True)
    if training:
        sigma2_b, mu_b = torch.var_mean(x, dim=[0, 2, 3], keepdim=True, unbiased=True)
        with torch.no_grad():
            st["rm"].mul_(1 - m).add_(m * mu_b.view(c))
            st["rv"].mul_(1 - m).add_(m * sigma2_b.view(c))
    else:
        mu_b, sigma2_b = st["rm"].view(1, c, 1, 1), st["rv"].view(1, c, 1, 1)
    s_mu = torch.sqrt((sigma2_b + eps) / (h * w))
    s_sigma2 = (sigma2_b + eps) * math.sqrt(2 / (h * w - 1))
    mu_adj = mu_b + soft(mu - mu_b, k * s_mu)
    sigma2_adj = F.relu(sigma2_b + soft(sigma2 - sigma2_b, k * s_sigma2))
    return (x - mu_adj) * torch.rsqrt(sigma2_adj + eps) * st["w"].view(c, 1, 1) + st["b"].view(c, 1, 1)


def soft(x, lbd):
    return F.relu(x - lbd) - F.relu(-(x + lbd))


def ref_forward(model, st, x, training):
    h = F.relu(ref_iabn(F.conv2d(x, model[0].weight), st[0], training))
    h = F.relu(ref_iabn(F.conv2d(h, model[3].weight), st[1], training))
    return F.linear(h.mean((2, 3)), model[8].weight, model[8].bias)


class RefPBRS:  # utils/memory.py PBRS with torch's generator in place of Python's random (same draw order)
    def __init__(self, capacity, num_class):
        self.data, self.counter, self.capacity = [[] for _ in range(num_class)], [0] * num_class, capacity

    def add_instance(self, f, cls):
        self.counter[cls] += 1
        is_add = True
        if sum(len(d) for d in self.data) >= self.capacity:
            occ = [len(d) for d in self.data]
            largest = [i for i, oc in enumerate(occ) if oc == max(occ)]
            if cls not in largest:
                lg = largest[int(torch.randint(len(largest), ()).item())]
                del self.data[lg][int(torch.randint(len(self.data[lg]), ()).item())]
            elif torch.rand(()).item() <= occ[cls] / self.counter[cls]:
                del self.data[cls][int(torch.randint(len(self.data[cls]), ()).item())]
            else:
                is_add = False
        if is_add:
            self.data[cls].append(f)


def official(model, xs, every, capacity, lr=1e-4, epochs=1, sgd=False):
    st = [{"rm": bn.running_mean.clone(), "rv": bn.running_var.clone(), "w": bn.weight.detach().clone(),
           "b": bn.bias.detach().clone()} for bn in (model[1], model[4])]  # fmt: skip
    params = [p for s in st for p in (s["w"], s["b"])]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr) if sgd else torch.optim.Adam(params, lr=lr, weight_decay=0)
    mem, preds = RefPBRS(capacity, 3), []
    for n, f in enumerate(xs, start=1):  # train_online, one sample at a time
        with torch.no_grad():
            logit = ref_forward(model, st, f.unsqueeze(0), False)
        mem.add_instance(f, int(logit.max(1)[1][0]))
        preds.append(logit[0])  # evaluation_online (batch-free: eval mode, the same model)
        if n % every == 0:
            feats = torch.stack([x for d in mem.data for x in d])
            for _ in range(epochs):
                p = F.softmax(ref_forward(model, st, feats, True), dim=1)
                loss = (-p * torch.log(p + 1e-6)).mean()  # HLoss
                opt.zero_grad()
                loss.backward()
                opt.step()
    return torch.stack(preds), st


@pytest.mark.parametrize("sgd", [False, True])  # SGD (TTAB's optimizer) also pins the loss scale (Adam ignores it)
def test_note_matches_official_sample_by_sample(sgd: bool) -> None:
    model, xs = tiny(), stream(17, seed=1)
    torch.manual_seed(5)
    extra = {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "lr": 5.0} if sgd else {"lr": 1e-2}
    adapter = NOTE(model, update_every=4, memory_size=6, **extra)
    outs = torch.cat([adapter(x) for x in (xs[:5], xs[5:12], xs[12:])])  # batches cut across the updates
    torch.manual_seed(5)
    want, st = official(model, xs, every=4, capacity=6, lr=extra["lr"], sgd=sgd)
    torch.testing.assert_close(outs, want, atol=1e-5, rtol=1e-4)
    for i, name in enumerate(("1", "4")):
        bn = adapter.model.get_submodule(name)._bn
        for mine, theirs in ((bn.weight, st[i]["w"]), (bn.bias, st[i]["b"]), (bn.running_mean, st[i]["rm"]),
                             (bn.running_var, st[i]["rv"])):  # fmt: skip
            torch.testing.assert_close(mine.detach(), theirs.detach(), atol=1e-5, rtol=1e-4)
    # 4 updates happened: the affine parameters and statistics moved from the source
    assert not torch.allclose(adapter.model[1]._bn.weight, model[1].weight)
    assert not torch.allclose(adapter.model[4]._bn.running_var, model[4].running_var)
    assert adapter.model[1]._bn.momentum == 0.01 and model[1].momentum == 0.1  # the caller's model untouched
    assert {id(p) for p in adapter.trainable_parameters()} == {
        id(p) for i in (1, 4) for p in (adapter.model[i]._bn.weight, adapter.model[i]._bn.bias)
    }


def test_updates_only_every_n_samples_and_batch_cut_is_invisible() -> None:
    model, xs = tiny(), stream(8, seed=2)
    torch.manual_seed(0)
    a = NOTE(model, update_every=4, lr=1e-2)
    w0 = a.model[1]._bn.weight.detach().clone()
    a(xs[:3])
    assert torch.equal(a.model[1]._bn.weight, w0)  # 3 samples: no update yet
    out_a = torch.cat([a(xs[3:4]), a(xs[4:])])
    assert not torch.equal(a.model[1]._bn.weight, w0)
    torch.manual_seed(0)
    b = NOTE(model, update_every=4, lr=1e-2)
    out_b = b(xs)  # one batch of 8: cut at 4, predictions of samples 5..8 after the first update
    torch.testing.assert_close(out_a, out_b[3:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.model[1]._bn.weight, b.model[1]._bn.weight, atol=1e-7, rtol=1e-6)
    with torch.no_grad():  # samples 5..8 are predicted by the updated model, not the source one under IABN
        frozen = NOTE(model, update_every=10**6)
        torch.testing.assert_close(out_b[:4], frozen(xs[:4]), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out_b[4:], frozen(xs[4:]), atol=1e-6, rtol=1e-6)


def test_iabn_limits() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        bn.running_var.copy_(torch.tensor([1.5, 0.7, 1.0]))
    x = torch.randn(2, 3, 5, 5) * 2 + 1
    # huge k: every instance deviation is shrunk away -> plain BN with running statistics
    torch.testing.assert_close(InstanceAwareBatchNorm(bn, 1e9, 1).eval()(x), bn(x), atol=1e-5, rtol=1e-5)
    # k = 0: instance statistics (unbiased variance), i.e. instance normalisation
    var, mu = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=True)
    want = (x - mu) / torch.sqrt(var + bn.eps)
    torch.testing.assert_close(InstanceAwareBatchNorm(bn, 0.0, 1).eval()(x), want, atol=1e-5, rtol=1e-5)
    # layers with <= skip_thres positions: plain BN; (N, C) input too
    torch.testing.assert_close(InstanceAwareBatchNorm(bn, 0.0, 25).eval()(x), bn(x), atol=1e-5, rtol=1e-5)
    bn1 = nn.BatchNorm1d(3).eval()
    v = torch.randn(4, 3)
    torch.testing.assert_close(InstanceAwareBatchNorm(bn1, 4.0, 1).eval()(v), bn1(v))


def test_pbrs_balances_predicted_classes() -> None:
    torch.manual_seed(0)
    mem = PBRS(10, 3)
    for i in range(100):
        mem.add(torch.tensor([float(i)]), 0)
    assert [len(d) for d in mem.data] == [10, 0, 0]
    assert max(float(x) for x in mem.data[0]) > 20  # reservoir: later class-0 samples replaced earlier ones
    for _ in range(5):
        mem.add(torch.zeros(1), 1)  # a minority class always enters, evicting from the largest
    assert [len(d) for d in mem.data] == [5, 5, 0]
    for _ in range(4):
        mem.add(torch.zeros(1), 2)
    sizes = [len(d) for d in mem.data]
    assert sum(sizes) == 10 and sizes[2] == 4 and max(sizes) - min(sizes) <= 1


def test_fifo_memory_and_iabn_off() -> None:
    model, xs = tiny(), stream(8, seed=3)
    a = NOTE(model, memory="fifo", memory_size=3, update_every=4, iabn=False)
    assert isinstance(a.model[1], nn.BatchNorm2d) and a.model[1].momentum == 0.01
    a(xs)
    assert len(a.memory.samples()) == 3 and torch.equal(a.memory.samples()[-1], xs[-1])
    torch.manual_seed(0)  # iabn=False: the first 4 predictions are the plain source model's (eval BN)
    b = NOTE(model, memory="fifo", update_every=4, iabn=False)
    torch.testing.assert_close(b(xs[:4]), model(xs[:4]).detach())


def test_refusals() -> None:
    with pytest.raises(UserError, match="no BatchNorm"):
        NOTE(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(3)))
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    with pytest.raises(UserError, match="dense predictions"):
        NOTE(seg)(stream(2, seed=0))
    with pytest.raises(UserError, match="running statistics"):
        NOTE(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
