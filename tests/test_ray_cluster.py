"""`sweep --executor ray` on a real two-node Ray cluster on this machine (issue #31): a head (`ray start --head`) and a
worker node (`ray start --address`), each a separate `--block` process in its own process group and temporary folder,
one CPU each. A 2 methods x 2 seeds digits-c sweep over both nodes into one out folder (each attempt's node id is
logged in `<out>/.sweep-log/`): seed 0 first (its 2 runs at once, one per node, both complete), then the whole grid,
during which the worker node is killed (SIGKILL to its whole process group) while it holds a run: no completed result
is lost or touched (the dead node's own included), and the sweep finishes on re-submission (running only what is
missing). Teardown kills both nodes' process groups (this test's processes only, not every Ray
on the machine as `ray stop --force` would). Slow (minutes).

Without a cluster (default suite): a task lost with its node (`ray.get` raising) is that run's failure, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

RAY = Path(sys.executable).parent / "ray"
SWEEP = ["--methods", "source,norm", "--streams", "digits-c", "--limit", "16", "--batch-size", "8",
         "--clean-eval", "end", "--executor", "ray"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(args: list[str], root: Path, name: str) -> subprocess.Popen:
    """`ray start ... --block` as its own process group (so the whole node can be killed at once)."""
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 - the node's output, kept for a failure's message
    cmd = [str(RAY), "start", *args, "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={root / name}",
           f"--dashboard-agent-listen-port={_free_port()}", "--block"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _started(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `ray start --block` says the node runs (its log); its log in the failure otherwise."""
    deadline = time.time() + timeout
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc): Ray starts its task workers outside the node's process group."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _kill(proc: subprocess.Popen) -> None:
    """The whole node at once: its process group and every process below it (SIGKILL: as a machine dies)."""
    below = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


@pytest.fixture
def cluster(monkeypatch):
    """(address, worker node's process, worker node manager port) of a head + worker cluster with 1 CPU each."""
    ray = pytest.importorskip("ray", reason='Ray not installed: pip install "tta_bench[ray]"')
    # Ray (2.5x+) turns token authentication on by itself when ~/.ray/auth_token exists (any earlier local Ray
    # writes one), and another Ray on the machine may rewrite that file between our nodes' start and the driver's
    # connect. This private test cluster runs without it: nodes, driver and sweep all inherit the setting.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    if not RAY.exists():
        pytest.skip(f"the `ray` command is not beside {sys.executable}: pip install 'ray[default]'")
    port, worker_port = _free_port(), _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"  # the address Ray gives this machine (not 127.0.0.1)
    short = Path(tempfile.mkdtemp(prefix="tb-ray-"))  # Ray's socket paths must stay under 108 bytes
    head = _node(["--head", f"--port={port}", "--include-dashboard=false"], short, "head")
    worker = None
    try:
        try:  # a machine that cannot run a Ray node at all (a sandbox) skips, saying why
            _started(head, short / "head.log")
        except AssertionError as e:
            pytest.skip(f"a Ray head node could not start on this machine: {str(e)[-600:]}")
        ray.init(address=address, log_to_driver=False)
        worker = _node([f"--address={address}", f"--node-manager-port={worker_port}"], short, "worker")
        _started(worker, short / "worker.log")
        deadline = time.time() + 180
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.time() < deadline, (short / "worker.log").read_text()[-3000:]
            assert worker.poll() is None, (short / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        ids = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield address, worker, ids[worker_port], set(ids.values())
    finally:
        ray.shutdown()
        for proc in (worker, head):
            if proc is not None:
                _kill(proc)
        shutil.rmtree(short, ignore_errors=True)


def _attempts(runs: Path) -> list[dict]:
    out = []
    for p in (runs / ".sweep-log").glob("*.json"):
        try:
            out += [{**a, "run_id": p.stem} for a in json.loads(p.read_text())["attempts"]]
        except (OSError, ValueError, KeyError):  # being rewritten (atomically) right now: read it next time
            pass
    return out


def _complete(runs: Path) -> dict[str, dict[str, tuple[int, bytes]]]:
    """Each complete run folder's files (mtime, bytes)."""
    return {d.name: {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir() if p.is_file()}
            for d in runs.iterdir() if (d / "done").is_file()}  # fmt: skip


def _sweep(address: str, runs: Path, site: Path, seeds: str = "0,1") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tta_bench", "sweep", *SWEEP, "--seeds", seeds, "--ray-address", address,
           "--out", str(runs), "--site", str(site)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_two_node_sweep_survives_a_killed_node(cluster, tmp_path):
    address, worker, worker_id, node_ids = cluster
    runs, site = tmp_path / "runs", tmp_path / "site"
    t0 = time.time()
    # Seed 0 first: its 2 runs run at once, so one on each 1-CPU node, each completing into the shared out folder.
    warm = _sweep(address, runs, site, "0")
    out0 = warm.communicate(timeout=600)[0]
    assert warm.returncode == 0 and out0.count("% error (") == 2, out0
    done = {a["run_id"]: a["ray_node"] for a in _attempts(runs) if a["state"] == "done"}
    assert len(done) == 2 and set(done.values()) == node_ids and set(done) == set(_complete(runs))
    assert all(f"on ray node {n}" in out0 for n in node_ids)  # the sweep's lines name the node of each run
    seed0_s = time.time() - t0

    # The whole grid: seed 1's 2 runs start at once, one per node; kill the worker node while it holds its run.
    t1 = time.time()
    first = _sweep(address, runs, site)
    deadline = time.time() + 400
    while True:
        tries = _attempts(runs)
        lost = {a["run_id"] for a in tries if a["state"] == "running" and a.get("ray_node") == worker_id}
        if lost:
            break
        assert first.poll() is None, "the sweep ended before the worker node held a run:\n" + first.communicate()[0]
        assert time.time() < deadline, tries
        time.sleep(0.2)
    _kill(worker)
    killed_at = time.time() - t1
    kept = _complete(runs)
    assert set(done) <= set(kept) and not lost & set(kept)  # the dead node's own completed run among them
    out1 = first.communicate(timeout=600)[0]
    assert "4 run(s) in the grid, 2 already complete, 2 to run" in out1
    assert first.returncode in (0, 1), out1  # Ray retried the lost run on the head (0), or reported it failed (1)
    assert "Traceback" not in out1, out1
    after = _complete(runs)
    assert all(after[k] == v for k, v in kept.items())  # no completed result lost or rewritten
    died = [a for a in _attempts(runs) if a.get("ray_node") == worker_id and a["run_id"] in lost]
    assert died and all(a["state"] == "running" for a in died)  # the killed try never finished on the dead node
    first_s = time.time() - t1

    t2 = time.time()
    second = _sweep(address, runs, site)  # re-submission: only what is missing runs
    out2 = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out2
    assert f"4 run(s) in the grid, {len(after)} already complete, {4 - len(after)} to run" in out2
    assert out2.count("% error (") == 4 - len(after) and "leaderboard: 4 completed run(s)" in out2
    final = _complete(runs)
    assert len(final) == 4 and all(final[k] == v for k, v in after.items())
    tries = _attempts(runs)
    assert {a.get("ray_node") for a in tries} == node_ids and all(a["host"] == socket.gethostname() for a in tries)
    on = {n: sorted(a["run_id"] for a in tries if a.get("ray_node") == n and a["state"] == "done") for n in node_ids}
    timings = f"seed 0 {seed0_s:.0f} s, grid {first_s:.0f} s (rc {first.returncode}), again {time.time() - t2:.0f} s"
    print(f"ray: worker {worker_id} killed at {killed_at:.0f} s holding {sorted(lost)}; {timings}; done: {on}",
          file=sys.stderr)  # fmt: skip


class NodeDiedError(Exception):
    """Stands for ray.exceptions.NodeDiedError (a RayError) in the stand-in below."""


def test_a_task_lost_with_its_node_is_a_failed_run_not_a_traceback(tmp_path, capsys, monkeypatch):
    """`ray.get` raising (the task's node died, retries spent) is reported as that run's failure; the sweep goes on,
    exits 1 and says to run it again. A stand-in `ray` module: no cluster, nothing runs."""
    from tta_bench.cli import main

    def remote(fn):
        task = types.SimpleNamespace(remote=lambda cfg, *a: (cfg["method"], cfg["seed"]))  # one ref per run
        return types.SimpleNamespace(options=lambda **k: task)

    def get(ref):
        raise NodeDiedError(f"the node running {ref[0]} seed {ref[1]} died")

    fake = types.SimpleNamespace(
        is_initialized=lambda: True,
        cluster_resources=lambda: {"CPU": 2.0},
        remote=remote,
        wait=lambda refs, num_returns: (refs[:1], refs[1:]),
        get=get,
        exceptions=types.SimpleNamespace(RayError=NodeDiedError),
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    runs = tmp_path / "runs"
    argv = ["sweep", *SWEEP, "--seeds", "0,1", "--out", str(runs), "--site", str(tmp_path / "site"), "--no-leaderboard"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    for method in ("source", "norm"):
        for seed in (0, 1):  # each failure under its own run's label
            line = f"{method} on digits-c (small-cnn, continual, seed {seed}): FAILED NodeDiedError: the node running "
            assert line + f"{method} seed {seed} died" in out
    assert "Traceback" not in out
    assert "4 of 4 run(s) failed" in out and "run the same sweep command again" in out
    assert not list(runs.glob("*/done"))
