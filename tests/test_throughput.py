"""Throughput plumbing: the tolerance of --precision amp and --compile against eager fp32 on a tiny model, the
compile fallback, a smoke run of benchmarks/throughput.py, and benchmarks/gpu_check.sh's syntax."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.accel import compile_adapter

REPO = Path(__file__).resolve().parent.parent


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


XS = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _tent_outputs(adapter, amp: bool = False) -> list[torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return [adapter(x).detach().float() for x in XS]


def test_amp_tolerance_against_eager_fp32(one_thread):
    """bf16 autocast, 3 Tent steps: logits within 0.02 of fp32 (|logits| ~ 0.6), the same argmax on >= 90 %."""
    ref = _tent_outputs(methods.create("tent", _net()))
    amp = _tent_outputs(methods.create("tent", _net()), amp=True)
    for r, a in zip(ref, amp):
        assert (r - a).abs().max() < 0.02
        assert (r.argmax(1) == a.argmax(1)).float().mean() >= 0.9


def test_channels_last_tent_within_float_tolerance(one_thread):
    """--channels-last on: the same Tent steps on a channels-last model and batches, logits within 1e-5 of NCHW."""
    ref = _tent_outputs(methods.create("tent", _net()))
    a = methods.create("tent", _net().to(memory_format=torch.channels_last))
    got = [a(x.contiguous(memory_format=torch.channels_last)).detach() for x in XS]
    for r, g in zip(ref, got):
        assert (r - g).abs().max() < 1e-5


def test_channels_last_option_reaches_the_run(tmp_path, one_thread):
    """`channels_last="on"` on CPU: recorded in config.json's execution, same run id (not hashed), same errors
    within float tolerance; auto is off on CPU."""
    from tta_bench import run
    from tta_bench.config import RunConfig
    from tta_bench.rundir import load_config

    base = dict(method="tent", stream="digits-c", limit=16, batch_size=8, clean_eval="off")
    off = run(RunConfig(**base, out=str(tmp_path / "a")), quiet=True)
    on = run(RunConfig(**base, channels_last="on", out=str(tmp_path / "b")), quiet=True)
    assert off.folder.name == on.folder.name
    assert load_config(off.folder)["execution"]["channels_last"] is False
    assert load_config(on.folder)["execution"]["channels_last"] is True
    assert abs(off.summary["mean_error"] - on.summary["mean_error"]) <= 100 / 16 / 15  # at most one image flips


def test_compile_keeps_names_state_and_results(one_thread):
    """Compiled in place (dynamo's 'eager' backend here: the plumbing, fast): same outputs, same state_dict keys,
    reset() still restores the source state."""
    ref = _tent_outputs(methods.create("tent", _net()))
    a = methods.create("tent", _net())
    keys = list(a.state_dict())
    assert compile_adapter(a, backend="eager")["compiled"]
    got = _tent_outputs(a)
    assert list(a.state_dict()) == keys
    for r, g in zip(ref, got):
        assert torch.allclose(r, g, atol=1e-6)
    a.reset()
    assert torch.allclose(_tent_outputs(a)[0], ref[0], atol=1e-6)


def test_compile_falls_back_to_eager_with_a_warning():
    a = methods.create("tent", _net())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        info = compile_adapter(a, backend="no-such-backend")
    assert not info["compiled"] and any("running eager" in str(x.message) for x in w)
    assert _tent_outputs(a)[0].shape == (16, 10)


@pytest.mark.slow
def test_inductor_compiled_tent_within_1e4_of_eager(one_thread):
    """The real compiler (inductor; 1-2 min to compile on a loaded CPU): logits within 1e-4 of eager fp32."""
    ref = _tent_outputs(methods.create("tent", _net()))
    a = methods.create("tent", _net())
    compile_adapter(a)
    for r, g in zip(ref, _tent_outputs(a)):
        assert (r - g).abs().max() < 1e-4


def test_throughput_benchmark_smoke(tmp_path, one_thread):
    from benchmarks import throughput

    out = tmp_path / "tp.json"
    argv = ["--methods", "source,tent", "--model", "resnet20", "--batch-size", "8", "--limit", "16",
            "--domains", "contrast", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert throughput.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["source", "tent"]
    assert all(r["images"] == 16 and r["ratio"] > 0 and r["paired_ratio"] > 0 and "where_harness" in r for r in rows)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_is_valid_bash():
    script = REPO / "benchmarks" / "gpu_check.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--dry-run" in script.read_text()
