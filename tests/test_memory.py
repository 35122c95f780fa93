"""adapt_mb against values computed by hand for a tiny model (conv + BN + linear)."""

from __future__ import annotations

import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.memory import MB, SavedTensorTracker, measure, tensor_bytes


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def test_tent_adapt_mb_by_hand():
    n = 2
    x = torch.rand(n, 3, 8, 8)
    r = {k: (v * MB if v is not None else None) for k, v in measure(methods.create("tent", tiny()), x).items()}
    conv_w, bn_affine, nbt, lin = 4 * 3 * 9 * 4, 2 * 4 * 4, 8, (256 * 10 + 10) * 4
    assert r["params_mb"] == conv_w + bn_affine + nbt + lin  # running stats dropped by Tent
    assert r["grads_mb"] == bn_affine  # only the BN affine parameters train
    assert r["optimizer_mb"] == 2 * bn_affine + 2 * 4  # Adam: exp_avg + exp_avg_sq per param + a float32 step each
    assert r["copies_mb"] == 0
    # Saved for backward: conv output fed to BN (N*4*8*8 floats) + BN's per-channel mean/invstd (2*4 floats);
    # the softmax and log-softmax outputs of the (N,10) logits for the entropy. Frozen weights are not counted.
    bn_in, bn_stats, probs = n * 4 * 64 * 4, 2 * 4 * 4, 2 * n * 10 * 4
    assert r["saved_mb"] == bn_in + bn_stats + probs
    assert r["adapt_mb"] == sum(r[k] for k in ("params_mb", "grads_mb", "optimizer_mb", "copies_mb", "saved_mb"))
    assert r["peak_device_mb"] is None


def test_source_saves_nothing_and_measure_leaves_adapter_untouched():
    a = methods.create("tent", tiny())
    before = {k: v.clone() for k, v in a.state_dict().items()}
    r = measure(a, torch.rand(4, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    assert r["saved_mb"] > 0
    s = measure(methods.create("source", tiny()), torch.rand(4, 3, 8, 8))
    assert s["saved_mb"] == 0 and s["grads_mb"] == 0 and s["optimizer_mb"] == 0


def test_tracker_counts_shared_storage_once_and_reports_peak():
    w = torch.randn(100, requires_grad=True)
    with SavedTensorTracker() as t:
        y = (w * w).sum()  # mul saves w twice: one storage
    assert t.peak == 100 * 4
    y.backward()
    with SavedTensorTracker() as t2:
        for _ in range(3):  # three sequential graphs, each freed after backward: peak is one graph
            (w.exp()).sum().backward()
    assert t2.peak == 100 * 4 and t2.current == 0
    assert tensor_bytes([w, w[:10], w.view(10, 10)]) == 400
