"""The compute-aware `realistic` setting (Alfarra et al., ICML 2024; official `delayed_eval_online`).

A method of relative cost k adapts on every ceil(k)-th batch, the batches in between are predicted by the
current model without adapting; k = 1 is the continual setting; a measured k comes from timing the method
against the no-adapt forward on the same batch.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn

from tta_bench import RunConfig, run
from tta_bench import streams as st
from tta_bench.data.cifar import U8Images
from tta_bench.identity import resolve, run_id
from tta_bench.kernel import UserError
from tta_bench.methods import Adapter
from tta_bench.models import MODELS
from tta_bench.protocols import RealisticClock, adapted_summary, check_stream_options, clock_for, skipped_after


class Counting(Adapter):
    """Counts adapt() and infer() calls; adapt() can be made slower than the plain forward."""

    defaults = {"sleep": 0.0}

    def configure(self) -> None:
        self.adapt_calls: list[int] = []
        self.infer_calls: list[int] = []
        self.seen = 0

    def adapt(self, x):
        self.adapt_calls.append(self.seen)
        self.seen += 1
        time.sleep(self.hp.sleep)
        return self.model(x) + 1.0  # marks an adapted prediction

    def infer(self, x):
        self.infer_calls.append(self.seen)
        self.seen += 1
        return self.model(x)


def _run(clock: RealisticClock, adapter: Counting, n: int) -> list[torch.Tensor]:
    x = torch.ones(2, 3)
    return [clock.step(adapter, x) for _ in range(n)]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_fixed_ratio_adapts_on_exactly_every_kth_batch(k):
    adapter = Counting(nn.Linear(3, 2))
    clock = RealisticClock(speed_ratio=k)
    outs = _run(clock, adapter, 23)
    assert adapter.adapt_calls == list(range(0, 23, k))
    assert adapter.infer_calls == [i for i in range(23) if i % k]
    assert clock.adapted == len(range(0, 23, k)) and clock.adapted + clock.skipped == 23
    plain = adapter.model(torch.ones(2, 3))
    for i, out in enumerate(outs):  # adapted batches return the adapter's output, the others the no-adapt one
        torch.testing.assert_close(out, plain + 1.0 if i % k == 0 else plain)
    s = clock.summary()
    assert s["speed_ratio"] == k and s["speed_ratio_measured"] is False and s["batches_adapted"] == clock.adapted


def test_fractional_ratio_is_rounded_up_and_a_new_segment_starts_free():
    assert [skipped_after(r) for r in (0.4, 1.0, 1.01, 2.0, 2.5, 3.0)] == [0, 0, 1, 1, 2, 2]
    assert skipped_after(1.5, eta=2.0) == 2  # the official stream-speed factor multiplies k
    adapter = Counting(nn.Linear(3, 2))
    clock = RealisticClock(speed_ratio=2.5)  # ceil -> every 3rd batch
    _run(clock, adapter, 4)
    clock.start_segment()  # the official loop runs once per corruption with delay = 0
    _run(clock, adapter, 4)
    assert adapter.adapt_calls == [0, 3, 4, 7]


def test_measured_ratio_times_the_method_against_the_no_adapt_forward():
    adapter = Counting(nn.Linear(3, 2), sleep=0.02)  # adapt ~20 ms, the forward ~µs: k is large
    clock = RealisticClock()
    _run(clock, adapter, 6)
    s = clock.summary()
    assert s["speed_ratio_measured"] is True and s["speed_ratio"] > 6
    assert clock.adapted == 1 and clock.skipped == 5  # busy for the rest of the short stream
    # each adapted batch also ran one timed no-adapt forward (official: model.model(images))
    assert adapter.adapt_calls == [0] and adapter.infer_calls == [1, 2, 3, 4, 5, 6]


def test_speed_ratio_is_checked_and_only_accepted_in_the_realistic_setting():
    opts = {"gamma": 0.1, "window": 1000, "speed_ratio": None}
    check_stream_options("continual", opts)
    check_stream_options("realistic", {**opts, "speed_ratio": 2})
    with pytest.raises(UserError, match="only applies to --setting realistic"):
        resolve(RunConfig(method="tent", stream="digits-c", stream_opts={"speed_ratio": 2}))  # checked once, here
    for bad in (0, -1, "fast", True):
        with pytest.raises(UserError, match="positive number"):
            resolve(RunConfig(method="tent", stream="digits-c", setting="realistic", stream_opts={"speed_ratio": bad}))
    with pytest.raises(UserError, match="stream.window"):
        check_stream_options("continual", {**opts, "window": 0})
    assert clock_for("continual", opts) is None and clock_for("realistic", opts).speed_ratio is None
    assert adapted_summary(None, 7) == {"speed_ratio": None, "speed_ratio_measured": None, "batches_adapted": 7}


def _tiny_spec(*, data_dir, seed: int = 0) -> st.StreamSpec:
    """Test stream: 3 synthetic domains of 32 8x8 images (domain k is brighter), 4 classes."""

    def load(domain: str, severity, limit):
        k = int(domain[1])
        x = ((k / 3 + 0.2 * torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(k))) * 255).to(torch.uint8)
        return U8Images(x[:limit], (torch.arange(32) % 4)[:limit])

    return st.StreamSpec(
        "realistic-tiny", ["d0", "d1", "d2"], load, 4, data_fingerprint=None, source_fingerprint=None, severities=None
    )


def _tiny_net(spec, ctx) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 4))  # fmt: skip


@pytest.fixture
def tiny_registered():
    st.register("realistic-tiny", default_model="realistic-tiny-net")(_tiny_spec)
    MODELS.add("realistic-tiny-net", _tiny_net)
    yield
    st.STREAMS._entries.pop("realistic-tiny")
    MODELS._entries.pop("realistic-tiny-net")


def _cfg(runs_dir, **kw) -> RunConfig:
    base = dict(method="tent", stream="realistic-tiny", batch_size=8, clean_eval="off", out=str(runs_dir))
    return RunConfig(**{**base, **kw})


def test_realistic_at_k1_equals_continual_and_k2_adapts_every_second_batch(runs_dir, tiny_registered):
    cont = run(_cfg(runs_dir), quiet=True).summary
    k1 = run(_cfg(runs_dir, setting="realistic", stream_opts={"speed_ratio": 1}), quiet=True).summary
    assert k1["mean_error"] == cont["mean_error"] and k1["domain_errors"] == cont["domain_errors"]
    assert k1["window_errors"] == cont["window_errors"]
    assert k1["batches_adapted"] == 3 * 4 and k1["speed_ratio"] == 1.0 and k1["speed_ratio_measured"] is False
    assert cont["batches_adapted"] == 12 and cont["speed_ratio"] is None and cont["mean_error"] > 0
    k2 = run(_cfg(runs_dir, setting="realistic", stream_opts={"speed_ratio": 2}), quiet=True)
    assert k2.summary["batches_adapted"] == 6 and k2.summary["batches_not_adapted"] == 6  # 4 batches/domain
    assert run_id(_cfg(runs_dir, setting="realistic", stream_opts={"speed_ratio": 3})) != run_id(
        _cfg(runs_dir, setting="realistic", stream_opts={"speed_ratio": 2})
    )
    measured = run(_cfg(runs_dir, setting="realistic"), quiet=True).summary
    assert measured["speed_ratio_measured"] is True and measured["speed_ratio"] > 0
    assert 3 <= measured["batches_adapted"] <= 12
