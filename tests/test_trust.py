"""Trust: a run id names one result; nothing completed is lost; divergence is a result; caches heal themselves.

- cold-cache and warm-cache runs of one config give bit-identical metrics (1 and 2 threads, 0 and 2 workers),
  and the source model trained under either thread count is the same (weights' sha256 in config.json);
- the prepare (warm-up) cache key holds the batch size; a data file changed in place gives a new run id;
- kill -9 at every write of a `--force` re-run, and of a run a concurrent duplicate waits for, leaves the earlier
  complete result intact and loadable; a concurrent duplicate waits and reuses the first run's result;
- lr = inf gives a diverged run (`diverged`, `first_diverged_batch`) with strict JSON everywhere;
- a truncated cache `.pt` is reported and rebuilt; the site refuses a traversal `run_id`, skips and lists a
  garbage run folder, and a build killed midway leaves the previous site whole.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import crash_hooks
import numpy as np
import pytest
import torch

from tta_bench import corruptions, rundir
from tta_bench.config import RunConfig
from tta_bench.identity import data_fingerprint
from tta_bench.kernel import atomic, hash_json
from tta_bench.leaderboard.collect import collect
from tta_bench.leaderboard.site import build
from tta_bench.runner import load_result, open_stream, prepare_key, resolve, run, run_id

TIMING = {"images_per_s", "stream_seconds", "prepare_s", "memory", "peak_device_mb"}
SPEED = {"method_opts": {"warmup_epochs": 1}}  # EcoTTA: one warm-up epoch keeps the test fast


def _cfg(out: Path, **kw) -> RunConfig:
    base = {"method": "source", "stream": "digits-c", "limit": 8, "batch_size": 8, "out": str(out)}
    return RunConfig(**{**base, **kw})


def metrics(summary: dict) -> dict:
    """summary.json without wall-clock figures: what must be bit-identical between runs of one config."""
    return {k: v for k, v in summary.items() if k not in TIMING}


def strict_load(path: Path):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=reject)


# --- determinism -----------------------------------------------------------------------------------------------
# 2 threads on a loaded 2-core machine spin for minutes (OpenMP): that variant is `slow`; thread independence of
# training itself is checked fast below.
@pytest.mark.parametrize("threads,workers", [(1, 0), (1, 2), pytest.param(2, 2, marks=pytest.mark.slow)])
def test_cold_and_warm_caches_give_bit_identical_results(tmp_path, monkeypatch, threads, workers):
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path / "cache"))  # empty: trains the source model, warms up
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = {}
        for method, kw in (("tent", {}), ("ecotta", SPEED)):
            cfg = _cfg(tmp_path / "runs", method=method, workers=workers, limit=16, batch_size=16, **kw)
            cfg = replace(cfg, clean_eval="end")  # one clean evaluation: 2 threads on a loaded machine are slow
            cold = run(cfg, quiet=True)
            warm = run(cfg, quiet=True, force=True)  # same cache, now warm
            assert metrics(warm.summary) == metrics(cold.summary), method
            conf = strict_load(warm.folder / "config.json")
            results[method] = (cold.summary["mean_error"], conf["model_info"]["sha256"])
            if method == "ecotta":
                assert conf["prepare"]["cached"] is True
        assert results["tent"][1] == results["ecotta"][1]
        # the trained weights do not depend on the thread count (recorded for the other parametrization)
        record = Path(os.environ.get("TTA_TRUST_RECORD", tmp_path.parent / "trust_sha.json"))
        seen = json.loads(record.read_text()) if record.exists() else {}
        seen[str(threads)] = results["tent"][1]
        record.write_text(json.dumps(seen))
        assert len(set(seen.values())) == 1, seen
    finally:
        torch.set_num_threads(n)


def test_training_does_not_depend_on_the_thread_count():
    from torch.utils.data import TensorDataset

    from tta_bench.models import state_sha256
    from tta_bench.training import train_classifier

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(96, 3, 16, 16, generator=g), torch.randint(0, 4, (96,), generator=g))
    shas, n = [], torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(0)  # the same initial weights
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                      torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 4))  # fmt: skip
            torch.manual_seed(123 + threads)  # the caller's RNG state does not matter
            before = torch.get_rng_state()
            train_classifier(net, data, epochs=2, batch_size=32, seed=0)
            assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
            assert all(p.grad is None for p in net.parameters())
            shas.append(state_sha256(net))
    finally:
        torch.set_num_threads(n)
    assert shas[0] == shas[1]


def test_prepare_key_holds_the_batch_size(tmp_path):
    from tta_bench.models import ModelContext
    from tta_bench.runner import build_adapter

    keys = []
    for bs in (16, 64):
        cfg = resolve(_cfg(tmp_path, method="ecotta", batch_size=bs))
        spec = open_stream(cfg)
        ctx = ModelContext(tmp_path / "w", Path(os.environ["TTA_BENCH_CACHE"]), torch.device("cpu"), 0)
        adapter, weights = build_adapter(cfg, spec, ctx)
        keys.append(prepare_key(adapter, spec, cfg, weights, "cpu"))
        assert all(p.grad is None for p in adapter.parameters())  # no gradient leaks from training
    assert keys[0] != keys[1]


def _cifar_c_files(tmp_path: Path) -> Path:
    """A 20-image CIFAR-10-C folder (zeros) under tmp_path/data; returns the CIFAR-10-C folder."""
    root = tmp_path / "data" / "CIFAR-10-C"
    root.mkdir(parents=True)
    np.save(root / "labels.npy", np.arange(20) % 10)
    for d in corruptions.BENCHMARK:
        np.save(root / f"{d}.npy", np.zeros((20, 32, 32, 3), np.uint8))
    return root


def test_changed_data_file_gives_a_new_run_id(tmp_path):
    root = _cifar_c_files(tmp_path)
    cfg = RunConfig(method="source", stream="cifar10-c", data_dir=str(tmp_path / "data"), stream_opts={"holdout": 0})
    first = run_id(cfg)
    assert run_id(cfg) == first
    np.save(root / "fog.npy", np.full((20, 32, 32, 3), 7, np.uint8))  # same path, same size, new content
    os.utime(root / "fog.npy", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run_id(cfg) != first and run_id(resolve(cfg)) == run_id(cfg)


def test_weights_replaced_at_the_same_path_give_a_new_run_id(tmp_path):
    """`model.weights=PATH`: retrained or replaced weights at the same path must not reuse the old result."""
    _cifar_c_files(tmp_path)
    w = tmp_path / "w.th"
    w.write_bytes(b"A" * 100)
    base = dict(method="source", stream="cifar10-c", model="resnet20-cifar10", data_dir=str(tmp_path / "data"),
                stream_opts={"holdout": 0})  # fmt: skip
    cfg = RunConfig(**base, model_opts={"weights": str(w)})
    first = run_id(cfg)
    assert run_id(cfg) == first and run_id(resolve(cfg)) == first
    w.write_bytes(b"B" * 100)  # same path, same size, new content
    os.utime(w, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run_id(cfg) != first
    folder = tmp_path / "wdir"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x")
    fcfg = RunConfig(**base, model_opts={"weights": str(folder)})
    before = run_id(fcfg)
    (folder / "model.bin").write_bytes(b"xy")  # a file in a weights folder (a saved Hugging Face model) changed
    assert run_id(fcfg) != before
    # without a weights path nothing is added: the key is the identity and the data fingerprint only
    plain = RunConfig(**base)
    spec = open_stream(resolve(plain))
    assert run_id(plain) == hash_json({**resolve(plain).identity(), "data": data_fingerprint(spec)}, 16)


# --- nothing completed is lost -------------------------------------------------------------------------------
def _child(cfg: dict, kill_at: int | None, force: bool) -> None:
    """Forked: run `cfg` with SIGKILL at write step `kill_at` (None: no kill)."""
    torch.set_num_threads(1)
    atomic.reset_steps()
    if kill_at is not None:
        crash_hooks.kill_at(kill_at)
    run(RunConfig(**cfg), force=force, quiet=True)
    os._exit(0)


def _hold(out: Path, run_id: str, release) -> None:
    """Forked: hold the run lock of `run_id` until `release` is set (a run in progress)."""
    with rundir.run_lock(out, run_id):
        release.wait(60)
    os._exit(0)


def _start(cfg: RunConfig, kill_at: int | None = None, force: bool = True) -> mp.Process:
    p = mp.get_context("fork").Process(target=_child, args=(asdict(cfg), kill_at, force))
    p.start()
    return p


@pytest.fixture(scope="module")
def first_result(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("trust_runs"))
    return cfg, run(cfg, quiet=True)


def test_kill_at_every_write_of_a_forced_rerun_keeps_the_result(first_result):
    cfg, first = first_result
    expected = metrics(first.summary)
    kills = 0
    for step in range(1, 20):
        p = _start(cfg, kill_at=step)
        p.join(120)
        res = load_result(rundir.find_complete(Path(cfg.out), first.folder.name))  # complete at every instant
        assert metrics(res.summary) == expected
        if p.exitcode == 0:  # past the last write: the re-run completed
            break
        assert p.exitcode == -9, p.exitcode
        kills += 1
    assert kills >= 7  # config, batches, domains, summary, done, commit, delete of the old folder
    assert run(cfg, quiet=True).skipped
    leftovers = [q.name for q in Path(cfg.out).iterdir() if q.name.startswith(".") and not q.name.endswith(".lock")]
    assert leftovers == []  # an interrupted run's temporaries are removed by the next run of its id


@pytest.mark.parametrize(
    "steps",
    [(None, 1, 6, 7), pytest.param(tuple(range(1, 8)), marks=pytest.mark.slow)],  # slow: every write step
    ids=["some-writes", "every-write"],
)
def test_concurrent_duplicate_waits_and_reuses_even_when_the_first_is_killed(first_result, tmp_path, steps):
    cfg, first = first_result
    for kill_at in steps:  # write steps of the forced re-run (see the test above); None: not killed
        out = tmp_path / f"k{kill_at}"
        shutil.copytree(first.folder, out / first.folder.name)
        c = replace(cfg, out=str(out))
        release = mp.get_context("fork").Event()
        holder = mp.get_context("fork").Process(target=_hold, args=(out, first.folder.name, release))
        holder.start()  # another run of this id is "in progress" until released ...
        while not list(out.glob(".*.lock")):
            time.sleep(0.02)
        time.sleep(0.3)
        a = _start(c, kill_at=kill_at)  # ... a forced re-run queues behind it, and a plain run too
        b = _start(c, force=False)
        time.sleep(0.5)
        release.set()
        holder.join(60), a.join(120), b.join(120)
        assert a.exitcode == (0 if kill_at is None else -9) and b.exitcode == 0
        res = load_result(rundir.find_complete(out, first.folder.name))
        assert metrics(res.summary) == metrics(first.summary)


def test_second_identical_run_waits_and_reuses(tmp_path):
    script = crash_hooks.CHILD_PREFIX + (
        "import sys, torch; torch.set_num_threads(1); from tta_bench.config import RunConfig; "
        "from tta_bench.runner import run; r = run(RunConfig(method='source', stream='digits-c', limit=8, "
        f"batch_size=8, out={str(tmp_path / 'runs')!r}), quiet=False); "
        "print('SKIPPED' if r.skipped else 'RAN', r.folder)"
    )
    hold = tmp_path / "hold"
    hold.touch()  # the first run stops at its first write (holding the lock) while this file exists
    env = {**os.environ, "OMP_NUM_THREADS": "1", crash_hooks.HOLD_WHILE: str(hold)}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)  # fmt: skip

    first = start()
    while not list((tmp_path / "runs").glob(".*.tmp-*")):
        time.sleep(0.05)
    second = start()
    lines = []
    while not any("waiting for another run" in line for line in lines):
        lines.append(second.stderr.readline())
        assert lines[-1], lines  # EOF before waiting: it did not wait
    hold.unlink()
    outs = [first.communicate(timeout=300), second.communicate(timeout=300)]
    assert [o[0].split()[0] for o in outs] == ["RAN", "SKIPPED"], outs
    assert outs[0][0].split()[1] == outs[1][0].split()[1] and rundir.is_complete(Path(outs[0][0].split()[1]))


# --- divergence ----------------------------------------------------------------------------------------------
def test_infinite_lr_gives_a_diverged_run_with_strict_json(tmp_path):
    res = run(_cfg(tmp_path, method="tent", limit=16, method_opts={"lr": float("inf")}), quiet=True)
    summary = strict_load(res.folder / "summary.json")
    conf = strict_load(res.folder / "config.json")
    assert summary["diverged"] is True and summary["first_diverged_batch"] is not None
    assert conf["config"]["method_opts"]["lr"] is None  # inf stored as null
    assert summary["mean_error"] > 80  # non-finite predictions are errors, never "class 0"
    col = collect(tmp_path)
    assert bool(col.runs["diverged"].iloc[0])
    site = build(tmp_path, tmp_path / "site")
    assert 'class="diverged"' in (site.out / "index.html").read_text()


def test_nonfinite_logits_are_errors_in_both_meters():
    from tta_bench.metrics import ClassificationMeter, SegmentationMeter

    m = ClassificationMeter(1, "cpu")
    logits = torch.tensor([[float("nan"), 0.0], [0.0, 1.0], [float("-inf"), float("-inf")], [float("-inf"), 2.0]])
    m.update(logits, torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long))
    assert m.summary()["error"] == 50.0 and m.batch_nonfinite() == [2]
    s = SegmentationMeter(1, "cpu", num_classes=2)
    seg = torch.zeros(1, 2, 2, 2)
    seg[0, 1] = 1.0  # predicts class 1 everywhere ...
    seg[0, :, 0, 0] = float("nan")  # ... but one pixel is NaN
    s.update(seg, torch.ones(1, 2, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert s.batch_nonfinite() == [1]
    assert s.summary()["iou_1"] == pytest.approx(75.0)  # 3 of 4 pixels of class 1 found, the NaN one missed


# --- caches --------------------------------------------------------------------------------------------------
def test_truncated_cache_files_are_rebuilt(tmp_path, capfd):
    cfg = _cfg(tmp_path, method="ecotta", **SPEED)
    first = run(cfg, quiet=True)
    conf = strict_load(first.folder / "config.json")
    for path in (Path(conf["model_info"]["weights"]), Path(conf["prepare"]["cache"])):
        path.write_bytes(path.read_bytes()[:100])  # truncated
    again = run(cfg, quiet=False, force=True)
    err = capfd.readouterr().err
    assert "cached source model" in err and "prepare-stage cache" in err and "rebuilding" in err
    assert metrics(again.summary) == metrics(first.summary)
    assert not [p for p in Path(os.environ["TTA_BENCH_CACHE"]).rglob("*.tmp*")]  # no temporary files left


# --- leaderboard ---------------------------------------------------------------------------------------------
def _fake_run(folder: Path, run_id: str, like: Path) -> None:
    shutil.copytree(like, folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["run_id"] = run_id
    (folder / "config.json").write_text(json.dumps(conf))


def test_site_refuses_traversal_ids_and_lists_garbage_folders(first_result, tmp_path):
    _, first = first_result
    runs = tmp_path / "runs"
    shutil.copytree(first.folder, runs / first.folder.name)
    _fake_run(runs / ("a" * 16), "../../escaped", first.folder)
    _fake_run(runs / ("b" * 16), "/tmp/abs" + "0" * 8, first.folder)
    garbage = runs / ("c" * 16)
    shutil.copytree(first.folder, garbage)
    (garbage / "summary.json").write_text('{"method": "tent", "mean_error": NaN')  # truncated, non-strict
    site = build(runs, tmp_path / "site")
    assert site.n_runs == 1
    assert sorted(p.name for p, _ in site.unreadable) == ["a" * 16, "b" * 16, "c" * 16]
    assert not (tmp_path / "escaped.json").exists() and not Path("/tmp/abs00000000.json").exists()
    assert sorted(p.name for p in (site.out / "configs").iterdir()) == [f"{first.folder.name}.json"]
    html = (site.out / "index.html").read_text()
    assert "3 unreadable run folders skipped" in html and str(garbage) in html


def test_killed_site_build_leaves_the_previous_site_whole(first_result, tmp_path, monkeypatch):
    from tta_bench.leaderboard import site as lb_site

    _, first = first_result
    runs = tmp_path / "runs"
    shutil.copytree(first.folder, runs / first.folder.name)
    out = tmp_path / "site"
    build(runs, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise KeyboardInterrupt  # killed while writing the plots

    monkeypatch.setattr(lb_site, "table_context", boom)
    with pytest.raises(KeyboardInterrupt):
        build(runs, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and not list(tmp_path.glob(".site.tmp-*"))
    html = (out / "index.html").read_text()
    for ref in [s.split('"')[0] for s in html.split('src="')[1:]] + [f"configs/{first.folder.name}.json"]:
        assert (out / ref).is_file(), ref


def test_damaged_complete_folder_is_run_again(first_result, tmp_path):
    cfg, first = first_result
    out = tmp_path / "runs"
    shutil.copytree(first.folder, out / first.folder.name)
    (out / first.folder.name / "summary.json").write_text('{"method": "source", "mean_')  # truncated
    res = run(replace(cfg, out=str(out)), quiet=True)
    assert not res.skipped and metrics(res.summary) == metrics(first.summary)
    assert strict_load(out / first.folder.name / "summary.json")["method"] == "source"


# --- sweep workers ---------------------------------------------------------------------------------------------
_PARENT = """
import os, sys, time, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from tta_bench.sweep import die_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 600)
    time.sleep(600)
"""


def test_sweep_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, 9)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]


def test_cached_training_ignores_the_callers_rng_state(tmp_path):
    from tta_bench.models import cached_training

    def train(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.weight.mul_(2)

    shas = []
    for caller_seed in (0, 1):
        torch.manual_seed(caller_seed)  # e.g. the run's seed
        m = cached_training(lambda: torch.nn.Linear(4, 2), train, {"seed": 0}, tmp_path / str(caller_seed), "t")
        shas.append(m.tta_info["sha256"])
    assert shas[0] == shas[1]
