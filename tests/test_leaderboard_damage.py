"""The leaderboard survives any run folder: a damaged, hostile or half-written one is skipped and listed with its
reason (on the page and in the command's output) while the good runs are ranked; only an unusable --runs/--out
stops the build (one paragraph, exit code 2).

Run folders are synthesized in the run-folder schema (`test_metrics_page.pneumonia_run`: a second, no model), then
damaged one way each. Every damage is checked by `tta_bench.rundir.check_run`, the schema's validation.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_metrics_page import pneumonia_run

from tta_bench import rundir
from tta_bench.cli import main
from tta_bench.kernel import UserError
from tta_bench.leaderboard.collect import collect, printable
from tta_bench.leaderboard.site import build


def _edit_json(name: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        obj = json.loads(path.read_text())
        fn(obj)
        path.write_text(json.dumps(obj))

    return damage


def _replace(name: str, old: str | bytes, new: str | bytes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        data = path.read_bytes()
        old_b, new_b = (x.encode() if isinstance(x, str) else x for x in (old, new))
        assert old_b in data, (name, old)
        path.write_bytes(data.replace(old_b, new_b, 1))

    return damage


def _to_dir(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return damage


def _link(name: str, target: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).symlink_to(target)

    return damage


def _huge(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        with open(folder / name, "r+b") as f:  # sparse: costs no disk
            f.truncate(rundir.MAX_FILE_BYTES + 1)

    return damage


def _dup_domain_row(folder: Path) -> None:
    lines = (folder / rundir.DOMAINS).read_text().splitlines()
    (folder / rundir.DOMAINS).write_text("\n".join([*lines, lines[1]]) + "\n")


MANY_DOMAINS = {f"d{i}": 1.0 for i in range(20_000)}
# case -> (damage, words the reason holds). The first nine broke the whole leaderboard before (traceback/exit 2).
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "huge int": (_replace(rundir.SUMMARY, '"seed": 0', '"seed": ' + "9" * 5000), "not strict JSON"),
    "deep JSON array": (
        _replace(rundir.SUMMARY, '"memory": {', f'"deep": {"[" * 10**5}{"]" * 10**5}, "memory": {{'),
        "nested too deeply",
    ),  # fmt: skip
    "string seed": (_edit_json(rundir.CONFIG, lambda c: c["config"].update(seed="zero")), "config.seed"),
    "domain_order of strings": (_edit_json(rundir.CONFIG, lambda c: c.update(domain_order=["x", 3])), "domain_order"),
    "versions a list": (_edit_json(rundir.CONFIG, lambda c: c.update(versions=["torch"])), "versions"),
    "execution a string": (_edit_json(rundir.CONFIG, lambda c: c.update(execution="cpu")), "execution"),
    "duplicate key": (_replace(rundir.CONFIG, '"run_id": ', '"run_id": "../../escaped", "run_id": '), "duplicate key"),
    "text in batches.csv": (_replace(rundir.BATCHES, "\n0,0,", "\nzero,0,"), "batches.csv has the text"),
    "summary.json a directory": (_to_dir(rundir.SUMMARY), "not a regular file"),
    # non-finite numbers, encodings, sizes
    "mean_error 1e999": (_replace(rundir.SUMMARY, '"mean_error": ', '"mean_error": 1e999, "x": '), "not finite"),
    "NaN literal": (_replace(rundir.SUMMARY, '"ece": ', '"ece": NaN, "x": '), "NaN"),
    "inf in batches.csv": (_replace(rundir.BATCHES, ",25.0,", ",inf,"), "non-finite"),
    "latin-1 summary.json": (_replace(rundir.SUMMARY, b'"tent"', b'"t\xe9nt"'), "not UTF-8"),
    "latin-1 domains.csv": (_replace(rundir.DOMAINS, b"pixelate", b"pix\xe9late"), "not UTF-8"),
    "lone surrogate escape": (_replace(rundir.SUMMARY, '"tent"', '"t\\udce9nt"'), "surrogate"),
    "huge summary.json": (_huge(rundir.SUMMARY), "bytes, more than"),
    "huge batches.csv": (_huge(rundir.BATCHES), "bytes, more than"),
    # other damage of the same kinds
    "64-bit overflow": (_edit_json(rundir.SUMMARY, lambda s: s.update(n_samples=10**30)), "larger than 64 bits"),
    "error over 100 %": (_edit_json(rundir.SUMMARY, lambda s: s.update(mean_error=1e300)), "not a percentage"),
    "stream_opts a string": (_edit_json(rundir.CONFIG, lambda c: c["config"].update(stream_opts="x")), "stream_opts"),
    "method_opts a list": (_edit_json(rundir.CONFIG, lambda c: c["config"].update(method_opts=[1])), "method_opts"),
    "git commit a number": (_edit_json(rundir.CONFIG, lambda c: c.update(git={"commit": 5})), "git.commit"),
    "samples_per_domain text": (
        _edit_json(rundir.CONFIG, lambda c: c.update(samples_per_domain={"a": "x"})),
        "samples_per_domain",
    ),  # fmt: skip
    "summary disagrees": (_edit_json(rundir.SUMMARY, lambda s: s.update(seed=7)), "disagrees with config.json"),
    "summary key 'entry'": (_edit_json(rundir.SUMMARY, lambda s: s.update({"Entry!": 1})), "not a lowercase"),
    "config.json a directory": (_to_dir(rundir.CONFIG), "not a regular file"),
    "batches.csv a FIFO": (lambda f: ((f / rundir.BATCHES).unlink(), os.mkfifo(f / rundir.BATCHES)), "not a regular"),
    "summary.json -> /dev/zero": (_link(rundir.SUMMARY, "/dev/zero"), "not a regular file"),
    "empty domains.csv": (lambda f: (f / rundir.DOMAINS).write_text(""), "is empty"),
    "repeated domain row": (_dup_domain_row, "repeats a (round, segment, domain) row"),
    "batches renumbered": (_replace(rundir.BATCHES, "\n2,0,", "\n200000000000,0,"), "does not number its batches"),
    "20,000 domains": (
        _edit_json(rundir.SUMMARY, lambda s: s["domain_errors"].update(MANY_DOMAINS)),
        "more than 10,000 domains",
    ),  # fmt: skip
    "ragged CSV row": (_replace(rundir.DOMAINS, "\n0,", "\n0,0,"), "cells for"),
    "truncated JSON": (lambda f: (f / rundir.SUMMARY).write_text('{"method": "tent", "mean_'), "not strict JSON"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A runs folder: two good runs (source, norm) and one damaged copy of a third (tent) per case."""
    root = tmp_path_factory.mktemp("damaged") / "runs"
    pneumonia_run(root, "source", 0)
    pneumonia_run(root, "norm", 0)
    template = pneumonia_run(root.parent / "template", "tent", 0)
    folders = {}
    for i, (name, (damage, _)) in enumerate(CASES.items()):
        folder = root / "bad" / f"{i:02d}{template.name[2:]}"
        shutil.copytree(template, folder)
        damage(folder)
        folders[name] = folder
    return root, folders


@pytest.fixture(scope="module")
def site(damaged, tmp_path_factory):
    return build(damaged[0], tmp_path_factory.mktemp("damaged_site") / "site")


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_folder_is_skipped_and_listed_with_its_reason(case, damaged, site):
    folder = damaged[1][case]
    reasons = dict(site.unreadable)
    assert folder in reasons, f"{case}: not listed"
    assert CASES[case][1] in reasons[folder], reasons[folder]
    html = (site.out / "index.html").read_text(encoding="utf-8")
    assert str(folder) in html
    with pytest.raises(UserError):
        rundir.check_run(folder)  # the schema's own validation refuses it too


def test_the_good_runs_are_ranked_beside_the_damaged_ones(damaged, site):
    assert site.n_runs == 2 and sorted(site.runs["method"]) == ["norm", "source"]
    assert len(site.unreadable) == len(CASES)
    assert not (site.out / "configs" / "escaped.json").exists()
    assert site.runs["mean_error"].between(0, 100).all()  # 1e999 is never shown as inf nor ranked


def test_command_lists_every_skipped_folder_and_exits_zero(damaged, tmp_path, capsys):
    code = main(["leaderboard", "--runs", str(damaged[0]), "--out", str(tmp_path / "site")])
    out = capsys.readouterr().out
    assert code == 0
    assert f"skipped {len(CASES)} unreadable run folder(s)" in out and "2 completed run(s)" in out
    assert f"and {len(CASES) - 10} more (all on the page)" in out  # 10 listed in the output, every one on the page
    assert "Traceback" not in out


def test_schema_accepts_the_good_runs(damaged):
    """(The runner's own folders pass it too: tests/test_leaderboard.py ranks real runs read through it.)"""
    good = collect(damaged[0])
    for folder in good.folders.values():
        cfg, summary, domains, batches = rundir.check_run(folder)
        assert cfg["run_id"] == folder.name and summary["method"] in ("source", "norm")
        assert set(rundir.DOMAIN_COLUMNS) <= set(domains[0]) and set(rundir.REQUIRED_BATCH) <= set(batches[0])


def test_odd_file_names_and_symlink_loops(tmp_path, capsys):
    """A folder name that is not UTF-8 or holds a newline/escape is shown escaped; a symlink loop is read once."""
    root = tmp_path / "runs"
    pneumonia_run(root, "source", 0)
    template = pneumonia_run(tmp_path / "t", "tent", 0)
    for name in (b"bad-\xff-name", b"bad\n\x1b[31mred"):
        bad = Path(os.fsdecode(bytes(root) + b"/" + name))
        shutil.copytree(template, bad)
        (bad / rundir.SUMMARY).write_text("{")
    (root / "loop").symlink_to(root)
    (root / "loop2").symlink_to(root)
    assert main(["leaderboard", "--runs", str(root), "--out", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert "bad-\\xff-name" in out and "bad\\n\\x1b[31mred" in out and "\x1b" not in out
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "bad-\\xff-name" in html and "1 completed run " in html


def test_random_damage_never_stops_the_build(tmp_path):
    """80 run folders, each its own run (id, method, seed), with 1-3 seeded damages to its files (cut, bytes replaced
    or inserted): the site is built; damaged folders that still read as valid runs are ranked like any other."""
    root = tmp_path / "runs"
    pneumonia_run(root, "source", 0)
    template = pneumonia_run(tmp_path / "t", "tent", 0)
    rng = random.Random(0)
    junk = [b"\xff", b"\x00", b"1e999", b"[[[[", b"}", b'"', b",", b"\n", b"-1", b"99999999999999999999", b"null",
            b'"\\ud800"', b"{}", b"0", b"true", b"\r", b'"x"']  # fmt: skip
    for i in range(80):
        folder = root / f"{i:02d}" / template.name
        shutil.copytree(template, folder)
        _edit_json(
            rundir.CONFIG, lambda c, i=i: c.update(run_id=f"{i:016x}") or c["config"].update(method=f"m{i % 5}", seed=i)
        )(folder)
        _edit_json(rundir.SUMMARY, lambda s, i=i: s.update(method=f"m{i % 5}", seed=i))(folder)
        for _ in range(rng.randint(1, 3)):
            path = folder / rng.choice([f for f in rundir.RUN_FILES if f != rundir.DONE])
            data = bytearray(path.read_bytes())
            at = rng.randrange(len(data))
            kind = rng.randrange(3)
            if kind == 0:
                data = data[:at]
            elif kind == 1:
                data[at : at + rng.randint(1, 8)] = rng.choice(junk)
            else:
                data[at:at] = rng.choice(junk)
            path.write_bytes(bytes(data))
    site = build(root, tmp_path / "site")
    assert "source" in set(site.runs["method"]) and site.n_runs + len(site.unreadable) == 81
    assert len(site.unreadable) > 40 and site.n_runs > 5  # most damages are caught; the rest read as valid runs
    assert all(printable(why) == why for _, why in site.unreadable)
    assert site.runs["mean_error"].between(0, 100).all()


@pytest.mark.parametrize(
    "where, words",
    [
        ("missing", "does not exist"),
        ("file", "not a folder"),
        ("out-is-runs", "is the runs folder or holds it"),
        ("out-holds-runs", "is the runs folder or holds it"),
        ("out-is-a-file", "is an existing file"),
        ("out-is-a-run", "is a run folder"),
        ("out-under-a-file", "Cannot write the leaderboard site"),
    ],
)
def test_only_an_unusable_runs_or_out_stops_the_build(where, words, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "site"
    good = pneumonia_run(runs, "source", 0)
    if where == "missing":
        runs = tmp_path / "nowhere"
    elif where == "file":
        runs = tmp_path / "file"
        runs.write_text("x")
    elif where == "out-is-runs":
        out = runs
    elif where == "out-holds-runs":
        out = tmp_path
    elif where == "out-is-a-file":
        out.write_text("x")
    elif where == "out-is-a-run":
        out = good
    elif where == "out-under-a-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "site"
    before = {p: p.read_bytes() for p in good.iterdir()}
    assert main(["leaderboard", "--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in good.iterdir()} == before  # the run is untouched


def test_a_run_made_outside_a_git_checkout_is_ranked(tmp_path):
    """The runner records {"commit": null} where git is unavailable (an installed wheel): not damage (was a crash)."""
    root = tmp_path / "runs"
    pneumonia_run(root, "source", 0)
    _edit_json(rundir.CONFIG, lambda c: c.update(git={"commit": None, "dirty": None}))(pneumonia_run(root, "tent", 0))
    site = build(root, tmp_path / "site")
    assert site.n_runs == 2 and not site.unreadable


def test_a_table_that_cannot_be_drawn_is_listed_and_the_others_are_built(tmp_path, monkeypatch):
    from test_metrics_page import camvid_run

    from tta_bench.leaderboard import site as site_mod

    root = tmp_path / "runs"
    pneumonia_run(root, "source", 0)
    seg = camvid_run(root, "source", 0)
    real = site_mod.table_plots

    def failing(table, *a, **k):
        if table.startswith("camvid-c"):
            raise ZeroDivisionError("an unforeseen value")
        return real(table, *a, **k)

    monkeypatch.setattr(site_mod, "table_plots", failing)
    site = build(root, tmp_path / "site")
    assert [t.split("/")[0] for t in site.tables] == ["pneumoniamnist-c"]
    [(folder, why)] = site.unreadable
    assert folder == seg and "could not be drawn (ZeroDivisionError: an unforeseen value)" in why
    assert str(seg) in (site.out / "index.html").read_text(encoding="utf-8")
