"""The attempt log of a distributed run: `<out>/.sweep-log/<run id>.json` lists every attempt at one run (where: host,
pid, Ray node id, Slurm job id and restart count; when; how it ended), so a requeued or retried run shows each try
and a multi-node sweep shows which node ran what. A hidden folder: the leaderboard never reads it, and it is not part
of any run folder (a run's result does not depend on where it ran)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tta_bench.kernel import read_json, write_json

LOG_DIR = ".sweep-log"


def log_path(out: str | Path, run_id: str) -> Path:
    return Path(out) / LOG_DIR / f"{run_id}.json"


def where() -> dict[str, Any]:
    """This process's place: host and pid, the Slurm job (`<array>_<task>` for an array task) and its restart
    count, the Ray node id when it runs in a Ray worker."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        info["slurm_job"] = f"{job}_{task}"
    elif os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_RESTART_COUNT", "").isdigit():
        info["slurm_restarts"] = int(os.environ["SLURM_RESTART_COUNT"])
    ray = sys.modules.get("ray")  # imported only by a Ray worker (or a driver): never imported here
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        info["ray_node"] = ray.get_runtime_context().get_node_id()
    return info


def _read(path: Path, run_id: str, label: str) -> dict[str, Any]:
    try:
        log = read_json(path, "attempt log")
        if isinstance(log, dict) and isinstance(log.get("attempts"), list):
            return log
    except Exception:  # noqa: BLE001 - a damaged log is started afresh: it records, it never decides anything
        pass
    return {"run_id": run_id, "label": label, "attempts": []}


def begin(out: str | Path, run_id: str, label: str) -> int:
    """Record a new attempt (state `running`); its index for `end`."""
    path = log_path(out, run_id)
    log = _read(path, run_id, label)
    log["attempts"].append({**where(), "started": time.time(), "state": "running"})
    write_json(path, log)
    return len(log["attempts"]) - 1


def end(out: str | Path, run_id: str, label: str, index: int, state: str, seconds: float, error: str | None) -> None:
    """Close attempt `index`: `state` is `done`, `skipped` (found complete) or `failed` (with `error`)."""
    path = log_path(out, run_id)
    log = _read(path, run_id, label)
    while len(log["attempts"]) <= index:  # the log was damaged meanwhile: keep what this attempt knows
        log["attempts"].append({**where(), "state": "running"})
    entry = log["attempts"][index]
    entry.update(state=state, ended=time.time(), seconds=round(seconds, 3))
    if error:
        entry["error"] = error.splitlines()[0][:500]
    write_json(path, log)


def read(out: str | Path, run_id: str) -> list[dict[str, Any]]:
    """The attempts recorded for `run_id` (empty when none)."""
    path = log_path(out, run_id)
    return _read(path, run_id, "")["attempts"] if path.exists() else []
