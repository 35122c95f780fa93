"""The time-dependent utility of the realistic setting (after Tempora's continuous utility, arXiv 2602.06136): each
batch's accuracy discounted by 1 / (1 + delay / tau), delay in source-model forwards (k - 1 for a batch the method
adapts on, 0 for one predicted without adapting), checked against hand-computed values, in summary.json and on the
page beside the realistic error."""

from __future__ import annotations

import csv
import json
import time

import pytest
import torch
import torch.nn as nn

from tta_bench import rundir
from tta_bench.config import RunConfig
from tta_bench.identity import resolve
from tta_bench.kernel import UserError
from tta_bench.leaderboard.site import build
from tta_bench.methods import Adapter
from tta_bench.protocols import RealisticClock, adapted_summary, time_discount, time_utility
from tta_bench.runner import run


def test_discount_is_hyperbolic_in_the_delay():
    assert time_discount(0.0) == 1.0
    assert time_discount(1.0) == 0.5  # tau = 1: one source forward late halves the worth
    assert time_discount(3.0, tau=1.0) == 0.25
    assert time_discount(2.0, tau=2.0) == 0.5
    assert time_discount(-1.0) == 1.0  # never worth more than on time


def test_utility_by_hand():
    # batch accuracies 1.0 and 0.5, the first adapted with k = 2 (delay 1), the second on time
    got = time_utility([0.0, 50.0], [1.0, 0.0], tau=1.0)
    # u = (0.5, 1); utility = (1 * 0.5 + 0.5 * 1) / 2; timeliness = 0.75; cov = ((.25)(-.25) + (-.25)(.25)) / 2
    assert got["time_utility"] == pytest.approx(50.0)
    assert got["timeliness"] == pytest.approx(75.0)
    assert got["utility_alignment"] == pytest.approx(-6.25)
    assert got["utility_tau"] == 1.0
    # Tempora's decomposition: accuracy * timeliness + alignment
    assert 0.75 * got["timeliness"] + got["utility_alignment"] == pytest.approx(got["time_utility"])
    slow = time_utility([0.0, 50.0], [1.0, 0.0], tau=0.25)  # u = (0.2, 1): (0.2 + 0.5) / 2
    assert slow["time_utility"] == pytest.approx(35.0)
    assert time_utility([], [])["time_utility"] is None
    with pytest.raises(ValueError):
        time_utility([1.0], [])


class Plain(Adapter):
    def adapt(self, x):
        return self.model(x)


def test_clock_records_each_batch_delay():
    clock, adapter = RealisticClock(speed_ratio=3), Plain(nn.Linear(3, 2))
    for _ in range(7):
        clock.step(adapter, torch.ones(2, 3))
    assert clock.delays == [2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 2.0]  # k = 3: adapted batches come 2 forwards late
    s = adapted_summary(clock, 7, [10.0] * 7, tau=2.0)
    u = [0.5, 1, 1, 0.5, 1, 1, 0.5]
    assert s["time_utility"] == pytest.approx(100 * sum(0.9 * v for v in u) / 7)
    assert s["batches_adapted"] == 3 and s["speed_ratio"] == 3
    assert "time_utility" not in adapted_summary(None, 7, [10.0] * 7)  # only in the realistic setting


class Slow(Adapter):
    def adapt(self, x):
        time.sleep(0.005)
        return self.model(x)


def test_measured_ratio_delays_every_adapted_batch_by_the_reported_k():
    clock, adapter = RealisticClock(), Slow(nn.Linear(3, 2))
    for _ in range(12):
        clock.step(adapter, torch.ones(2, 3))
    k = clock.summary()["speed_ratio"]
    assert k > 2  # 5 ms of sleep against a microsecond forward
    assert clock.delays == [k - 1 if a else 0.0 for a in clock.adapted_flags]
    assert sum(clock.adapted_flags) == clock.adapted >= 1 and clock.delays[0] == k - 1  # the first batch adapts


def cfg(tmp_path, method: str, setting: str = "realistic", **opts) -> RunConfig:
    stream_opts = {"domains": "fog,contrast", **({"speed_ratio": 2} if setting == "realistic" else {}), **opts}
    return RunConfig(method=method, stream="digits-c", setting=setting, limit=32, batch_size=16, seed=0,
                     clean_eval="off", stream_opts=stream_opts, out=str(tmp_path / "runs"))  # fmt: skip


def batch_errors(result) -> list[float]:
    with open(result.folder / "batches.csv") as f:
        return [float(r["error"]) for r in csv.DictReader(f)]


def test_tiny_realistic_run_records_the_utility_and_the_page_shows_it(tmp_path, one_thread):
    results = [run(cfg(tmp_path, m), quiet=True) for m in ("source", "norm")]
    for r in results:
        errors = batch_errors(r)
        assert len(errors) == 4  # 2 domains x 2 batches; k = 2: batches 0 and 2 adapted (every domain starts free)
        u = [0.5, 1.0, 0.5, 1.0]
        expected = 100 * sum((1 - e / 100) * v for e, v in zip(errors, u)) / 4
        s = json.loads((r.folder / "summary.json").read_text())
        assert s["time_utility"] == pytest.approx(expected)
        assert s["timeliness"] == pytest.approx(75.0) and s["utility_tau"] == 1.0
        assert s["time_utility"] < 100 - s["mean_error"] + 1e-9 or s["mean_error"] == 100
    tau = run(cfg(tmp_path, "norm", utility_tau=4.0), quiet=True)  # u = 1 / (1 + 1/4) = 0.8 on adapted batches
    errors = batch_errors(tau)
    s = json.loads((tau.folder / "summary.json").read_text())
    assert s["time_utility"] == pytest.approx(
        100 * sum((1 - e / 100) * v for e, v in zip(errors, [0.8, 1, 0.8, 1])) / 4
    )
    continual = run(cfg(tmp_path, "norm", setting="continual"), quiet=True)
    assert "time_utility" not in continual.summary

    build(tmp_path / "runs", tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    row = rundir.metric("time_utility")
    assert row.column and row.higher_is_better and row.title in html and "1/(1 + delay/τ)" in html
    for r in results:
        assert f"{r.summary['time_utility']:.2f}" in html


def test_utility_tau_is_checked(tmp_path):
    with pytest.raises(UserError, match="--setting realistic"):
        resolve(cfg(tmp_path, "norm", setting="continual", utility_tau=2.0))
    for bad in (0, -1.0, float("inf"), "fast"):
        with pytest.raises(UserError, match="stream.utility_tau"):
            resolve(cfg(tmp_path, "norm", utility_tau=bad))
