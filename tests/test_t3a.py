"""T3A: step-for-step against a plain restatement of matsuolab/T3A `adapt_algorithms.py` (T3A.forward, adapt=True)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import N_CLASSES, tiny_cnn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods import T3A


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def model() -> nn.Module:
    m = tiny_cnn()
    with torch.no_grad():
        m.fc.weight.mul_(3.0)  # spread the predictions over several classes
    return m


class ReferenceT3A:
    """The official T3A (featurizer = everything before fc, classifier = fc), written out."""

    def __init__(self, net: nn.Module, filter_k: int) -> None:
        self.net, self.k = net, filter_k
        w = net.fc.weight.data
        prob = net.fc(w)
        self.supports, self.ent = w, -(prob.softmax(1) * prob.log_softmax(1)).sum(1)
        self.labels = F.one_hot(prob.argmax(1), num_classes=N_CLASSES).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net.pool(self.net.features((x - 0.5) / 0.5)).flatten(1)
        p = self.net.fc(z)
        self.supports = torch.cat([self.supports, z])
        self.labels = torch.cat([self.labels, F.one_hot(p.argmax(1), num_classes=N_CLASSES).float()])
        self.ent = torch.cat([self.ent, -(p.softmax(1) * p.log_softmax(1)).sum(1)])
        y_hat = self.labels.argmax(1)
        idx = []
        for i in range(N_CLASSES):
            _, order = torch.sort(self.ent[y_hat == i])
            idx.append(torch.arange(len(self.ent))[y_hat == i][order][: self.k])
        idx = torch.cat(idx)
        self.supports, self.labels, self.ent = self.supports[idx], self.labels[idx], self.ent[idx]
        weights = F.normalize(self.supports, dim=1).T @ self.labels
        return z @ F.normalize(weights, dim=0)


@torch.no_grad()
def test_t3a_matches_official_over_steps() -> None:
    net = model()
    adapter = T3A(net, filter_K=3)
    ref = ReferenceT3A(copy.deepcopy(net).eval(), 3)
    source = {k: v.clone() for k, v in net.state_dict().items()}
    for x in data(4, seed=1):
        out = adapter(x)
        torch.testing.assert_close(out, ref(x))
        torch.testing.assert_close(adapter.supports, ref.supports)
        torch.testing.assert_close(adapter.labels, ref.labels)
        torch.testing.assert_close(adapter.ent, ref.ent)
    counts = adapter.labels.sum(0)
    assert counts.max() == 3 and (counts <= 3).all() and counts.sum() > N_CLASSES  # the filter is active
    # nothing of the model changes (parameters and BN buffers): the classifier is adjusted, not trained
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in source.items())
    assert not adapter.trainable_parameters()


@torch.no_grad()
def test_before_adaptation_the_prototypes_are_the_normalised_classifier_rows() -> None:
    net = model()
    adapter = T3A(net)
    assert torch.equal(adapter.labels.argmax(1), torch.arange(N_CLASSES))  # each row predicts its own class here
    x = data(1, seed=2)[0]
    z = net.pool(net.features((x - 0.5) / 0.5)).flatten(1)
    torch.testing.assert_close(adapter.predict(x), z @ F.normalize(net.fc.weight, dim=1).T)
    assert len(adapter.supports) == N_CLASSES  # predict adds nothing


@torch.no_grad()
def test_filter_keeps_the_lowest_entropy_supports_and_reset_restores_warmup() -> None:
    adapter = T3A(model(), filter_K=2)
    xs = data(3, seed=3)
    pool_z, pool_p = [], []
    for x in xs:
        adapter(x)
        z, p = adapter.features(x)
        pool_z.append(z)
        pool_p.append(p)
    # every kept support of class c has entropy <= that of every dropped test sample predicted as c
    w = adapter.warmup_supports
    p_all = torch.cat([adapter.model.fc(w), *pool_p])
    ent_all = -(p_all.softmax(1) * p_all.log_softmax(1)).sum(1)
    y_all = p_all.argmax(1)
    for c in range(N_CLASSES):
        ents = ent_all[y_all == c].sort()[0]
        torch.testing.assert_close(adapter.ent[adapter.labels.argmax(1) == c], ents[:2])
    adapter.reset()
    assert torch.equal(adapter.supports, adapter.warmup_supports) and len(adapter.ent) == N_CLASSES


@torch.no_grad()
def test_filter_minus_one_keeps_every_support() -> None:
    adapter = T3A(model(), filter_K=-1)
    for x in data(2, seed=4, bs=8):
        adapter(x)
    assert len(adapter.supports) == N_CLASSES + 16


def test_refusals() -> None:
    with pytest.raises(UserError, match="filter_K"):
        methods.create("t3a", model(), filter_K=0)
    with pytest.raises(UserError, match="filter_K"):
        methods.create("t3a", model(), filter_K=-2)
    with pytest.raises(UserError, match="t3a"):
        methods.create("t3a", nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
