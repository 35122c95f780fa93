"""RMT: prototypes, warm-up and stream steps against a plain restatement of mariodoebler/test-time-adaptation
classification/methods/rmt.py (explicit encoder/classifier split, SupCon written out, source loader cycled); the
prepared state survives the runner's state_dict cache (replay buffer included)."""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from test_cotta import official_pipeline
from test_eata import confident_cnn
from test_santa import (
    assert_trains_layernorm,
    encoder,
    official_prototypes,
    prototype_views,
    source_batches,
    stream_batches,
    supcon,
    tiny_vit,
)

from tta_bench.methods import RMT


def sce(x, x_ema):
    return -0.5 * (x_ema.softmax(1) * x.log_softmax(1)).sum(1) - 0.5 * (x.softmax(1) * x_ema.log_softmax(1)).sum(1)


def ema_all(ema, model, m=0.999):
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.data = m * pe.data + (1 - m) * p.data


def reference_rmt(model, projector, source, xs, warmup_samples, seed0):
    model.eval()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
        else:
            m.requires_grad_(True)
    params = [p for m in model.modules() for n, p in m.named_parameters(recurse=False) if n in ("weight", "bias")]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.detach_()
    fe = encoder(model)
    protos = official_prototypes(fe, source, 5)
    opt.add_param_group({"params": projector.parameters(), "lr": opt.param_groups[0]["lr"]})
    src_iter = itertools.cycle(source)  # a list loader: every epoch yields the same batches in the same order
    steps = warmup_samples // len(source[0][0])
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * (i + 1) / steps
        x = next(src_iter)[0]
        sce(model(x), ema(x)).mean(0).backward()
        opt.step()
        opt.zero_grad()
        ema_all(ema, model)
    for g in opt.param_groups:
        g["lr"] = 1e-3  # Adam's warm-up moments are carried into the stream (official: no state is cleared)
    pipe, outs = official_pipeline(), []
    for step, x in enumerate(xs):
        torch.manual_seed(seed0 + step)
        f = fe(x)
        o = model.fc(f)
        fa = fe(pipe(x))
        oa = model.fc(fa)
        oe = ema(x)
        loss_cont = supcon(prototype_views(protos, f, fa), projector)
        loss_st = (0.5 * sce(o, oe) + 0.5 * sce(oa, oe)).mean(0)
        loss = 1.0 * loss_st + 1.0 * loss_cont
        xs_src, ys_src = next(src_iter)
        loss += 1.0 * F.cross_entropy(model.fc(fe(xs_src)), ys_src.long())
        loss.backward()
        opt.step()
        opt.zero_grad()
        ema_all(ema, model)
        outs.append((o + oe).detach())
    return outs, ema


def test_rmt_matches_official() -> None:
    adapter = RMT(confident_cnn(), num_samples_warm_up=32)  # 4 warm-up steps = 2 epochs of the source list
    ref, projector = confident_cnn(), copy.deepcopy(adapter.projector)
    source, xs = source_batches(), stream_batches(3, seed=61)
    adapter.prepare(source)
    assert adapter.replay_x.dtype == torch.uint8 and len(adapter.replay_y) == 16  # k/255 images stored exactly
    outs, ema = reference_rmt(ref, projector, source, xs, 32, seed0=600)
    for step, (x, o) in enumerate(zip(xs, outs)):
        torch.manual_seed(600 + step)
        torch.testing.assert_close(adapter(x), o)
    pairs = [(adapter.model, ref), (adapter.teacher, ema), (adapter.projector, projector)]
    for a, b in pairs:
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q)
    assert not torch.equal(adapter.model.fc.weight, adapter.teacher.fc.weight)


def test_warmup_optimizer_state_is_kept_and_reset_returns_to_it() -> None:
    """After prepare the optimizer holds the warm-up's Adam state (step = warm-up steps); reset() returns to it."""
    adapter = RMT(confident_cnn(), num_samples_warm_up=32)
    adapter.prepare(source_batches())
    first = adapter.model.fc.weight
    state = adapter.optimizer.state[first]
    assert float(state["step"]) == 4 and int(adapter.warmup_steps_done) == 4 and state["exp_avg"].abs().sum() > 0
    kept = {k: v.clone() for k, v in state.items()}
    torch.manual_seed(0)
    adapter(stream_batches(1, seed=63)[0])
    assert float(adapter.optimizer.state[first]["step"]) == 5
    adapter.reset()
    for k, v in kept.items():
        assert torch.equal(adapter.optimizer.state[first][k], v)


def test_prepared_state_survives_the_state_dict_cache() -> None:
    """The runner saves state_dict() after prepare and loads it into a fresh adapter (replay buffer resized)."""
    a = RMT(confident_cnn(), num_samples_warm_up=16, replay_size=12)
    a.prepare(source_batches())
    assert len(a.replay_y) == 12
    b = RMT(confident_cnn(), num_samples_warm_up=16, replay_size=12)
    b.load_state_dict(a.state_dict())
    b.snapshot()
    pa, pb = list(a.model.parameters()), list(b.model.parameters())  # the warm-up's Adam state came along
    for p, q in zip(pa, pb):
        sa, sb = a.optimizer.state[p], b.optimizer.state[q]
        assert sa.keys() == sb.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(sa[k], sb[k]) for k in sa) and sb["step"].device.type == "cpu"
    for step, x in enumerate(stream_batches(3, seed=62)):
        torch.manual_seed(step)
        oa = a(x)
        torch.manual_seed(step)
        assert torch.equal(oa, b(x))
    assert a.replay_pos == b.replay_pos == (3 * 8) % 12
    a.reset()
    assert a.replay_pos == 0 and len(a.replay_y) == 12


def test_replay_cycles_the_buffer_in_order_and_keeps_float_images() -> None:
    adapter = RMT(confident_cnn(), num_samples_warm_up=0, replay_size=10)
    source = [(torch.rand(8, 3, 32, 32), torch.arange(8) % 5) for _ in range(2)]
    adapter.prepare(source)
    assert adapter.replay_x.dtype == torch.float32
    x1, y1 = adapter.replay(6)
    x2, y2 = adapter.replay(6)
    expect = torch.cat([source[0][0], source[1][0][:2]])
    assert torch.equal(x1, expect[:6]) and torch.equal(x2, expect[[6, 7, 8, 9, 0, 1]])
    assert torch.equal(
        torch.cat([y1, y2]), torch.cat([source[0][1], source[1][1][:2]])[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]
    )


def test_rmt_adapts_layernorm_on_a_tiny_vit() -> None:
    adapter = RMT(tiny_vit(), num_samples_warm_up=16)
    adapter.prepare(source_batches())
    assert_trains_layernorm(adapter, stream_batches(2, seed=70))


def test_a_cached_prepare_runs_the_stream_as_a_fresh_one(tmp_path, one_thread) -> None:
    """The runner caches prepare as state_dict(): the warm-up's optimizer state is in it, so both runs agree."""
    import csv
    import json

    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    cfg = RunConfig(
        method="rmt", stream="digits-c", limit=32, batch_size=16, clean_eval="off", device="cpu",
        stream_opts={"domains": "fog,snow"}, method_opts={"num_samples_warm_up": 48, "replay_size": 64, "lr": 3e-3},
        out=str(tmp_path / "runs"),
    )  # fmt: skip

    def errors(force: bool) -> tuple[bool, list[str]]:
        res = run(cfg, quiet=True, force=force)
        cached = json.loads((res.folder / "config.json").read_text())["prepare"]["cached"]
        with open(res.folder / "batches.csv") as f:
            return cached, [row["error"] for row in csv.DictReader(f)]

    fresh, cached = errors(False), errors(True)
    assert (fresh[0], cached[0]) == (False, True)
    assert fresh[1] == cached[1]
