"""Worst-group and average-group accuracy (tta_bench.metrics.GroupMeter): against hand-computed values, the meter a
grouped stream gets, and the two METRICS rows reaching summary.json, the leaderboard's CSVs and the page."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tta_bench import rundir
from tta_bench.config import RunConfig
from tta_bench.metrics import (
    GROUP_INFO,
    BinaryClassificationMeter,
    ClassificationMeter,
    GroupMeter,
    encode_groups,
    make_meter,
)
from tta_bench.runner import run

NAMES = ["a/red", "b/red", "a/green", "b/green"]  # group id = label + 2 * colour


def _logits(pred: list[int | None]) -> torch.Tensor:
    """Two-class logits predicting `pred` (None: a diverged, NaN prediction)."""
    out = torch.zeros(len(pred), 2)
    for i, p in enumerate(pred):
        if p is None:
            out[i] = float("nan")
        else:
            out[i, p] = 3.0
    return out


def _meter_with_example() -> GroupMeter:
    m = GroupMeter(2, "cpu", num_classes=2, group_names=NAMES)
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1])
    colours = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    y = encode_groups(labels, colours, 2)
    assert y.tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    pred = [0, 0, 1, 1, 1, 1, 1, None]
    dom = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    m.update(_logits(pred[:4]), y[:4], dom[:4])  # two batches
    m.update(_logits(pred[4:]), y[4:], dom[4:])
    return m


def test_group_accuracies_against_hand_computed_values():
    m = _meter_with_example()
    # groups: a/red 2 of 3 right, b/red 2 of 2, a/green 0 of 1, b/green 1 of 2 (the NaN prediction counts wrong)
    assert m.group_accuracies() == pytest.approx({"a/red": 200 / 3, "b/red": 100.0, "a/green": 0.0, "b/green": 50.0})
    s = m.summary()
    assert s["worst_group_acc"] == pytest.approx(0.0)
    assert s["avg_group_acc"] == pytest.approx((200 / 3 + 100 + 0 + 50) / 4)
    assert s["error"] == pytest.approx(100 * 3 / 8)  # 5 of 8 right: labels decoded from the group ids
    assert m.batch_errors() == pytest.approx([25.0, 50.0])
    d = m.domain_results()
    # domain 0: a/red 2 of 3, b/red 1 of 1; the green groups are absent there and do not count
    assert d[0]["worst_group_acc"] == pytest.approx(200 / 3)
    assert d[0]["avg_group_acc"] == pytest.approx((200 / 3 + 100) / 2)
    assert d[0]["group_acc_a/green"] is None and d[0]["n"] == 4
    # domain 1: b/red 1 of 1, a/green 0 of 1, b/green 1 of 2
    assert d[1]["worst_group_acc"] == pytest.approx(0.0)
    assert d[1]["avg_group_acc"] == pytest.approx(50.0)
    assert d[1]["group_acc_b/green"] == pytest.approx(50.0) and d[1]["error"] == pytest.approx(50.0)


def test_classification_equals_the_plain_meter_and_empty_groups():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 3), torch.randint(0, 3, (50,))
    colours = torch.randint(0, 2, (50,))
    g = GroupMeter(1, "cpu", 3, [f"{c}/{k}" for k in "xy" for c in range(3)])
    plain = ClassificationMeter(1, "cpu")
    dom = torch.zeros(50, dtype=torch.long)
    g.update(logits, encode_groups(labels, colours, 3), dom)
    plain.update(logits, labels, dom)
    assert g.summary()["error"] == pytest.approx(plain.summary()["error"])
    assert g.summary()["ece"] == pytest.approx(plain.summary()["ece"])
    correct = logits.argmax(1) == labels
    per = [100 * correct[(labels == c) & (colours == k)].double().mean().item() for k in range(2) for c in range(3)]
    assert g.summary()["worst_group_acc"] == pytest.approx(min(per))
    assert g.summary()["avg_group_acc"] == pytest.approx(sum(per) / 6)
    empty = GroupMeter(1, "cpu", 2, NAMES).summary()
    assert empty["worst_group_acc"] is None and empty["avg_group_acc"] is None


def test_a_stream_declaring_groups_gets_the_group_meter():
    spec = SimpleNamespace(task="classification", num_classes=2, info={GROUP_INFO: NAMES})
    assert type(make_meter(spec, 1, "cpu")) is GroupMeter
    assert type(make_meter(SimpleNamespace(task="classification", info={}), 1, "cpu")) is ClassificationMeter
    binary = SimpleNamespace(task="binary", num_classes=2, info={GROUP_INFO: NAMES})
    assert type(make_meter(binary, 1, "cpu")) is BinaryClassificationMeter  # groups: classification task only


def test_the_rows_reach_summary_csvs_and_page(tmp_path, one_thread):
    rows = {m.key: m for m in rundir.METRICS}
    assert rows["worst_group_acc"].higher_is_better and rows["avg_group_acc"].higher_is_better
    assert rows["worst_group_acc"].column and rows["worst_group_acc"].aggregated
    from tta_bench.leaderboard.site import build

    out = tmp_path / "runs"
    results = [
        run(
            RunConfig(method=m, stream="coloredmnist", limit=96, batch_size=32, seed=s, clean_eval="off", out=str(out)),
            quiet=True,
        )  # fmt: skip
        for m in ("source", "norm")
        for s in (0, 1)
    ]
    for r in results:
        s = r.summary
        assert 0 <= s["worst_group_acc"] <= s["avg_group_acc"] <= 100
        dom = pd.read_csv(r.folder / "domains.csv")
        per = dom[[f"group_acc_{n}" for n in ("0-4/red", "5-9/red", "0-4/green", "5-9/green")]].iloc[0]
        assert per.min() == pytest.approx(s["worst_group_acc"]) and per.mean() == pytest.approx(s["avg_group_acc"])
    build(out, tmp_path / "site")
    runs = pd.read_csv(tmp_path / "site" / "csv" / "runs.csv")
    assert sorted(runs["worst_group_acc"]) == pytest.approx(sorted(r.summary["worst_group_acc"] for r in results))
    summ = pd.read_csv(tmp_path / "site" / "csv" / "summary.csv").set_index("entry")
    src = [r.summary["avg_group_acc"] for r in results if r.summary["method"] == "source"]
    assert summ.loc["source", "avg_group_acc_mean"] == pytest.approx(sum(src) / 2)
    html = (tmp_path / "site" / "index.html").read_text()
    assert rows["worst_group_acc"].title in html and rows["avg_group_acc"].title in html
    assert f"{summ.loc['norm', 'worst_group_acc_mean']:.2f}" in html
