"""AdaContrast: step-for-step against a plain restatement of the suite's adacontrast.py (AdaMoCo + losses)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import N_CLASSES, tiny_cnn

from tta_bench.methods import AdaContrast


def fixed_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic weak / strong-query / strong-key views of a batch."""
    return x.flip(-1), (x * 0.8 + 0.1).flip(-2), (x * 1.2 - 0.1).clamp(0, 1)


def encode(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official BaseModel split for this architecture: encoder = everything before `fc`."""
    feat = model.pool(model.features((x - 0.5) / 0.5)).flatten(1)
    return feat, model.fc(feat)


class Reference:
    """AdaMoCo + AdaContrast.loss_calculation/forward_and_adapt/update_labels, written out."""

    def __init__(self, model: nn.Module, K: int, warmup: int, m: float = 0.999, T: float = 0.07) -> None:
        self.base = copy.deepcopy(model).train().requires_grad_(True)
        self.momentum = copy.deepcopy(self.base).requires_grad_(False)
        self.K, self.m, self.T, self.warmup = K, m, T, warmup
        self.mem_feat = F.normalize(torch.randn(model.fc.in_features, K), dim=0)
        self.mem_labels = torch.randint(0, model.fc.out_features, (K,))
        self.queue_ptr, self.first_X = 0, 0
        self.feats, self.probs, self.ptr = torch.tensor([]), torch.tensor([]), 0
        self.opt = torch.optim.SGD(
            self.base.parameters(), lr=2e-4, momentum=0.9, dampening=0.0, weight_decay=1e-4, nesterov=True
        )

    def knn(self, feats):
        dist = 1 - F.normalize(feats, dim=1) @ F.normalize(self.feats, dim=1).T
        _, idxs = dist.sort()
        probs = self.probs[idxs[:, :10], :].mean(1)
        return probs.max(dim=1)[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images_w, images_q, images_k = fixed_views(x)
        self.base.train()
        self.momentum.train()
        feats_w, logits_w = encode(self.base, images_w)
        with torch.no_grad():
            if self.first_X >= self.warmup:
                pseudo = self.knn(feats_w)
            else:
                pseudo = F.softmax(logits_w, dim=1).argmax(dim=1)
                self.first_X += len(feats_w)
        feats_q, logits_q = encode(self.base, images_q)
        q = F.normalize(feats_q, dim=1)
        with torch.no_grad():
            for pu, pm in zip(self.momentum.parameters(), self.base.parameters()):
                pu.data = self.m * pu.data + (1 - self.m) * pm.data
            k = F.normalize(encode(self.momentum, images_k)[0], dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.mem_feat.clone().detach()])
        logits_ins = torch.cat([l_pos, l_neg], dim=1) / self.T
        idxs = torch.arange(self.queue_ptr, self.queue_ptr + len(k)) % self.K
        self.mem_feat[:, idxs] = k.T
        self.mem_labels[idxs] = pseudo
        self.queue_ptr = (self.queue_ptr + len(k)) % self.K
        mask = torch.ones_like(logits_ins, dtype=torch.bool)
        mask[:, 1:] = pseudo.reshape(-1, 1) != self.mem_labels
        logits_ins = torch.where(mask, logits_ins, torch.tensor([float("-inf")]))
        loss_ins = F.cross_entropy(logits_ins, torch.zeros(logits_ins.shape[0], dtype=torch.long))
        loss_cls = F.cross_entropy(logits_q, pseudo)
        probs_mean = F.softmax(logits_q, dim=1).mean(dim=0)
        loss_div = -torch.sum(-probs_mean * torch.log(probs_mean + 1e-8))
        (loss_cls + loss_ins + loss_div).backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            f, lg = encode(self.momentum, images_w)
            p = F.softmax(lg, dim=1)
            start, end = self.ptr, self.ptr + len(f)
            if self.feats.shape[0] < self.K:
                self.feats, self.probs = torch.cat([self.feats, f]), torch.cat([self.probs, p])
            else:
                idx = torch.arange(start, end) % len(self.feats)
                self.feats[idx, :], self.probs[idx, :] = f, p
            self.ptr = end % len(self.feats)
        self.base.eval()
        with torch.no_grad():
            return self.base(x)


def data(n: int, seed: int, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def test_adacontrast_matches_official() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    torch.manual_seed(7)
    adapter = AdaContrast(model, queue_size=20, warmup_samples=16, lr=2e-4)
    adapter.views = fixed_views
    torch.manual_seed(7)
    ref = Reference(model, K=20, warmup=16)
    torch.testing.assert_close(adapter.mem_feat, ref.mem_feat)
    assert torch.equal(adapter.mem_labels, ref.mem_labels)
    for i, x in enumerate(data(6, seed=8)):  # 48 samples: two warm-up batches, then kNN; queue and bank wrap
        torch.testing.assert_close(adapter(x), ref(x), msg=f"batch {i}")
    assert adapter.seen == 16 and len(adapter.bank_feats) == 24  # appended past K by the last batch, as official
    torch.testing.assert_close(adapter.mem_feat, ref.mem_feat)
    assert torch.equal(adapter.mem_labels, ref.mem_labels)
    torch.testing.assert_close(adapter.bank_probs, ref.probs)
    for (n, p), q, s in zip(adapter.model.named_parameters(), ref.base.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, msg=n)
        assert not torch.equal(p, s), n
    for p, q in zip(adapter.momentum.parameters(), ref.momentum.parameters()):
        torch.testing.assert_close(p, q)
    for b, c in zip(adapter.model.buffers(), ref.base.buffers()):  # BN running stats (train-mode forwards)
        torch.testing.assert_close(b, c)


def test_adacontrast_reset_restores_queue_and_bank() -> None:
    adapter = AdaContrast(tiny_cnn(), queue_size=16, warmup_samples=8)
    mem = adapter.mem_feat.clone()
    x = data(1, seed=9)[0]
    torch.manual_seed(0)
    out = adapter(x)
    assert adapter.bank_feats is not None and not torch.equal(adapter.mem_feat, mem)
    adapter.reset()
    assert adapter.bank_feats is None and adapter.seen == 0 and adapter.queue_ptr == 0
    assert torch.equal(adapter.mem_feat, mem)
    torch.manual_seed(0)
    torch.testing.assert_close(adapter(x), out)


def test_adacontrast_needs_a_linear_head() -> None:
    model = nn.Sequential(nn.Conv2d(3, N_CLASSES, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TypeError, match="nn.Linear"):
        AdaContrast(model)


def test_adacontrast_real_views() -> None:
    adapter = AdaContrast(tiny_cnn(), queue_size=16)
    x = data(1, seed=10)[0]
    w, q, k = adapter.views(x)
    assert w.shape == q.shape == k.shape == x.shape
    assert not torch.equal(q, k) and float(q.min()) >= 0 and float(q.max()) <= 1
