"""Label-free model selection (tta_bench/selection.py, `sweep --grid ... --select ...`): the criteria's choices on
hand-made rows, the meter's label-free statistics against hand-computed values, bad input, and a tiny tent grid on
digits-c whose every choice is checked against the values read from its run folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tta_bench import selection
from tta_bench.cli import main
from tta_bench.kernel import UserError
from tta_bench.metrics import ClassificationMeter


def row(point: dict, seed: int = 0, **summary) -> dict:
    return {"run_id": "0" * 16, "method": "tent", "benchmark": "b/m/continual", "seed": seed, "point": point,
            "summary": summary}  # fmt: skip


def pick(table: list[dict], criterion: str) -> dict:
    return next(r for r in table if r["criterion"] == criterion)


def test_choices_on_hand_made_rows():
    rows = [
        row({"lr": 1e-3}, mean_error=30.0, mean_entropy=0.5, marginal_entropy=2.0, clean_error_after=10.0),
        row({"lr": 1e-2}, mean_error=20.0, mean_entropy=0.9, marginal_entropy=2.2, clean_error_after=12.0),
        row({"lr": 1e-1}, mean_error=80.0, mean_entropy=0.1, marginal_entropy=0.3, clean_error_after=70.0),
    ]
    table = selection.select(rows, {("b/m/continual", "tent"): {"lr": 1e-3}}, selection.criteria(["all"]))
    assert [r["criterion"] for r in table] == ["oracle", "last", "entropy", "im", "source"]
    assert pick(table, "oracle")["chosen"] == "lr=0.01" and pick(table, "oracle")["uses_labels"] is True
    assert pick(table, "last")["chosen"] == "lr=0.001" and pick(table, "last")["gap"] == pytest.approx(10.0)
    # entropy: the collapsed point (0.1 nats) wins, 60 pp worse than the oracle
    assert pick(table, "entropy")["chosen"] == "lr=0.1" and pick(table, "entropy")["gap"] == pytest.approx(60.0)
    # im: 2.0-0.5=1.5, 2.2-0.9=1.3, 0.3-0.1=0.2 -> lr=1e-3
    assert pick(table, "im")["chosen"] == "lr=0.001" and pick(table, "im")["score"] == pytest.approx(1.5)
    assert pick(table, "source")["chosen"] == "lr=0.001" and pick(table, "source")["error"] == 30.0
    assert all(r["oracle_error"] == 20.0 and r["points"] == 3 and not (r["uses_labels"] and r["criterion"] != "oracle")
               for r in table)  # fmt: skip


def test_seeds_averaged_ties_and_missing_scores():
    rows = [
        row({"lr": 1}, 0, mean_error=10.0, mean_entropy=0.4, clean_error_after=None),
        row({"lr": 1}, 1, mean_error=30.0, mean_entropy=0.4, clean_error_after=None),  # mean 20
        row({"lr": 2}, 0, mean_error=25.0, mean_entropy=0.4, clean_error_after=None),
        row({"lr": 2}, 1, mean_error=14.0, mean_entropy=0.4, clean_error_after=None),  # mean 19.5
    ]
    table = selection.select(rows, {("b/m/continual", "tent"): {"lr": 2}}, ["oracle", "entropy", "source", "last"])
    assert pick(table, "oracle")["chosen"] == "lr=2" and pick(table, "oracle")["error"] == pytest.approx(19.5)
    assert pick(table, "oracle")["seeds"] == 2
    # an entropy tie goes to the default point (listed first), not to the grid's first value
    assert pick(table, "entropy")["chosen"] == "lr=2"
    # no clean error: the criterion chooses nothing (no number made up)
    src = pick(table, "source")
    assert src["chosen"] is None and src["error"] is None and src["gap"] is None
    # the default point is not in the rows: `last` chooses nothing
    table = selection.select(rows, {("b/m/continual", "tent"): {"lr": 3}}, ["oracle", "last"])
    assert pick(table, "last")["chosen"] is None


def test_meter_label_free_statistics():
    m = ClassificationMeter(1, "cpu")
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [float("nan"), 0.0]])
    m.update(logits, torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.long))
    # probabilities: [.5,.5], [.75,.25], non-finite -> uniform [.5,.5]
    h = lambda ps: -sum(p * math.log(p) for p in ps)  # noqa: E731
    s = m.summary()
    assert s["mean_entropy"] == pytest.approx((2 * h([0.5, 0.5]) + h([0.75, 0.25])) / 3, rel=1e-6)
    assert s["marginal_entropy"] == pytest.approx(h([1.75 / 3, 1.25 / 3]), rel=1e-6)
    assert ClassificationMeter(1, "cpu").summary()["mean_entropy"] is None


@pytest.mark.parametrize(
    "items, words",
    [
        (["lr=1e-3"], "method.<option>"),
        (["stream.gamma=1,2"], "method.<option>"),
        (["method.lr="], "no values"),
        (["method.lr=1,1"], "twice"),
        (["method.lr=1", "method.lr=2"], "twice"),
        ([f"method.a={','.join(map(str, range(17)))}", f"method.b={','.join(map(str, range(17)))}"], "more than"),
    ],
)
def test_bad_grid(items, words):
    with pytest.raises(UserError, match=words):
        selection.parse_grid(items)


def test_grid_points_and_criteria():
    grid = selection.parse_grid(["method.lr=1e-3,1e-4", "method.betas=[0.9,0.99];[0.5,0.9]"])
    assert grid == {"lr": [1e-3, 1e-4], "betas": [[0.9, 0.99], [0.5, 0.9]]}
    assert len(selection.points(grid)) == 4 and selection.points(grid)[1] == {"lr": 1e-3, "betas": [0.5, 0.9]}
    assert selection.criteria(["entropy,source"]) == ["oracle", "entropy", "source"]
    with pytest.raises(UserError, match="not a selection criterion"):
        selection.criteria(["accuracy"])


def test_sweep_select_cli_errors(tmp_path, capsys):
    base = ["sweep", "--methods", "tent", "--streams", "digits-c", "--out", str(tmp_path), "--no-leaderboard"]
    assert main([*base, "--select", "oracle"]) == 2
    assert "--grid" in capsys.readouterr().err
    assert main([*base, "--grid", "method.lr=1,2", "--set", "method.lr=1", "--select", "all"]) == 2
    assert "both give method.lr" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_tent_grid_on_digits_c(tmp_path, capsys):
    """A 2-value lr grid (plus the default point) of tent on digits-c: the oracle's and every criterion's choice
    recomputed by hand from the three run folders' summary.json files."""
    out = tmp_path / "runs"
    argv = ["sweep", "--methods", "tent", "--streams", "digits-c", "--limit", "32", "--batch-size", "16",
            "--domains", "gaussian_noise,fog", "--clean-eval", "end", "--out", str(out), "--no-leaderboard",
            "--grid", "method.lr=0.05,1e-5", "--select", "all"]  # fmt: skip
    assert main(argv) == 0
    assert "uses test labels" in capsys.readouterr().out
    runs = {}
    for done in out.glob("*/done"):
        cfg = json.loads((done.parent / "config.json").read_text())["config"]
        runs[cfg["method_opts"]["lr"]] = json.loads((done.parent / "summary.json").read_text())
    assert len(runs) == 3 and {0.05, 1e-5} < set(runs)
    default_lr = (set(runs) - {0.05, 1e-5}).pop()
    files = list((out / "selection").glob("*.json"))
    assert len(files) == 1
    table = {r["criterion"]: r for r in json.loads(files[0].read_text())["rows"]}
    order = [default_lr, 0.05, 1e-5]  # the default point first (ties), then the grid's order

    def best(score, higher=False):
        vals = [score(runs[lr]) for lr in order]
        b = max(vals) if higher else min(vals)
        return order[vals.index(b)]

    expect = {
        "oracle": best(lambda s: s["mean_error"]),
        "last": default_lr,
        "entropy": best(lambda s: s["mean_entropy"]),
        "im": best(lambda s: s["marginal_entropy"] - s["mean_entropy"], higher=True),
        "source": best(lambda s: s["clean_error_after"]),
    }
    oracle_error = runs[expect["oracle"]]["mean_error"]
    for name, lr in expect.items():
        r = table[name]
        assert r["chosen"] == f"lr={json.dumps(lr)}", name
        assert r["error"] == pytest.approx(runs[lr]["mean_error"]) and r["oracle_error"] == pytest.approx(oracle_error)
        assert r["gap"] == pytest.approx(runs[lr]["mean_error"] - oracle_error) and r["gap"] >= 0
        assert r["benchmark"] == "digits-c/small-cnn/continual" and r["method"] == "tent"
    with open(out / "selection" / "selection.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [x["criterion"] for x in lines] == list(expect) and lines[0]["uses_labels"] == "True"
    assert selection.read(out) == json.loads(files[0].read_text())["rows"]
    # entropy is a real statistic of the predictions: finite, within [0, log 10]
    assert all(0 <= s["mean_entropy"] <= math.log(10) + 1e-9 for s in runs.values())
    # the page shows the table: each criterion, its choice and gap; the oracle marked as using the test labels
    from tta_bench.leaderboard.site import build

    build(out, tmp_path / "site")
    html = (tmp_path / "site" / "index.html").read_text()
    sec = html[html.index('id="selection"') :]
    assert "tent on digits-c/small-cnn/continual" in sec and "oracle <small>(uses test labels)</small>" in sec
    for name, lr in expect.items():
        gap = runs[lr]["mean_error"] - oracle_error
        assert (
            f">{name}" in sec
            and f"<td>lr={json.dumps(lr)}</td><td>{runs[lr]['mean_error']:.2f}</td><td>{gap:+.2f}" in sec
        )
    # a damaged selection file is skipped by the reader, the valid one stays
    (out / "selection" / "bad.json").write_text("{not json")
    assert len(selection.read(out)) == 5
    assert Path(out / "selection" / "selection.csv").stat().st_size > 0
