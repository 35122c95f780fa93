"""α-BN: outputs equal a BN with hand-mixed statistics; α=1 is the source model, α=0 is `norm`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods.alpha_bn import MixedBatchNorm
from tta_bench.zoo.small_cnn import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def _source_model(seed: int = 0) -> nn.Module:
    """small-cnn with non-trivial running statistics and affine parameters (as after training)."""
    torch.manual_seed(seed)
    m = SmallCNN(10)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.mark.parametrize("w", [0.9, 0.3])
def test_output_equals_hand_mixed_statistics(w: float) -> None:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.copy_(torch.randn(4))
    bn.running_var.copy_(torch.rand(4) + 0.5)
    bn.weight.data.copy_(torch.rand(4) + 0.5)
    bn.bias.data.copy_(torch.randn(4))
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    a = methods.create("alpha_bn", nn.Sequential(copy.deepcopy(bn)), source_weight=w)
    mu = w * bn.running_mean + (1 - w) * x.mean((0, 2, 3))
    var = w * bn.running_var + (1 - w) * x.var((0, 2, 3), unbiased=False)  # no mean-difference term
    want = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    want = want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(a(x), want, atol=1e-5, rtol=1e-5)
    assert isinstance(a.model[0], MixedBatchNorm)
    torch.testing.assert_close(a.model[0].layer.running_mean, bn.running_mean, atol=0, rtol=0)  # never written


def test_bn1d_features() -> None:
    torch.manual_seed(2)
    bn = nn.BatchNorm1d(3).eval()
    bn.running_mean.fill_(2.0)
    x = torch.randn(8, 3)
    out = methods.create("alpha_bn", nn.Sequential(copy.deepcopy(bn)), source_weight=0.5)(x)
    mu = 0.5 * 2.0 + 0.5 * x.mean(0)
    var = 0.5 * 1.0 + 0.5 * x.var(0, unbiased=False)
    torch.testing.assert_close(out, (x - mu) / torch.sqrt(var + bn.eps), atol=1e-5, rtol=1e-5)


def test_alpha_one_is_source_and_alpha_zero_is_norm() -> None:
    m = _source_model()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        source = copy.deepcopy(m)(x)
    torch.testing.assert_close(methods.create("alpha_bn", copy.deepcopy(m), source_weight=1.0)(x), source)
    norm = methods.create("norm", copy.deepcopy(m))(x)
    torch.testing.assert_close(methods.create("alpha_bn", copy.deepcopy(m), source_weight=0.0)(x), norm)
    mixed = methods.create("alpha_bn", copy.deepcopy(m))(x)  # default 0.9: strictly between the two
    assert (mixed - source).abs().max() > 1e-4 and (mixed - norm).abs().max() > 1e-4


def test_dense_outputs_and_state_untouched() -> None:
    torch.manual_seed(3)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()
    seg[1].running_var.fill_(2.0)
    a = methods.create("alpha_bn", seg)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    out = a(torch.rand(2, 3, 16, 24))
    assert out.shape == (2, 5, 16, 24) and torch.isfinite(out).all()
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    assert a.trainable_parameters() == []


def test_source_weight_validated() -> None:
    with pytest.raises(UserError, match="source_weight"):
        methods.create("alpha_bn", _source_model(), source_weight=1.5)


def test_cli_run_on_digits(runs_dir) -> None:
    import json

    from tta_bench.cli import main

    quick = ["--limit", "64", "--clean-eval", "end", "--out", str(runs_dir)]
    assert main(["run", "--method", "alpha_bn", "--stream", "digits-c", *quick]) == 0
    (folder,) = [p for p in runs_dir.iterdir() if (p / "done").exists()]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "alpha_bn" and 0 <= summary["mean_error"] <= 100
    assert summary["adapt_mb"] > 0 and summary["forgetting"] == 0.0  # training-free: nothing to forget
