"""Run files, caches and the leaderboard site get the mode the umask gives (colleagues can read shared results):
atomic writes go through a private temporary file (mkstemp: 0600), which is given `0666 & ~umask` before the rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tta_bench.config import RunConfig
from tta_bench.kernel.files import umask, write_atomic
from tta_bench.leaderboard.site import build
from tta_bench.runner import run


@pytest.fixture
def mask():
    def set_mask(m: int) -> int:
        os.umask(m)
        return m

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("m", [0o022, 0o002, 0o077])
def test_an_atomic_write_follows_the_umask(tmp_path, mask, m):
    mask(m)
    assert umask() == m
    write_atomic(tmp_path / "f.json", "{}")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~m


def test_run_folder_and_site_are_readable_by_the_group(tmp_path, mask, one_thread):
    mask(0o002)  # a group-shared results folder
    res = run(RunConfig(method="source", stream="digits-c", limit=8, batch_size=8, out=str(tmp_path / "runs")),
              quiet=True)  # fmt: skip
    assert modes(res.folder) == {0o664}
    build(tmp_path / "runs", tmp_path / "site")
    assert modes(tmp_path / "site") == {0o664}
