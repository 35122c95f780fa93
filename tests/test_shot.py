"""SHOT (online, TTAB): step-for-step against a plain restatement of TTAB's `shot.py` `one_adapt_step`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import tiny_cnn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods import SHOT
from tta_bench.methods.shot import shot_loss


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def model() -> nn.Module:
    m = tiny_cnn()
    with torch.no_grad():
        m.fc.weight.mul_(4.0)  # some samples above the 0.9 confidence threshold, some below
    return m


def reference_loss(y_hat: torch.Tensor, threshold: float = 0.9, cls_par: float = 0.3, ent_par: float = 1.0):
    """TTAB online SHOT, as written there (cross-entropy on the reliable samples, NaN when there are none)."""
    py, y_prime = F.softmax(y_hat, dim=-1).max(1)
    reliable = py > threshold
    classifier_loss = F.cross_entropy(y_hat[reliable], y_prime[reliable])
    entropy_loss = -(y_hat.softmax(1) * y_hat.log_softmax(1)).sum(1).mean(0)
    msoftmax = F.softmax(y_hat, dim=-1).mean(dim=0)
    div_loss = torch.sum(msoftmax * torch.log(msoftmax + 1e-5))
    return cls_par * classifier_loss + ent_par * (entropy_loss + div_loss), int(reliable.sum())


def reference_setup(net: nn.Module, lr: float = 1e-3):
    ref = copy.deepcopy(net).train()  # TTAB: model.train(); children named fc frozen
    ref.fc.requires_grad_(False)
    params = [p for n, p in ref.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, dampening=0, weight_decay=0, nesterov=True)
    return ref, params, opt


def test_shot_matches_ttab_over_steps() -> None:
    net = model()
    adapter = SHOT(net, lr=5e-3, threshold=0.6)  # the tiny model's confidences are 0.45-0.75
    ref, params, opt = reference_setup(net, lr=5e-3)
    source = {k: v.clone() for k, v in net.state_dict().items()}
    reliable = []
    for x in data(4, seed=1):
        y_hat = ref(x)
        loss, n = reference_loss(y_hat, threshold=0.6)
        loss.backward()
        opt.step()
        opt.zero_grad()
        reliable.append(n)
        torch.testing.assert_close(adapter(x), y_hat.detach())
    assert any(0 < n < 16 for n in reliable)  # the pseudo-label term is active on part of a batch
    mine, theirs = adapter.model.state_dict(), ref.state_dict()
    for k in theirs:
        torch.testing.assert_close(mine[k], theirs[k])
    changed = {k for k in theirs if not torch.equal(theirs[k], source[k])}
    assert {"features.0.0.weight", "features.3.1.weight", "features.0.1.running_mean"} <= changed  # convs, BN
    assert not changed & {"fc.weight", "fc.bias"}  # the source hypothesis (classifier) is frozen
    trained = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in net.named_parameters()} - {"fc.weight", "fc.bias"}


def test_no_reliable_sample_gives_the_same_update_as_ttab() -> None:
    """Threshold 1: TTAB's loss is NaN (empty cross-entropy) yet its update is the IM one; ours is finite."""
    net = model()
    adapter = SHOT(net, threshold=1.0, steps=2)
    ref, _, opt = reference_setup(net)
    x = data(1, seed=2)[0]
    for _ in range(2):
        y_hat = ref(x)
        loss, n = reference_loss(y_hat, threshold=1.0)
        assert n == 0 and math.isnan(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(adapter(x), y_hat.detach())
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_loss_by_hand() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 3.5]])
    p = logits.softmax(1)
    ent = -(p * p.log()).sum(1).mean()
    pbar = p.mean(0)
    div = (pbar * torch.log(pbar + 1e-5)).sum()
    ce = -(p[0, 0].log() + p[2, 2].log()) / 2  # samples 0 and 2 are above 0.9
    assert p[0, 0] > 0.9 and p[2, 2] > 0.9 and p[1].max() < 0.9
    torch.testing.assert_close(shot_loss(logits, 0.9, 0.3, 1.0), 0.3 * ce + ent + div)
    torch.testing.assert_close(shot_loss(logits, 0.9, 0.0, 2.0), 2 * (ent + div))
    # diversity: a batch that predicts one class everywhere scores worse than a balanced one of equal confidence
    same, balanced = torch.eye(3)[[0, 0, 0]] * 3, torch.eye(3) * 3
    assert shot_loss(same, 0.99, 0.0, 1.0) > shot_loss(balanced, 0.99, 0.0, 1.0)


def test_refuses_a_model_without_linear_classifier() -> None:
    with pytest.raises(UserError, match="shot"):
        methods.create("shot", nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1)))


def test_refuses_dense_outputs() -> None:
    class Seg(nn.Module):  # a linear layer that is not the output: the model's logits are dense
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
            self.aux = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(UserError, match="classif"):
        methods.create("shot", Seg())(torch.rand(2, 3, 8, 8))
