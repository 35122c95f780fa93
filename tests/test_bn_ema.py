"""BN-EMA: step-for-step against the suite's `EMABatchNorm.forward` (train-mode pass, then eval-mode pass)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from test_adapter_contract import tiny_cnn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods import BNEMA


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) * 1.5 + 0.2 for _ in range(n)]  # shifted from the source


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """EMABatchNorm.forward of mariodoebler/test-time-adaptation@8b2ed63, written out."""
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        return model(x)


def test_bn_ema_matches_official_over_steps() -> None:
    model = tiny_cnn()
    adapter = BNEMA(model)
    ref = copy.deepcopy(model)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    for x in data(4, seed=1):
        torch.testing.assert_close(adapter(x), reference(ref, x), rtol=0, atol=0)
    mine, theirs = adapter.model.state_dict(), ref.state_dict()
    for k in theirs:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=0)
    changed = [k for k in theirs if not torch.equal(theirs[k], source[k])]
    # the running statistics (and counters) of the 4 BN layers moved; no parameter did
    assert sorted(changed) == sorted(
        f"features.{i}.1.{b}" for i in range(4) for b in ("running_mean", "running_var", "num_batches_tracked")
    )
    assert int(mine["features.0.1.num_batches_tracked"]) == int(source["features.0.1.num_batches_tracked"]) + 4
    assert not adapter.trainable_parameters()


def test_one_layer_by_hand_and_momentum_option() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, 0.5, 1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    for m, adapter in ((0.1, BNEMA(nn.Sequential(bn))), (0.3, BNEMA(nn.Sequential(bn), momentum=0.3))):
        mu = (1 - m) * bn.running_mean + m * x.mean((0, 2, 3))
        var = (1 - m) * bn.running_var + m * x.var((0, 2, 3), unbiased=True)  # PyTorch's unbiased running update
        want = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
        want = want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(adapter(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapter.model[0].running_mean, mu)
        torch.testing.assert_close(adapter.model[0].running_var, var)
    assert bn.momentum == 0.1  # the caller's layer is untouched


def test_predict_uses_current_statistics_without_updating() -> None:
    adapter = BNEMA(tiny_cnn())
    xs = data(2, seed=2)
    adapter(xs[0])
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    p = adapter.predict(xs[1])
    with torch.no_grad():
        torch.testing.assert_close(p, adapter.model.eval()(xs[1]), rtol=0, atol=0)
    assert all(torch.equal(v, adapter.state_dict()[k]) for k, v in before.items())
    # the statistics drift: the source model's prediction differs from the adapted one
    with torch.no_grad():
        assert not torch.allclose(p, tiny_cnn()(xs[1]))


def test_dropout_is_active_only_in_the_statistics_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.BatchNorm1d(6)).eval()
    x = torch.randn(32, 6)
    a = BNEMA(model)
    ref = copy.deepcopy(model)
    torch.manual_seed(5)
    out = a(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, reference(ref, x), rtol=0, atol=0)
    assert not a.model.training
    torch.testing.assert_close(a.model[2].running_mean, ref[2].running_mean, rtol=0, atol=0)


def test_refuses_models_without_running_statistics() -> None:
    with pytest.raises(UserError, match="bn_ema"):
        methods.create("bn_ema", nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)))
    with pytest.raises(UserError, match="track_running_stats"):
        methods.create("bn_ema", nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))
    with pytest.raises(UserError, match="momentum"):
        methods.create("bn_ema", tiny_cnn(), momentum=1.5)
