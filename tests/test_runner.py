"""Runner: interrupted runs leave nothing that looks complete and re-run cleanly; settings recorded; forced
re-runs replace the old result only once complete (more in test_trust.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import tta_bench.methods.tent
from tta_bench import rundir
from tta_bench.config import RunConfig
from tta_bench.identity import folder as folder_of
from tta_bench.identity import run_id
from tta_bench.runner import is_complete, resolve, run


def _cfg(out, **kw) -> RunConfig:
    return RunConfig(**{"method": "tent", "stream": "digits-c", "limit": 64, "batch_size": 32, "out": str(out), **kw})


def test_crash_midway_leaves_no_done_and_rerun_is_clean(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = tta_bench.methods.tent.Tent.adapt

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return original(self, x)

    monkeypatch.setattr(tta_bench.methods.tent.Tent, "adapt", flaky)
    cfg = _cfg(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, quiet=True)
    folder = folder_of(cfg)
    assert folder == folder_of(resolve(cfg))  # named by the resolved config (defaults filled in)
    assert run_id(cfg) == run_id(_cfg(tmp_path, method_opts={"lr": 1e-3}))
    assert not folder.exists()  # built aside: nothing at the result's name
    assert not list(folder.parent.glob(".*.tmp-*"))  # the temporary folder was removed with the exception
    monkeypatch.setattr(tta_bench.methods.tent.Tent, "adapt", original)
    result = run(cfg, quiet=True)
    assert not result.skipped and is_complete(folder)
    assert len(result.domains) == 15


def test_killed_process_leaves_no_done(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "tta_bench",
        "run",
        "--method",
        "tent",
        "--stream",
        "digits-c",
        "--out",
        str(tmp_path),
        "--quiet",
        "--batch-size",
        "8",
        "--limit",
        "200",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob(".*.tmp-*/config.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (tmp,) = list(tmp_path.glob(".*.tmp-*"))  # the killed run's private folder; nothing at the result's name
    assert (tmp / "config.json").exists() and not rundir.is_complete(tmp)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_force_replaces_and_hash_ignores_execution_fields(tmp_path):
    cfg = _cfg(tmp_path, method="norm", setting="episodic")
    first = run(cfg, quiet=True)
    assert not first.skipped
    assert run(cfg, quiet=True).skipped
    assert run_id(_cfg(tmp_path, method="norm", setting="episodic", device="cpu", workers=0)) == run_id(cfg)
    assert run_id(_cfg(tmp_path, method="norm", setting="continual")) != run_id(cfg)
    again = run(cfg, force=True, quiet=True)
    assert not again.skipped and is_complete(again.folder)
    conf = json.loads((again.folder / "config.json").read_text())
    assert conf["config"]["setting"] == "episodic"
    assert all(seg["reset"] for seg in conf["domain_order"])
    # resolved defaults are part of the identity: the hash names every hyper-parameter's value
    assert conf["config"]["method_opts"] == {}
    assert resolve(_cfg(tmp_path)).method_opts["lr"] == 1e-3


def test_set_overrides_reach_the_adapter(tmp_path):
    cfg = resolve(_cfg(tmp_path, method_opts={"lr": 5e-4, "steps": 2}))
    assert cfg.method_opts["lr"] == 5e-4 and cfg.method_opts["steps"] == 2
    assert run_id(cfg) != run_id(resolve(_cfg(tmp_path)))


def test_prepare_cache_is_keyed_by_resolved_hyper_parameters_and_architecture(tmp_path, monkeypatch):
    """A changed default or a changed adapter architecture must not reuse (or fail to load) a cached warm-up."""
    import tta_bench.methods._meta
    import tta_bench.methods.ecotta

    cfg = _cfg(tmp_path, method="ecotta", method_opts={"warmup_epochs": 1, "e_margin": 0.41})  # a key of its own

    def cached(force: bool = True) -> bool:
        res = run(cfg, quiet=True, force=force)
        return json.loads((res.folder / "config.json").read_text())["prepare"]["cached"]

    assert cached() is False and cached() is True
    monkeypatch.setitem(tta_bench.methods.ecotta.EcoTTA.defaults, "warmup_lr", 1e-3)  # same options, new default
    assert cached() is False and cached() is True
    init = tta_bench.methods._meta.MetaNet.__init__

    def with_extra_buffer(self, *args, **kw):
        init(self, *args, **kw)
        self.register_buffer("extra", torch.zeros(1))

    monkeypatch.setattr(tta_bench.methods._meta.MetaNet, "__init__", with_extra_buffer)
    assert cached() is False
