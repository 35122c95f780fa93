"""RDumb: step for step against a plain restatement of oripress/CCC models/rdumb.py (ETA + a full reset before every
step whose count is a multiple of the period); resets happen exactly every N steps and only then."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import N_CLASSES
from test_eata import confident_cnn, data
from test_santa import assert_trains_layernorm, stream_batches, tiny_vit

from tta_bench.methods import RDumb


def official_configure(model: nn.Module) -> list[nn.Parameter]:
    params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return params


def reference_rdumb(model, xs, e_margin, d_margin, period):
    params = official_configure(model)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    probs, total_steps, outs = None, 0, []
    for x in xs:
        if total_steps % period == 0:
            model.load_state_dict(model_state, strict=True)
            opt.load_state_dict(opt_state)
            probs = None
        outputs = model(x)
        ent = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)
        ids1 = torch.where(ent < e_margin)
        ids2 = torch.where(ids1[0] > -0.1)
        ent = ent[ids1]
        if probs is not None:
            cos = F.cosine_similarity(probs.unsqueeze(dim=0), outputs[ids1].softmax(1).detach(), dim=1)
            ids2 = torch.where(torch.abs(cos) < d_margin)
            ent = ent[ids2]
            new = outputs[ids1][ids2].softmax(1).detach()
        else:
            new = outputs[ids1].softmax(1)
        if len(new):
            probs = (new.mean(0) if probs is None else 0.9 * probs + (1 - 0.9) * new.mean(0)).detach()
        loss = ent.mul(1 / (torch.exp(ent.clone().detach() - e_margin))).mean(0)
        if x[ids1][ids2].size(0) != 0:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        total_steps += 1
        outs.append(outputs.detach())
    return outs


def test_rdumb_matches_official_with_resets() -> None:
    adapter = RDumb(confident_cnn(), reset_every=3, e_margin_frac=0.9)
    ref = confident_cnn()
    xs = data(8, seed=41)
    outs = reference_rdumb(ref, xs, 0.9 * math.log(N_CLASSES), 0.4, period=3)
    for x, o in zip(xs, outs):
        torch.testing.assert_close(adapter(x), o)
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert adapter.num_resets == 2 and adapter.total_steps == 8 and adapter.num_samples_update_2 > 0


def test_reset_happens_exactly_every_n_steps() -> None:
    adapter, fresh = RDumb(confident_cnn(), reset_every=4, e_margin_frac=1.0), RDumb(confident_cnn(), e_margin_frac=1.0)
    source = {k: v.clone() for k, v in adapter.source_state.items()}
    xs = data(10, seed=42)
    for i, x in enumerate(xs):
        expect_source = i % 4 == 0  # the model that sees batch i is the source model exactly at multiples of 4
        assert torch.equal(adapter(x), fresh.predict(x)) == expect_source, i  # logits of the pre-update forward
        assert adapter.num_resets == i // 4
        assert adapter.total_steps == i + 1
    assert any(not torch.equal(adapter.state_dict()[k], source[k]) for k in source)
    adapter.reset()
    assert adapter.total_steps == 0 and adapter.num_resets == 0 and adapter.probs is None


def test_rdumb_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = RDumb(tiny_vit(), e_margin_frac=1.0)
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))
