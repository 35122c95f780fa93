"""RoTTA: robust BN formula, CSTU memory (hand-computed), timeliness weights, and the adapter step for step
against a plain restatement of BIT-DA/RoTTA core/adapter/rotta.py."""

from __future__ import annotations

import copy
import math

import torch
from test_eata import confident_cnn, data

from tta_bench.methods import RoTTA
from tta_bench.methods._augment import tta_augment
from tta_bench.methods.rotta import CSTU, RobustBN, timeliness_reweighting


def test_robust_bn_formula() -> None:
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.weight.copy_(torch.tensor([1.1, 0.9, 1.0]))
    rbn = RobustBN(bn, 0.05)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    mu = 0.95 * bn.running_mean + 0.05 * x.mean((0, 2, 3))
    var = 0.95 * bn.running_var + 0.05 * x.var((0, 2, 3), unbiased=False)
    expected = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(rbn.train()(x), expected + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(rbn.source_mean, mu)
    torch.testing.assert_close(rbn.source_var, var)
    y = rbn.eval()(x)  # eval: the stored statistics, unchanged
    torch.testing.assert_close(y, expected + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(rbn.source_mean, mu)


def test_cstu_memory_hand_computed() -> None:
    mem = CSTU(capacity=4, num_class=2, lambda_t=1.0, lambda_u=1.0)
    a, b, c, d, e = (torch.full((1,), float(i)) for i in range(5))
    mem.add(a, 0, 0.1)
    mem.add(b, 0, 0.5)
    mem.add(c, 0, 0.2)  # class 0 full (capacity / C = 2): b has the highest score (1.28 > 0.79) and goes
    mem.add(d, 0, 2.0)  # its score 3.39 is above every stored one (a 0.82, c 0.85): not added
    mem.add(e, 1, 0.3)  # class 1 has room and the bank is not full
    xs, ages = mem.memory()
    assert [float(t) for t in xs] == [0.0, 2.0, 4.0]
    assert ages == [5 / 4, 3 / 4, 1 / 4]
    score = mem.score(2, 0.1)
    assert math.isclose(score, 1 / (1 + math.exp(-2 / 4)) + 0.1 / math.log(2))


def test_cstu_is_category_balanced() -> None:
    mem = CSTU(capacity=16, num_class=4, lambda_t=1.0, lambda_u=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):  # 85 % of the stream is class 0
        cls = 0 if torch.rand(1, generator=g) < 0.85 else int(torch.randint(1, 4, (1,), generator=g))
        mem.add(torch.zeros(1), cls, float(torch.rand(1, generator=g)))
        sizes = [len(c) for c in mem.data]
        assert max(sizes) <= 4 and sum(sizes) <= 16
    assert [len(c) for c in mem.data] == [4, 4, 4, 4]


def test_timeliness_weights() -> None:
    a = torch.tensor([0.0, 0.5, 2.0])
    torch.testing.assert_close(timeliness_reweighting(a), torch.exp(-a) / (1 + torch.exp(-a)))
    assert timeliness_reweighting(torch.zeros(1)).item() == 0.5


def reference_rotta(model, teacher, xs, capacity=8, freq=8, nu=0.001):
    """forward_and_adapt / update_model of core/adapter/rotta.py (Adam 1e-3), on copies of the adapter's models."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    mem, seen, outs = CSTU(capacity, 5, 1.0, 1.0), 0, []
    for x in xs:
        with torch.no_grad():
            model.eval()
            teacher.eval()
            out = teacher(x)
            p = out.softmax(1)
            h = (-p * torch.log(p + 1e-6)).sum(1)
        for i in range(len(x)):
            mem.add(x[i], p[i].argmax().item(), h[i].item())
            seen += 1
            if seen % freq == 0:
                model.train()
                teacher.train()
                bank, ages = mem.memory()
                bank = torch.stack(bank)
                strong = tta_augment(bank)
                t_out, s_out = teacher(bank), model(strong)
                w = torch.exp(-torch.tensor(ages)) / (1 + torch.exp(-torch.tensor(ages)))
                loss = (-(t_out.softmax(1) * s_out.log_softmax(1)).sum(1) * w).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for pt, ps in zip(teacher.parameters(), model.parameters()):
                        pt.copy_((1 - nu) * pt + nu * ps)
        outs.append(out)
    return outs


def test_rotta_matches_official() -> None:
    adapter = RoTTA(confident_cnn(), memory_size=8, update_frequency=8)
    model, teacher = copy.deepcopy(adapter.model), copy.deepcopy(adapter.teacher)
    xs = data(3, seed=14, bs=6)  # updates after samples 8 and 16: inside the 2nd and 3rd batches
    torch.manual_seed(0)
    outs = reference_rotta(model, teacher, xs)
    torch.manual_seed(0)
    for x, o in zip(xs, outs):
        torch.testing.assert_close(adapter(x), o)
    assert adapter.seen == 18
    ref_state = {
        **{f"model.{k}": v for k, v in model.state_dict().items()},
        **{f"teacher.{k}": v for k, v in teacher.state_dict().items()},
    }
    assert adapter.state_dict().keys() == ref_state.keys()
    for k, v in adapter.state_dict().items():
        torch.testing.assert_close(v, ref_state[k])
    assert not torch.equal(adapter.model.features[0][1].weight, adapter.source_state["model.features.0.1.weight"])


def test_rotta_returns_teacher_before_update_and_bn_is_robust() -> None:
    adapter = RoTTA(confident_cnn(), update_frequency=4)
    assert isinstance(adapter.model.features[0][1], RobustBN) and isinstance(adapter.teacher.features[0][1], RobustBN)
    x = data(1, seed=15, bs=8)[0]
    expected = adapter.predict(x)
    torch.testing.assert_close(adapter(x), expected)  # two updates happened inside this batch, after the output
    assert not torch.equal(adapter.predict(x), expected)
