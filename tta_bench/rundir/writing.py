"""Writing a run folder: build aside, lock, swap (the machinery is `tta_bench.kernel.atomic`'s, also used for the
leaderboard site; this module names it for run folders)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tta_bench.kernel import atomic, write_atomic, write_json
from tta_bench.rundir.schema import is_complete, is_run_id

kill_point, commit, replace_tree, is_live = atomic.kill_point, atomic.commit, atomic.replace_tree, atomic.is_live


def write_file(path: Path, data: str | bytes) -> None:
    """Atomic write of one run file (a kill point before it)."""
    kill_point()
    write_atomic(path, data)


def write_json_file(path: Path, obj: Any) -> None:
    """Atomic strict-JSON write of one run file (NaN/inf -> null; a kill point before it)."""
    kill_point()
    write_json(path, obj)


def temp_folder(out: Path, run_id: str) -> Path:
    """A new private folder `<out>/.<run id>.tmp-<pid>-<random>/` to build a run in (owned by this process, its lease
    kept fresh while it runs: `tta_bench.kernel.atomic`)."""
    assert is_run_id(run_id), run_id
    return atomic.make_temp(out, run_id, hint="--out")


def run_lock(out: Path, run_id: str, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[bool]:
    """Hold the exclusive lock of `run_id` under `out` (waits while another process holds it; goes on unlocked, with a
    note, where the file system refuses locks)."""
    assert is_run_id(run_id), run_id
    return atomic.lock(out, run_id, on_wait)


def recover(out: Path, run_id: str) -> Path | None:
    """The complete folder of `run_id`: `<out>/<id>`, or an old one set aside by an interrupted commit (moved back)."""
    return atomic.recover(out, run_id, is_complete)


def find_complete(out: Path, run_id: str) -> Path | None:
    """Where a complete result of `run_id` is, without changing anything (`<out>/<id>` or an old aside)."""
    return atomic.find_complete(out, run_id, is_complete)


def clean_stale(out: Path, run_id: str) -> list[Path]:
    """Under `run_lock(out, run_id)`: recover an aside result, then remove the temporary and old folders under `out`
    whose writer is gone (`atomic.is_live`: a live writer's folder, on this or another host, is kept)."""
    return atomic.clean_stale(out, run_id, is_complete)
