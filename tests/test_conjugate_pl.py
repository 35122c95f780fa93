"""Conjugate PL: step-for-step against a plain restatement of locuslab/tta_conjugate `meta_test_adaptive`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import tiny_cnn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods import ConjugatePL
from tta_bench.methods.conjugate_pl import conjugate_loss


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def model() -> nn.Module:
    m = tiny_cnn()
    with torch.no_grad():
        m.fc.weight.mul_(3.0)
    return m


def reference_setup(net: nn.Module):
    """tent.configure_model + tent.collect_params + setup_optimizer (SGD, conf.py defaults), written out."""
    ref = copy.deepcopy(net).train().requires_grad_(False)
    params = []
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
            params += [m.weight, m.bias]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)
    return ref, params, opt


def reference_step(ref: nn.Module, opt, x: torch.Tensor, temp: float, eps: float) -> torch.Tensor:
    """One iteration of meta_test_adaptive with OPTIM.ADAPT 'conjugate', then outputs_new."""
    outputs = ref(x)
    outputs = outputs / temp
    softmax_prob = F.softmax(outputs, dim=1)
    num_classes = outputs.shape[1]
    eye = torch.eye(num_classes).reshape((1, num_classes, num_classes)).repeat(outputs.shape[0], 1, 1)
    t2 = eps * torch.diag_embed(softmax_prob)
    smax_inp = torch.unsqueeze(softmax_prob, 2)
    t3 = eps * torch.bmm(smax_inp, torch.transpose(smax_inp, 1, 2))
    y_star = torch.squeeze(torch.linalg.solve(eye + t2 - t3, smax_inp))
    tta_loss = torch.logsumexp(outputs, dim=1) - (y_star * outputs - eps * y_star * (1 - softmax_prob)).sum(dim=1)
    opt.zero_grad()
    tta_loss.mean().backward()
    opt.step()
    return ref(x).detach()


@pytest.mark.parametrize(("temp", "eps"), [(1.0, 0.0), (2.0, 6.0)])
def test_conjugate_pl_matches_official_over_steps(temp: float, eps: float) -> None:
    net = model()
    adapter = ConjugatePL(net, temperature=temp, eps=eps)
    ref, params, opt = reference_setup(net)
    source = [p.detach().clone() for p in params]
    for x in data(4, seed=1):
        torch.testing.assert_close(adapter(x), reference_step(ref, opt, x, temp, eps))
    trained = adapter.trainable_parameters()
    assert len(trained) == len(params) == 8
    for p, q, s in zip(trained, params, source):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, s)
    assert not any(p.requires_grad for p in adapter.model.fc.parameters())


def test_for_cross_entropy_models_the_loss_is_the_entropy_and_y_star_solves_the_system() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    p = logits.softmax(1)
    torch.testing.assert_close(conjugate_loss(logits, 0.0), -(p * p.log()).sum(1))
    eps = 2.5
    matrix = torch.eye(4) + eps * torch.diag_embed(p) - eps * p.unsqueeze(2) @ p.unsqueeze(1)
    y_star = torch.linalg.solve(matrix, p.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close((matrix @ y_star.unsqueeze(2)).squeeze(2), p)
    want = torch.logsumexp(logits, 1) - (y_star * logits - eps * y_star * (1 - p)).sum(1)
    torch.testing.assert_close(conjugate_loss(logits, eps), want)
    assert not torch.allclose(conjugate_loss(logits, eps), conjugate_loss(logits, 0.0))


def test_prediction_is_the_forward_after_the_update_and_temperature_matters() -> None:
    net = model()
    x = data(1, seed=3)[0]
    a, b = ConjugatePL(net, lr=0.05), ConjugatePL(net, lr=0.05, temperature=3.0)
    before = a.predict(x)
    out = a(x)
    torch.testing.assert_close(out, a.predict(x))  # the updated model's prediction on the same batch
    assert not torch.allclose(out, before)
    assert not torch.allclose(b(x), out)


def test_bad_options() -> None:
    with pytest.raises(UserError, match="temperature"):
        methods.create("conjugate_pl", model(), temperature=0.0)
    with pytest.raises(UserError, match="eps"):
        methods.create("conjugate_pl", model(), eps=-1.0)


def test_dense_logits_are_scored_per_pixel() -> None:
    torch.manual_seed(1)
    dense = torch.randn(2, 4, 3, 3) * 2
    flat = dense.movedim(1, -1).reshape(-1, 4)
    for eps in (0.0, 3.0):
        torch.testing.assert_close(conjugate_loss(dense, eps), conjugate_loss(flat, eps))
