"""ROID: augmentation = the suite's torchvision pipeline; step for step against a plain restatement of
mariodoebler/test-time-adaptation classification/methods/roid.py; weight ensembling with the source weights; prior
correction of the returned logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from test_cotta import JitterPro
from test_eata import confident_cnn, data
from test_santa import assert_trains_layernorm, stream_batches, tiny_vit

from tta_bench.methods import ROID
from tta_bench.methods._augment import light_augment


def suite_pipeline(n: int = 32) -> T.Compose:
    """get_tta_transforms(n, padding_mode="reflect", cotta_augs=False)."""
    return T.Compose(
        [
            T.Lambda(lambda x: x.clip(0, 1)),
            JitterPro(),
            T.Pad(n // 2, padding_mode="reflect"),
            T.RandomAffine([-15, 15], (1 / 16, 1 / 16), (0.9, 1.1), interpolation=T.InterpolationMode.BILINEAR, fill=0),
            T.CenterCrop(n),
            T.RandomHorizontalFlip(0.5),
            T.Lambda(lambda x: x.clip(0, 1)),
        ]
    )


def official_configure(model: nn.Module) -> list[nn.Parameter]:
    model.eval()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]


def ent(x):
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def sce(x, x_ema):
    return -0.5 * (x_ema.softmax(1) * x.log_softmax(1)).sum(1) - 0.5 * (x.softmax(1) * x_ema.log_softmax(1)).sum(1)


def slr(logits):
    probs = torch.clamp(logits.softmax(1), min=0.0, max=0.99)
    return -(probs * torch.log((probs / (torch.ones_like(probs) - probs)) + 1e-5)).sum(1)


def roid_loss(model, x, outputs, class_probs_ema, pipe, bs):
    """loss_calculation of roid.py (and cmf.py): returns the loss and the new class_probs_ema."""
    with torch.no_grad():
        w_div = 1 - F.cosine_similarity(class_probs_ema.unsqueeze(dim=0), outputs.softmax(1), dim=1)
        w_div = (w_div - w_div.min()) / (w_div.max() - w_div.min())
        mask = w_div < w_div.mean()
        w_cert = -ent(outputs)
        w_cert = (w_cert - w_cert.min()) / (w_cert.max() - w_cert.min())
        weights = torch.exp(w_div * w_cert / (1 / 3))
        weights[mask] = 0.0
        class_probs_ema = 0.9 * class_probs_ema + (1 - 0.9) * outputs.softmax(1).mean(0)
    loss = (slr(outputs) * weights)[~mask].sum() / bs
    outputs_aug = model(pipe(x[~mask]))
    loss += (sce(outputs_aug, outputs[~mask]) * weights[~mask]).sum() / bs
    return loss, class_probs_ema


def prior_corrected(outputs):
    prior = outputs.softmax(1).mean(0)
    smooth = max(1 / outputs.shape[0], 1 / outputs.shape[1]) / torch.max(prior)
    return outputs * ((prior + smooth) / (1 + smooth * outputs.shape[1]))


def reference_roid(model, xs, momentum_src=0.99):
    params = official_configure(model)
    src = copy.deepcopy(model)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    probs, pipe, outs = None, suite_pipeline(), []
    for step, x in enumerate(xs):
        torch.manual_seed(200 + step)
        outputs = model(x)
        probs = torch.ones(outputs.shape[1]) / outputs.shape[1] if probs is None else probs
        loss, probs = roid_loss(model, x, outputs, probs, pipe, len(x))
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for p, q in zip(model.parameters(), src.parameters()):
                if p.requires_grad:
                    p.data = momentum_src * p.data + (1 - momentum_src) * q.data
        outs.append(prior_corrected(outputs.detach()))
    return outs, probs


def test_light_augment_reproduces_suite_pipeline() -> None:
    x = data(1, seed=9, bs=4)[0]
    pipe = suite_pipeline()
    for seed in range(5):
        torch.manual_seed(seed)
        a = light_augment(x)
        torch.manual_seed(seed)
        assert torch.equal(a, pipe(x))


def test_roid_matches_official() -> None:
    adapter = ROID(confident_cnn())
    ref = confident_cnn()
    xs = data(4, seed=21)
    outs, probs = reference_roid(ref, xs)
    for step, (x, o) in enumerate(zip(xs, outs)):
        torch.manual_seed(200 + step)
        torch.testing.assert_close(adapter(x), o)
    torch.testing.assert_close(adapter.class_probs_ema, probs)
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert any(not torch.equal(p, adapter.source_state[f"model.{n}"]) for n, p in adapter.model.named_parameters())


def test_weight_ensembling_interpolates_towards_the_source() -> None:
    x = data(1, seed=22)[0]
    plain, merged, back = (
        ROID(confident_cnn(), momentum_src=1.0),
        ROID(confident_cnn()),
        ROID(confident_cnn(), momentum_src=0.0),
    )
    for a in (plain, merged, back):
        torch.manual_seed(5)
        a(x)
    for name, p in merged.model.named_parameters():
        src = merged.source_state[f"model.{name}"]
        q = dict(plain.model.named_parameters())[name]
        torch.testing.assert_close(p, 0.99 * q + 0.01 * src)
        assert torch.equal(dict(back.model.named_parameters())[name], src)  # m = 0: back to the source every step
    assert any(not torch.equal(p, merged.source_state[f"model.{n}"]) for n, p in merged.model.named_parameters())


def test_prior_correction_scales_the_pre_update_logits() -> None:
    adapter = ROID(confident_cnn())
    x = data(1, seed=23)[0]
    before = adapter.predict(x)
    torch.testing.assert_close(adapter(x), prior_corrected(before))
    off = ROID(confident_cnn(), use_prior_correction=False)
    torch.testing.assert_close(off(x), before)


def test_masked_samples_get_no_weight_and_batch_of_one_is_refused() -> None:
    adapter = ROID(confident_cnn())
    outputs = adapter.predict(data(1, seed=24)[0])
    keep, weights = adapter.weights(outputs)
    assert 0 < int(keep.sum()) < len(keep) and torch.all(weights[~keep] == 0) and torch.all(weights[keep] >= 1)
    with pytest.raises(ValueError, match="at least 2"):
        adapter(data(1, seed=24, bs=1)[0])


def test_roid_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = ROID(tiny_vit())
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))
