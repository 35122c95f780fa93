"""A run's options are checked once, where they are resolved (`tta_bench.identity.resolve`), and `RunConfig(...)` is a
plain value: it reads no file and imports no torch, no registry (issue #26)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tta_bench.methods.base as base
from tta_bench import identity, methods, runner
from tta_bench.config import RunConfig


def test_one_run_resolves_once_and_checks_method_options_once_before_the_adapter(tmp_path, monkeypatch, one_thread):
    """What is counted, in order, for one `run(RunConfig(...))` of tent on digits-c:
    - `resolve`: every call of `tta_bench.identity.resolve` (the runner's and any from `run_id`/`folder`);
    - `check_options/method@harness`: the type check of the method options against the class defaults in the harness
      (identity's `check_options` called with kind "method"; stream and model options are not counted);
    - `validate`: every `Adapter.validate` call (the class's value ranges), in the harness or in the adapter;
    - `create`: the harness building the adapter (`methods.create`), after which `Adapter.__init__` checks its
      keyword arguments again for library users (`check_options/method@adapter` and a second `validate`).
    Before the adapter is built the harness checks the method options exactly once, and resolves exactly once."""
    events: list[str] = []

    def counting(fn, name, kind_only=None):
        def wrapper(*args, **kwargs):
            if kind_only is None or args[0] == kind_only:
                events.append(name)
            return fn(*args, **kwargs)

        return wrapper

    resolve = counting(identity.resolve, "resolve")
    monkeypatch.setattr(identity, "resolve", resolve)
    monkeypatch.setattr(runner, "resolve", resolve)
    monkeypatch.setattr(identity, "check_options", counting(identity.check_options, "check_options/method@harness",
                                                            "method"))  # fmt: skip
    monkeypatch.setattr(base, "check_options", counting(base.check_options, "check_options/method@adapter", "method"))
    monkeypatch.setattr(methods, "create", counting(methods.create, "create"))
    validate = base.Adapter.validate.__func__
    monkeypatch.setattr(base.Adapter, "validate", classmethod(lambda cls, hp: (events.append("validate"),
                                                                               validate(cls, hp))[1]))  # fmt: skip

    cfg = RunConfig(method="tent", stream="digits-c", limit=8, batch_size=8, out=str(tmp_path / "runs"),
                    method_opts={"lr": 1e-3})  # fmt: skip
    assert events == []  # the constructor checks no method option
    result = runner.run(cfg, quiet=True)
    assert not result.skipped
    assert events == [
        "resolve",
        "check_options/method@harness",
        "validate",
        "create",
        "check_options/method@adapter",
        "validate",
    ], events
    assert result.folder == identity.folder(identity.resolve(cfg))  # the folder is a function of the resolved run


def test_a_resolved_run_is_not_resolved_again_and_a_changed_copy_is():
    from dataclasses import replace

    cfg = RunConfig(method="tent", stream="digits-c", method_opts={"lr": 1e-3})
    run = identity.resolve(cfg)
    assert identity.is_resolved(run) and not identity.is_resolved(cfg)
    assert identity.resolve(run) is run
    assert not identity.is_resolved(replace(run, method_opts={"lr": -1.0}))  # a changed copy is checked again
    with pytest.raises(Exception, match="'lr'"):
        identity.resolve(replace(run, method_opts={"lr": -1.0}))


def test_constructing_a_run_config_touches_no_file(monkeypatch, tmp_path):
    """No `os.stat` / `Path.exists` / `os.access` (nor anything built on them) while RunConfig checks its values,
    even with paths, a data folder that is a file and an --out under a file (those are checked where a run starts)."""
    a_file = tmp_path / "f"
    a_file.write_text("x")

    def no_io(*args, **kwargs):
        raise AssertionError(f"RunConfig touched the file system: {args}")

    for name in ("stat", "lstat", "access", "listdir", "scandir"):
        monkeypatch.setattr(os, name, no_io)
    for name in ("exists", "is_dir", "is_file", "resolve", "stat"):
        monkeypatch.setattr(Path, name, no_io)
    cfg = RunConfig(method="tent", stream="digits-c", setting="non-iid", data_dir=str(a_file), out=str(a_file / "r"),
                    stream_opts={"gamma": 0.5, "root": str(tmp_path)}, model_opts={"weights": str(a_file)},
                    method_opts={"lr": 0.1, "steps": 2}, device="cuda:3")  # fmt: skip
    assert cfg.method_opts == {"lr": 0.1, "steps": 2}


def test_constructing_a_run_config_imports_no_torch():
    code = (
        "import sys; from tta_bench.config import RunConfig; "
        "RunConfig(method='tent', stream='digits-c', stream_opts={'gamma': 0.5}, method_opts={'lr': 0.1}); "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'tta_bench.methods', "
        "'tta_bench.streams', 'tta_bench.protocols', 'tta_bench.identity'))); "
        "assert not bad, bad"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_config_does_not_import_identity():
    """The only import loop there was (config <-> identity) is gone: config.py names identity nowhere in its code."""
    import ast

    import tta_bench.config

    tree = ast.parse(Path(tta_bench.config.__file__).read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]
    assert not [m for m in imported if m and "identity" in m], imported
