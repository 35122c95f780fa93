"""Census of options, numbers, environment variables and paths (#25): every case exits with code 2 and one
`error: ` paragraph naming the option, variable or file, never a traceback, and fails before any expensive work.

Each case runs the CLI in-process (`tta_bench.cli.main(argv)`) with the runner's `execute` (model building,
training, the stream) replaced by a tripwire, so a case that got past the checks fails loudly instead of training.
Two cases run `python -m tta_bench` in a subprocess for the real entry point.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tta_bench.cli import main
from tta_bench.kernel import UserError

BIG = "1" + "0" * 20  # 1e20 as a whole number
LONG = "a" * 300  # a file name over the 255-byte limit


def run_args(tmp: Path, *extra: str, stream: str = "digits-c") -> list[str]:
    base = ["run", "--method", "tent", "--stream", stream, "--limit", "8", "--batch-size", "8", "--quiet"]
    return [*base, "--out", str(tmp / "runs"), *extra]


def sweep_args(tmp: Path, *extra: str) -> list[str]:
    return ["sweep", "--methods", "tent", "--streams", "digits-c", "--out", str(tmp / "sw"), "--no-leaderboard", *extra]


def make_c_args(tmp: Path, *extra: str, src: str | None = None, out: str | None = None) -> list[str]:
    src = str(tmp) if src is None else src
    return ["make-c", "--src", src, "--out", str(tmp / "mc") if out is None else out, "--format", "cifar-c", *extra]


def ccc(tmp: Path, *sets: str) -> list[str]:
    return run_args(tmp, *(x for s in sets for x in ("--set", s)), stream="ccc-cifar")


def loop_folder(tmp: Path) -> Path:
    """An ImageFolder of 10 class folders whose first holds an image-named symlink pointing at itself."""
    root = tmp / "loop"
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True)
    os.symlink(root / "c0" / "x.png", root / "c0" / "x.png")
    return root


def non_utf8_folder(tmp: Path) -> Path:
    """An ImageFolder of 10 class folders whose first holds a file named with a byte that is not UTF-8."""
    root = tmp / "latin1"
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True)
    (root / "c0" / os.fsdecode(b"caf\xe9.png")).write_bytes(b"")
    return root


def a_file(tmp: Path) -> Path:
    f = tmp / "a-file"
    f.write_text("not a folder")
    return f


# (id, argv builder, environment, needles that must appear in the message)
Build = Callable[[Path], list[str]]
CASES: list[tuple[str, Build, Callable[[Path], dict[str, str]], tuple[str, ...]]] = []


def case(id: str, build: Build, *needles: str, env: Callable[[Path], dict[str, str]] | None = None) -> None:
    CASES.append((id, build, env or (lambda t: {}), needles))


# --- extreme numbers ---------------------------------------------------------------------------------------------
case("seed-2^64", lambda t: run_args(t, "--seed", "18446744073709551616"), "--seed", "9,223,372,036,854,775,807")
case("seed-2^63", lambda t: run_args(t, "--seed", str(2**63)), "--seed")
case("batch-size-1e20", lambda t: run_args(t, "--batch-size", BIG), "--batch-size", "1,048,576")
case("rounds-1e20", lambda t: run_args(t, "--rounds", BIG), "--rounds", "100,000")
case("limit-1e20", lambda t: run_args(t, "--limit", BIG), "--limit")
case("workers-1e20", lambda t: run_args(t, "--workers", BIG), "--workers", "256")
case("severity-1e20", lambda t: run_args(t, "--severity", BIG), "--severity")
real = ("--setting", "realistic")
case(
    "speed-ratio-1e400", lambda t: run_args(t, *real, "--set", "stream.speed_ratio=1e400"), "stream.speed_ratio", "inf"
)
case("speed-ratio-neg-1e400", lambda t: run_args(t, *real, "--set", "stream.speed_ratio=-1e400"), "speed_ratio")
case("speed-ratio-1e300", lambda t: run_args(t, *real, "--set", "stream.speed_ratio=1e300"), "stream.speed_ratio")
case("speed-ratio-nan", lambda t: run_args(t, *real, "--set", "stream.speed_ratio=nan"), "stream.speed_ratio")
case("speed-ratio-not-realistic-huge", lambda t: run_args(t, "--set", "stream.speed_ratio=1e300"), "speed_ratio")
case("window-1e30", lambda t: run_args(t, "--set", "stream.window=1" + "0" * 30), "stream.window")
case("window-2^40", lambda t: run_args(t, "--set", f"stream.window={2**40}"), "stream.window", "2,147,483,647")
case("gamma-1e400", lambda t: run_args(t, "--setting", "non-iid", "--set", "stream.gamma=1e400"), "stream.gamma")
case("gamma-1e300", lambda t: run_args(t, "--setting", "non-iid", "--set", "stream.gamma=1e300"), "stream.gamma")
case("model-width-2e70", lambda t: run_args(t, "--set", "model.width=2" + "0" * 70), "model.width")
case("model-width-1e12", lambda t: run_args(t, "--set", "model.width=1000000000000"), "model.width", "4,096")
case("model-lr-1e400", lambda t: run_args(t, "--set", "model.lr=1e400"), "model.lr")
case("method-lr-1e400", lambda t: run_args(t, "--set", "method.lr=1e400"), "method.lr", "finite")
case("method-steps-1e20", lambda t: run_args(t, "--set", "method.steps=" + BIG), "method.steps")
case("method-n-aug-2^40", lambda t: run_args(t, "--set", f"method.n_aug={2**40}", "--method", "cotta"), "method.n_aug")
case("method-queue-2^40", lambda t: run_args(t, "--set", f"method.queue_size={2**40}", "--method", "adacontrast"),
     "method.queue_size", "2,147,483,647")  # fmt: skip
case("method-betas-inf", lambda t: run_args(t, "--set", "method.betas=[0.9,1e999]"), "method.betas", "finite")
case("method-lr-complex", lambda t: run_args(t, "--set", "method.lr=1j"), "method.lr", "complex")
case("set-text-huge", lambda t: run_args(t, "--set", "method.optimizer=" + "x" * 20_000), "method.optimizer", "10,000")
# ccc: the option checks hold whether or not stream.target_accuracy is set (they were skipped when it was)
case("ccc-speed-0-target", lambda t: ccc(t, "stream.target_accuracy=50", "stream.speed=0"), "stream.speed")
case("ccc-length-neg-target", lambda t: ccc(t, "stream.target_accuracy=50", "stream.length=-1"), "stream.length")
case("ccc-calib-0-target", lambda t: ccc(t, "stream.target_accuracy=50", "stream.calib_size=0"), "stream.calib_size")
case("ccc-length-2^40", lambda t: ccc(t, f"stream.length={2**40}"), "stream.length", "2,147,483,647")
case("ccc-target-nan", lambda t: ccc(t, "stream.target_accuracy=nan"), "target_accuracy")
case("ccc-target-1e400", lambda t: ccc(t, "stream.target_accuracy=1e400"), "target_accuracy")
case("ccc-size-0", lambda t: run_args(t, "--set", "stream.size=0", stream="ccc"), "stream.size")
case("ccc-size-huge", lambda t: run_args(t, "--set", "stream.size=100000", stream="ccc"), "stream.size", "8,192")
case("ccc-difficulty-with-target", lambda t: ccc(t, "stream.target_accuracy=50", "stream.difficulty=x"), "difficulty")
# sweep and make-c
case("sweep-seeds-2^64", lambda t: sweep_args(t, "--seeds", "18446744073709551616"), "--seed")
case("sweep-processes-1e20", lambda t: sweep_args(t, "--processes", BIG), "--processes", "256")
case("sweep-gpus-nan", lambda t: sweep_args(t, "--gpus-per-run", "nan"), "--gpus-per-run")
case("sweep-gpus-inf", lambda t: sweep_args(t, "--gpus-per-run", "1e400"), "--gpus-per-run")
case("sweep-gpus-negative", lambda t: sweep_args(t, "--gpus-per-run", "-1"), "--gpus-per-run")
case("sweep-batch-size-1e20", lambda t: sweep_args(t, "--batch-size", BIG), "--batch-size")
case("make-c-seed-2^64", lambda t: make_c_args(t, "--seed", "18446744073709551616"), "--seed")
case("make-c-seed-negative", lambda t: make_c_args(t, "--seed", "-1"), "--seed")
case("make-c-batch-size-1e20", lambda t: make_c_args(t, "--batch-size", BIG), "--batch-size")

# --- environment variables ---------------------------------------------------------------------------------------
INTERVAL = "TTA_BENCH_PROGRESS_INTERVAL"
case("interval-abc", run_args, "$TTA_BENCH_PROGRESS_INTERVAL", "'abc'", env=lambda t: {INTERVAL: "abc"})
case("interval-nan", run_args, "$TTA_BENCH_PROGRESS_INTERVAL", env=lambda t: {INTERVAL: "nan"})
case("interval-inf", run_args, "$TTA_BENCH_PROGRESS_INTERVAL", env=lambda t: {INTERVAL: "inf"})
case("interval-negative", run_args, "$TTA_BENCH_PROGRESS_INTERVAL", env=lambda t: {INTERVAL: "-1"})
for var in ("TTA_BENCH_CACHE", "TTA_BENCH_DATA", "TTA_BENCH_WEIGHTS"):
    case(f"{var}-empty", run_args, f"${var}", "empty", env=lambda t, v=var: {v: ""})
    case(f"{var}-long", run_args, f"${var}", "too long", env=lambda t, v=var: {v: str(t / LONG)})
    case(f"{var}-loop", run_args, f"${var}", "symbolic link", env=lambda t, v=var: {v: str(self_loop(t) / "x")})
    case(f"{var}-under-a-file", run_args, f"${var}", "is a file", env=lambda t, v=var: {v: str(a_file(t) / "x")})
case("sweep-cache-empty", sweep_args, "$TTA_BENCH_CACHE", env=lambda t: {"TTA_BENCH_CACHE": ""})


def self_loop(tmp: Path) -> Path:
    link = tmp / "self-loop"
    os.symlink(link, link)
    return link


# --- paths -------------------------------------------------------------------------------------------------------
def set_path(key: str, value: Callable[[Path], str], stream: str = "digits-c") -> Build:
    return lambda t: run_args(t, "--set", f"{key}={value(t)}", stream=stream)


case("out-empty", lambda t: [*run_args(t), "--out", ""], "--out", "empty", "current folder")
case("out-long", lambda t: [*run_args(t), "--out", str(t / LONG)], "--out", "too long")
case("out-path-over-4096", lambda t: [*run_args(t), "--out", str(t / "/".join(["b" * 200] * 22))], "--out", "4095")
case("out-loop", lambda t: [*run_args(t), "--out", str(self_loop(t) / "runs")], "--out", "symbolic link")
case("data-dir-empty", lambda t: run_args(t, "--data-dir", ""), "--data-dir", "empty")
case("data-dir-long", lambda t: run_args(t, "--data-dir", str(t / LONG)), "--data-dir", "too long")
case("clean-dir-long", set_path("stream.clean_dir", lambda t: str(t / LONG), "ccc-cifar"), "stream.clean_dir", "long")
case("clean-dir-empty", set_path("stream.clean_dir", lambda t: "", "ccc-cifar"), "stream.clean_dir", "empty")
case("clean-dir-loop", set_path("stream.clean_dir", lambda t: str(self_loop(t)), "ccc-cifar"), "stream.clean_dir")
case("clean-dir-symlink-loop-inside", set_path("stream.clean_dir", lambda t: str(loop_folder(t)), "ccc-cifar"),
     "x.png", "loops")  # fmt: skip
case("clean-dir-non-utf8-name", set_path("stream.clean_dir", lambda t: str(non_utf8_folder(t)), "ccc-cifar"),
     "caf\\xe9.png", "UTF-8")  # fmt: skip
case("stream-root-long", set_path("stream.root", lambda t: str(t / LONG), "cifar10-c"), "stream.root", "too long")
case("model-weights-long", set_path("model.weights", lambda t: str(t / LONG), "cifar10-c"), "model.weights")
case("sweep-out-empty", lambda t: [*sweep_args(t), "--out", ""], "--out", "empty")
case("sweep-site-empty", lambda t: [*sweep_args(t), "--site", ""], "--site", "empty")
case("sweep-data-dir-long", lambda t: sweep_args(t, "--data-dir", str(t / LONG)), "--data-dir", "too long")
case("leaderboard-runs-empty", lambda t: ["leaderboard", "--runs", "", "--out", str(t / "site")], "--runs", "empty")
case("leaderboard-out-empty", lambda t: ["leaderboard", "--runs", str(t), "--out", ""], "--out", "empty")
case("leaderboard-runs-long", lambda t: ["leaderboard", "--runs", str(t / LONG)], "--runs", "too long")
case("leaderboard-out-loop", lambda t: ["leaderboard", "--runs", str(t), "--out", str(self_loop(t) / "s")], "--out")
case("make-c-src-empty", lambda t: make_c_args(t, src=""), "--src", "empty")
case("make-c-out-empty", lambda t: make_c_args(t, out=""), "--out", "empty")
case("make-c-src-long", lambda t: make_c_args(t, src=str(t / LONG)), "--src", "too long")
case("make-c-out-long", lambda t: make_c_args(t, out=str(t / LONG)), "--out", "too long")

case("out-tilde-no-such-user", lambda t: [*run_args(t), "--out", "~no-such-user-xyz/runs"], "--out", "~")
case("device-data-yes", run_args, "$TTA_BENCH_DEVICE_DATA", env=lambda t: {"TTA_BENCH_DEVICE_DATA": "yes"})
case("model-empty", lambda t: run_args(t, "--model", ""), "--model", "unset shell variable")
case("sweep-models-empty", lambda t: sweep_args(t, "--models", ""), "--models", "names nothing")
case("model-weights-empty", lambda t: run_args(t, "--set", "model.weights="), "model.weights", "empty")

# --- --set and --domains -----------------------------------------------------------------------------------------
case("set-key-twice", lambda t: run_args(t, "--set", "method.lr=1e-3", "--set", "method.lr=1e-4"), "method.lr", "twice")
case("set-stream-key-twice", lambda t: run_args(t, "--set", "stream.window=5", "--set", "stream.window=5"), "twice")
case("domains-disagree", lambda t: run_args(t, "--domains", "fog,snow", "--set", "stream.domains=snow,fog"),
     "--domains", "disagree")  # fmt: skip


@pytest.fixture
def no_work(monkeypatch):
    """The runner's expensive part (model, training, prepare, stream) replaced by a tripwire."""
    import tta_bench.runner

    def tripwire(*a, **k):
        raise AssertionError("a census case got past the option checks into the run")

    monkeypatch.setattr(tta_bench.runner, "execute", tripwire)


@pytest.mark.parametrize("id,build,env,needles", CASES, ids=[c[0] for c in CASES])
def test_census(id, build, env, needles, tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)  # a case that wrote into the current folder would leave files here
    for k, v in env(tmp_path).items():
        monkeypatch.setenv(k, v)
    argv = build(tmp_path)
    before = set(os.listdir(tmp_path))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"{id}: exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{id}: not one paragraph:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{id}: {needle!r} not in: {lines[0]}"
    assert set(os.listdir(tmp_path)) == before, f"{id}: wrote into the current folder"


def test_long_value_named_not_repeated(tmp_path, capsys, no_work):
    """A 100,000-character value is elided in the message (its length said), not printed whole."""
    assert main(run_args(tmp_path, "--setting", "x" * 100_000)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ",00" in err and "characters)" in err and len(err) < 2000


# --- accepted inputs ---------------------------------------------------------------------------------------------
def test_domains_given_both_ways_accepted_when_equal():
    from tta_bench.cli_options import add_run_arguments, config_kwargs

    p = argparse.ArgumentParser()
    add_run_arguments(p)
    for text in ("fog,snow", "fog, snow", "['fog', 'snow']"):
        args = p.parse_args(
            ["--method", "tent", "--stream", "s", "--domains", "fog,snow", "--set", f"stream.domains={text}"]
        )
        assert config_kwargs(args)["stream_opts"]["domains"] == "fog,snow"


def test_largest_values_accepted(tmp_path):
    """The upper bounds themselves are valid (no check is off by one), and seed 2^63 - 1 reaches torch."""
    import torch

    from tta_bench.config import RunConfig

    cfg = RunConfig(method="tent", stream="digits-c", seed=2**63 - 1, batch_size=2**20, rounds=100_000,
                    limit=2**31 - 1, workers=256, out=str(tmp_path / "r"))  # fmt: skip
    torch.Generator().manual_seed(cfg.seed)
    opts = {"speed_ratio": 1e6, "window": 2**31 - 1}
    RunConfig(method="tent", stream="digits-c", setting="realistic", stream_opts=opts, out=str(tmp_path / "r"))


def test_numbers_and_paths_units():
    from tta_bench.kernel.options import check_float, check_int, check_path, check_set_value

    for bad in (float("nan"), float("inf"), -float("inf"), "1", True, None):
        with pytest.raises(UserError, match="--x"):
            check_float("--x", bad, 0, 1)
    with pytest.raises(UserError, match="--x"):
        check_float("--x", 0.0, 0, 1, low_open=True)
    assert check_int("--n", 2**63 - 1, 0, 2**63 - 1) == 2**63 - 1
    for bad in (2**63, -1, 1.0, False):
        with pytest.raises(UserError, match="--n"):
            check_int("--n", bad, 0, 2**63 - 1)
    for bad in ([1, float("inf")], {"a": 2**64}, (1e308 * 10,)):
        with pytest.raises(UserError, match="--set k"):
            check_set_value("k", bad)
    for bad, why in (("a\0b", "NUL"), ("\ud800", "encoding"), ("", "empty"), (" ", "empty"), (3, "path")):
        with pytest.raises(UserError, match=why):
            check_path(bad, "--p")
    assert check_path("runs", "--p") == Path("runs")
    assert check_path(os.fsdecode(b"caf\xe9"), "--p")  # a name that is not UTF-8 is still a path the OS can use


def test_progress_interval_env(monkeypatch):
    from tta_bench.kernel.progressbar import Progress, interval

    monkeypatch.setenv("TTA_BENCH_PROGRESS_INTERVAL", "")
    assert interval() == 20.0
    monkeypatch.setenv("TTA_BENCH_PROGRESS_INTERVAL", "0.5")
    assert interval() == 0.5
    monkeypatch.setenv("TTA_BENCH_PROGRESS_INTERVAL", "abc")
    with pytest.raises(UserError, match="TTA_BENCH_PROGRESS_INTERVAL"):
        Progress(range(3), desc="x", disable=True)


def test_unwritable_cache_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """A cache folder this user cannot write is named by its variable before the run resolves (no training first)."""
    import tta_bench.config
    import tta_bench.runner

    cache = tmp_path / "ro-cache"
    cache.mkdir()
    monkeypatch.setenv("TTA_BENCH_CACHE", str(cache))
    real = os.access
    monkeypatch.setattr(tta_bench.config.os, "access", lambda p, m: Path(p) != cache and real(p, m))

    def tripwire(*a, **k):
        raise AssertionError("resolved the run before checking the cache folder")

    monkeypatch.setattr(tta_bench.runner, "resolve", tripwire)
    assert main(run_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "$TTA_BENCH_CACHE" in err and "not writable" in err and "Traceback" not in err


def test_sweep_reports_user_error_without_traceback(tmp_path, monkeypatch):
    """A run of a sweep that fails on bad input reports its paragraph, not a traceback."""
    from dataclasses import asdict

    from tta_bench.config import RunConfig
    from tta_bench.sweep import run_one

    monkeypatch.setenv("TTA_BENCH_CACHE", str(a_file(tmp_path) / "cache"))
    cfg = RunConfig(method="tent", stream="digits-c", limit=8, out=str(tmp_path / "runs"))
    out = run_one(asdict(cfg), {"TTA_BENCH_CACHE": os.environ["TTA_BENCH_CACHE"]})
    assert out["error"].startswith("error: ") and "$TTA_BENCH_CACHE" in out["error"]
    assert "Traceback" not in out["error"] and "\n" not in out["error"]


@pytest.mark.parametrize("argv,env", [(["--seed", "18446744073709551616"], {}), ([], {INTERVAL: "abc"})])
def test_entry_point(tmp_path, argv, env):
    """`python -m tta_bench` itself: exit code 2, one paragraph, nothing on stdout."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "tta_bench", *run_args(tmp_path, *argv)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr + p.stdout


def test_late_os_error_under_cache_names_the_variable(tmp_path, monkeypatch, capsys):
    """An OSError met later (e.g. a cache file another process made read-only) names the variable that set its
    folder."""
    import errno

    import tta_bench.runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("TTA_BENCH_CACHE", str(cache))

    def refused(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(cache / "models" / "x.pt"))

    monkeypatch.setattr(tta_bench.runner, "run", refused)
    assert main(run_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "$TTA_BENCH_CACHE" in err and "Traceback" not in err


def test_undecodable_path_printed_escaped(monkeypatch):
    """stdout in strict UTF-8 (e.g. PYTHONIOENCODING=utf-8:strict): a path with a non-UTF-8 byte (an --out folder
    named so) prints escaped instead of ending the command in a UnicodeEncodeError."""
    import io

    import tta_bench.report

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", errors="strict"))
    monkeypatch.setattr(tta_bench.report, "list_entries", lambda what, verbose: "results: " + os.fsdecode(b"r\xff"))
    assert main(["list", "settings"]) == 0
    sys.stdout.flush()
    assert raw.getvalue() == b"results: r\\udcff\n"


def test_a_tilde_after_equals_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """`--out=~/runs` reaches the program unexpanded (the shell expands ~ only at a word's start): it is the home
    folder's runs/, not a folder named `~` in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    argv = ["run", "--method", "source", "--stream", "digits-c", "--limit", "8", "--batch-size", "8",
            "--clean-eval", "off", "--quiet", "--out=~/runs"]  # fmt: skip
    assert main(argv) == 0
    assert list((tmp_path / "home" / "runs").iterdir()) and not (tmp_path / "~").exists()
