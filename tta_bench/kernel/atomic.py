"""Folders built aside and swapped in whole: temporary folders with owners and leases, per-id locks, commit,
recovery, and full disks (stdlib only; `tta_bench.rundir` re-exports what the run folders use).

A result is built in a private folder `<out>/.<name>.tmp-<pid>-<random>/` and swapped in by `commit` only when
complete: renamed to `<out>/<name>`, or exchanged atomically with an earlier result (Linux
`renameat2(RENAME_EXCHANGE)`), which is deleted only afterwards; where that call is unavailable the earlier result
is renamed aside to `<out>/.<name>.old-<pid>-<random>/` first, and `recover` brings it back after a crash between
the two renames.

Who may delete a temporary folder. Several hosts or containers may write into one `--out` on a shared file
system (a Slurm or Ray cluster), so a process id alone says nothing: pid 4242 of another host or PID namespace is
not ours to look up. Each temporary folder holds `.owner.json` (host name, boot id from
/proc/sys/kernel/random/boot_id, PID namespace from /proc/self/ns/pid, pid and the process's start time) whose
mtime the writer refreshes every `lease/6` seconds while it runs (a daemon thread; the lease is
`$TTA_BENCH_LEASE_S`, default 300 s). A folder is abandoned, and may be removed, when

- its owner is on this machine and in this PID namespace (same host, boot id and namespace) and that process is
  gone (or the pid now names a process started at another time), or
- otherwise (another host or namespace, or no readable owner record), when nothing in it was touched for longer
  than the lease: the owner file's and the folder's mtime and ctime. Hosts' clocks must agree to well within
  the lease (NTP does); a writer suspended for longer than the lease (SIGSTOP, a suspended Slurm job) may lose
  its folder, which `commit` then reports instead of completing anything.

Locks. `run_lock` takes `fcntl.flock` on `<out>/.<name>.lock`. Local file systems honour it, and so does NFS
(Linux emulates flock with NFS byte-range locks, visible to every client). Where the file system refuses it
(ENOLCK, EOPNOTSUPP: e.g. NFS mounted `nolock`, some FUSE file systems) the run goes on unlocked with a note: two
identical runs may then both compute, and the one that finishes last is kept; leases still keep each one's
temporary folder safe from the other, so nothing completed is lost. (A file system that grants flock only
locally, such as Lustre mounted `localflock`, behaves the same way without the note.)

Full disks. A write that fails with ENOSPC, EDQUOT or EROFS removes its temporaries and raises `NoSpace`, a
UserError naming the folder and about how much space the write needs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tta_bench.kernel.errors import UserError
from tta_bench.kernel.files import NO_SPACE_ERRNOS, NoSpace, folder_bytes, no_space, write_atomic

OWNER = ".owner.json"
LEASE_ENV = "TTA_BENCH_LEASE_S"
DEFAULT_LEASE_S = 300.0
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


# --- write steps (crash and concurrency tests hook in here) -----------------------------------------------------
_STEPS = {"count": 0}
_STEP_HOOKS: list[Callable[[int], None]] = []


def kill_point() -> None:
    """Count a write step and call the installed step hooks with its number (none in production).

    Crash and concurrency tests install a hook (`add_step_hook`) that kills the process at step N or holds it while
    a file exists (tests/crash_hooks.py); production code reads no test switch of its own."""
    _STEPS["count"] += 1
    for hook in tuple(_STEP_HOOKS):
        hook(_STEPS["count"])


def add_step_hook(hook: Callable[[int], None]) -> None:
    """Call `hook(step number)` at every write step from now on (steps counted from `reset_steps()`)."""
    _STEP_HOOKS.append(hook)


def reset_steps() -> None:
    """Restart the write-step count at 0 and remove every hook."""
    _STEPS["count"] = 0
    _STEP_HOOKS.clear()


# --- owners and leases -------------------------------------------------------------------------------------------
def lease_seconds() -> float:
    """How long a temporary folder of another host or namespace stays untouched before it counts as abandoned."""
    try:
        return max(0.1, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S)))
    except ValueError:
        return DEFAULT_LEASE_S


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Start time of process `pid` (clock ticks after boot, /proc/<pid>/stat field 22), None if unknown."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def machine() -> dict[str, str]:
    """Where this process runs: host name, boot id and PID namespace (pids compare only when all three agree)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pidns": ns}


def owner_record() -> dict[str, Any]:
    """This process as the owner of a temporary folder (written to its `.owner.json`)."""
    pid = os.getpid()
    return {**machine(), "pid": pid, "start": _start_ticks(pid), "lease_s": lease_seconds()}


def _same_machine(rec: dict[str, Any]) -> bool:
    here = machine()
    return bool(here["boot_id"] and here["pidns"]) and all(rec.get(k) == v for k, v in here.items())


def _running(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _start_ticks(pid) in (None, start)  # the pid names the same process, not a reused one


def _touched(paths: list[Path]) -> float:
    """The latest mtime or ctime of `paths` (0 when none can be stat'ed)."""
    latest = 0.0
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        latest = max(latest, st.st_mtime, st.st_ctime)
    return latest


def is_live(folder: Path) -> bool:
    """Whether the writer of temporary folder `folder` may still be at work (see the module docstring)."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        rec = None
    rec = rec if isinstance(rec, dict) else None
    if rec is not None and _same_machine(rec):
        return _running(rec.get("pid"), rec.get("start"))
    lease = lease_seconds()
    if rec is not None and isinstance(rec.get("lease_s"), (int, float)):
        lease = max(lease, float(rec["lease_s"]))  # the writer's own promise, when longer than ours
    return time.time() - _touched([folder, folder / OWNER]) < lease


class _Heartbeat:
    """One daemon thread per process refreshing the owner files of this process's temporary folders."""

    def __init__(self) -> None:
        self.folders: set[Path] = set()
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.wake = threading.Event()

    def add(self, folder: Path) -> None:
        with self.lock:
            if self.pid != os.getpid():  # first use, or a forked child: the parent's thread does not run here
                self.folders, self.pid = set(), os.getpid()
                threading.Thread(target=self._loop, name="tta-bench-lease", daemon=True).start()
            self.folders.add(Path(folder))
        self.wake.set()  # the loop re-reads the lease (it may have changed) and touches the new folder now

    def discard(self, folder: Path) -> None:
        with self.lock:
            self.folders.discard(Path(folder))

    def _loop(self) -> None:
        me = os.getpid()
        while self.pid == me:
            self.wake.wait(lease_seconds() / 6)
            self.wake.clear()
            with self.lock:
                folders = list(self.folders)
            for f in folders:
                try:
                    os.utime(f / OWNER)
                except OSError:
                    self.discard(f)  # removed (committed, abandoned, or taken by another process)


_HEARTBEAT = _Heartbeat()


def _after_fork() -> None:  # a child never inherits a held lock or its parent's folders
    _HEARTBEAT.lock, _HEARTBEAT.folders, _HEARTBEAT.pid = threading.Lock(), set(), None
    _HEARTBEAT.wake = threading.Event()


os.register_at_fork(after_in_child=_after_fork)


def _claim(folder: Path) -> None:
    """Write this process's owner record into `folder` and keep its lease fresh until the folder is gone."""
    write_atomic(folder / OWNER, json.dumps(owner_record()) + "\n")
    _HEARTBEAT.add(folder)


def _release(folder: Path) -> None:
    _HEARTBEAT.discard(folder)
    try:
        (folder / OWNER).unlink()
    except OSError:
        pass


def make_temp(out: Path, name: str, hint: str = "") -> Path:
    """A new private folder `<out>/.<name>.tmp-<pid>-<random>/` owned by this process (`.owner.json`, lease kept
    fresh). A full or read-only disk is a NoSpace naming `out` (`hint`: the option that chose it) and the size of
    an earlier `<out>/<name>` as the estimate; nothing is left behind."""
    out = Path(out)
    path = out / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True)
        _claim(path)
    except (OSError, NoSpace) as e:
        shutil.rmtree(path, ignore_errors=True)
        need = folder_bytes(out / name) + (64 << 10)
        if isinstance(e, NoSpace):
            raise NoSpace(e.err, out, need, f"{name}/", hint) from None
        if e.errno in NO_SPACE_ERRNOS:
            raise no_space(e, out, need, f"{name}/", hint) from None
        raise
    return path


def leftovers(out: Path, name: str, kind: str) -> list[Path]:
    """`<out>/.<name>.<kind>-*` (kind: tmp or old), sorted."""
    return sorted(Path(out).glob(f".{name}.{kind}-*"))


def abandoned(paths: list[Path]) -> list[Path]:
    """The folders among `paths` whose writer is gone (`is_live` False)."""
    return [p for p in paths if p.is_dir() and not is_live(p)]


# --- locks ---------------------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def lock(
    out: Path, name: str, on_wait: Callable[[], None] | None = None, note: Callable[[str], None] = _say
) -> Iterator[bool]:
    """Hold the exclusive lock `<out>/.<name>.lock` (waits while another process holds it). Yields True when locked,
    False when the file system refuses flock (then `note` says so, and the caller goes on unlocked)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise no_space(e, out, 1 << 20, "a lock file") from None
        raise UserError(f"Cannot write run folders under --out {out} ({e.strerror}). Pass a writable --out.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        locked = True
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            os.close(fd)
            raise
        locked = False
        note(
            f"note: the file system of {out} refuses file locks ({e.strerror}); going on unlocked: an identical run "
            "started elsewhere at the same time may compute it too (the last to finish is kept; nothing is lost)."
        )
    try:
        yield locked
    finally:
        os.close(fd)  # releases the lock


# --- commit and recovery ---------------------------------------------------------------------------------------
def recover(out: Path, name: str, complete: Callable[[Path], bool]) -> Path | None:
    """The complete folder `<out>/<name>`, or an abandoned old one set aside by an interrupted commit (moved back)."""
    final = Path(out) / name
    if complete(final):
        return final
    for old in abandoned(leftovers(out, name, "old")):
        if complete(old):
            if final.exists():
                shutil.rmtree(final)  # an incomplete folder (never written by commit): the old result wins
            try:
                os.rename(old, final)
            except OSError:
                continue  # taken meanwhile by another process's recovery
            _release(final)
            return final
    return None


def find_complete(out: Path, name: str, complete: Callable[[Path], bool]) -> Path | None:
    """Where a complete `<out>/<name>` is, without changing anything (the folder, or an old one set aside)."""
    final = Path(out) / name
    if complete(final):
        return final
    return next((p for p in leftovers(out, name, "old") if complete(p)), None)


def clean_stale(out: Path, name: str, complete: Callable[[Path], bool]) -> list[Path]:
    """Recover an aside result of `name`, then remove the abandoned temporary and old folders of any name under
    `out` (a live writer's folder, on this or another host, is kept). Returns what was removed."""
    recover(out, name, complete)
    removed = abandoned(leftovers(out, name, "old") + sorted(Path(out).glob(".*.tmp-*-*")))
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    if err == errno.ENOENT and not b.exists():
        return False  # `b` went away meanwhile (another commit's aside): the caller renames instead
    raise OSError(err, f"renameat2({a}, {b}): {os.strerror(err)}")


def _check_owned(tmp: Path) -> None:
    """A UserError when `tmp` is not this process's temporary folder any more (removed by another process)."""
    try:
        rec = json.loads((tmp / OWNER).read_text())
    except (OSError, ValueError):
        rec = None
    if not isinstance(rec, dict) or rec.get("pid") != os.getpid() or not _same_machine(rec):
        raise UserError(
            f"The temporary folder {tmp} was removed by another process while this one was writing it (its lease of "
            f"{lease_seconds():.0f} s ran out: a host clock far off, a process suspended for longer, or a clean-up by "
            f"hand; ${LEASE_ENV} sets the lease). Nothing was committed and earlier results are unchanged: run again."
        )


def commit(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` the folder `final`; an earlier `final` is replaced only now, then deleted."""
    tmp, final = Path(tmp), Path(final)
    kill_point()
    _check_owned(tmp)
    for _ in range(20):  # another host may commit the same name at the same moment (unlocked file systems)
        if not final.exists():
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    continue  # committed meanwhile by someone else: exchange with it
                raise
            _release(final)
            return
        try:  # the old result, once swapped out, is ours to delete (best effort: without it the lease decides)
            write_atomic(final / OWNER, json.dumps(owner_record()) + "\n")
        except (OSError, UserError):
            pass
        if _exchange(tmp, final):  # final: new result; tmp: the old one
            _release(final)
            kill_point()
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if not final.exists():
            continue
        aside = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            continue
        kill_point()
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(aside, ignore_errors=True)  # a newer result arrived meanwhile; exchange ours with it
            continue
        _release(final)
        kill_point()
        shutil.rmtree(aside, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"could not commit {tmp} as {final}: it kept changing under concurrent commits")


def replace_tree(build: Callable[[Path], Any], out: Path) -> Any:
    """Call `build(tmp)` on a new folder beside `out`, then swap it in as `out` (old one deleted after the swap).

    Entries of an existing `out` that `build` did not write are carried over, so only the builder's own files are
    replaced. A crash during `build` leaves `out` untouched; a full or read-only disk is a NoSpace naming the folder
    and the space the new tree needs (its size so far, or the previous tree's), with `out` untouched.
    """
    out = Path(out)
    for stale in abandoned(leftovers(out.parent, out.name, "tmp") + leftovers(out.parent, out.name, "old")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
    tmp = make_temp(out.parent, out.name)
    try:
        result = build(tmp)
        if out.is_dir():
            for entry in out.iterdir():
                ours = entry.name == OWNER or entry.name.startswith(f".{out.name}.")
                if not ours and not (tmp / entry.name).exists():
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        commit(tmp, out)
    except BaseException as e:
        full = isinstance(e, NoSpace) or (isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS)
        need = max(folder_bytes(tmp), folder_bytes(out)) + (64 << 10) if full else 0  # so far, or the previous tree
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, NoSpace):
            raise e.regarding(out.parent, need) from None
        if full:
            raise no_space(e, out.parent, need, f"{out.name}/") from None  # type: ignore[arg-type]
        raise
    return result
