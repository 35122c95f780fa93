"""MEMO: step-for-step against a plain restatement of zhangmarvin/memo's adapt_single/test_single + BN prior."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import tiny_cnn

from tta_bench.methods import MEMO
from tta_bench.methods._augmix import (
    OPS,
    _apply_luts,
    _autocontrast_lut,
    _equalize_lut,
    _posterize,
    _solarize,
    augmix_views,
    marginal_entropy,
    preaugment,
    select_confident,
    to_pil,
    to_tensor,
)


def fixed_views(x: torch.Tensor, n: int = 6) -> torch.Tensor:
    """Deterministic stand-ins for the AugMix views of one image (C,H,W): brightness steps and flips."""
    return torch.stack([(x * (0.7 + 0.1 * k)).clamp(0, 1).flip(-1 if k % 2 else -2) for k in range(n)])


def official_bn_forward(self, input):
    """_modified_bn_forward of memo's imagenet-exps/utils/train_helpers.py, written out."""
    est_mean = torch.zeros(self.running_mean.shape)
    est_var = torch.ones(self.running_var.shape)
    F.batch_norm(input, est_mean, est_var, None, None, True, 1.0, self.eps)
    running_mean = self.prior * self.running_mean + (1 - self.prior) * est_mean
    running_var = self.prior * self.running_var + (1 - self.prior) * est_var
    return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, False, 0, self.eps)


def official_marginal_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def reference_memo(model: nn.Module, xs: torch.Tensor, lr: float, prior: float, **sgd):
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.prior = prior
            m.forward = types.MethodType(official_bn_forward, m)
    ckpt = copy.deepcopy(net.state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, **sgd)
    fresh = copy.deepcopy(optimizer.state_dict())
    outs, states = [], []
    for x in xs:
        net.load_state_dict(ckpt)
        optimizer.load_state_dict(fresh)  # the suite's episodic reset: model and optimizer state (TTAMethod.reset)
        net.eval()
        inputs = fixed_views(x)
        optimizer.zero_grad()
        loss = official_marginal_entropy(net(inputs))
        loss.backward()
        optimizer.step()
        states.append({k: v.detach().clone() for k, v in net.named_parameters()})
        with torch.no_grad():
            outs.append(net(x[None]))
    return torch.cat(outs), states


def test_memo_matches_official() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    adapter = MEMO(model, lr=0.05, prior_strength=16)
    adapter.views = fixed_views
    states, reset = [], adapter.reset

    def recording_reset():  # the adapted state of each test point, just before it is reset away
        states.append({k.replace(".layer.", "."): v.detach().clone() for k, v in adapter.model.named_parameters()})
        reset()

    adapter.reset = recording_reset
    g = torch.Generator().manual_seed(4)
    xs = torch.rand(3, 3, 32, 32, generator=g)
    ref_out, ref_states = reference_memo(model, xs, 0.05, 16 / 17)
    torch.testing.assert_close(adapter(xs), ref_out)
    source = dict(model.named_parameters())
    for got, want in zip(states[1:], ref_states):  # states[0]: before the first point
        for k, v in want.items():
            torch.testing.assert_close(got[k], v)
        assert not torch.equal(got["fc.weight"], source["fc.weight"])  # all parameters train


def test_memo_cifar_preset_runs_the_suites_sgd() -> None:
    """The CIFAR presets (suite's memo.yaml + conf.py): SGD momentum 0.9, Nesterov, from a fresh state per point."""
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    opts = MEMO.presets["cifar10-c"]["options"]
    assert (opts["optimizer"], opts["momentum"], opts["nesterov"], opts["wd"]) == ("sgd", 0.9, True, 0.0)
    adapter = MEMO(model, **{**opts, "lr": 0.05})
    adapter.views = fixed_views
    xs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ref_out, _ = reference_memo(model, xs, 0.05, 0.9, momentum=0.9, nesterov=True)
    torch.testing.assert_close(adapter(xs), ref_out)
    plain, _ = reference_memo(model, xs, 0.05, 0.9)
    assert (ref_out - plain).abs().max() > 1e-3  # momentum + Nesterov move the update (1.9 x lr x gradient)


def test_memo_is_episodic_per_test_point() -> None:
    adapter = MEMO(tiny_cnn(), lr=0.05, n_aug=4)
    adapter.views = fixed_views
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(4, 3, 32, 32, generator=g)
    source = {k: v.clone() for k, v in adapter.state_dict().items()}
    together = adapter(xs)
    alone = torch.cat([adapter(x[None]) for x in xs.flip(0)]).flip(0)
    torch.testing.assert_close(together, alone)  # each point sees only its own views, from the source state
    assert all(torch.equal(v, source[k]) for k, v in adapter.state_dict().items())
    assert not torch.allclose(together, adapter.predict(xs))  # but the prediction did adapt


def test_memo_real_augmix_views_are_seeded() -> None:
    adapter = MEMO(tiny_cnn(), n_aug=3)
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    a = adapter(x)
    torch.manual_seed(0)
    torch.testing.assert_close(adapter(x), a)


def test_augmix_views_and_ops() -> None:
    x = torch.rand(3, 32, 32)
    v = augmix_views(x, 5, np.random.default_rng(0), crop="pad")
    assert v.shape == (5, 3, 32, 32) and 0 <= float(v.min()) and float(v.max()) <= 1
    assert torch.equal(v, augmix_views(x, 5, np.random.default_rng(0), crop="pad"))
    assert not torch.equal(v[0], v[1])
    # without AugMix: only the pre-augmentation, so a pad-crop view is a shifted (maybe mirrored) copy
    img = to_pil(x)
    assert torch.allclose(to_tensor(img), x, atol=0.5 / 255)
    plain = to_tensor(preaugment(img, np.random.default_rng(1), "resized"))
    assert plain.shape == x.shape
    rng = np.random.default_rng(2)
    for name, op in OPS.items():
        out = op(img, 1, rng, 0)
        assert out.size == img.size and out.mode == img.mode, name


def test_colour_ops_equal_pillow() -> None:
    """The numpy lookup tables reproduce Pillow's ImageOps pixel for pixel (RGB and L, spread and flat images)."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    for k in range(20):
        shape = (16, 16, 3) if k % 2 else (16, 16)
        a = [
            rng.integers(0, 256, shape),
            rng.integers(100, 140, shape),
            np.full(shape, 77),
            np.where(rng.random(shape) < 0.5, 0, 255),
            (rng.random(shape) ** 3 * 255).astype(int),
        ][k % 5]
        img = Image.fromarray(a.astype(np.uint8), "RGB" if k % 2 else "L")
        for want, got in (
            (ImageOps.autocontrast(img), _apply_luts(img, _autocontrast_lut)),
            (ImageOps.equalize(img), _apply_luts(img, _equalize_lut)),
            (ImageOps.posterize(img, 4), _posterize(img, 4)),
            (ImageOps.solarize(img, 240), _solarize(img, 240)),
        ):
            assert np.array_equal(np.asarray(want), np.asarray(got))


def test_marginal_entropy_and_selection() -> None:
    logits = torch.randn(7, 5)
    p = logits.softmax(1).mean(0)
    torch.testing.assert_close(marginal_entropy(logits), -(p * p.log()).sum())
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = select_confident(logits, 0.3)
    assert idx.tolist() == ent.argsort()[:2].tolist()
    assert len(select_confident(logits, 0.01)) == 1


@pytest.mark.parametrize("crop", ["bad"])
def test_memo_rejects_unknown_crop(crop: str) -> None:
    from tta_bench.kernel import UserError

    with pytest.raises(UserError, match="crop"):
        MEMO(tiny_cnn(), crop=crop)
