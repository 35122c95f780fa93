"""GTTA: step-for-step against mariodoebler/test-time-adaptation@8b2ed63 `classification/methods/gtta.py` (mixup
variant, the suite's CIFAR settings), written out independently on the tiny BN CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import tiny_cnn

from tta_bench.kernel import UserError
from tta_bench.methods import GTTA


def data(n: int, seed: int, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def source(n: int = 2, bs: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(9)
    return [((torch.randint(0, 256, (bs, 3, 32, 32), generator=g) / 255), torch.arange(bs) % 5) for _ in range(n)]


class Reference:
    """configure_model + collect_params + forward_and_adapt of the suite's GTTA (USE_STYLE_TRANSFER False)."""

    def __init__(self, model: nn.Module, src: list, lr: float, lam: float = 1 / 3) -> None:
        self.model = copy.deepcopy(model)
        self.model.train()
        self.model.requires_grad_(False)
        for m in self.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(True)
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
            else:
                m.requires_grad_(True)
        params = [p for _, m in self.model.named_modules() for n, p in m.named_parameters()
                  if n in ("weight", "bias") and p.requires_grad]  # fmt: skip
        self.opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        self.src, self.i, self.lam = src, 0, lam
        self.avg_conf = torch.tensor(0.9)

    def next_source(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.src[self.i % len(self.src)]
        self.i += 1
        return b

    def step(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            outputs_test = self.model(x)
        confidences, pseudo = torch.max(outputs_test.softmax(dim=1), dim=1)
        self.avg_conf = 0.9 * self.avg_conf + (1 - 0.9) * confidences.mean()
        mask = torch.where(confidences < torch.sqrt(self.avg_conf))
        filtered = pseudo.clone()
        filtered[mask] = -1
        with torch.no_grad():
            imgs_src, labels_src = self.next_source()
            imgs_src, labels_src = imgs_src[: x.shape[0]], labels_src[: x.shape[0]].long()
            outputs_src = self.model(imgs_src)
            _, ids = torch.max(torch.matmul(outputs_src.softmax(1), outputs_test.softmax(1).T), dim=1)
            imgs_src = self.lam * x[ids] + (1 - self.lam) * imgs_src
        F.cross_entropy(input=self.model(imgs_src), target=labels_src).backward()
        self.opt.step()
        self.opt.zero_grad()
        outputs_test = self.model(x)
        F.cross_entropy(input=outputs_test, target=filtered, ignore_index=-1).backward()
        self.opt.step()
        self.opt.zero_grad()
        return outputs_test.detach()


def confident_model() -> nn.Module:
    """The tiny CNN with a sharper head, so that some pseudo-labels pass the sqrt(avg_conf) filter."""
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(40)
    return model


def test_gtta_matches_official_over_steps() -> None:
    model, src = confident_model(), source()
    adapter = GTTA(model, lr=1e-3)
    adapter.prepare(src)
    ref = Reference(model, src, lr=1e-3)
    kept = []
    for x in data(4, seed=1):
        with torch.no_grad():
            conf = adapter.model(x).softmax(1).max(1)[0]
        kept.append(int((conf >= torch.sqrt(0.9 * adapter.avg_conf + 0.1 * conf.mean())).sum()))
        torch.testing.assert_close(adapter(x), ref.step(x), rtol=1e-5, atol=1e-5)
    assert 0 < sum(kept) < 4 * 8  # the filter kept some pseudo-labels and dropped others
    torch.testing.assert_close(adapter.avg_conf, ref.avg_conf)
    theirs = dict(ref.model.named_parameters())
    for k, p in adapter.model.named_parameters():
        torch.testing.assert_close(p, theirs[k], rtol=1e-5, atol=1e-6)
        assert not torch.equal(p, dict(model.named_parameters())[k]), f"{k} not trained"


def test_source_replay_cycles_and_reset_restores() -> None:
    model, src = confident_model(), source(n=2, bs=6)
    adapter = GTTA(model, replay_size=10)
    adapter.prepare(src)
    assert adapter.replay_x.dtype == torch.uint8 and len(adapter.replay_y) == 10
    torch.testing.assert_close(adapter.replay_x[:6].float() / 255, src[0][0])
    _, y1 = adapter.replay(8)
    _, y2 = adapter.replay(8)
    assert torch.equal(torch.cat([y1, y2]), torch.cat([src[0][1], src[1][1][:4]]).repeat(2)[:16])
    adapter.replay_pos = 0  # the stream starts at the buffer's beginning (what reset() returns to)
    x = data(1, seed=2)[0]
    first = adapter(x)
    assert float(adapter.avg_conf) != pytest.approx(0.9)
    adapter(x)
    adapter.reset()
    assert float(adapter.avg_conf) == pytest.approx(0.9) and adapter.replay_pos == 0
    torch.testing.assert_close(adapter(x), first, rtol=0, atol=0)


def test_all_ignored_skips_the_target_step_without_prepare() -> None:
    model = tiny_cnn()  # unconfident head: every pseudo-label is below sqrt(0.9)
    adapter = GTTA(model, lr=1e-2)
    x = data(1, seed=3)[0]
    out = adapter(x)
    assert torch.isfinite(out).all()
    # no source batch (no prepare) and no kept pseudo-label: nothing was updated, no NaN
    assert all(torch.equal(a, b) for a, b in zip(adapter.model.parameters(), model.parameters()))


def test_refuses_dense_outputs() -> None:
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    with pytest.raises(UserError, match="dense outputs"):
        GTTA(seg)(torch.rand(2, 3, 8, 8))
