"""`python -m tta_bench sweep`: run a grid of configs (locally, as Ray tasks or as a Slurm job array); the CLI then
regenerates the leaderboard (`tta_bench.cli`: the harness never imports the leaderboard).

The grid is streams × models × methods × seeds, each with the shared run options. Every config is
resolved first (names and options checked before anything runs), and its run folder is named by the hash
of the resolved config (`identity.folder(run)`), so completed runs are skipped and an interrupted sweep
resumes where it stopped (DomainBed's sweep style). Executors:

- `local` (default): one run after another in this process, or `--processes N` worker processes;
- `ray`: one Ray task per run on a local Ray instance, or an existing cluster (`--ray-address`), with
  `num_gpus=--gpus-per-run` when the cluster has GPUs and the run's device is not `cpu`. Ray is optional:
  `pip install "tta_bench[distributed]"`. On a multi-machine cluster `--out` must be a shared folder. A task that
  fails (its node died) is reported as a failed run, and the same command again runs what is missing.
- `slurm`: one Slurm job array through submitit (`tta_bench.launch.slurm`: `--slurm-*` options, requeue on
  preemption, a dependent leaderboard job; `pip install "tta_bench[slurm]"`).

Ray and Slurm attempts are logged in `<out>/.sweep-log/<run id>.json` (host, Ray node, Slurm job: which ran what).
`--dry-run` prints what would run (and, for Slurm, the sbatch script) without running anything.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tta_bench.cli_options import add_run_arguments, config_kwargs
from tta_bench.config import RunConfig, check_device, check_run_paths
from tta_bench.kernel import UserError
from tta_bench.kernel.options import MAX_SEED, MAX_WORKERS, check_float, check_int, check_path

ENV_VARS = ("TTA_BENCH_DATA", "TTA_BENCH_WEIGHTS", "TTA_BENCH_CACHE")  # forwarded to worker processes / tasks


def _names(values: Iterable[str]) -> list[str]:
    """`["a,b", "c"]` -> `["a", "b", "c"]`: lists may be given space- or comma-separated."""
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", required=True, help="adapter names (space- or comma-separated)")
    p.add_argument("--streams", nargs="+", required=True, help="stream names")
    p.add_argument("--models", nargs="+", default=None, help="model names (default: each stream's default model)")
    p.add_argument("--seeds", nargs="+", default=["0"], help="random seeds (default 0)")
    add_run_arguments(p, many=True)
    p.add_argument("--grid", action="append", default=[], metavar="method.KEY=V1,V2",
                   help="model selection: also run every point of this grid over a method option (repeatable: the "
                   "product of the lists; the default point joins it); see --select")  # fmt: skip
    p.add_argument("--select", nargs="+", default=None, metavar="CRITERION",
                   help="model selection over the --grid points: oracle (uses test labels), last, entropy, im, source "
                   "or all; writes <out>/selection/ (tta_bench/selection.py)")  # fmt: skip
    add_executor_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the runs (and Slurm's sbatch script); run nothing")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """The executor options of every command that runs a grid through `execute` (sweep, reproduce)."""
    p.add_argument("--executor", default="local", choices=["local", "ray", "slurm"], help="local (default), ray, slurm")
    p.add_argument("--processes", type=int, default=1, help="local executor: parallel worker processes (default 1)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster address (default: start a local one)")
    p.add_argument("--gpus-per-run", type=float, default=1.0, help="Ray: GPUs per run when GPUs exist (default 1)")
    from tta_bench.launch.slurm import add_arguments as slurm_arguments  # stdlib only: no submitit import

    slurm_arguments(p)


def expand(args: argparse.Namespace) -> list[RunConfig]:
    """The grid as resolved runs (every default filled in, so `identity.folder(run)` is the runner's folder)."""
    from tta_bench.identity import resolve, run_id

    try:
        seeds = [int(s) for s in _names(args.seeds)]
    except ValueError as e:
        raise UserError(f"--seeds takes integers, e.g. --seeds 0 1 2 ({e}).") from None
    for flag, values, example in (
        ("--methods", args.methods, "tent"),
        ("--streams", args.streams, "digits-c"),
        ("--seeds", args.seeds, "0 1 2"),
        *([("--models", args.models, "small-cnn")] if args.models is not None else []),
    ):
        if not _names(values):
            raise UserError(f"{flag} names nothing ({' '.join(values)!r}): give at least one, e.g. {flag} {example}.")
    check_int("--processes", args.processes, 1, MAX_WORKERS, "local worker processes")
    check_float("--gpus-per-run", args.gpus_per_run, 0.0, 1024.0, "GPUs each Ray task reserves")
    for sd in seeds:
        check_int("--seeds", sd, 0, MAX_SEED, "random seeds, each a signed 64-bit integer")
    kwargs = config_kwargs(args)
    check_path(kwargs["out"], "--out", empty="Pass a folder for the run folders, or leave --out out for runs/.")
    if kwargs["data_dir"] is not None:
        check_path(kwargs["data_dir"], "--data-dir", empty="Pass the datasets folder, or leave --data-dir out.")
    kwargs["out"] = str(Path(kwargs["out"]).resolve())  # workers may run elsewhere: no relative paths
    if kwargs["data_dir"]:
        kwargs["data_dir"] = str(Path(kwargs["data_dir"]).resolve())
    models = _names(args.models) if args.models else [None]
    grid = itertools.product(_names(args.streams), models, _names(args.methods), seeds)
    configs = [RunConfig(method=m, stream=s, model=mo, seed=sd, **kwargs) for s, mo, m, sd in grid]
    if configs:  # the device and folders every run shares, checked before anything runs (each run checks them too)
        check_device(configs[0].device)
        check_run_paths(configs[0])
    resolved = [resolve(c) for c in configs]
    resolved += grid_configs(configs, getattr(args, "grid", []), kwargs["method_opts"])
    return list({run_id(c): c for c in resolved}.values())  # the same run listed twice runs once


def grid_configs(base: list[RunConfig], items: list[str], given: dict[str, Any]) -> list[RunConfig]:
    """The resolved runs of `--grid` (tta_bench.selection): every grid point of each base run's method options
    (the base runs, with the default options, are the grid's default point)."""
    from dataclasses import replace

    from tta_bench.identity import resolve
    from tta_bench.selection import parse_grid, points

    grid = parse_grid(items)
    both = sorted(set(grid) & set(given))
    if both:
        raise UserError(
            f"--grid and --set both give method.{both[0]}: the grid lists the values the selection chooses among, "
            "so drop the --set option (or drop the option from --grid)."
        )
    return [resolve(replace(cfg, method_opts={**given, **point})) for cfg in base for point in points(grid)]


def selection_table(configs: list[RunConfig], args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--select`: the selection table of the grid's complete runs, written to `<out>/selection/` and printed.
    The default point of each (benchmark, method) is the run without grid options (its resolved values)."""
    from tta_bench import selection
    from tta_bench.identity import folder, resolve, run_id
    from tta_bench.runner import is_complete

    names = selection.criteria(args.select)
    keys = list(selection.parse_grid(getattr(args, "grid", [])))
    kwargs = config_kwargs(args)
    kwargs["out"] = configs[0].out if configs else kwargs["out"]
    kwargs["data_dir"] = configs[0].data_dir if configs else kwargs["data_dir"]
    defaults: dict[tuple[str, str], dict[str, Any]] = {}
    default_ids = set()
    for cfg in configs:
        base = resolve(RunConfig(**{**asdict(cfg), "method_opts": kwargs["method_opts"]}))
        default_ids.add(run_id(base))
        defaults[(f"{base.stream}/{base.model}/{base.setting}", base.method)] = {
            k: base.method_opts.get(k) for k in keys
        }
    rows = [selection.run_row(folder(c), keys) for c in configs if is_complete(folder(c))]
    table = selection.select(rows, defaults, names)
    if table:
        paths = selection.write(Path(configs[0].out), table)
        print(f"model selection ({', '.join(names)}): {len(table)} row(s) -> {paths[-1].parent}")
        print(selection.format_table(table))
    else:
        print("model selection: no complete run of the grid to select from")
    return table


@dataclass
class Outcome:
    """What one run returned to the sweep."""

    run_id: str
    label: str
    folder: str
    mean_error: float | None = None
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False  # the run folder was complete when the run started (nothing ran)
    where: str = ""  # where it ran, when not in this process (a Ray node, a Slurm job)


def label(cfg: RunConfig) -> str:
    return f"{cfg.method} on {cfg.stream} ({cfg.model}, {cfg.setting}, seed {cfg.seed})"


def run_one(
    cfg_dict: dict[str, Any], env: dict[str, str], force: bool = False, threads: int = 0, log: bool = False
) -> dict[str, Any]:
    """Run one config (in whatever process, Ray worker or Slurm task calls this); never raises, reports the error.
    `threads` > 0 caps torch's CPU threads (parallel workers would otherwise oversubscribe the cores); `log` records
    the attempt in `<out>/.sweep-log/<run id>.json` (`tta_bench.launch.attempts`: host, Ray node, Slurm job)."""
    os.environ.update(env)
    import torch

    from tta_bench.identity import folder, resolve
    from tta_bench.runner import run

    if threads > 0:
        torch.set_num_threads(threads)

    cfg = resolve(RunConfig(**cfg_dict))  # resolved in expand (a dict in this process): run(cfg) does not again
    t0 = time.perf_counter()
    where = folder(cfg)
    out = Outcome(where.name, label(cfg), str(where))
    if log:
        from tta_bench.launch import attempts

        here = attempts.where()
        out.where = f"ray node {here['ray_node']}" if "ray_node" in here else f"slurm job {here.get('slurm_job', '?')}"
        attempt = attempts.begin(cfg.out, where.name, out.label)
    try:
        result = run(cfg, force=force, quiet=True)
        out.mean_error, out.skipped = result.summary["mean_error"], bool(result.skipped)
    except UserError as e:  # bad input or data: its one paragraph says what to fix (a traceback would hide it)
        out.error = "error: " + " ".join(str(e).split())
    except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
        out.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    out.seconds = time.perf_counter() - t0
    if log:
        state = "failed" if out.error else "skipped" if out.skipped else "done"
        attempts.end(cfg.out, where.name, out.label, attempt, state, out.seconds, out.error)
    return asdict(out)


def run_local(todo: list[RunConfig], env: dict[str, str], processes: int, force: bool, report: Callable) -> None:
    if processes <= 1:
        for cfg in todo:
            report(run_one(asdict(cfg), env, force))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: fresh interpreters (no forked torch/CUDA state)
    ctx, parent = mp.get_context("spawn"), os.getpid()
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=die_with_parent, initargs=(parent,)) as pool:
        threads = max(1, (os.cpu_count() or 1) // processes)
        futures = [pool.submit(run_one, asdict(cfg), env, force, threads) for cfg in todo]
        for f in as_completed(futures):
            report(f.result())


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the sweep process dies (even by SIGKILL), never orphan it.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread
    polls the parent pid once a second.
    """
    import ctypes
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise UserError(
            f"--executor ray needs Ray, which is not installed ({e}). Install the optional extra: "
            'pip install "tta_bench[distributed]" (or use --executor local).'
        ) from None
    return ray


def run_ray(todo: list[RunConfig], env: dict[str, str], args: argparse.Namespace, force: bool, report) -> None:
    """One Ray task per run; uses the already initialised Ray, else starts/joins one (`--ray-address`)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    task = ray.remote(run_one)
    pending, of = [], {}
    for cfg in todo:
        gpus = args.gpus_per_run if has_gpus and cfg.device != "cpu" else 0
        ref = task.options(num_cpus=1, num_gpus=gpus).remote(asdict(cfg), env, force, 0, True)
        pending.append(ref)
        of[ref] = cfg
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            report(ray.get(ready[0]))
        except ray.exceptions.RayError as e:  # the task's node or worker died (run_one itself never raises)
            from tta_bench.identity import folder

            cfg = of[ready[0]]
            why = " ".join(str(e).split())[:500]
            report(asdict(Outcome(folder(cfg).name, label(cfg), str(folder(cfg)), error=f"{type(e).__name__}: {why}")))


def execute(configs: list[RunConfig], args: argparse.Namespace, name: str = "sweep") -> list[dict[str, Any]]:
    """Run the configs whose run folder is not complete (all of them with `--force`) with the chosen executor
    (`--executor local|ray`, `--processes`), printing one line per finished run; the failed runs' outcomes.
    `name` prefixes the lines (`sweep`, `reproduce`)."""
    from tta_bench.identity import folder
    from tta_bench.runner import is_complete

    todo = [c for c in configs if args.force or not is_complete(folder(c))]
    print(f"{name}: {len(configs)} run(s) in the grid, {len(configs) - len(todo)} already complete, {len(todo)} to run")
    executor = getattr(args, "executor", "local")
    if executor == "slurm":
        from tta_bench.launch import slurm

        slurm.options(args)  # fail before anything runs
    if getattr(args, "dry_run", False):
        return dry_run(todo, args, name)
    if todo and executor == "ray":
        import_ray()  # fail before anything runs
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    done: list[dict[str, Any]] = []

    def report(o: dict[str, Any]) -> None:
        done.append(o)
        status = f"FAILED {o['error'].splitlines()[0]}" if o["error"] else f"{o['mean_error']:.2f} % error"
        status += " (already complete)" if o.get("skipped") else ""
        at = f" on {o['where']}" if o.get("where") else ""
        line = f"[{len(done)}/{len(todo)}] {o['label']}: {status} ({o['seconds']:.1f} s{at}) -> {o['folder']}"
        print(line, flush=True)

    if todo and executor == "slurm":
        slurm.execute(todo, env, args, report, name)
    elif todo and executor == "ray":
        run_ray(todo, env, args, args.force, report)
    elif todo:
        run_local(todo, env, args.processes, args.force, report)
    failed = [o for o in done if o["error"]]
    for o in failed:
        print(f"\nrun failed: {o['label']} ({o['folder']})\n{o['error']}")
    if failed:
        again = f"run the same {name} command again to retry them"
        print(f"{name}: {len(failed)} of {len(todo)} run(s) failed (see above); {again}")
    return failed


def dry_run(todo: list[RunConfig], args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """`--dry-run`: print the runs that would run (for Slurm, the array's sbatch script and task list)."""
    from tta_bench.identity import folder

    if getattr(args, "executor", "local") == "slurm" and todo:
        from tta_bench.launch import slurm

        site = None if getattr(args, "no_leaderboard", True) else getattr(args, "site", None)
        site = str(Path(site).resolve()) if site else None
        print(slurm.dry_run(todo, slurm.options(args), str(Path(todo[0].out)), site, name=f"tta_bench-{name}"))
    else:
        print(f"dry run: nothing run. {len(todo)} run(s) to run:")
        for cfg in todo:
            print(f"  {label(cfg)} -> {folder(cfg)}")
    if hasattr(args, "no_leaderboard"):
        args.no_leaderboard = True  # nothing ran: the CLI builds no leaderboard either
    return []


def main(args: argparse.Namespace) -> int:
    if getattr(args, "select", None) and not getattr(args, "grid", None):
        raise UserError("--select chooses among the points of a grid: give one, e.g. --grid method.lr=1e-3,1e-4.")
    if getattr(args, "select", None):
        from tta_bench.selection import criteria

        criteria(args.select)  # a bad criterion fails before anything runs
    configs = expand(args)
    failed = execute(configs, args)
    if getattr(args, "select", None) and not getattr(args, "dry_run", False):
        selection_table(configs, args)
    return 1 if failed else 0
