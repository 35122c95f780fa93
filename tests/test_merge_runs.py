"""One leaderboard over many machines: `leaderboard --runs A B ...` (paths or globs) merges out folders.

Two real runs (digits-c, 16 images per domain) are made once into `host-a/`; `host-b/` holds a copy of one that
another machine made with other timings (the same results: counted once) and a copy of the other whose results
differ (a conflict: reported, never ranked).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tta_bench.cli import main
from tta_bench.leaderboard.collect import Conflict, collect, differences, results_digest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> dict[str, object]:
    """host-a: norm and source runs; host-b: norm with other timings, source with another ECE."""
    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    base = tmp_path_factory.mktemp("hosts")
    a, b = base / "host-a", base / "host-b"
    for method in ("norm", "source"):
        run(RunConfig(method=method, stream="digits-c", seed=0, limit=16, batch_size=16, out=str(a)), quiet=True)
    folders = {p.parent.name: p.parent for p in a.glob("*/done")}
    ids = {json.loads((f / "summary.json").read_text())["method"]: rid for rid, f in folders.items()}
    b.mkdir()
    norm_b = shutil.copytree(a / ids["norm"], b / ids["norm"])
    retime(norm_b, 3.0)
    source_b = shutil.copytree(a / ids["source"], b / ids["source"])
    s = json.loads((source_b / "summary.json").read_text())
    s["ece"] = s["ece"] + 1.5  # another result under the same run id
    (source_b / "summary.json").write_text(json.dumps(s, indent=2))
    return {"a": a, "b": b, "base": base, **ids}


def retime(folder: Path, factor: float) -> None:
    """Scale every timing of a run folder (summary.json and the CSVs' seconds): what another machine records."""
    s = json.loads((folder / "summary.json").read_text())
    s["stream_seconds"] *= factor
    s["images_per_s"] /= factor
    (folder / "summary.json").write_text(json.dumps(s, indent=2))
    for name in ("domains.csv", "batches.csv"):
        rows = list(csv.reader((folder / name).open(newline="")))
        j = rows[0].index("seconds")
        for r in rows[1:]:
            r[j] = repr(float(r[j]) * factor)
        with (folder / name).open("w", newline="") as f:
            csv.writer(f).writerows(rows)


def test_identical_copies_count_once_and_conflicting_ones_are_not_ranked(hosts):
    col = collect([hosts["a"], hosts["b"]])
    assert col.runs["run_id"].tolist() == [hosts["norm"]]  # norm once (two identical copies), source not ranked
    assert col.n_copies == 1
    assert col.folders[hosts["norm"]] == hosts["a"] / hosts["norm"]  # the first --runs folder's copy is kept
    assert len(col.conflicts) == 1
    c = col.conflicts[0]
    assert c.run_id == hosts["source"]
    assert c.folders == [[hosts["a"] / hosts["source"]], [hosts["b"] / hosts["source"]]]
    a_ece = json.loads((hosts["a"] / hosts["source"] / "summary.json").read_text())["ece"]
    assert c.differs == [f"ece {a_ece:.4g} vs {a_ece + 1.5:.4g}"]
    skipped = dict(col.unreadable)
    for f in (hosts["a"] / hosts["source"], hosts["b"] / hosts["source"]):
        assert hosts["source"] in skipped[f] and "no copy is ranked" in skipped[f]
    # each folder alone: both runs ranked, nothing merged
    alone = collect(hosts["a"])
    assert sorted(alone.runs["run_id"]) == sorted([hosts["norm"], hosts["source"]])
    assert alone.n_copies == 0 and not alone.conflicts and not alone.unreadable


def test_a_folder_given_twice_or_nested_is_read_once(hosts):
    a = hosts["a"]
    col = collect([a, a, a / ".." / a.name])
    assert col.n_copies == 0 and not col.conflicts
    assert sorted(col.runs["run_id"]) == sorted([hosts["norm"], hosts["source"]])


def test_results_ignore_timings_but_not_any_result(hosts):
    from tta_bench.leaderboard.collect import load_run

    _, s, dom, bat = load_run(hosts["a"] / hosts["norm"])
    _, s2, dom2, bat2 = load_run(hosts["b"] / hosts["norm"])
    assert s["images_per_s"] != s2["images_per_s"]
    assert results_digest(s, dom, bat) == results_digest(s2, dom2, bat2)
    changed = bat.copy()
    changed.loc[3, "error"] = changed.loc[3, "error"] + 1.0  # one batch's error differs: another result
    assert results_digest(s, dom, changed) != results_digest(s, dom, bat)

    class Copy:  # what `differences` reads of a copy
        def __init__(self, summary, domains, batches):
            self.summary, self.domains, self.batches = summary, domains, batches

    assert differences([[Copy(s, dom, bat)], [Copy(s, dom, changed)]]) == ["batches.csv differs"]
    more = dict(s, mean_error=1.0, ece=2.0, forgetting=3.0, adapt_mb=4.0)
    said = differences([[Copy(s, dom, bat)], [Copy(more, dom, bat)]])
    assert said[:3] == [
        f"mean_error {s['mean_error']:.4g} vs 1",
        f"ece {s['ece']:.4g} vs 2",
        f"forgetting {s['forgetting']:.4g} vs 3",
    ]
    assert said[3] == "and 1 more summary value(s)"
    c = Conflict("ab" * 8, [[Path("x/1")], [Path("y/1"), Path("z/1")]], ["ece 1 vs 2"])
    assert c.why(Path("x/1")).startswith(f"conflicting copies of run {'ab' * 8}: y/1, z/1 hold(s) other results")


def test_cli_merges_a_glob_reports_conflicts_on_the_page_and_in_the_csv(hosts, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "tta_bench", "leaderboard", "--runs", str(hosts["base"] / "host-*"), "--out", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    warning = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1  # one paragraph
    for text in (hosts["source"], str(hosts["a"] / hosts["source"]), str(hosts["b"] / hosts["source"]), "ece "):
        assert text in warning[0]
    assert "merged: 1 run was found in two folders with the same results (counted once)" in r.stdout
    conflicts = pd.read_csv(site / "csv" / "conflicts.csv")
    assert conflicts["run_id"].tolist() == [hosts["source"]] * 2 and conflicts["group"].tolist() == [0, 1]
    assert conflicts["folder"].tolist() == [str(hosts["a"] / hosts["source"]), str(hosts["b"] / hosts["source"])]
    assert pd.read_csv(site / "csv" / "runs.csv")["run_id"].tolist() == [hosts["norm"]]
    html = (site / "index.html").read_text()
    assert html.count(f"conflicting copies of run {hosts['source']}") == 2  # both copies listed on the page
    # the same folders given one by one build the same tables
    other = tmp_path / "site2"
    assert main(["leaderboard", "--runs", str(hosts["a"]), str(hosts["b"]), "--out", str(other)]) == 0
    for name in ("runs.csv", "summary.csv", "conflicts.csv"):
        assert (other / "csv" / name).read_text() == (site / "csv" / name).read_text(), name


def test_bad_runs_are_one_paragraph_and_exit_2(hosts, tmp_path, capsys):
    missing = tmp_path / "host-c"
    r = subprocess.run(
        [sys.executable, "-m", "tta_bench", "leaderboard", "--runs", str(hosts["a"]), str(missing), "--out",
         str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(missing) in r.stderr and "--runs" in r.stderr
    assert not (tmp_path / "site").exists()
    for runs in ([str(tmp_path / "nothing-*")], [str(hosts["a"]), ""], [str(hosts["a"] / hosts["norm"] / "done")]):
        capsys.readouterr()
        assert main(["leaderboard", "--runs", *runs, "--out", str(tmp_path / "site")]) == 2, runs
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "--runs" in err, err
    (tmp_path / "file-1").write_text("x")
    assert main(["leaderboard", "--runs", str(tmp_path / "file-*"), "--out", str(tmp_path / "site")]) == 2
    assert "matches no folder (1 file(s), no folder)" in capsys.readouterr().err
    # --out may not be (or hold) any of the runs folders: the site replaces --out whole
    assert main(["leaderboard", "--runs", str(hosts["a"]), str(hosts["b"]), "--out", str(hosts["b"])]) == 2
    assert "is one of the runs folders or holds one" in capsys.readouterr().err
    assert sorted(p.name for p in hosts["b"].iterdir()) == sorted([hosts["norm"], hosts["source"]])
