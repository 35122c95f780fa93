"""Full disks (issue #25): `--force` on a full `--out`, a full cache and a full leaderboard target each end in one
paragraph naming the folder and about how much space is needed (exit 2, no traceback); the earlier result and the
previous site stay byte for byte, and no temporary file or folder is left behind. Also a read-only file system.

Real small file systems (`mount -t tmpfs -o size=...`, as root; skipped with the reason otherwise) and, everywhere,
a monkeypatched `os.fsync` raising ENOSPC.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tta_bench import rundir
from tta_bench.cli import main
from tta_bench.config import RunConfig
from tta_bench.kernel import NoSpace, write_atomic
from tta_bench.runner import run

RUN = ["run", "--method", "source", "--stream", "digits-c", "--limit", "8", "--batch-size", "8", "--quiet"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hidden(root: Path) -> list[str]:
    """Temporary files and folders (a lock file is not one: it is kept, empty, by design)."""
    return [str(p) for p in root.rglob(".*") if not p.name.endswith(".lock")]


def _fill(folder: Path) -> None:
    """Fill the file system of `folder` up to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 4096, 64, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def tiny_fs(tmp_path):
    """mount(size) -> a folder on a fresh tmpfs of that size (root only; unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _one_paragraph_error(err: str, folder: Path, size: bool = True) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert str(folder) in lines[0] and ("about" in lines[0] or not size), lines[0]
    return lines[0]


def test_force_on_a_full_out_keeps_the_result(tmp_path, tiny_fs, capfd):
    out = tiny_fs("600k")
    assert main([*RUN, "--out", str(out)]) == 0
    (folder,) = [p for p in out.iterdir() if rundir.is_run_id(p.name)]
    before = _snapshot(folder)
    _fill(out)
    capfd.readouterr()
    assert main([*RUN, "--out", str(out), "--force"]) == 2
    line = _one_paragraph_error(capfd.readouterr().err, out)
    assert "No space is left" in line and "(--out)" in line and "intact" in line
    assert _snapshot(folder) == before and _hidden(out) == []
    (out / "filler").unlink()  # with space again, the same command completes
    assert main([*RUN, "--out", str(out), "--force"]) == 0 and _hidden(out) == []


def test_full_cache_names_the_cache(tmp_path, tiny_fs, capfd, monkeypatch):
    cache = tiny_fs("200k")
    monkeypatch.setenv("TTA_BENCH_CACHE", str(cache))
    _fill(cache)
    capfd.readouterr()
    args = [*RUN, "--model", "small-cnn", "--set", "model.source_epochs=0", "--out", str(tmp_path / "runs")]
    assert main(args) == 2
    line = _one_paragraph_error(capfd.readouterr().err, cache / "models")
    assert "$TTA_BENCH_CACHE" in line
    assert _hidden(cache) == [] and not list((tmp_path / "runs").glob("*/done"))
    assert _hidden(tmp_path / "runs") == []


def test_full_leaderboard_target_keeps_the_previous_site(tmp_path, tiny_fs, capfd):
    runs = tmp_path / "runs"
    assert main([*RUN, "--out", str(runs)]) == 0
    target = tiny_fs("4m")
    site = target / "site"
    assert main(["leaderboard", "--runs", str(runs), "--out", str(site)]) == 0
    before = _snapshot(site)
    _fill(target)
    capfd.readouterr()
    assert main(["leaderboard", "--runs", str(runs), "--out", str(site)]) == 2
    line = _one_paragraph_error(capfd.readouterr().err, target)
    assert "No space is left" in line
    assert _snapshot(site) == before and _hidden(target) == []


def test_read_only_out(tmp_path, tiny_fs, capfd):
    out = tiny_fs("600k")
    assert main([*RUN, "--out", str(out)]) == 0
    (folder,) = [p for p in out.iterdir() if rundir.is_run_id(p.name)]
    before = _snapshot(folder)
    if subprocess.run(["mount", "-o", "remount,ro", str(out)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only")
    capfd.readouterr()
    assert main([*RUN, "--out", str(out), "--force"]) == 2
    line = _one_paragraph_error(capfd.readouterr().err, out, size=False)  # the CLI's check of --out, up front
    assert "not writable" in line
    assert _snapshot(folder) == before


# --- everywhere (no root): ENOSPC raised by fsync -----------------------------------------------------------------
def test_enospc_from_the_system_call_everywhere(tmp_path, monkeypatch):
    cfg = RunConfig(method="source", stream="digits-c", limit=8, batch_size=8, out=str(tmp_path / "runs"))
    first = run(cfg, quiet=True)
    before = _snapshot(first.folder)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(NoSpace) as e:
        run(cfg, quiet=True, force=True)
    assert e.value.folder == tmp_path / "runs" and "(--out)" in str(e.value) and e.value.need > 0
    assert _snapshot(first.folder) == before and _hidden(tmp_path / "runs") == []
    for err, said in ((errno.ENOSPC, "No space is left"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")):
        monkeypatch.setattr(os, "fsync", lambda fd, err=err: (_ for _ in ()).throw(OSError(err, os.strerror(err))))
        with pytest.raises(NoSpace, match=said) as e:
            write_atomic(tmp_path / "x" / "f.txt", "hello")
        assert e.value.folder == tmp_path / "x" and "f.txt" in str(e.value)
        assert sorted(os.listdir(tmp_path / "x")) == []  # the temporary file was removed
    monkeypatch.setattr(os, "fsync", real)
    shutil.rmtree(tmp_path / "x")
    assert run(cfg, quiet=True, force=True).summary["mean_error"] == first.summary["mean_error"]
