"""`sweep --executor slurm`: the runs still to do as one Slurm job array, through submitit (no scheduler of ours).

- One array task per run (`SLURM_ARRAY_TASK_ID` i runs the i-th run of the list printed at submission), at most
  `--slurm-array-parallelism` at once, each with `--slurm-time`, `--slurm-cpus-per-task`, `--slurm-gpus-per-task`,
  in `--slurm-partition`, plus any sbatch flags in `--slurm-extra`.
- Resumable: the sweep submits only the runs whose run folder is not complete, and a task whose run is complete by
  the time it starts (a resubmitted array, a requeued task) finds it so and runs nothing (the runner's skip).
- Preempted or timed out: Slurm sends SIGUSR2 `signal_delay` seconds before the end; submitit's handler then calls
  `RunTask.checkpoint` and requeues the task (`scontrol requeue`), at most `--slurm-max-requeues` times for time
  outs. The run restarts whole (a run has no mid-stream checkpoint; its private temporary folder of the killed try
  is removed by the next one, and nothing completed is touched).
- Logs: `<out>/.slurm/<array id>_<task>/` holds each task's stdout/stderr and submitit's pickles;
  `<out>/.sweep-log/<run id>.json` lists every attempt at a run (host, Slurm job, restarts, how it ended).
- The leaderboard: by default the sweep submits and returns, with a leaderboard job that depends on the array
  (`--dependency=afterany:<array id>`: it runs `python -m tta_bench leaderboard` when every task has ended);
  `--slurm-wait` instead waits for the array here, prints each run's outcome, and the CLI builds the leaderboard.
- `--dry-run` prints the sbatch script and the task list; nothing is submitted (no Slurm needed, submitit is).

submitit is optional: `pip install "tta_bench[slurm]"`. Nothing here imports it before a Slurm sweep runs.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError
from tta_bench.kernel.options import check_int

LOGS = ".slurm"  # <out>/.slurm/<job id>/: hidden, so the leaderboard never reads it
MAX_MINUTES = 366 * 24 * 60
# sbatch flags the sweep sets itself: --slurm-extra may not override them (the option to use instead)
MANAGED = {
    "array": "one task per run",
    "output": f"logs in <out>/{LOGS}/",
    "error": f"logs in <out>/{LOGS}/",
    "signal": "the requeue signal",
    "open-mode": "logs appended across requeues",
    "dependency": "the leaderboard job's",
    "partition": "--slurm-partition",
    "p": "--slurm-partition",
    "time": "--slurm-time",
    "t": "--slurm-time",
    "gpus-per-task": "--slurm-gpus-per-task",
    "cpus-per-task": "--slurm-cpus-per-task",
    "c": "--slurm-cpus-per-task",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm (--executor slurm; submitit)")
    g.add_argument("--slurm-partition", default=None, help="partition of the array (default: the cluster's default)")
    g.add_argument(
        "--slurm-time", default="60", help="time limit of each task: minutes, or [D-]HH:MM[:SS] (default 60)"
    )
    g.add_argument("--slurm-gpus-per-task", type=int, default=0, help="GPUs for each task (default 0)")
    g.add_argument("--slurm-cpus-per-task", type=int, default=1, help="CPUs for each task (default 1)")
    g.add_argument("--slurm-array-parallelism", type=int, default=64, help="most tasks running at once (default 64)")
    g.add_argument(
        "--slurm-extra",
        default="",
        metavar="FLAGS",
        help='more sbatch flags, long forms, e.g. --slurm-extra "--account=lab --qos=normal --mem=16G" '
        "(one flag: --slurm-extra=--account=lab)",
    )
    g.add_argument(
        "--slurm-max-requeues", type=int, default=3, help="requeues of a timed-out task before it fails (default 3)"
    )
    g.add_argument(
        "--slurm-wait",
        action="store_true",
        help="wait for the array to end and report each run (default: submit, with a dependent leaderboard job)",
    )


@dataclass
class Options:
    """The checked `--slurm-*` options."""

    minutes: int
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    array_parallelism: int = 64
    max_requeues: int = 3
    extra: dict[str, Any] = field(default_factory=dict)
    wait: bool = False

    @property
    def signal_delay_s(self) -> int:
        """Seconds before the time limit at which SIGUSR2 asks a task to checkpoint and requeue: 2 minutes, less
        for short limits (Slurm may send it up to a minute early, so never near the start)."""
        return max(10, min(120, self.minutes * 60 // 4))


def options(args: argparse.Namespace) -> Options:
    """The `--slurm-*` options of `args`, checked (UserError naming the option)."""
    partition = getattr(args, "slurm_partition", None)
    if partition is not None and not re.fullmatch(r"[\w.,-]+", partition):
        raise UserError(f"--slurm-partition {partition!r} is not a partition name: give e.g. --slurm-partition gpu.")
    return Options(
        minutes=minutes(str(getattr(args, "slurm_time", "60"))),
        partition=partition,
        gpus_per_task=check_int("--slurm-gpus-per-task", getattr(args, "slurm_gpus_per_task", 0), 0, 1024, "GPUs"),
        cpus_per_task=check_int("--slurm-cpus-per-task", getattr(args, "slurm_cpus_per_task", 1), 1, 4096, "CPUs"),
        array_parallelism=check_int(
            "--slurm-array-parallelism", getattr(args, "slurm_array_parallelism", 64), 1, 100_000, "tasks at once"
        ),
        max_requeues=check_int("--slurm-max-requeues", getattr(args, "slurm_max_requeues", 3), 0, 1000, "requeues"),
        extra=extra_flags(getattr(args, "slurm_extra", "") or ""),
        wait=bool(getattr(args, "slurm_wait", False)),
    )


def minutes(text: str) -> int:
    """Slurm's time formats (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) in whole minutes, rounded
    up; UserError naming --slurm-time otherwise."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if m is None:
        raise UserError(
            f"--slurm-time {text!r} is not a Slurm time limit: give minutes (--slurm-time 90) or [D-]HH:MM[:SS] "
            "(--slurm-time 1-12:00:00)."
        )
    days, a, b, c = m.groups()
    if days is not None:
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    else:
        seconds = int(a) * 60 + int(b or 0)
    total = math.ceil(seconds / 60)
    if not 1 <= total <= MAX_MINUTES:
        raise UserError(f"--slurm-time {text!r} is {total} minute(s): give between 1 minute and 366 days.")
    return total


def extra_flags(text: str) -> dict[str, Any]:
    """`--slurm-extra "--account=lab --exclusive --qos high"` -> {"account": "lab", "exclusive": True, "qos": "high"}
    (submitit writes each as an `#SBATCH` line)."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UserError(f"--slurm-extra {text!r} cannot be split into flags ({e}): check its quotes.") from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        key, eq, value = word[2:].partition("=")
        if not word.startswith("--") or not re.fullmatch(r"[A-Za-z][\w-]*", key):
            raise UserError(
                f"--slurm-extra {text!r}: {word!r} is not a long sbatch flag. Give sbatch's long forms, e.g. "
                '--slurm-extra "--account=lab --qos=normal --mem=16G".'
            )
        if not eq and i + 1 < len(words) and not words[i + 1].startswith("-"):  # "--qos high"
            value, eq, i = words[i + 1], "=", i + 1
        if key in MANAGED:
            raise UserError(
                f"--slurm-extra sets --{key}, which the sweep sets itself ({MANAGED[key]}): leave it out of "
                "--slurm-extra" + (f" and use {MANAGED[key]}." if MANAGED[key].startswith("--") else ".")
            )
        out[key] = value if eq else True
        i += 1
    return out


def _parameters(opts: Options, name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for the array."""
    params: dict[str, Any] = {
        "job_name": name,
        "time": opts.minutes,
        "cpus_per_task": opts.cpus_per_task,
        "array_parallelism": opts.array_parallelism,
        "signal_delay_s": opts.signal_delay_s,
        "additional_parameters": dict(opts.extra),
    }
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    return params


def import_submitit():
    try:
        import submitit
    except ImportError as e:
        raise UserError(
            f"--executor slurm needs submitit, which is not installed ({e}). Install the optional extra: "
            'pip install "tta_bench[slurm]" (or use --executor local or ray).'
        ) from None
    return submitit


class RunTask:
    """One array task: `tta_bench.sweep.run_one` on one run, logging where it ran. Checkpointable the way submitit
    expects (a `checkpoint` method): on preemption or time out the task is requeued with the same arguments."""

    def __call__(self, cfg: dict[str, Any], env: dict[str, str], force: bool, threads: int) -> dict[str, Any]:
        from tta_bench.config import RunConfig
        from tta_bench.sweep import label, run_one

        print(f"tta_bench task: {label(RunConfig(**cfg))}", flush=True)
        outcome = run_one(cfg, env, force, threads, log=True)
        state = "already complete" if outcome["skipped"] else "done" if not outcome["error"] else "FAILED"
        print(f"tta_bench task: {state} in {outcome['seconds']:.1f} s -> {outcome['folder']}", flush=True)
        if outcome["error"]:  # the task fails (Slurm state FAILED), with the run's error in its log
            raise RuntimeError(f"run failed: {outcome['label']}: {outcome['error']}")
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The submission to requeue: the same run (it restarts whole; what completed is skipped)."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def leaderboard_command(out: str, site: str) -> list[str]:
    return [sys.executable, "-m", "tta_bench", "leaderboard", "--runs", out, "--out", site]


def dry_run(todo: list, opts: Options, out: str, site: str | None, name: str = "tta_bench-sweep") -> str:
    """The sbatch script of the array and its task list, as text; nothing is submitted."""
    from tta_bench.identity import folder
    from tta_bench.sweep import label

    submitit = import_submitit()
    logs = Path(out) / LOGS / "%j"
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(logs))}"
    params = _parameters(opts, name)
    script = submitit.slurm.slurm._make_sbatch_string(command=command, folder=logs, map_count=len(todo), **params)
    lines = [f"dry run: nothing submitted. The array's sbatch script (written to {Path(out) / LOGS}/):", script]
    lines.append(f"array tasks ({len(todo)}: SLURM_ARRAY_TASK_ID -> run -> run folder):")
    lines += [f"  {i}: {label(c)} -> {folder(c)}" for i, c in enumerate(todo)]
    if site is not None:
        cmd = " ".join(map(shlex.quote, leaderboard_command(out, site)))
        lines.append(f"then a leaderboard job (--dependency=afterany:<array id>, {LEADER_MINUTES} min): {cmd}")
    return "\n".join(lines)


LEADER_MINUTES = 30


def submit(todo: list, env: dict[str, str], force: bool, opts: Options, out: str, name: str = "tta_bench-sweep"):
    """Submit `todo` (resolved RunConfigs) as one array; its submitit jobs (job ids `<array>_<i>`, or one job)."""
    submitit = import_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=Path(out) / LOGS / "%j", max_num_timeout=opts.max_requeues)
    except RuntimeError as e:  # no srun on this machine
        raise UserError(
            f"--executor slurm: this machine cannot submit Slurm jobs ({e}). Run the sweep on a login node of the "
            "cluster, or print the script with --dry-run."
        ) from None
    executor.update_parameters(**_parameters(opts, name))
    threads = opts.cpus_per_task
    cfgs = [asdict(c) for c in todo]
    try:
        return executor.map_array(RunTask(), cfgs, [env] * len(cfgs), [force] * len(cfgs), [threads] * len(cfgs))
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
        why = " ".join(str(e).split())[:1500]
        raise UserError(f"sbatch refused the array: {why}. Check the --slurm-* options.") from None


def submit_leaderboard(after: str, opts: Options, out: str, site: str) -> str:
    """A job running the leaderboard once every task of array `after` has ended (whatever their outcome)."""
    submitit = import_submitit()
    executor = submitit.SlurmExecutor(folder=Path(out) / LOGS / "%j")
    params = {"job_name": "tta_bench-leaderboard", "time": LEADER_MINUTES, "cpus_per_task": 1}
    extra = {k: v for k, v in opts.extra.items() if k in ("account", "qos", "A", "q")}
    executor.update_parameters(
        **params, dependency=f"afterany:{after}", additional_parameters=extra, **_partition(opts)
    )
    job = executor.submit(submitit.helpers.CommandFunction(leaderboard_command(out, site)))
    return job.job_id


def _partition(opts: Options) -> dict[str, str]:
    return {"partition": opts.partition} if opts.partition else {}


def array_id(jobs: list) -> str:
    return str(jobs[0].job_id).split("_")[0]


def queued(job: str) -> list[str]:
    """The tasks of job `job` still in the queue (pending, running, requeued, completing): `squeue -h -r -j`."""
    r = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True)
    if r.returncode != 0:  # "Invalid job id": the job left the controller's memory, so it has ended
        return []
    return [line for line in r.stdout.splitlines() if line.strip()]


def wait(job: str, poll_s: float = 2.0) -> None:
    """Until no task of `job` is queued."""
    while queued(job):
        time.sleep(poll_s)


def outcome(job, cfg) -> dict[str, Any]:
    """What one task gave: the run folder decides (complete or not); the task's result pickle or log says why not."""
    from tta_bench.identity import folder
    from tta_bench.kernel import read_json, safe_unpickle
    from tta_bench.runner import is_complete
    from tta_bench.sweep import Outcome, label

    where = folder(cfg)
    o = Outcome(where.name, label(cfg), str(where), where=f"slurm job {job.job_id}")
    result = Path(job.paths.result_pickle)
    if result.exists():
        try:
            kind, value = safe_unpickle(result, encoding="utf-8")  # plain data only: no code runs from the file
            if kind == "success" and isinstance(value, dict):
                o.seconds, o.skipped = float(value.get("seconds", 0.0)), bool(value.get("skipped", False))
            elif kind == "error":
                o.error = str(value).strip().splitlines()[-1] if str(value).strip() else "failed"
        except Exception as e:  # noqa: BLE001 - a damaged pickle: the run folder still decides
            o.error = f"unreadable task result {result} ({type(e).__name__})"
    if is_complete(where):
        o.mean_error = read_json(where / "summary.json", "summary")["mean_error"]
        o.error = None
    elif o.error is None:
        o.error = f"the task ended without completing its run (cancelled or killed?): see its log {job.paths.stdout}"
    return asdict(o)


def execute(todo: list, env: dict[str, str], args: argparse.Namespace, report, name: str = "sweep") -> None:
    """Submit the array (and, unless waiting or `--no-leaderboard`, the dependent leaderboard job); with
    `--slurm-wait`, wait for it and `report` every run's outcome."""
    opts = options(args)
    out = str(Path(todo[0].out))
    site = None if getattr(args, "no_leaderboard", True) or not getattr(args, "site", None) else args.site
    site = str(Path(site).resolve()) if site else None
    jobs = submit(todo, env, args.force, opts, out, name=f"tta_bench-{name}")
    aid = array_id(jobs)
    print(f"{name}: submitted Slurm job {aid} ({len(jobs)} task(s)); logs under {Path(out) / LOGS}/{aid}_<task>/")
    for i, (j, c) in enumerate(zip(jobs, todo)):
        print(f"  task {i} (job {j.job_id}): {c.method} {c.stream} seed {c.seed}")
    if not opts.wait:
        if site is not None:
            lb = submit_leaderboard(aid, opts, out, site)
            print(f"{name}: leaderboard job {lb} runs when job {aid} has ended (site {site})")
            args.no_leaderboard = True  # the dependent job builds it: the CLI must not build one now
        print(f"{name}: follow it with: squeue -j {aid}; run the same command again to resubmit what did not complete")
        return
    wait(aid)
    for j, c in zip(jobs, todo):
        report(outcome(j, c))
