"""Caches are verified on read (issue #25): every entry under $TTA_BENCH_CACHE carries its key and the sha256 of its
bytes (`<entry>.json`), and an entry that does not match is reported, removed and rebuilt, never used.

- a cached source model replaced by another recipe's file (same architecture): bytes only, or bytes and record;
- a cache entry that is a directory, an entry without its record, a truncated one;
- a prepare-stage (warm-up) state replaced by another key's;
- CCC calibration cells of another key;
each time the run's numbers equal those of a cold cache, and the CLI exits 0. And the data's fingerprint is by
content: a byte changed in place with the mtime put back is a new run id; byte-identical data in two folders is one
fingerprint (one leaderboard table); large files are sampled; a device is never read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tta_bench.cli import main
from tta_bench.config import RunConfig
from tta_bench.kernel import discard_cache_entry, read_cache_entry, seal_path, write_cache_entry
from tta_bench.runner import run

TIMING = {"images_per_s", "stream_seconds", "prepare_s", "memory", "peak_device_mb"}


def metrics(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def _cfg(out: Path, epochs: int, **kw) -> RunConfig:
    base = {"method": "source", "stream": "digits-c", "model": "small-cnn", "limit": 16, "batch_size": 16,
            "out": str(out), "clean_eval": "off", "model_opts": {"source_epochs": epochs}}  # fmt: skip
    return RunConfig(**{**base, **kw})


def _model_file(res) -> Path:
    return Path(json.loads((res.folder / "config.json").read_text())["model_info"]["weights"])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("TTA_BENCH_CACHE", str(path))
    return path


def test_entry_checks_unit(tmp_path):
    entry = tmp_path / "e.pt"
    assert read_cache_entry(entry, "k") == (None, None, {})  # absent: silent
    write_cache_entry(entry, b"abc", "k", {"seconds": 1.5})
    data, problem, record = read_cache_entry(entry, "k")
    assert data == b"abc" and problem is None and record["seconds"] == 1.5 and seal_path(entry).name == "e.pt.json"
    assert "another key" in read_cache_entry(entry, "other")[1]
    entry.write_bytes(b"abd")  # replaced in place, record kept
    assert "does not hold the bytes" in read_cache_entry(entry, "k")[1]
    seal_path(entry).unlink()
    assert "no record" in read_cache_entry(entry, "k")[1]
    seal_path(entry).write_text("{trunc")
    assert "damaged record" in read_cache_entry(entry, "k")[1]
    discard_cache_entry(entry)
    entry.mkdir()
    (entry / "x").write_text("x")
    assert "not a regular file" in read_cache_entry(entry, "k")[1]
    write_cache_entry(entry, b"new", {"a": [1, 2]})  # a directory at the entry's name is replaced
    assert read_cache_entry(entry, {"a": [1, 2]})[0] == b"new"


def test_source_model_of_another_recipe_is_rebuilt(tmp_path, cache, capfd):
    a = run(_cfg(tmp_path / "runs", 1), quiet=True)
    b = run(_cfg(tmp_path / "runs", 2), quiet=True)
    fa, fb = _model_file(a), _model_file(b)
    assert fa != fb and fa.is_file() and seal_path(fa).is_file()
    expected = metrics(a.summary)
    for with_record in (False, True):  # the file alone (digest differs), then file and record (key differs)
        shutil.copy(fb, fa)
        if with_record:
            shutil.copy(seal_path(fb), seal_path(fa))
        capfd.readouterr()
        again = run(_cfg(tmp_path / "runs", 1), quiet=True, force=True)
        err = capfd.readouterr().err
        assert f"cached source model {fa}" in err and "rebuilding it" in err, err
        assert ("another key" if with_record else "does not hold the bytes") in err
        assert again.folder == a.folder and metrics(again.summary) == expected  # same run id, same numbers
        assert fa.read_bytes() != fb.read_bytes()


def test_directory_missing_record_and_truncated_entries_are_rebuilt_by_the_cli(tmp_path, cache, capfd):
    first = run(_cfg(tmp_path / "runs", 1), quiet=True)
    entry = _model_file(first)
    args = ["run", "--method", "source", "--stream", "digits-c", "--model", "small-cnn", "--limit", "16",
            "--batch-size", "16", "--clean-eval", "off", "--set", "model.source_epochs=1", "--out",
            str(tmp_path / "runs"), "--force", "--quiet"]  # fmt: skip
    for damage, said in (
        (lambda: (discard_cache_entry(entry), entry.mkdir(), (entry / "junk").write_text("x")), "not a regular file"),
        (lambda: seal_path(entry).unlink(), "no record"),
        (lambda: entry.write_bytes(entry.read_bytes()[:100]), "does not hold the bytes"),
    ):
        damage()
        capfd.readouterr()
        assert main(args) == 0
        err = capfd.readouterr().err
        assert said in err and "rebuilding it" in err and "error" not in err, err
        assert entry.is_file() and read_cache_entry(entry, json.loads(seal_path(entry).read_text())["key"])[0]
        again = run(_cfg(tmp_path / "runs", 1), quiet=True)
        assert again.skipped and metrics(again.summary) == metrics(first.summary)


def test_prepare_state_of_another_key_is_rebuilt(tmp_path, cache, capfd):
    cfg = replace(_cfg(tmp_path / "runs", 1), method="ecotta", method_opts={"warmup_epochs": 1})
    first = run(cfg, quiet=True)
    other = run(replace(cfg, batch_size=8), quiet=True)  # another prepare key (it holds the batch size)
    pa = Path(json.loads((first.folder / "config.json").read_text())["prepare"]["cache"])
    pb = Path(json.loads((other.folder / "config.json").read_text())["prepare"]["cache"])
    assert pa != pb
    shutil.copy(pb, pa)
    shutil.copy(seal_path(pb), seal_path(pa))
    capfd.readouterr()
    again = run(cfg, quiet=False, force=True)
    err = capfd.readouterr().err
    assert f"prepare-stage cache {pa} was made for another key" in err and "rebuilding it" in err
    assert metrics(again.summary) == metrics(first.summary)
    warm = run(cfg, quiet=True, force=True)  # and the rebuilt entry is used, with its recorded facts
    conf = json.loads((warm.folder / "config.json").read_text())["prepare"]
    assert conf["cached"] is True and conf["seconds"] is not None
    assert metrics(warm.summary) == metrics(first.summary)


def test_ccc_calibration_of_another_key_is_measured_again(tmp_path, capfd):
    from tta_bench.data.ccc import _cached_cells

    path = tmp_path / "ccc" / "calibration-k1.json"
    write_cache_entry(path, json.dumps({"cells": {"a": 0.5}}).encode(), "k1")
    assert _cached_cells(path, "k1") == {"a": 0.5}
    other = tmp_path / "ccc" / "calibration-k2.json"
    write_cache_entry(other, json.dumps({"cells": {"a": 0.9}}).encode(), "k2")
    shutil.copy(other, path)
    shutil.copy(seal_path(other), seal_path(path))
    assert _cached_cells(path, "k1") == {}  # another model's cells: never used
    assert "another key" in capfd.readouterr().err and not path.exists()
    path.mkdir()
    assert _cached_cells(path, "k1") == {} and not path.exists()


# --- the data's fingerprint: by content ----------------------------------------------------------------------------
def _cifar_c(root: Path, n: int = 20) -> Path:
    import numpy as np

    from tta_bench import corruptions

    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "labels.npy", np.arange(n) % 10)
    for d in corruptions.BENCHMARK:
        np.save(folder / f"{d}.npy", rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    return folder


def _fingerprint_and_id(data: Path) -> tuple[str, str]:
    from tta_bench.identity import data_fingerprint, open_stream, resolve, run_id

    cfg = resolve(RunConfig(method="source", stream="cifar10-c", data_dir=str(data), stream_opts={"holdout": 0}))
    spec = open_stream(cfg)
    return data_fingerprint(spec), run_id(cfg, spec)


def test_data_changed_in_place_with_its_mtime_kept_is_a_new_run(tmp_path):
    import numpy as np

    folder = _cifar_c(tmp_path / "data")
    fp, rid = _fingerprint_and_id(tmp_path / "data")
    fog = folder / "fog.npy"
    st = fog.stat()
    arr = np.load(fog)
    arr[3, 0, 0, 0] ^= 1  # one byte of one image, same size ...
    np.save(fog, arr)
    os.utime(fog, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the mtime put back
    assert fog.stat().st_mtime_ns == st.st_mtime_ns and fog.stat().st_size == st.st_size
    fp2, rid2 = _fingerprint_and_id(tmp_path / "data")
    assert fp2 != fp and rid2 != rid


def test_byte_identical_data_in_two_folders_has_one_fingerprint(tmp_path):
    from tta_bench.leaderboard.collect import table_key

    _cifar_c(tmp_path / "a")
    time.sleep(0.01)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copyfile)  # a copy: new mtimes
    (fa, ra), (fb, rb) = _fingerprint_and_id(tmp_path / "a"), _fingerprint_and_id(tmp_path / "b")
    assert fa == fb and ra == rb  # one run id (--data-dir is not part of it), and one leaderboard table:
    conf = {"config": {"stream": "cifar10-c", "setting": "continual", "severity": 5, "batch_size": 64, "rounds": 1,
                       "precision": "fp32", "stream_opts": {}}, "samples_per_domain": {"0/fog": 20}}  # fmt: skip
    assert table_key({**conf, "data_fingerprint": fa}) == table_key({**conf, "data_fingerprint": fb})


def test_fingerprint_reads_a_sample_of_large_files(tmp_path):
    from tta_bench.kernel import FULL_HASH_BYTES, SAMPLE_BLOCK, SAMPLE_BLOCKS, fingerprint_files

    big = tmp_path / "big.bin"
    size = FULL_HASH_BYTES * 8
    big.write_bytes(bytes(size))
    first = fingerprint_files([big])
    with open(big, "r+b") as f:  # a byte in the second sampled block changes it
        f.seek((size - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1) + 5)
        f.write(b"\1")
    assert fingerprint_files([big]) != first
    dev = fingerprint_files([Path("/dev/null")])  # a device: stat'ed, never read
    assert isinstance(dev, str) and len(dev) == 16
