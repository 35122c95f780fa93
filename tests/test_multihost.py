"""Several hosts or containers writing into one `--out` (issue #25): a temporary folder is removed only when its
writer is gone, judged by owner (host, boot id, PID namespace, pid, start time) and lease (`.owner.json`'s mtime,
refreshed while the writer runs), never by a pid of another namespace.

- two writers in separate PID namespaces (`unshare --pid --fork --mount-proc`, root) into one out folder: the second
  runs to the end while the first is held mid-write; both keep their results (before: the second removed the first's
  live folder as "the remains of an interrupted run", and the first exited 0 without its result);
- the same folder reached through a second mount (`mount --bind`, root): a writer through each; an identical run
  through the other path waits for the lock and reuses the result;
- a foreign owner's folder stays while its lease is fresh and goes once it is stale; a local dead owner's goes at
  once; a writer whose folder was taken is told so, and commits nothing; a file system refusing flock goes on
  unlocked with a note.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import crash_hooks
import pytest

from tta_bench import rundir
from tta_bench.config import RunConfig
from tta_bench.kernel import UserError, atomic
from tta_bench.runner import run

SCRIPT = crash_hooks.CHILD_PREFIX + (
    "import sys, torch; torch.set_num_threads(1); from tta_bench.config import RunConfig; "
    "from tta_bench.runner import run; r = run(RunConfig(method='source', stream='digits-c', limit=8, batch_size=8, "
    "seed=int(sys.argv[2]), out=sys.argv[1]), quiet=False); print('SKIPPED' if r.skipped else 'RAN', r.folder)"
)


def _env(hold: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop(crash_hooks.HOLD_WHILE, None)
    if hold is not None:
        env[crash_hooks.HOLD_WHILE] = str(hold)
    return env


def _writer(prefix: list[str], out: Path, seed: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-c", SCRIPT, str(out), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 240) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(folder.glob(pattern))
        if found:
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{pattern} never appeared under {folder}")


def _complete(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if rundir.is_run_id(p.name) and rundir.is_complete(p))


def _unshare_ok() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"unshare --pid is not permitted here: {r.stderr.strip()}"


def test_two_pid_namespaces_keep_both_results(tmp_path):
    why = _unshare_ok()
    if why:
        pytest.skip(why)
    out, hold = tmp_path / "runs", tmp_path / "hold"
    hold.touch()
    ns = ["unshare", "--pid", "--fork", "--mount-proc"]
    # A runs as pid 5 or so of its namespace (a few processes first): a pid that does not exist in B's namespace
    a = _writer([*ns, "sh", "-c", '/bin/true; /bin/true; /bin/true; "$0" "$@"'], out, 0, _env(hold))
    tmp = _wait_for(f".*.tmp-*/{atomic.OWNER}", out, a)[0].parent
    owner = json.loads((tmp / atomic.OWNER).read_text())
    assert owner["pidns"] != atomic.machine()["pidns"] and owner["pid"] < 100
    b = _writer(ns, out, 1, _env())  # another run id, in another namespace: cleans up leftovers, then runs
    b_out, b_err = b.communicate(timeout=300)
    assert b.returncode == 0 and b_out.startswith("RAN"), b_err
    assert "removed the remains" not in b_err and tmp.is_dir()  # A's live folder was kept
    hold.unlink()
    a_out, a_err = a.communicate(timeout=300)
    assert a.returncode == 0 and a_out.startswith("RAN"), a_err
    assert len(_complete(out)) == 2
    for name in _complete(out):
        assert all((out / name / f).is_file() for f in rundir.RUN_FILES)
        rundir.load_summary(out / name)
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


def test_a_second_mount_of_the_same_folder(tmp_path):
    out, other, hold = tmp_path / "runs", tmp_path / "same-runs", tmp_path / "hold"
    out.mkdir()
    other.mkdir()
    r = subprocess.run(["mount", "--bind", str(out), str(other)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {r.stderr.strip()}")
    try:
        hold.touch()
        a = _writer([], out, 0, _env(hold))  # held at its first write
        tmp = _wait_for(f".*.tmp-*/{atomic.OWNER}", out, a)[0].parent
        b = _writer([], other, 1, _env())  # another id through the other path: must leave A's folder alone
        b_out, b_err = b.communicate(timeout=300)
        assert b.returncode == 0 and b_out.startswith("RAN") and tmp.is_dir(), b_err
        same = _writer([], other, 0, _env())  # A's id through the other path: waits for A's lock, then reuses
        lines: list[str] = []
        while not any("waiting for another run" in ln for ln in lines):
            lines.append(same.stderr.readline())
            assert lines[-1], lines
        hold.unlink()
        a_out, a_err = a.communicate(timeout=300)
        s_out, s_err = same.communicate(timeout=300)
        assert a.returncode == 0 and a_out.startswith("RAN"), a_err
        assert same.returncode == 0 and s_out.startswith("SKIPPED"), s_err
        assert len(_complete(out)) == 2 and _complete(out) == _complete(other)
    finally:
        subprocess.run(["umount", "-l", str(other)], capture_output=True)


def _fake_temp(out: Path, record: dict | None) -> Path:
    tmp = out / f".{'a' * 16}.tmp-1-deadbeef"
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text("{}")
    if record is not None:
        (tmp / atomic.OWNER).write_text(json.dumps(record))
    return tmp


def test_foreign_folders_go_only_when_their_lease_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv(atomic.LEASE_ENV, "1")
    out = tmp_path / "runs"
    here = atomic.machine()
    foreign = _fake_temp(out, {"host": "node-17", "boot_id": "other-boot", "pidns": here["pidns"], "pid": 1,
                               "start": 0, "lease_s": 1})  # fmt: skip
    assert atomic.clean_stale(out, "b" * 16, rundir.is_complete) == [] and foreign.is_dir()  # fresh: kept
    time.sleep(1.3)
    assert atomic.clean_stale(out, "b" * 16, rundir.is_complete) == [foreign] and not foreign.exists()
    # no owner record (an older version's folder, or one being set up): the lease decides too
    bare = _fake_temp(out, None)
    assert atomic.is_live(bare)
    time.sleep(1.3)
    assert not atomic.is_live(bare)
    shutil.rmtree(bare)
    # this machine and namespace, a process that is gone (pid of a finished child): removed at once
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = _fake_temp(out, {**here, "pid": int(child.stdout), "start": None, "lease_s": 300})
    monkeypatch.setenv(atomic.LEASE_ENV, "300")
    assert not atomic.is_live(dead)
    # a live local owner whose pid was reused by another process (start time differs): gone
    me = atomic.owner_record()
    (dead / atomic.OWNER).write_text(json.dumps({**me, "start": (me["start"] or 0) + 1}))
    assert not atomic.is_live(dead)
    (dead / atomic.OWNER).write_text(json.dumps(me))
    assert atomic.is_live(dead)


def test_a_live_writer_keeps_its_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(atomic.LEASE_ENV, "0.6")
    tmp = atomic.make_temp(tmp_path, "c" * 16)
    rec = json.loads((tmp / atomic.OWNER).read_text())
    rec.update(host="elsewhere")  # seen as another host's: only the heartbeat keeps it
    (tmp / atomic.OWNER).write_text(json.dumps(rec))
    time.sleep(2.0)
    assert atomic.is_live(tmp)  # refreshed every lease/6 s
    shutil.rmtree(tmp)


def test_a_writer_whose_folder_was_taken_commits_nothing(tmp_path):
    out = tmp_path / "runs"
    tmp = rundir.temp_folder(out, "d" * 16)
    shutil.rmtree(tmp)  # taken by another host after a lease ran out ...
    rundir.write_file(tmp / rundir.DONE, "x")  # ... and recreated by this writer's next write
    with pytest.raises(UserError, match="removed by another process"):
        rundir.commit(tmp, out / ("d" * 16))
    assert not (out / ("d" * 16)).exists()


def test_a_file_system_without_locks_goes_on_unlocked(tmp_path, monkeypatch, capfd):
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    cfg = RunConfig(method="source", stream="digits-c", limit=8, batch_size=8, out=str(tmp_path / "runs"))
    res = run(cfg, quiet=True)
    assert rundir.is_complete(res.folder) and "refuses file locks" in capfd.readouterr().err
    again = run(cfg, quiet=True, force=True)
    assert again.summary["mean_error"] == res.summary["mean_error"] and rundir.is_complete(again.folder)
