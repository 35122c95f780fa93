"""TEA: step-for-step against yuanyige/tea@66e7ffa `core/adazoo/energy.py` (replay buffer, SGLD from the energy,
contrastive energy loss, post-update logits), written out independently on the tiny BN CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from test_adapter_contract import tiny_cnn

from tta_bench.kernel import UserError
from tta_bench.methods import TEA

FAST = dict(sgld_steps=3, buffer_size=16)


def data(n: int, seed: int, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


class Reference:
    """The official: configure_model(ada_param=['bn']), Adam on BatchNorm2d affines, forward_and_adapt."""

    def __init__(self, model: nn.Module, buffer_size: int, sgld_steps: int, sgld_lr: float, sgld_std: float,
                 reinit: float, cond: bool = False, n_classes: int = 5) -> None:  # fmt: skip
        self.f = copy.deepcopy(model)
        self.f.train()
        self.f.requires_grad_(False)
        params = []
        for m in self.f.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(True)
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
                params += [m.weight, m.bias]
        self.opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
        self.buffer = torch.FloatTensor(buffer_size, 3, 32, 32).uniform_(-1, 1)  # init_random, at construction
        self.k, self.lr, self.std, self.reinit, self.cond, self.nc = (
            sgld_steps,
            sgld_lr,
            sgld_std,
            reinit,
            cond,
            n_classes,
        )

    def sample(self, bs: int, y: torch.Tensor | None) -> torch.Tensor:
        self.f.eval()
        inds = torch.randint(0, len(self.buffer), (bs,))
        buffer_samples = self.buffer[inds]
        random_samples = torch.FloatTensor(bs, 3, 32, 32).uniform_(-1, 1)
        choose_random = (torch.rand(bs) < self.reinit).float()[:, None, None, None]
        x_k = (choose_random * random_samples + (1 - choose_random) * buffer_samples).requires_grad_(True)
        for _ in range(self.k):
            logits = self.f(x_k)
            e = logits.logsumexp(1) if y is None else torch.gather(logits, 1, y[:, None])
            f_prime = torch.autograd.grad(e.sum(), [x_k], retain_graph=True)[0]
            x_k.data += self.lr * f_prime + self.std * torch.randn_like(x_k)
        self.f.train()
        self.buffer[inds] = x_k.detach().cpu()
        return x_k.detach()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.randint(0, self.nc, (x.shape[0],)) if self.cond else None
        x_fake = self.sample(x.shape[0], y)
        energy_real = self.f(x).logsumexp(1).mean()
        energy_fake = self.f(x_fake).logsumexp(1).mean()
        loss = -(energy_real - energy_fake)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return self.f(x).detach()


@pytest.mark.parametrize("sampling", ["uncond", "cond"])
def test_tea_matches_official_over_steps(sampling: str) -> None:
    model = tiny_cnn()
    adapter = TEA(model, sampling=sampling, reinit_freq=0.3, sgld_lr=0.5, **FAST)
    torch.manual_seed(7)
    ref = Reference(model, 16, 3, 0.5, 0.01, 0.3, cond=sampling == "cond")
    xs = data(3, seed=1)
    refs = [ref.step(x) for x in xs]
    torch.manual_seed(7)  # the adapter draws its buffer at the first batch, then the same draws as the official
    outs = [adapter(x).detach() for x in xs]
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adapter.replay_buffer, ref.buffer, rtol=1e-5, atol=1e-6)
    theirs = dict(ref.f.named_parameters())
    changed = {k for k, p in adapter.model.named_parameters() if not torch.equal(p, dict(model.named_parameters())[k])}
    for k, p in adapter.model.named_parameters():
        torch.testing.assert_close(p, theirs[k], rtol=1e-5, atol=1e-6)
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert changed == {f"{n}.{w}" for n in bns for w in ("weight", "bias")}  # the BN affines, nothing else


def test_buffer_is_updated_at_the_drawn_indices_and_reset_restores_it() -> None:
    adapter = TEA(tiny_cnn(), reinit_freq=0.0, **FAST)
    x = data(1, seed=2, bs=4)[0]
    torch.manual_seed(0)
    first = adapter(x)
    buf = adapter.replay_buffer.clone()
    torch.manual_seed(0)
    initial = torch.empty(16, 3, 32, 32).uniform_(-1, 1)
    inds = torch.randint(0, 16, (4,))
    moved = {i for i in range(16) if not torch.equal(buf[i], initial[i])}
    assert moved == set(inds.tolist())  # exactly the chains that were run went back into the buffer
    assert float((buf[inds] - initial[inds]).abs().max()) > 1e-3
    adapter.reset()
    assert adapter.replay_buffer is None
    torch.manual_seed(0)
    torch.testing.assert_close(adapter(x), first, rtol=0, atol=0)


def test_sgld_raises_the_samples_score() -> None:
    """With no noise, SGLD climbs logsumexp f(x): the samples score higher than their starting points."""
    model = tiny_cnn()
    adapter = TEA(model, sgld_std=0.0, sgld_lr=1.0, reinit_freq=1.0, **FAST)
    from tta_bench.methods.tea import energy_sample

    torch.manual_seed(3)
    buffer = torch.empty(16, 3, 32, 32).uniform_(-1, 1)
    torch.manual_seed(4)
    start = torch.empty(8, 3, 32, 32)
    torch.randint(0, 16, (8,))
    start.uniform_(-1, 1)
    torch.manual_seed(4)
    fake = energy_sample(adapter.model, buffer, 8, 3, 1.0, 0.0, 1.0, torch.device("cpu"))
    with torch.no_grad():
        adapter.model.eval()
        assert adapter.model(fake).logsumexp(1).mean() > adapter.model(start).logsumexp(1).mean() + 1e-3


def test_refusals() -> None:
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    with pytest.raises(UserError, match="dense outputs"):
        TEA(seg, **FAST)(torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match="buffer_size="):
        TEA(tiny_cnn(), buffer_size=10000)(torch.rand(2, 3, 224, 224))
