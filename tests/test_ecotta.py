"""EcoTTA: only meta networks ever change; the regulariser, confidence filter, warm-up, reset and memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.memory import measure
from tta_bench.methods._meta import (
    MetaNet,
    _probe,
    chain_breaks,
    partition,
    partition_blocks,
    residual_blocks,
    self_distilled_loss,
)
from tta_bench.methods.ecotta import EcoTTA, confident_entropy, warm_up
from tta_bench.zoo.espnet import STATS, ESPNet, ESPNetInput
from tta_bench.zoo.small_cnn import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def _source_model() -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN(10)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _model_state(a: EcoTTA) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in a.model.state_dict().items()}


def test_meta_networks_match_partitions() -> None:
    a = EcoTTA(_source_model())
    got = [(m.conv.in_channels, m.conv.out_channels, m.conv.stride[0]) for m in a.metas]
    # small-cnn: one partition per stage; channels in -> out, stride 2 exactly where the stage max-pools
    want = []
    for stage in a.model.features:
        conv = stage[0]
        want.append((conv.in_channels, conv.out_channels, 2 if any(isinstance(x, nn.MaxPool2d) for x in stage) else 1))
    assert got == want and len(got) == 4
    r = torchvision.models.resnet50()
    assert len(residual_blocks(r)) == 16 and partition(16, 4) == [4, 4, 4, 4] and partition(16, 5) == [3, 3, 3, 3, 4]
    assert partition(18, 5, (3, 3, 3, 3, 6)) == [3, 3, 3, 3, 6] and partition(12, 4) == [3, 3, 3, 3]


def test_recomputed_branch_gives_plain_autograd_gradients() -> None:
    torch.manual_seed(0)
    m = MetaNet(4, 6, 2).double()
    ref = copy.deepcopy(m)
    x = torch.randn(5, 4, 8, 8, dtype=torch.double, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    frozen = torch.randn(5, 6, 4, 4, dtype=torch.double)
    y, yr = m(x, frozen), ref.bn(frozen) + F.relu(ref.conv_bn(ref.conv(xr)))
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    assert torch.equal(y, yr) and torch.allclose(x.grad, xr.grad, atol=1e-12)
    assert all(torch.allclose(p.grad, q.grad, atol=1e-12) for p, q in zip(m.parameters(), ref.parameters()))


def test_original_params_and_buffers_bit_identical_after_10_steps() -> None:
    a = EcoTTA(_source_model(), lr=0.05)
    orig = _model_state(a)
    metas = {k: v.clone() for k, v in a.metas.state_dict().items()}
    torch.manual_seed(1)
    for _ in range(10):
        assert a(torch.rand(16, 3, 32, 32)).shape == (16, 10)
    assert all(torch.equal(v, orig[k]) for k, v in a.model.state_dict().items())
    assert any(not torch.equal(v, metas[k]) for k, v in a.metas.state_dict().items())
    assert {id(p) for p in a.trainable_parameters()} == {id(p) for p in a.metas.parameters()}


def test_regulariser_zero_when_meta_outputs_equal_frozen_outputs() -> None:
    y = torch.randn(4, 8, 5, 5, requires_grad=True)
    assert self_distilled_loss([(y, y.detach().clone())]).item() == 0.0
    loss = self_distilled_loss([(y, y.detach() - 1.0), (y, y.detach() + 0.5)])
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    torch.testing.assert_close(y.grad, torch.full_like(y, 0.0))  # +1 and -1 signs cancel, per element
    # in the network: identity meta BN and a zero conv branch make x̃_k = f_k exactly
    a = EcoTTA(_source_model())
    for m in a.metas:
        m.bn = nn.Identity()
        nn.init.zeros_(m.conv.weight)
    a.model(torch.rand(8, 3, 32, 32))
    pairs = a._pairs()
    assert len(pairs) == 4 and self_distilled_loss(pairs).item() == 0.0


def test_confidence_filter_drops_high_entropy_samples() -> None:
    logits = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    loss, keep = confident_entropy(logits, 0.4)
    assert keep.tolist() == [bool(e < 0.4 * math.log(4)) for e in ent] == [True, False, False]
    assert loss.item() == pytest.approx(ent[0].item(), rel=1e-5)
    loss, keep = confident_entropy(torch.zeros(5, 3, 2, 2), 0.4)  # dense: per pixel; none kept -> 0
    assert keep.shape == (5, 2, 2) and not keep.any() and loss.item() == 0.0


def test_warm_up_changes_only_meta_params() -> None:
    a = EcoTTA(_source_model())
    orig = _model_state(a)
    metas = {k: v.clone() for k, v in a.metas.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]
    warm_up(a, data, epochs=2, lr=0.05)
    assert all(torch.equal(v, orig[k]) for k, v in a.model.state_dict().items())
    changed = {k: not torch.equal(v, metas[k]) for k, v in a.metas.state_dict().items()}
    assert all(v for k, v in changed.items() if not k.endswith("scale"))  # every parameter trained
    assert not any(v for k, v in changed.items() if k.endswith("scale"))  # the fixed output scale is not


def test_reset_restores_the_prepared_state_exactly() -> None:
    a = EcoTTA(_source_model(), warmup_epochs=1)
    a.prepare([(torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))])
    a.snapshot()  # what the runner does after prepare
    start = {k: v.clone() for k, v in a.state_dict().items()}
    x = torch.rand(16, 3, 32, 32)
    first = a(x)
    for _ in range(3):
        a(torch.rand(16, 3, 32, 32))
    a.reset()
    assert all(torch.equal(v, start[k]) for k, v in a.state_dict().items())
    torch.testing.assert_close(a(x), first, atol=0, rtol=0)


def test_memory_below_tent() -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 3, 64, 64)
    eco = measure(methods.create("ecotta", torchvision.models.resnet18(), partitions=4), x)
    tent = measure(methods.create("tent", torchvision.models.resnet18()), x)
    assert eco["adapt_mb"] < tent["adapt_mb"]
    assert eco["saved_mb"] < 0.4 * tent["saved_mb"], (eco, tent)


def test_cli_run_on_digits(runs_dir) -> None:
    """Through the CLI on digits-c: the runner's prepare stage warms the meta networks up on the source split."""
    import json

    from tta_bench.cli import main

    quick = ["--limit", "64", "--clean-eval", "end", "--out", str(runs_dir)]
    args = ["run", "--method", "ecotta", "--stream", "digits-c", *quick]
    assert main(args + ["--set", "method.warmup_epochs=1"]) == 0
    (folder,) = [p for p in runs_dir.iterdir() if (p / "done").exists()]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "ecotta" and 0 <= summary["mean_error"] <= 100
    assert summary["prepare_s"] > 0 and summary["adapt_mb"] > 0


def test_copies_adapt_their_own_meta_networks() -> None:
    """measure() and the runner deep-copy adapters: the copy's hooks must drive the copy's meta networks."""
    a = EcoTTA(_source_model())
    before = {k: v.clone() for k, v in a.state_dict().items()}
    b = copy.deepcopy(a)
    b(torch.rand(8, 3, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in b.state_dict().items())


def _tiny_espnet(q: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return ESPNetInput(ESPNet(12, p=2, q=q, skip_image=True), *STATS["camvid"]).eval()


def test_partitions_are_chains_and_never_cross_espnet_stage_boundaries() -> None:
    m = _tiny_espnet()
    enc = m.net.encoder
    blocks = residual_blocks(m)  # level2 + level3 ESP blocks; the stem unit level1 (conv-BN-PReLU) holds none
    assert blocks == [*enc.level2, *enc.level3]
    shapes = _probe(m, blocks)
    # level3[0] takes level3_0's output (after a concatenation), not level2[1]'s: a forced boundary before it
    assert chain_breaks(blocks, shapes) == (2,)
    assert [shapes[id(b)][2] for b in blocks] == [None, id(blocks[0]), None, id(blocks[2]), id(blocks[3])]
    assert partition(5, 4, (), (2,)) == [1, 1, 1, 2] and partition(5, 3, (), (2,)) == [2, 1, 2]
    assert partition(5, 2, (), (2,)) == [2, 3] and partition(5, 1, (), (2,)) == [2, 3]  # one partition per chain
    assert partition(10, 4, (), (2,)) == [2, 2, 3, 3] and partition(10, 3, (), (2,)) == [2, 4, 4]  # p=2, q=8
    assert partition(10, 2) == [5, 5]  # without the boundary the plain split would put it inside a partition
    assert partition(5, 2, (2, 3)) == [2, 3]
    with pytest.raises(UserError, match="stage boundary"):
        partition(5, 2, (3, 2), (2,))
    groups, _ = partition_blocks(m, 3)
    assert groups == [(enc.level2[0], enc.level2[1]), (enc.level3[0], enc.level3[0]), (enc.level3[1], enc.level3[2])]
    r = torchvision.models.resnet50()  # residual networks are one chain: the plain near-equal split
    rb = residual_blocks(r)
    assert chain_breaks(rb, _probe(r, rb)) == () and [g[0] for g in partition_blocks(r, 4)[0]] == rb[::4]


def test_ecotta_adapts_a_tiny_espnet() -> None:
    a = EcoTTA(_tiny_espnet(), partitions=4, lr=0.05)
    assert [(x.conv.in_channels, x.conv.out_channels, x.conv.stride[0]) for x in a.metas] == [
        (64, 64, 1), (64, 64, 1), (128, 128, 1), (128, 128, 1)
    ]  # fmt: skip
    three = EcoTTA(_tiny_espnet(), partitions=3)  # the plain split [2, 3] would cross level2 -> level3 (64 -> 128)
    assert [(x.conv.in_channels, x.conv.out_channels) for x in three.metas] == [(64, 64), (128, 128), (128, 128)]
    orig = _model_state(a)
    metas = {k: v.clone() for k, v in a.metas.state_dict().items()}
    x = torch.rand(2, 3, 24, 40)
    assert a(x).shape == (2, 11, 24, 40)
    assert all(torch.equal(v, orig[k]) for k, v in a.model.state_dict().items())
    assert any(not torch.equal(v, metas[k]) for k, v in a.metas.state_dict().items())


def test_runner_on_a_camvid_c_folder_with_held_out_source(tmp_path) -> None:
    """ESPNet (random weights, released layout) on camvid-c written in the SegNet-tutorial layout: no train
    split, so the warm-up uses the held-out last test images."""
    import json

    import numpy as np
    from PIL import Image

    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    rng = np.random.default_rng(0)
    for i in range(12):
        name = f"0001TP_{8550 + 30 * i:06d}.png"
        for split, arr in (("test", rng.integers(0, 256, (32, 48, 3))), ("testannot", rng.integers(0, 12, (32, 48)))):
            (tmp_path / "camvid" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "camvid" / split / name)
    torch.manual_seed(0)
    torch.save(ESPNet(12, skip_image=True).state_dict(), tmp_path / "espnet.pth")
    cfg = RunConfig(
        method="ecotta",
        stream="camvid-c",
        severity=3,
        batch_size=2,
        limit=2,
        out=str(tmp_path / "runs"),
        data_dir=str(tmp_path),
        model_opts={"weights": str(tmp_path / "espnet.pth")},
        method_opts={"warmup_epochs": 1},
        device="cpu",
    )
    res = run(cfg, quiet=True)
    assert len(res.domains) == 15 and res.domains["miou"].between(0, 100).all()
    assert res.summary["prepare_s"] > 0 and 0 <= res.summary["mean_error"] <= 100
    info = json.loads((res.folder / "config.json").read_text())["stream_info"]
    assert info["holdout"] == 3 and info["source_split"] == "test-holdout" and info["n_target"] == 9


def test_identity_init_starts_warm_up_from_the_source_model() -> None:
    """After `identity_init(gain=0)` on a batch, x̃_k = f_k on that batch: the logits equal the frozen model's.
    With the default small open branch (gain 0.1) x̃_k − f_k has zero channel means and is small."""
    from tta_bench.methods.ecotta import identity_init

    model = _source_model()
    a = EcoTTA(copy.deepcopy(model))
    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before, want = a.infer(x), model(x)
        identity_init(a, x, gain=0.0)
        exact = a.infer(x)
        identity_init(a, x)
        pairs = []
        hooks = [m.register_forward_hook(lambda mod, args, out: pairs.append((out, args[1]))) for m in a.metas]
        near = a.infer(x)
        for h in hooks:
            h.remove()
    assert (before - want).abs().max() > 0.1  # default (PyTorch) init is far from the source model
    torch.testing.assert_close(exact, want, atol=2e-4, rtol=1e-4)
    assert (near - want).abs().max() < 0.2 * want.abs().max()
    assert all(m.scale.min() > 0 for m in a.metas) and len(pairs) == len(a.metas)
    for y, f in pairs:  # per-channel means preserved, perturbation about gain·σ
        torch.testing.assert_close(y.mean((0, 2, 3)), f.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
        assert 0 < (y - f).std() < 0.2 * f.std()
    # The open branch passes gradients to every meta parameter from the first step.
    a.metas.zero_grad()
    F.cross_entropy(a.model(x), torch.randint(0, 10, (32,))).backward()
    a._pairs()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.metas.parameters())


def test_meta_init_option_is_checked() -> None:
    with pytest.raises(UserError, match="meta_init"):  # at construction, before any run folder or warm-up
        EcoTTA(_source_model(), meta_init="zeros")
