"""ActMAD: step-for-step against jmiemirza/ActMAD@401544d `methods/actmad_cifar.py` (SaveEmb statistics, L1 loss on
per-position means and variances, SGD on all parameters with BN in eval mode), written out independently."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from test_adapter_contract import tiny_cnn

from tta_bench.kernel import UserError
from tta_bench.methods import ActMAD


def data(n: int, seed: int, bs: int = 8, shift: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) * (1 + shift) + shift for _ in range(n)]


class Reference:
    """The official loop, written out: hooks on BN outputs, SaveEmb stats, (L1 means + L1 vars) * 0.5, SGD."""

    def __init__(self, model: nn.Module, source: list[torch.Tensor], lr: float) -> None:
        self.net = copy.deepcopy(model)
        self.bns = [m for m in self.net.modules() if isinstance(m, nn.BatchNorm2d)]
        means, vars_ = [[] for _ in self.bns], [[] for _ in self.bns]
        self.net.eval()
        with torch.no_grad():
            for x in source:
                outs = self.record(x)[1]
                for i, o in enumerate(outs):
                    means[i].append(torch.mean(torch.vstack([o]), dim=0))
                    vars_[i].append(torch.var(torch.vstack([o]), dim=0))
        self.clean_mean = [torch.mean(torch.stack(m), dim=0) for m in means]
        self.clean_var = [torch.mean(torch.stack(v), dim=0) for v in vars_]
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def record(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o)) for m in self.bns]
        y = self.net(x)
        for h in hooks:
            h.remove()
        return y, outs

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.net.train()
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        self.opt.zero_grad()
        out, outs = self.record(x)
        l1 = nn.L1Loss(reduction="mean")
        loss_mean = torch.tensor(0, requires_grad=True, dtype=torch.float)
        loss_var = torch.tensor(0, requires_grad=True, dtype=torch.float)
        for i, o in enumerate(outs):
            loss_mean = loss_mean + l1(torch.mean(o, dim=0), self.clean_mean[i])
            loss_var = loss_var + l1(torch.var(o, dim=0), self.clean_var[i])
        loss = (loss_mean + loss_var) * 0.5
        loss.backward()
        self.opt.step()
        return out.detach()


def test_actmad_matches_official_over_steps() -> None:
    model = tiny_cnn()
    source = data(3, seed=1)
    adapter = ActMAD(model, lr=0.01)
    adapter.prepare([(x, torch.zeros(len(x), dtype=torch.long)) for x in source])
    ref = Reference(model, source, lr=0.01)
    for (m, v), rm, rv in zip(adapter.source_statistics(), ref.clean_mean, ref.clean_var):
        assert m.shape == rm.shape and m.dim() == 3  # per channel and spatial position
        torch.testing.assert_close(m, rm, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(v, rv, rtol=1e-6, atol=1e-7)
    for x in data(4, seed=2, shift=0.5):
        torch.testing.assert_close(adapter(x), ref.step(x), rtol=1e-5, atol=1e-6)
    theirs = dict(ref.net.named_parameters())
    changed = set()
    for k, p in adapter.model.named_parameters():
        torch.testing.assert_close(p, theirs[k], rtol=1e-4, atol=1e-6)
        if not torch.equal(p, dict(model.named_parameters())[k]):
            changed.add(k)
    # every parameter before the last BN layer is trained (convs and BN affine); the head after it gets no
    # gradient from the loss (SGD skips it, weight decay included, as in the official)
    assert changed == set(theirs) - {"fc.weight", "fc.bias"}
    # BN running statistics are used, never updated (BN in eval mode during adaptation)
    for k, b in adapter.model.named_buffers():
        assert torch.equal(b, dict(model.named_buffers())[k])


def test_matching_reduces_the_gap_and_reset_keeps_source_stats() -> None:
    model = tiny_cnn()
    adapter = ActMAD(model, lr=0.05)
    adapter.prepare(data(2, seed=3))
    adapter.snapshot()
    shifted = data(1, seed=4, shift=1.0)[0]

    def gap() -> float:
        with torch.no_grad():
            _, acts = adapter._forward_recording(shifted)
            return sum((a.mean(0) - m).abs().mean().item() for a, (m, _) in zip(acts, adapter.source_statistics()))

    before = gap()
    for _ in range(5):
        adapter(shifted)
    assert gap() < 0.8 * before
    stats = [(m.clone(), v.clone()) for m, v in adapter.source_statistics()]
    adapter.reset()
    assert abs(gap() - before) < 1e-5
    for (m, v), (m2, v2) in zip(adapter.source_statistics(), stats):
        assert torch.equal(m, m2) and torch.equal(v, v2)


def test_dense_segmentation_outputs() -> None:
    torch.manual_seed(4)
    seg = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(5)
    source = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    adapter = ActMAD(seg, lr=0.01)
    adapter.prepare(source)
    w0 = adapter.model[0].weight.clone()
    x = torch.rand(2, 3, 16, 16, generator=g) * 2
    out = adapter(x)
    assert out.shape == (2, 5, 16, 16)
    torch.testing.assert_close(out, seg(x))  # the returned logits are the pre-update forward's
    assert not torch.equal(adapter.model[0].weight, w0)
    with pytest.raises(UserError, match="same size"):
        adapter(torch.rand(2, 3, 24, 24))


def test_refusals() -> None:
    model = tiny_cnn()
    adapter = ActMAD(model)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(adapter(x), model(x))  # without prepare: the source model, nothing adapted
    assert all(torch.equal(a, b) for a, b in zip(adapter.model.parameters(), model.parameters()))
    adapter.prepare(data(1, seed=6))
    with pytest.raises(UserError, match="at least 2 images"):
        adapter(torch.rand(1, 3, 32, 32))
    with pytest.raises(UserError, match="no BatchNorm"):
        ActMAD(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(5)))
