"""CMF: step for step against a plain restatement of mariodoebler/test-time-adaptation classification/methods/cmf.py
(ROID's loss + bayesian_filtering over full model copies); the Kalman gain follows its recursion and clipping."""

from __future__ import annotations

import copy

import torch
from test_eata import confident_cnn, data
from test_roid import official_configure, prior_corrected, roid_loss, suite_pipeline
from test_santa import assert_trains_layernorm, stream_batches, tiny_vit

from tta_bench.methods import CMF, ROID


def ema(to_update, to_merge, momentum, update_all):
    for p, q in zip(to_update.parameters(), to_merge.parameters()):
        if p.requires_grad or update_all:
            p.data = momentum * p.data + (1 - momentum) * q.data
    return to_update


def reference_cmf(model, xs, alpha=0.99, gamma=0.99, q_cfg=0.005):
    params = official_configure(model)
    src, hidden = copy.deepcopy(model), copy.deepcopy(model)
    for p in list(src.parameters()) + list(hidden.parameters()):
        p.detach_()
    q = q_cfg * (sum(p.numel() for p in params) / 38400)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    probs, pipe, outs, hidden_var, betas = None, suite_pipeline(), [], 0, []
    for step, x in enumerate(xs):
        torch.manual_seed(300 + step)
        outputs = model(x)
        probs = torch.ones(outputs.shape[1]) / outputs.shape[1] if probs is None else probs
        loss, probs = roid_loss(model, x, outputs, probs, pipe, len(x))
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # bayesian_filtering
            recovered = ema(hidden, src, alpha, update_all=True)
            hidden_var = alpha**2 * hidden_var + q
            r = 1 - q
            beta = r / (hidden_var + r)
            beta = beta if beta > 0.89 else 0.89
            beta = beta if beta < 0.9999 else 1.0
            hidden_var = beta * hidden_var
            hidden = ema(recovered, model, beta, update_all=True)
            model = ema(model, hidden, gamma, update_all=False)
        betas.append(beta)
        outs.append(prior_corrected(outputs.detach()))
    return outs, hidden, hidden_var, betas


def test_cmf_matches_official() -> None:
    adapter = CMF(confident_cnn(), q=2.0)  # a process noise that gives a gain strictly inside the clipping range
    ref = confident_cnn()
    xs = data(4, seed=31)
    outs, hidden, hidden_var, betas = reference_cmf(ref, xs, q_cfg=2.0)
    assert all(0.89 < b < 0.9999 for b in betas)
    for step, (x, o) in enumerate(zip(xs, outs)):
        torch.manual_seed(300 + step)
        torch.testing.assert_close(adapter(x), o)
    assert adapter.hidden_var == hidden_var
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    hidden_params = dict(hidden.named_parameters())
    for i, (name, _) in enumerate(adapter.named):
        torch.testing.assert_close(getattr(adapter, f"hidden_{i}"), hidden_params[name])
    assert any(not torch.equal(p, adapter.source_state[f"model.{n}"]) for n, p in adapter.model.named_parameters())


def test_kalman_gain_recursion_and_clipping() -> None:
    """P <- α² P + q; β = (1-q)/(P+1-q) floored at 0.89 and rounded up to 1 from 0.9999; P <- β P."""
    x = data(1, seed=32)[0]
    n = sum(p.numel() for p in CMF(confident_cnn()).trainable_parameters())
    regimes = {
        0.005: lambda b: b[0] == 1.0,
        2.0: lambda b: all(0.89 < v < 0.9999 for v in b),
        2000.0: lambda b: all(v == 0.89 for v in b),
    }
    for q_cfg, regime in regimes.items():
        adapter, var, betas, q = CMF(confident_cnn(), q=q_cfg), 0.0, [], q_cfg * (n / 38400)
        for _ in range(3):
            adapter(x)
            var = 0.99**2 * var + q
            beta = (1 - q) / (var + (1 - q))
            beta = 0.89 if beta <= 0.89 else (1.0 if beta >= 0.9999 else beta)
            var = beta * var
            betas.append(beta)
            assert adapter.hidden_var == var
        assert regime(betas), (q_cfg, betas)


def test_cmf_without_parameter_ensembling_is_roid_without_source_merging() -> None:
    """gamma = 1: the filter never reaches the model, so CMF is ROID with momentum_src = 1."""
    cmf, roid = CMF(confident_cnn(), gamma=1.0, q=2.0), ROID(confident_cnn(), momentum_src=1.0)
    for step, x in enumerate(data(3, seed=33)):
        torch.manual_seed(step)
        a = cmf(x)
        torch.manual_seed(step)
        torch.testing.assert_close(a, roid(x))
    for p, q in zip(cmf.model.parameters(), roid.model.parameters()):
        torch.testing.assert_close(p, q)
    cmf.reset()
    assert cmf.hidden_var == 0.0 and cmf.class_probs_ema is None


def test_cmf_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = CMF(tiny_vit())
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))
