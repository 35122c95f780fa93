"""`python -m tta_bench reproduce`: the published tables as data, their grid, the parity report and its page section.

Full scale needs the real data and weights (and a GPU); here the machinery runs end to end on the tables' stand-ins
(the digits stream and the small CNN, `--stand-in`), whose numbers are not comparable and are reported as such.
"""

from __future__ import annotations

import csv
import json

import pytest

from tta_bench import methods
from tta_bench.cli import build_parser, main
from tta_bench.leaderboard import parity as page_parity
from tta_bench.reproduce import parity, tables
from tta_bench.reproduce.command import expand

SUITE_COMMIT = "8b2ed63255d906b6b0afaefc6ae630b9ec4bdaa1"


def args_of(*argv: str):
    argv = ("reproduce", *argv)
    return build_parser(list(argv)).parse_args(list(argv))


def test_list_shows_every_table_with_its_source(capsys):
    assert main(["reproduce", "list"]) == 0
    out = capsys.readouterr().out
    for name in tables.names():
        assert name in out
    assert "classification/benchmark.md@8b2ed63" in out and "README.md@8e21fad" in out
    assert "arxiv.org/abs/2303.01904" in out and "CCC-medium" in out  # the table left out is said to be left out


def test_shipped_tables_cite_every_cell_and_name_registered_adapters():
    assert set(tables.names()) >= {"suite-cifar10-c", "suite-cifar100-c", "suite-imagenet-c-resnet50",
                                   "suite-imagenet-c-vit-b-16", "alfarra-imagenet-c", "ecotta-memory",
                                   "alpha-bn-gta5-cityscapes", "suite-mixed-cifar10-c", "suite-mixed-cifar100-c",
                                   "suite-mixed-imagenet-c-resnet50", "suite-mixed-imagenet-c-vit-b-16"}  # fmt: skip
    for name in tables.names():
        t = tables.load(name)
        assert t.source.get("url") and t.source.get("citation")
        assert t.protocol["source"] and t.protocol["seeds"]
        assert set(t.methods()) <= set(methods.names())
        assert all(c.where for c in t.cells)
    suite = tables.load("suite-cifar10-c")
    assert suite.source["commit"] == SUITE_COMMIT and suite.protocol["batch_size"] == 200
    by_id = {c.id: c for c in suite.cells}  # spot checks against benchmark.md (Continual, CIFAR10-C, WRN-28)
    assert (by_id["source"].value, by_id["tent"].value, by_id["roid"].value, by_id["roid"].spread) == (
        43.5, 20.0, 16.2, 0.05)  # fmt: skip
    mixed = {c.id: c.value for c in tables.load("suite-mixed-cifar10-c").cells}  # benchmark.md, Mixed domains
    assert (mixed["tent"], mixed["adacontrast"]) == (44.1, 26.2)
    assert tables.load("suite-mixed-cifar10-c").protocol["setting"] == "mixed"
    vit = {c.id: c.value for c in tables.load("suite-imagenet-c-vit-b-16").cells}
    assert "norm" not in vit and vit["cotta"] == 77.0  # ViT has no BatchNorm: BN-1 left out
    alf = {c.id: c for c in tables.load("alfarra-imagenet-c").cells}
    assert (alf["tent-offline"].value, alf["tent-realistic"].value) == (57.3, 61.6)
    assert alf["tent-realistic"].overrides["setting"] == "realistic"


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: "{not json", ["not valid JSON"]),
        (lambda d: d["cells"][2].update(value="20.0") or d, ["cell 'tent'.value", "JSON number"]),
        (lambda d: d["protocol"].pop("seeds") and d, ["protocol.seeds", "missing"]),
        (lambda d: d["cells"][0].update(id="tent") or d, ["cell ids", "repeat"]),
        (lambda d: d["cells"][1].update(stram="x") or d, ["cell 'norm'", "unknown"]),
        (lambda d: d.update(tolerance=-1) or d, ["'tolerance'", "positive"]),
    ],
)
def test_a_broken_table_file_is_one_clear_paragraph(tmp_path, capsys, edit, words):
    data = json.loads((tables.TABLES_DIR / "suite-cifar10-c.json").read_text())
    edited = edit(data)
    path = tmp_path / "broken.json"
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    assert main(["reproduce", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Table file") and str(path) in err and "Traceback" not in err
    assert err.count("\n") == 1 and all(w in err for w in words)


def test_bad_names_are_refused_before_anything_runs(tmp_path, capsys):
    assert main(["reproduce", "suite-cifar10", "--plan"]) == 2
    assert "suite-cifar10-c" in capsys.readouterr().err  # close match
    assert main(["reproduce", "suite-cifar10-c", "--methods", "memo", "--plan"]) == 2
    assert "not in table suite-cifar10-c" in capsys.readouterr().err
    assert main(["reproduce", "ecotta-memory", "--methods", "cotta", "--plan"]) == 2  # only a baseline there
    assert "measured with them alone" in capsys.readouterr().err
    assert main(["reproduce", "suite-cifar10-c", "--limit", "0", "--plan"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["reproduce", "suite-cifar10-c", "--seeds", "one", "--plan"]) == 2
    assert "--seeds takes integers" in capsys.readouterr().err
    assert main(["reproduce", "alpha-bn-gta5-cityscapes", "--stand-in", "--out", str(tmp_path / "r")]) == 2
    assert "has no stand-in" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_grid_equals_the_tables_protocol():
    t = tables.load("suite-cifar10-c")
    grid = expand(args_of("suite-cifar10-c"), t)
    p = t.protocol
    assert {(g.cfg.method, g.cfg.seed) for g in grid} == {(c.method, s) for c in t.cells for s in p["seeds"]}
    assert len(grid) == len(t.cells) * len(p["seeds"])
    for g in grid:
        c = g.cfg
        want = (p["stream"], p["model"], p["setting"], p["severity"], p["batch_size"], p["samples_per_domain"])
        assert (c.stream, c.model, c.setting, c.severity, c.batch_size, c.limit, c.precision) == (*want, "fp32")
        assert c.stream_opts["domains"] == p["domains"] and c.stream_opts["holdout"] == 0
    tent = next(g.cfg for g in grid if g.cfg.method == "tent")
    assert tent.method_opts["lr"] == pytest.approx(1e-3)  # the cifar10-c preset (Adam 1e-3) is applied

    alf = tables.load("alfarra-imagenet-c")
    grid = expand(args_of("alfarra-imagenet-c"), alf)
    assert len(grid) == len(alf.cells) * len(alf.protocol["domains"])  # episodic: one run per corruption
    assert sorted(d for g in grid for d in g.cfg.stream_opts["domains"]) == sorted(alf.protocol["domains"] * 18)
    assert {g.cfg.setting for g in grid if g.cell.endswith("-realistic")} == {"realistic"}
    assert {g.cfg.setting for g in grid if g.cell.endswith("-offline")} == {"continual"}
    assert {g.cfg.method_opts["source_weight"] for g in grid if g.cfg.method == "alpha_bn"} == {0.5}
    assert {g.cfg.stream_opts["samples"] for g in grid} == {"all"} and {g.cfg.limit for g in grid} == {50000}

    eco = tables.load("ecotta-memory")
    grid = expand(args_of("ecotta-memory"), eco)
    pairs = {(g.cell, g.role): (g.cfg.method, g.cfg.model, g.cfg.batch_size) for g in grid}
    assert pairs == {
        ("resnet50", "method"): ("ecotta", "resnet50", 64), ("resnet50", "baseline"): ("cotta", "resnet50", 64),
        ("wrn40", "method"): ("ecotta", "robustbench", 200), ("wrn40", "baseline"): ("cotta", "robustbench", 200),
    }  # fmt: skip

    small = expand(args_of("suite-cifar10-c", "--stand-in", "--limit", "16", "--seeds", "0", "--methods", "tent"), t)
    assert [(g.cfg.stream, g.cfg.model, g.cfg.limit, g.cfg.seed) for g in small] == [("digits-c", "small-cnn", 16, 0)]
    assert small[0].cfg.method_opts["lr"] == pytest.approx(1e-3)  # stand-in keeps the real family's preset
    reduced = expand(args_of("suite-cifar10-c", "--limit", "100"), t)
    assert {g.cfg.limit for g in reduced} == {100}


def test_parity_rows_from_known_results(tmp_path):
    t = tables.load("suite-cifar10-c")
    measured = {
        "source": {"method": {1: 43.0, 2: 44.0, 3: 43.5, 4: 43.2, 5: 43.8}},  # within 1 pp of 43.5
        "tent": {"method": {1: 22.0, 2: 22.4}},  # 2.2 pp above 20.0, two of five seeds
    }
    rows = {r["cell"]: r for r in parity.rows(t, measured)}
    src = rows["source"]
    assert src["ours"] == pytest.approx(43.5) and src["diff"] == pytest.approx(0.0) and src["verdict"] == "match"
    assert src["ours_std"] == pytest.approx(0.17**0.5)  # sample std (n − 1) and src["n_seeds"] == 5
    assert (src["ours_min"], src["ours_max"], src["seeds"]) == (43.0, 44.0, "1 2 3 4 5")
    tent = rows["tent"]
    assert (
        tent["verdict"] == "differs" and tent["diff"] == pytest.approx(2.2) and "2 of the published 5" in tent["reason"]
    )
    assert rows["roid"]["verdict"] == "missing" and rows["roid"]["published_spread"] == 0.05
    failed = parity.rows(t, measured, errors={"roid": "roid failed: no weights", "source": "not shown"})
    assert failed[-1]["reason"] == "roid failed: no weights" and failed[0]["verdict"] == "match"  # only missing rows
    assert parity.rows(t, measured, limit=1000)[0]["verdict"] == "reduced"
    assert parity.rows(t, measured, mode="stand-in")[0]["verdict"] == "stand-in"

    eco = tables.load("ecotta-memory")  # a derived cell: 100·(1 − method/baseline), paired by seed
    r = parity.rows(eco, {"resnet50": {"method": {0: 150.0}, "baseline": {0: 1000.0}}})[0]
    assert r["ours"] == pytest.approx(85.0) and r["verdict"] == "match"  # within 5 pp of 86

    rep = parity.report(t, list(rows.values()), mode="full", limit=None, seeds=[1, 2, 3, 4, 5])
    js, cs = parity.write(rep, tmp_path)
    assert js.name == "suite-cifar10-c.json" and json.loads(js.read_text())["counts"] == {
        "match": 1, "differs": 1, "missing": 9}  # fmt: skip
    with cs.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == parity.COLUMNS and len(list(reader)) == len(t.cells)


def test_stand_in_end_to_end_resumes_and_feeds_the_page(tmp_path, capsys, one_thread):
    """A table file with split domains (episodic, one run per domain) on the stand-in: runs, report, page."""
    data = json.loads((tables.TABLES_DIR / "alfarra-imagenet-c.json").read_text())
    data["name"], data["protocol"]["domains"] = "tiny-alfarra", ["fog", "contrast"]
    data["cells"] = [c for c in data["cells"] if c["method"] in ("source", "norm")]
    table_file = tmp_path / "tiny-alfarra.json"
    table_file.write_text(json.dumps(data))
    runs, site = tmp_path / "runs", tmp_path / "site"
    argv = ["reproduce", str(table_file), "--stand-in", "--limit", "16", "--seeds", "0", "--methods", "source",
            "--out", str(runs), "--site", str(site)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 run(s) in the grid, 0 already complete, 4 to run" in out
    assert "skipped" not in out and "ignored" not in out  # the parity/ folder is not taken for a damaged run folder
    rep = json.loads((runs / "parity" / "tiny-alfarra-stand-in.json").read_text())
    rows = {r["cell"]: r for r in rep["rows"]}
    assert rep["mode"] == "stand-in" and rows["source-offline"]["verdict"] == "stand-in"
    assert rows["norm-offline"]["verdict"] == "missing"  # left out with --methods
    errors = []
    for done in runs.glob("*/done"):
        s = json.loads((done.parent / "summary.json").read_text())
        cfg = json.loads((done.parent / "config.json").read_text())["config"]
        if s["method"] == "source" and cfg["setting"] == "continual":
            errors.append(s["mean_error"])
    assert len(errors) == 2 and rows["source-offline"]["ours"] == pytest.approx(sum(errors) / 2)  # mean of domains
    html = (site / "index.html").read_text()
    assert 'id="parity"' in html and "Parity with published results" in html and "verdict-stand-in" in html
    assert "Protocol: imagenet-c, resnet50, continual + realistic, one run per domain, 2 domain(s)" in html

    assert main(argv + ["--no-leaderboard"]) == 0  # resumable: nothing runs again
    assert "4 already complete, 0 to run" in capsys.readouterr().out


def test_page_lists_an_unreadable_report_and_orders_full_scale_first(tmp_path):
    folder = tmp_path / "parity"
    folder.mkdir()
    (folder / "a-stand-in.json").write_text(json.dumps({"schema": 1, "table": "a", "mode": "stand-in", "rows": []}))
    (folder / "b.json").write_text(json.dumps({"schema": 1, "table": "b", "mode": "full", "rows": []}))
    (folder / "broken.json").write_text("{")
    got = page_parity.sections(tmp_path)
    assert [s.get("table") for s in got if "error" not in s] == ["b", "a"]
    assert any("broken.json" == s["file"] and "not valid JSON" in s["error"] for s in got)
    assert page_parity.sections(tmp_path / "nowhere") == []


def test_reproduce_and_sweep_share_their_run_and_executor_options() -> None:
    """One declaration: reproduce takes the execution options of `run` and the executors of `sweep` (Slurm too)."""
    import argparse

    from tta_bench import sweep
    from tta_bench.reproduce import command

    def flags(add) -> dict[str, argparse.Action]:
        p = argparse.ArgumentParser()
        add(p)
        return {a.option_strings[0]: a for a in p._actions if a.option_strings}

    rep, swp = flags(command.add_arguments), flags(sweep.add_arguments)
    shared = {k for k in swp if k.startswith(("--slurm-", "--executor", "--processes", "--ray-", "--gpus-"))}
    assert "--slurm-time" in shared and shared <= set(rep)
    for k in ("--out", "--data-dir", "--device", "--workers", "--compile", "--channels-last", "--force"):
        assert rep[k].default == swp[k].default and rep[k].help == swp[k].help, k
    assert rep["--set"].dest == swp["--set"].dest == "sets" and rep["--set"].default == swp["--set"].default == []
    assert rep["--clean-eval"].default == "off" and swp["--clean-eval"].default == "domain"
    assert rep["--executor"].choices == swp["--executor"].choices == ["local", "ray", "slurm"]
