"""End-to-end: digits-c through the CLI for source, norm and tent; every file of the run folder checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tta_bench import rundir
from tta_bench.cli import main

LIMIT = 200  # samples per domain: keeps the three runs to seconds on 2 cores


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    folders = {}
    for method in ("source", "norm", "tent"):
        assert (
            main(
                ["run", "--method", method, "--stream", "digits-c", "--limit", str(LIMIT), "--out", str(out), "--quiet"]
            )
            == 0
        )
        (folder,) = [p for p in out.iterdir() if p not in folders.values() and rundir.is_run_id(p.name)]
        folders[method] = folder
    return folders


def test_run_folder_files_and_columns(three_runs):
    from tta_bench import corruptions

    for method, folder in three_runs.items():
        assert sorted(p.name for p in folder.iterdir()) == sorted(rundir.RUN_FILES)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["config"]["method"] == method and cfg["config"]["model"] == "small-cnn"
        assert cfg["run_id"] == folder.name
        assert {"torch", "numpy", "python"} <= set(cfg["versions"])
        assert "commit" in cfg["git"]
        assert len(cfg["model_info"]["sha256"]) == 64
        assert [d["domain"] for d in cfg["domain_order"]] == list(corruptions.BENCHMARK)
        assert set(cfg["samples_per_domain"].values()) == {LIMIT}
        assert cfg["stream_info"]["source"] == "generated"

        batches = pd.read_csv(folder / "batches.csv")
        assert list(batches.columns)[: len(rundir.BATCH_COLUMNS)] == list(rundir.BATCH_COLUMNS)
        assert batches["n"].sum() == 15 * LIMIT and batches["batch"].tolist() == list(range(len(batches)))
        assert batches["error"].between(0, 100).all()

        domains = pd.read_csv(folder / "domains.csv")
        assert domains["domain"].tolist() == list(corruptions.BENCHMARK)
        assert {*rundir.DOMAIN_COLUMNS, "ece"} <= set(domains.columns)
        assert (domains["n"] == LIMIT).all() and (domains["severity"] == 5).all()
        # per-domain error == sample-weighted mean of its batch errors
        for dom, grp in batches.groupby("segment"):
            want = (grp["error"] * grp["n"]).sum() / grp["n"].sum()
            assert domains.set_index("domain").loc[dom, "error"] == pytest.approx(want)

        s = rundir.load_summary(folder)  # every key of the schema, with its type
        assert s["diverged"] is False and s["first_diverged_batch"] is None
        assert s["mean_error"] == pytest.approx(domains["error"].mean())
        assert s["domain_errors"] == pytest.approx(domains.set_index("domain")["error"].to_dict())
        assert s["forgetting"] == pytest.approx(s["clean_error_after"] - s["clean_error_before"])
        assert s["clean_error_after"] == pytest.approx(domains["clean_error"].iloc[-1])
        assert s["adapt_mb"] > 0 and s["peak_device_mb"] is None and s["images_per_s"] > 0


def test_adaptation_beats_source(three_runs):
    err = {m: json.loads((f / "summary.json").read_text())["mean_error"] for m, f in three_runs.items()}
    assert err["norm"] < err["source"] - 10, err
    assert err["tent"] < err["source"] - 10, err
    clean = json.loads((three_runs["source"] / "summary.json").read_text())["clean_error_before"]
    assert clean < 10  # the source model is a good digit classifier on clean data


def test_rerun_does_no_work_and_changes_nothing(three_runs, capsys):
    folder = three_runs["tent"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    assert (
        main(
            [
                "run",
                "--method",
                "tent",
                "--stream",
                "digits-c",
                "--limit",
                str(LIMIT),
                "--out",
                str(folder.parent),
                "--quiet",
            ]
        )
        == 0
    )
    assert "completed run found" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "tta_bench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


# Bad input (exit code 2, one paragraph, no traceback): tests/test_bad_input.py, a census of >= 60 cases.


def test_list_shows_every_registry(tmp_path):
    r = _cli("list", cwd=tmp_path)
    assert r.returncode == 0
    for word in (
        "methods:",
        "tent",
        "streams:",
        "digits-c",
        "models:",
        "small-cnn",
        "corruptions:",
        "gaussian_noise",
        "settings:",
        "non-iid",
    ):
        assert word in r.stdout
