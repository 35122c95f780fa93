"""`sweep --executor slurm` (issue #31) on a real single-node Slurm: Debian's slurmctld, slurmd and munge, started by a
fixture in a temporary folder (its own munge socket and key, its own ports, `$SLURM_CONF`) and torn down after.

On it a 2 methods x 2 seeds digits-c sweep runs as one job array of 4 tasks (2 at a time) with a dependent
leaderboard job; task 1 is preempted mid-run (SIGUSR2, as Slurm sends before a time limit or preemption) and
submitit requeues it; task 3 is cancelled (scancel) and the same sweep command resubmits exactly that run; then the
same command submits nothing, and the whole array resubmitted by hand re-runs nothing (each task finds its run
complete). The option parsing and `--dry-run` need only submitit (no cluster) and run in the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tta_bench.cli import main
from tta_bench.kernel import UserError

DAEMONS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}
SMALL = ["--streams", "digits-c", "--limit", "16", "--batch-size", "8", "--clean-eval", "end"]


def sweep_argv(runs: Path, site: Path, *extra: str) -> list[str]:
    return ["sweep", "--methods", "source,norm", "--seeds", "0", "1", *SMALL, "--out", str(runs), "--site", str(site),
            "--executor", "slurm", "--slurm-time", "10", "--slurm-array-parallelism", "2", *extra]  # fmt: skip


# --- without a cluster ------------------------------------------------------------------------------------------
def test_slurm_options_are_parsed_and_checked():
    from tta_bench.launch.slurm import extra_flags, minutes

    assert [minutes(t) for t in ("90", "5:30", "01:00:00", "1-0", "2-01:30", "0-00:00:59")] == [
        90,
        6,
        60,
        1440,
        2970,
        1,
    ]
    assert extra_flags('--account=lab --exclusive --qos high --comment "a b"') == {
        "account": "lab",
        "exclusive": True,
        "qos": "high",
        "comment": "a b",
    }
    for bad, words in (("1h", "--slurm-time"), ("0", "between 1 minute")):
        with pytest.raises(UserError, match=words):
            minutes(bad)
    with pytest.raises(UserError, match="--slurm-time"):  # the flag to use instead of the managed one
        extra_flags("--time=5")
    with pytest.raises(UserError, match="long sbatch flag"):
        extra_flags("-A lab")
    with pytest.raises(UserError, match="quotes"):
        extra_flags('--comment "open')


def test_dry_run_prints_the_sbatch_script_and_tasks(tmp_path, capsys):
    pytest.importorskip("submitit", reason='submitit not installed: pip install "tta_bench[slurm]"')
    runs = tmp_path / "runs"
    argv = sweep_argv(runs, tmp_path / "site", "--dry-run", "--slurm-partition", "gpu", "--slurm-gpus-per-task", "1",
                      "--slurm-extra", "--account=lab --mem=8G")  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    script = out[out.index("#!/bin/bash") : out.index("array tasks")]
    for line in ("--array=0-3%2", "--partition=gpu", "--gpus-per-task=1", "--time=10", "--account=lab", "--mem=8G",
                 "--signal=USR2@120", f"--output={runs}/.slurm/%A_%a/%A_%a_0_log.out", "core._submit"):  # fmt: skip
        assert line in script, line
    tasks = [ln for ln in out.splitlines() if ln.startswith("  ") and " -> " in ln and ": " in ln]
    assert len(tasks) == 4 and {t.split(":")[0].strip() for t in tasks} == {"0", "1", "2", "3"}
    assert "afterany:<array id>" in out and "leaderboard --runs" in out
    assert not runs.exists() and not (tmp_path / "site").exists()  # nothing submitted, nothing built

    assert main([*argv, "--slurm-extra=--time=3"]) == 2
    assert "--slurm-time" in capsys.readouterr().err


def test_slurm_without_submitit_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(sweep_argv(tmp_path / "runs", tmp_path / "site", "--dry-run")) == 2
    assert 'pip install "tta_bench[slurm]"' in capsys.readouterr().err


# --- a real single-node cluster ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> str | None:
    for exe, package in DAEMONS.items():
        if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists():
            return f"{exe} not found: install Debian's {package} (apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root (slurmd starts jobs as their user); run as root"
    return None


def _write_conf(root: Path, sock: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    settings = {
        "ClusterName": "ttabench",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": _free_port(),
        "SlurmdPort": _free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={sock},cred_expire=5",  # cred_expire: a requeued job may start again after ~6 s
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",  # no cgroups in a container
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SchedulerType": "sched/builtin",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "KillWait": 5,
        "MinJobAge": 600,
    }
    lines = [f"{k}={v}" for k, v in settings.items()]
    lines.append(f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm (2 CPUs) with its own munged; `$SLURM_CONF` points the clients (and submitit) at it."""
    why = _missing()
    if why:
        pytest.skip(why)
    pytest.importorskip("submitit", reason='submitit not installed: pip install "tta_bench[slurm]"')
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "munge"):
        (root / d).mkdir(mode=0o700)
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = _write_conf(root, sock)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    pidfiles = [root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "munged.pid"]
    try:
        munge = [f"--key-file={key}", f"--socket={sock}", f"--pid-file={pidfiles[2]}", "--force"]
        munge += [f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}"]
        try:  # a machine that cannot run the daemons at all (no privileges, a sandbox) skips, saying why
            for cmd in (["munged", *munge], ["slurmctld", "-f", str(conf)], ["slurmd", "-f", str(conf)]):
                subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            logs = " | ".join(p.read_text()[-400:] for p in root.glob("*.log") if p.is_file())
            pytest.skip(f"the Slurm daemons could not start on this machine ({e}; {getattr(e, 'stderr', '')}) {logs}")
        deadline = time.time() + 60
        while subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() != "idle":
            assert time.time() < deadline, (root / "slurmctld.log").read_text()[-3000:]
            time.sleep(0.5)
        yield root
    finally:
        subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], capture_output=True)
        time.sleep(1)
        for pidfile in pidfiles:
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _scontrol(job: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


def _wait_for(check, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _complete(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads((p.parent / "summary.json").read_text()) for p in runs.glob("*/done")}


def _snapshot(runs: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(runs)): (p.stat().st_mtime_ns, p.read_bytes())
            for d in runs.iterdir() if (d / "done").exists() for p in d.rglob("*") if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_array_requeue_cancel_and_resubmission(slurm, tmp_path, capsys, monkeypatch):
    from tta_bench.cli import build_parser
    from tta_bench.identity import folder
    from tta_bench.launch import attempts
    from tta_bench.launch import slurm as launch
    from tta_bench.sweep import expand

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    runs, site = tmp_path / "runs", tmp_path / "site"
    t0 = time.time()
    assert main(sweep_argv(runs, site)) == 0  # submits the array and the leaderboard job, then returns
    out = capsys.readouterr().out
    aid = out.split("submitted Slurm job ")[1].split()[0]
    lb = out.split("leaderboard job ")[1].split()[0]
    assert "4 to run" in out and _scontrol(lb)["Dependency"].startswith(f"afterany:{aid}")
    parsed = build_parser(sweep_argv(runs, site)).parse_args(sweep_argv(runs, site))
    grid = expand(parsed)  # the array's runs, in task order
    task_run = [folder(c).name for c in grid]
    assert len(grid) == 4 and all(f"task {i} (job {aid}_{i})" in out for i in range(4))

    subprocess.run(["scancel", f"{aid}_3"], check=True)  # pending (2 tasks at a time): cancelled before it runs
    running = _wait_for(lambda: [a for a in attempts.read(runs, task_run[1]) if a["state"] == "running"], "task 1")
    assert running[0]["slurm_job"] == f"{aid}_1"
    # Preempted: SIGUSR2 to the task's process, as Slurm sends it before a time limit or a preemption (by pid:
    # `scancel --signal` retries while the job is requeueing, and its late second signal would requeue it again).
    os.kill(running[0]["pid"], signal.SIGUSR2)  # submitit checkpoints the task and requeues it
    _wait_for(lambda: not launch.queued(aid) and not launch.queued(lb), "the array and the leaderboard job", 600)
    first = time.time() - t0

    done = _complete(runs)
    assert set(done) == set(task_run[:3])  # task 3 was cancelled; the others ran, task 1 after its requeue
    assert int(_scontrol(f"{aid}_1")["Restarts"]) == 1
    tries = attempts.read(runs, task_run[1])
    assert len(tries) == 2 and tries[0]["state"] == "running" and tries[1]["state"] in ("done", "skipped")
    assert tries[1]["slurm_restarts"] == 1 and all(t["slurm_job"] == f"{aid}_1" for t in tries)
    log = (runs / ".slurm" / f"{aid}_1" / f"{aid}_1_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log and "DUE TO JOB REQUEUE" in log  # submitit's and Slurm's accounts
    assert "tta_bench task: done" in (runs / ".slurm" / f"{aid}_0" / f"{aid}_0_0_log.out").read_text()
    assert not attempts.read(runs, task_run[3]) and not list((runs / ".slurm" / f"{aid}_3").glob("*log*"))
    table = (site / "csv" / "runs.csv").read_text().splitlines()
    assert len(table) == 1 + 3  # the dependent job built the leaderboard of the 3 completed runs

    before = _snapshot(runs)
    t1 = time.time()
    assert main(sweep_argv(runs, site, "--slurm-wait")) == 0  # resubmission: only the cancelled run
    out = capsys.readouterr().out
    second = time.time() - t1
    assert "4 run(s) in the grid, 3 already complete, 1 to run" in out and "(1 task(s))" in out
    assert out.count("% error (") == 1 and task_run[3] in out and "leaderboard: 4 completed run(s)" in out
    after = _snapshot(runs)
    assert {k: v for k, v in after.items() if not k.startswith(task_run[3])} == before  # nothing else touched
    assert set(_complete(runs)) == set(task_run)

    assert main(sweep_argv(runs, site, "--slurm-wait")) == 0  # the same command: nothing to submit
    out = capsys.readouterr().out
    assert "4 already complete, 0 to run" in out and "submitted" not in out

    t2 = time.time()
    jobs = launch.submit(grid, {}, False, launch.options(parsed), str(runs))  # the whole array again, by hand
    again = launch.array_id(jobs)
    launch.wait(again)
    third = time.time() - t2
    assert _snapshot(runs) == after  # every task found its run complete: nothing re-run, nothing rewritten
    for i, run_id in enumerate(task_run):
        assert attempts.read(runs, run_id)[-1]["state"] == "skipped"
        assert "already complete" in (runs / ".slurm" / f"{again}_{i}" / f"{again}_{i}_0_log.out").read_text()
    timings = f"array+requeue+leaderboard {first:.0f} s, resubmission {second:.0f} s, whole array again {third:.0f} s"
    print(f"slurm: jobs {aid} (leaderboard {lb}), {again}; {timings}", file=sys.stderr)
