"""Progress of long phases: plain lines when output is not a terminal (a line per domain with its error, the
prepare stage's start and end), a live bar with the running-error postfix on a terminal, nothing when quiet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tta_bench.kernel.progressbar as kprogress
from tta_bench.config import cache_dir_default
from tta_bench.kernel.progressbar import Progress, quiet_while, set_bar_factory

ROOT = Path(__file__).resolve().parent.parent
DIGITS_DOMAINS = 15


class FakeBar:
    """Records what a tqdm bar would be told."""

    made: list[FakeBar] = []

    def __init__(self, total=None, desc="", unit="it", leave=True):
        self.total, self.desc, self.n, self.postfixes, self.closed = total, desc, 0, [], False
        FakeBar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text):
        self.postfixes.append(text)

    def set_description(self, desc):
        self.desc = desc

    def reset(self, total=None):
        self.n = 0

    def close(self):
        self.closed = True


@pytest.fixture
def fake_terminal(monkeypatch):
    """stderr 'is a terminal' and the bar factory is FakeBar (restored afterwards)."""
    from tta_bench import progress as harness_progress

    FakeBar.made = []
    monkeypatch.setattr(kprogress, "is_terminal", lambda: True)
    set_bar_factory(FakeBar)
    yield FakeBar
    set_bar_factory(harness_progress.tqdm_bar)


def test_plain_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv(kprogress.INTERVAL_ENV, "0")
    with Progress(range(3), desc="warm-up", unit="batch", postfix=lambda: "loss 0.5") as p:
        for _ in p:
            pass
        for _ in p:  # a second pass over the same loader (an epoch) is counted
            pass
        p.log("a line of its own")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warm-up: started (3 batch)"
    assert any(line.startswith("warm-up: pass 2, ") for line in err), err
    assert "a line of its own" in err
    assert re.fullmatch(r"warm-up: done, 6 batch in 2 passes in [\d.]+ s, loss 0\.5", err[-1]), err[-1]


def test_quiet_prints_nothing(capsys):
    with quiet_while(True), Progress(range(3), desc="x") as p:
        list(p)
        p.log("hidden")
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal_shows_the_postfix(fake_terminal, capsys):
    with Progress(range(4), desc="train", unit="epoch", postfix=lambda: "loss 0.1") as p:
        list(p)
        p.log("not on a bar")
    bar = fake_terminal.made[-1]
    assert bar.n == 4 and bar.closed and bar.postfixes[-1] == "loss 0.1"
    assert capsys.readouterr().err == ""  # the bar draws itself; no plain lines


def test_runner_sets_the_running_error_postfix_on_a_terminal(fake_terminal, tmp_path):
    """The stream's bar gets `err x.x%` (the old check `bar.disable is False` never fired: tqdm leaves None)."""
    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    run(RunConfig(method="source", stream="digits-c", limit=16, batch_size=8, clean_eval="off", out=str(tmp_path)))
    stream_bar = next(b for b in fake_terminal.made if b.total == DIGITS_DOMAINS * 2)
    assert stream_bar.postfixes and all(re.fullmatch(r"err \d+\.\d%", t) for t in stream_bar.postfixes)
    assert stream_bar.n == DIGITS_DOMAINS * 2


def _seed_model_cache(cache: Path) -> None:
    """Copy the trained digits model from the user's cache (if there) so only the prepare stage runs afresh."""
    for f in (cache_dir_default() / "models").glob("small-cnn-digits-c-*.pt"):
        (cache / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, cache / "models" / f.name)


def test_non_terminal_output_has_prepare_and_per_domain_lines(tmp_path):
    """ecotta on digits-c with output sent to a pipe: the prepare (warm-up) stage and every domain report."""
    cache = tmp_path / "cache"
    _seed_model_cache(cache)
    env = {**os.environ, "TTA_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tta_bench", "run", "--method", "ecotta", "--stream", "digits-c", "--limit", "16",
           "--batch-size", "16", "--clean-eval", "end", "--set", "method.warmup_epochs=1",
           "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert "prepare ecotta: started (" in proc.stderr
    assert any(re.fullmatch(r"prepare ecotta: done, \d+ batch( in \d+ passes)? in [\d.]+ s", line) for line in err), err
    domain_lines = [line for line in err if re.fullmatch(r"r0 \w+: error \d+\.\d %.*\(16 samples, [\d.]+ s\)", line)]
    assert len(domain_lines) == DIGITS_DOMAINS, err
    assert domain_lines[0].startswith("r0 gaussian_noise:") and domain_lines[-1].startswith("r0 jpeg_compression:")
    assert re.search(r"^stream: done, 15 batch in [\d.]+ s$", proc.stderr, re.M)
    assert "\r" not in proc.stderr  # no bar redraws in a file
    assert "ecotta on digits-c" in proc.stdout and "prepare" not in proc.stdout  # results on stdout, progress not
