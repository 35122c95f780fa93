"""Core: the class-correlation loss by hand; only BN affine parameters change; reset is exact."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.methods.core import as_samples, class_correlation_loss
from tta_bench.zoo.small_cnn import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def _source_model() -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN(10)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_loss_by_hand() -> None:
    p = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    # A = PᵀP = [[0.8, 0.4], [0.4, 0.4]]; rows normalised: [[2/3, 1/3], [1/2, 1/2]]; off-diagonal mean over C=2
    assert class_correlation_loss(p.log()).item() == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-6)
    p3 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) + 1e-12
    # A = [[.25,.25,0],[.25,.25,0],[0,0,1]] -> rows [[.5,.5,0],[.5,.5,0],[0,0,1]] -> off-diagonal (0.5+0.5)/3
    assert class_correlation_loss(p3.log()).item() == pytest.approx(1 / 3, abs=1e-6)


def test_loss_zero_for_one_hot_and_high_for_uniform() -> None:
    one_hot = torch.eye(4) * 60.0
    assert class_correlation_loss(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(8, 4)
    assert class_correlation_loss(uniform).item() == pytest.approx(3 / 4, abs=1e-6)


def test_dense_pixels_are_samples() -> None:
    logits = torch.randn(2, 3, 4, 5)
    flat = as_samples(logits, max_pixels=10_000)
    assert flat.shape == (40, 3)
    torch.testing.assert_close(flat[7], logits[0, :, 1, 2])
    assert as_samples(logits, max_pixels=11).shape == (11, 3)


def test_only_bn_affine_params_change_and_reset_is_exact() -> None:
    m = _source_model()
    a = methods.create("core", m, lr=1e-2)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    torch.manual_seed(0)
    for _ in range(3):
        out = a(torch.rand(16, 3, 32, 32))
        assert out.shape == (16, 10)
    changed = {k for k, v in a.state_dict().items() if not torch.equal(v, start[k])}
    affine = {n for n, mod in a.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    assert changed, "Core did not update anything"
    assert all(k.rsplit(".", 1)[0] in affine and k.endswith((".weight", ".bias")) for k in changed), changed
    assert len(a.trainable_parameters()) == 2 * len(affine)
    a.reset()
    assert all(torch.equal(v, start[k]) for k, v in a.state_dict().items())
    assert a.optimizer.state_dict()["state"] == {}


def test_dense_segmentation_step() -> None:
    torch.manual_seed(4)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()
    a = methods.create("core", copy.deepcopy(seg), max_pixels=64)
    w0 = a.model[1].layer.weight.clone()
    out = a(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 5, 16, 16)
    assert not torch.equal(a.model[1].layer.weight, w0)
    assert torch.equal(a.model[0].weight, seg[0].weight)
    assert 0 <= class_correlation_loss(as_samples(out, 64)).item() < 1 - 1 / 5 + 1e-6
    assert math.isfinite(out.sum().item())


def test_cli_run_on_digits(runs_dir) -> None:
    import json

    from tta_bench.cli import main

    quick = ["--limit", "64", "--clean-eval", "end", "--out", str(runs_dir)]
    assert main(["run", "--method", "core", "--stream", "digits-c", *quick]) == 0
    (folder,) = [p for p in runs_dir.iterdir() if (p / "done").exists()]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "core" and 0 <= summary["mean_error"] <= 100
