"""STAMP (methods/stamp.py) against the official rule (yuyongcan/STAMP dbdb2a9 src/methods/stamp.py, src/utils/sam.py),
written out here independently, and its distinctive parts: the class-balanced bank, the filters, the outlier score."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from tta_bench.methods import create
from tta_bench.methods.stamp import BalancedBank, crop_flip, prob_entropy


def _tiny(c: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, c))  # fmt: skip


class RefSAM(torch.optim.Optimizer):
    """src/utils/sam.py (davda54/sam): first_step climbs rho g/||g||, second_step restores and steps the base."""

    def __init__(self, params, base, rho=0.05, **kw):
        super().__init__(params, dict(rho=rho, **kw))
        self.base = base(self.param_groups, **kw)
        self.param_groups = self.base.param_groups

    @torch.no_grad()
    def first_step(self):
        norm = torch.norm(torch.stack([p.grad.norm(2) for g in self.param_groups for p in g["params"]
                                       if p.grad is not None]), 2)  # fmt: skip
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * (g["rho"] / (norm + 1e-12)))
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base.step()
        self.zero_grad()


class RefRBM:
    """The official RBM (random.choice replaced by a torch draw, as the port documents)."""

    def __init__(self, max_len, num_class):
        self.num_class, self.max_len, self.total_num = num_class, max_len, 0
        self.count_class = torch.zeros(num_class)
        self.data = [[] for _ in range(num_class)]

    def remove_item(self):
        max_count = 0
        for i in range(self.num_class):
            if len(self.data[i]) and self.count_class[i] > max_count:
                max_count = self.count_class[i]
        max_classes = [i for i in range(self.num_class) if self.count_class[i] == max_count and len(self.data[i])]
        self.data[max_classes[int(torch.randint(len(max_classes), (1,)))]].pop(0)

    def append(self, items, class_ids):
        for item, cid in zip(items, class_ids):
            if self.total_num < self.max_len:
                self.data[cid].append(item)
                self.total_num += 1
            else:
                self.remove_item()
                self.data[cid].append(item)

    def get_data(self):
        data = []
        for c in range(self.num_class):
            data.extend(self.data[c])
            self.count_class[c] = 0.9 * self.count_class[c] + 0.1 * len(self.data[c])
        return torch.stack(data)


def _reference(model, batches, lr, alpha, num_aug, mem_size, t_max):
    model = copy.deepcopy(model)
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    norm_model = copy.deepcopy(model).train()
    params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    opt = RefSAM(params, torch.optim.SGD, lr=lr, rho=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max)
    mem = RefRBM(mem_size, 3)
    ent = lambda p: -torch.sum(p * torch.log(p + 1e-5), dim=1)  # noqa: E731
    res = []
    for x in batches:
        xs = [x] + [crop_flip(x) for _ in range(num_aug)]  # the data loader's NCropsTransform
        with torch.no_grad():
            o0, on = model(xs[0]), norm_model(xs[0])
            f0 = torch.where(o0.max(1)[1] == on.max(1)[1])
            out = torch.stack([o0.softmax(1)] + [model(v).softmax(1) for v in xs[1:]]).mean(0)
            f = torch.where(ent(out)[f0] < alpha * math.log(3))
            mem.append(xs[0][f0][f], o0.max(1)[1][f0][f])
        res.append((out, -ent(out)))
        if mem.total_num:
            data = mem.get_data()
            opt.zero_grad()
            for first in (True, False):
                o = model(data)
                h = -(o.softmax(1) * o.log_softmax(1)).sum(1)
                inv = 1 / torch.exp(h)
                (h * (inv / inv.sum() * mem_size)).mean().backward()
                opt.first_step() if first else opt.second_step()
            sched.step()
    return res, model, opt.param_groups[0]["lr"]


def test_equivalent_to_the_official_rule_over_several_steps(one_thread):
    model = _tiny()
    torch.manual_seed(1)
    batches = [torch.rand(16, 3, 8, 8) for _ in range(5)]
    hp = dict(lr=0.5, alpha=1.0, num_aug=2, mem_size=6, t_max=3)
    torch.manual_seed(2)
    ref, ref_model, ref_lr = _reference(model, batches, **hp)
    a = create("stamp", model, lr=0.5, alpha=1.0, num_aug=2, augment="crop_flip", memory_size=6, cosine_t_max=3)
    torch.manual_seed(2)
    for x, (p_ref, id_score) in zip(batches, ref):
        out = a(x)
        torch.testing.assert_close(out.exp(), p_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.ood_score(x), -id_score, rtol=1e-5, atol=1e-6)
    mine = dict(a.model.named_parameters())
    changed = 0
    for k, v in ref_model.named_parameters():
        torch.testing.assert_close(mine[k], v, rtol=1e-5, atol=1e-6)
        changed += int(not torch.equal(v, dict(model.named_parameters())[k]))
    assert changed == 2  # the BN weight and bias moved; nothing else did
    assert a.optimizer.param_groups[0]["lr"] == pytest.approx(ref_lr) and ref_lr != pytest.approx(0.5)
    assert len(a.bank) == 6  # the bank filled and then replaced samples


def test_bank_drops_the_oldest_sample_of_the_largest_class():
    bank = BalancedBank(3, 2)
    a0, a1, b0, b1 = (torch.full((1,), float(v)) for v in (0, 1, 10, 11))
    bank.append(torch.stack([a0, a1, b0]), torch.tensor([0, 0, 1]))
    assert bank.read().flatten().tolist() == [0, 1, 10]
    assert bank.count.tolist() == pytest.approx([0.2, 0.1])
    bank.append(torch.stack([b1]), torch.tensor([1]))  # full: class 0 has the larger count, its oldest (a0) goes
    assert bank.read().flatten().tolist() == [1, 10, 11] and len(bank) == 3
    assert bank.count.tolist() == pytest.approx([0.9 * 0.2 + 0.1, 0.9 * 0.1 + 0.2])


def test_filters_keep_unreliable_and_inconsistent_samples_out(one_thread):
    model = _tiny()
    x = torch.rand(8, 3, 8, 8)
    a = create("stamp", model, alpha=1e-6, num_aug=1)  # no prediction is that certain: nothing enters the bank
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    a(x)
    assert len(a.bank) == 0 and all(torch.equal(before[k], v) for k, v in a.model.state_dict().items())
    b = create("stamp", model, alpha=10.0, num_aug=1)  # every sample certain enough ...
    with torch.no_grad():  # ... but the frozen source model disagrees with every prediction
        lin = b.norm_model[-1]
        lin.weight.neg_(), lin.bias.neg_()
        lin.bias.add_(torch.tensor([100.0, -100.0, -100.0]))
        b.model[-1].bias.add_(torch.tensor([-100.0, 100.0, -100.0]))
    b(x)
    assert len(b.bank) == 0
    c = create("stamp", model, alpha=10.0, num_aug=1, consistency_filter=False)
    c(x)
    assert len(c.bank) == 8


def test_prediction_score_and_reset(one_thread):
    a = create("stamp", _tiny(), alpha=10.0, num_aug=2, lr=0.1)
    x = torch.rand(8, 3, 8, 8)
    out = a(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(8), atol=1e-5)  # log of a mean of softmaxes
    torch.testing.assert_close(a.ood_score(x), prob_entropy(out.exp()))
    other = torch.rand(4, 3, 8, 8)
    assert a.ood_score(other).shape == (4,)  # another batch: scored by the current model
    assert a.optimizer.param_groups[0]["lr"] < 0.1 and len(a.bank) == 8
    a.reset()
    assert a.bank is None and a.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert a._last is None


def test_crop_flip_draws_per_image():
    torch.manual_seed(0)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8).expand(2, 3, 8, 8)
    y = torch.stack([crop_flip(x) for _ in range(8)])
    assert y.shape == (8, 2, 3, 8, 8)
    assert len({tuple(v[0, 0, 0].tolist()) for v in y}) > 1  # offsets differ between draws
