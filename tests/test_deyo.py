"""DeYO: step for step against a plain restatement of Jhyun17/DeYO methods/deyo.py (forward_and_adapt_deyo,
configure_model, collect_params), patch shuffling written with explicit loops; the PLPD filter keeps exactly the
samples whose pseudo-label probability drops by more than the threshold."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from test_adapter_contract import N_CLASSES
from test_eata import confident_cnn, data
from test_santa import assert_trains_layernorm, stream_batches, tiny_vit

from tta_bench.methods import DeYO
from tta_bench.methods.deyo import shuffle_patches


def official_configure(model: nn.Module) -> list[nn.Parameter]:
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return [
        p
        for nm, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and "layer4" not in nm
        for n, p in m.named_parameters()
        if n in ("weight", "bias")
    ]


def loop_patch_shuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """'b c (ps1 h) (ps2 w) -> b (ps1 ps2) c h w', permute per image, and back (32 is a multiple of p: no resize)."""
    n, h = len(x), x.shape[-1] // p
    patches = torch.stack([x[:, :, i * h : (i + 1) * h, j * h : (j + 1) * h] for i in range(p) for j in range(p)], 1)
    perm = torch.argsort(torch.rand(n, p * p), dim=-1)
    patches = patches[torch.arange(n).unsqueeze(-1), perm]
    out = torch.empty_like(x)
    for k in range(p * p):
        i, j = divmod(k, p)
        out[:, :, i * h : (i + 1) * h, j * h : (j + 1) * h] = patches[:, k]
    return out


def reference_deyo(model, xs, margin, e0, thr, p=4):
    params = official_configure(model)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    outs, counts = [], []
    for step, x in enumerate(xs):
        torch.manual_seed(100 + step)
        outputs = model(x)
        opt.zero_grad()
        ent = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)
        ids1 = torch.where(ent < margin)
        ent = ent[ids1]
        outs.append(outputs.detach())
        if len(ent) == 0:
            counts.append((0, 0))
            continue
        with torch.no_grad():
            outputs_prime = model(loop_patch_shuffle(x[ids1].detach(), p))
        prob, prob_prime = outputs[ids1].softmax(1), outputs_prime.softmax(1)
        cls1 = prob.argmax(1).reshape(-1, 1)
        plpd = (torch.gather(prob, 1, cls1) - torch.gather(prob_prime, 1, cls1)).reshape(-1)
        ids2 = torch.where(plpd > thr)
        ent, plpd = ent[ids2], plpd[ids2]
        counts.append((len(ids1[0]), len(ent)))
        if len(ent) == 0:
            continue
        coeff = 1 * (1 / torch.exp(ent.clone().detach() - e0)) + 1 * (1 / torch.exp(-1.0 * plpd.clone().detach()))
        ent.mul(coeff).mean(0).backward()
        opt.step()
        opt.zero_grad()
    return outs, counts


def test_patch_shuffle_matches_the_official_rearrangement() -> None:
    x = data(1, seed=4, bs=3)[0]
    torch.manual_seed(0)
    a = shuffle_patches(x, 4)
    torch.manual_seed(0)
    assert torch.equal(a, loop_patch_shuffle(x, 4))
    assert not torch.equal(a, x)
    torch.testing.assert_close(a.sum((2, 3)), x.sum((2, 3)))  # a permutation of the pixels


def test_deyo_matches_official_with_both_filters_active() -> None:
    adapter = DeYO(confident_cnn(), margin=0.8, plpd_threshold=0.0)
    ref = copy.deepcopy(confident_cnn())
    xs = data(4, seed=7)
    ln_c = math.log(N_CLASSES)
    outs, counts = reference_deyo(ref, xs, 0.8 * ln_c, 0.4 * ln_c, 0.0)
    n1 = n2 = 0
    for step, (x, o, (c1, c2)) in enumerate(zip(xs, outs, counts)):
        torch.manual_seed(100 + step)
        torch.testing.assert_close(adapter(x), o)
        n1, n2 = n1 + c1, n2 + c2
        assert (adapter.backward, adapter.final_backward) == (n1, n2)
    assert any(0 < c2 < c1 < 16 for c1, c2 in counts)  # both filters drop some samples
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert any(not torch.equal(p, adapter.source_state[f"model.{n}"]) for n, p in adapter.model.named_parameters())


def test_plpd_filter_keeps_exactly_the_samples_above_threshold() -> None:
    """Deterministic 'occ' transformation: the kept count is recomputed from the model's own predictions."""
    hp = {"margin": 1.0, "aug_type": "occ", "occlusion_size": 16, "row_start": 8, "column_start": 8}
    for thr in (-1.0, 0.0, 0.05):
        adapter = DeYO(confident_cnn(), plpd_threshold=thr, **hp)
        x = data(1, seed=11)[0]
        with torch.no_grad():
            p = adapter.model(x).softmax(1)
            x_occ = x.clone()
            x_occ[:, :, 8:24, 8:24] = x.mean((2, 3), keepdim=True)
            p_occ = adapter.model(x_occ).softmax(1)
        cls = p.argmax(1, keepdim=True)
        plpd = (p.gather(1, cls) - p_occ.gather(1, cls)).squeeze(1)
        ent = -(p * p.log()).sum(1)
        adapter(x)
        assert adapter.backward == int((ent < math.log(N_CLASSES)).sum())
        assert adapter.final_backward == int(((ent < math.log(N_CLASSES)) & (plpd > thr)).sum())
    assert 0 < adapter.final_backward < adapter.backward


def test_no_update_when_every_sample_is_filtered() -> None:
    adapter = DeYO(confident_cnn(), margin=1.0, plpd_threshold=1.0)  # a probability drop can never exceed 1
    before = [p.detach().clone() for p in adapter.trainable_parameters()]
    adapter(data(1, seed=3)[0])
    assert adapter.backward > 0 and adapter.final_backward == 0
    assert all(torch.equal(p, b) for p, b in zip(adapter.trainable_parameters(), before))


def test_official_name_rules_skip_layer4_and_final_norm() -> None:
    model = nn.Sequential()
    model.add_module("layer3", nn.BatchNorm2d(3))
    model.add_module("layer4", nn.Sequential(nn.BatchNorm2d(3)))
    model.add_module("norm", nn.LayerNorm(3))
    trained = {id(p) for p in DeYO(model, inplace=True).trainable_parameters()}
    assert trained == {id(model.layer3.weight), id(model.layer3.bias)}


def test_deyo_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = DeYO(tiny_vit(), margin=1.0, plpd_threshold=-1.0)
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))
