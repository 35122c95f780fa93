"""The CLI answers without importing torch where it needs none: `list` (from the cached catalogue), `list settings`,
`--help`, `run --help`, argparse errors and a typo in a method or stream name; the catalogue is never stale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tta_bench import catalogue

HEAVY = ("torch", "numpy", "pandas", "matplotlib", "torchvision")
# Runs the CLI in this process and then reports which heavy packages it left in sys.modules.
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['tta_bench', *sys.argv[1:]]\n"
    "code = 0\n"
    "try:\n    runpy.run_module('tta_bench', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\n"
    f"print('HEAVY', code, *sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
)


def _probe(cache: Path, *args: str) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr without the probe's line, heavy packages imported) of `python -m tta_bench args`."""
    env = {**os.environ, "TTA_BENCH_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=600)
    lines = r.stderr.splitlines()
    probe = [ln for ln in lines if ln.startswith("HEAVY ")]
    assert probe, r.stderr[-3000:]
    _, code, *heavy = probe[-1].split()
    err = "\n".join(ln for ln in lines if not ln.startswith("HEAVY "))
    return int(code) if code != "None" else 0, r.stdout, err, heavy


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> tuple[Path, str]:
    """A cache folder whose catalogue a first (cold) `list` built, and that first listing."""
    cache = tmp_path_factory.mktemp("cache")
    code, out, err, heavy = _probe(cache, "list")
    assert code == 0 and "torch" in heavy, (code, err[-2000:])  # cold: built from the registries
    assert len(list((cache / "catalogue").glob("*.json"))) == 1
    return cache, out


def test_list_from_the_catalogue_imports_no_torch_and_prints_the_same(warm):
    cache, cold = warm
    code, out, err, heavy = _probe(cache, "list")
    assert code == 0 and heavy == [], (heavy, err)
    assert out == cold
    for word in (
        "methods:",
        "tent",
        "streams:",
        "digits-c",
        "models:",
        "small-cnn",
        "corruptions:",
        "fog",
        "settings:",
    ):
        assert f"  {word} " in out or f"{word}\n" in out, word
    code, out_v, _, heavy = _probe(cache, "list", "methods", "-v")
    assert code == 0 and heavy == [] and "option " in out_v and "option " not in out


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--help",), 0, "run,list,leaderboard,sweep"),
        (("run", "--help"), 0, "--from RUN_FOLDER"),
        (("list", "settings"), 0, "realistic"),
        (("list", "metods"), 2, "invalid choice: 'metods'"),
        (("run", "--method", "tent"), 2, "required: --stream"),
        (("run", "--bogus"), 2, "unrecognized arguments: --bogus"),
        (("run", "--method", "tnet", "--stream", "digits-c"), 2, "Unknown method 'tnet'. Did you mean: tent"),
        (("run", "--method", "tent", "--stream", "digit-c"), 2, "Unknown stream 'digit-c'. Did you mean: digits-c"),
        (("run", "--method", "tent", "--stream", "digits-c", "--model", "resnet-x"), 2, "Unknown model 'resnet-x'"),
        (("run", "--method", "tent", "--stream", "digits-c", "--severity", "9"), 2, "--severity must be"),
        (("run", "--method", "tent", "--stream", "digits-c", "--setting", "contnual"), 2, "Unknown setting"),
        (("sweep", "--methods", "tent,tnet", "--streams", "digits-c"), 2, "Unknown method 'tnet'"),
        (("run", "--method", "tent", "--stream", "digits-c", "--set", "method.lrr=1"), 2, "no option 'lrr'. Did you"),
        (("run", "--method", "tent", "--stream", "digits-c", "--set", "stream.gama=1"), 2, "no option 'gama'"),
        (("run", "--method", "tent", "--stream", "digits-c", "--set", "model.widht=8"), 2, "'small-cnn' has no option"),
        (("sweep", "--methods", "tent", "--streams", "digits-c", "--set", "method.lrr=1"), 2, "no option 'lrr'"),
    ],
)
def test_answers_without_torch(warm, args, code, needle):
    cache, _ = warm
    got, out, err, heavy = _probe(cache, *args)
    assert got == code and needle in out + err, (got, out[-500:], err[-1500:])
    assert heavy == [], heavy
    assert "Traceback" not in err


def test_list_settings_needs_no_catalogue(tmp_path):
    code, out, _, heavy = _probe(tmp_path, "list", "settings")  # an empty cache: nothing built, nothing imported
    assert code == 0 and heavy == [] and out.splitlines()[0] == "settings:"
    assert not (tmp_path / "catalogue").exists()


def test_the_typo_messages_are_the_registrys(warm):
    """The fast checks read the catalogue's names; their messages are the ones the run's own checks give."""
    from tta_bench import methods
    from tta_bench.config import RunConfig
    from tta_bench.identity import resolve
    from tta_bench.kernel import UserError

    cache, _ = warm
    with pytest.raises(UserError) as live:
        methods.METHODS.get("tnet")
    _, _, err, _ = _probe(cache, "run", "--method", "tnet", "--stream", "digits-c")
    assert err.strip() == "error: " + str(live.value)
    for scope, key in (("method", "lrr"), ("stream", "gama"), ("model", "widht")):
        with pytest.raises(UserError) as live:
            resolve(RunConfig(method="tent", stream="digits-c", **{f"{scope}_opts": {key: 1}}))
        _, _, err, heavy = _probe(cache, "run", "--method", "tent", "--stream", "digits-c", "--set", f"{scope}.{key}=1")
        assert err.strip() == "error: " + str(live.value) and heavy == []


# --- the catalogue -------------------------------------------------------------------------------------------------
def test_fingerprint_follows_every_source_file(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(catalogue, "_roots", lambda: [pkg])
    first = catalogue.fingerprint()
    assert catalogue.fingerprint() == first
    (pkg / "b.py").write_text("")  # a new method file
    added = catalogue.fingerprint()
    (pkg / "a.py").write_text("x = 2\n")  # an edit of the same size
    edited = catalogue.fingerprint()
    (pkg / "b.py").rename(pkg / "c.py")
    renamed = catalogue.fingerprint()
    assert len({first, added, edited, renamed}) == 4


def test_the_real_roots_cover_methods_corruptions_and_streams():
    names = {p.name for root in catalogue._roots() for p in root.rglob("*.py")}
    assert {"tent.py", "noise.py", "digits.py", "small_cnn.py", "streams.py", "catalogue.py"} <= names


def test_cache_is_used_only_for_this_code_and_damage_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "registries_loaded", lambda: False)  # as in a fresh `python -m tta_bench` process
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path))
    rows = {
        "sections": {s: [(f"{s}-a", "one", "one more")] for s in catalogue.SECTIONS},
        "options": {"method": {"methods-a": ["lr"]}, "stream": {"streams-a": []}, "model": {"models-a": ["width"]}},
        "default_model": {"streams-a": "models-a"},
    }
    path = catalogue.save(rows)
    assert path is not None and path.parent == tmp_path / "catalogue"
    assert catalogue.cached() == rows and catalogue.known("methods") == ["methods-a"]
    monkeypatch.setattr(catalogue, "fingerprint", lambda: "another-code-version")
    assert catalogue.cached() is None and catalogue.known("methods") is None  # changed code: not used
    monkeypatch.undo()
    monkeypatch.setattr(catalogue, "registries_loaded", lambda: False)
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path))
    good = path.read_bytes()
    for damage in (b'{"format": 2, "fingerp', b"[]", b'{"format": 2}', b"\xff\xfe", good.replace(b'"lr"', b"7")):
        path.write_bytes(damage)
        assert catalogue.cached() is None
    monkeypatch.setattr(catalogue, "build", lambda: rows)
    assert catalogue.load() == rows and catalogue.cached() == rows  # rebuilt and written again


def test_live_catalogue_lists_every_registered_name():
    from tta_bench import corruptions, methods
    from tta_bench.models import MODELS
    from tta_bench.streams import STREAMS

    built = catalogue.build()
    sections = built["sections"]
    assert [r[0] for r in sections["methods"]] == methods.METHODS.names()
    assert [r[0] for r in sections["streams"]] == STREAMS.names()
    assert [r[0] for r in sections["models"]] == MODELS.names()
    assert [r[0] for r in sections["corruptions"]] == list(corruptions.names())
    tent = dict((n, (t, v)) for n, t, v in sections["methods"])["tent"]
    assert "preset cifar10-c" in tent[0] and "option lr" in tent[1] and "option lr" not in tent[0]
    assert built["options"]["method"]["tent"] == sorted(methods.get("tent").defaults)
    assert "gamma" in built["options"]["stream"]["digits-c"] and "width" in built["options"]["model"]["small-cnn"]
    assert built["default_model"]["digits-c"] == "small-cnn"


def test_entries_registered_in_this_process_are_listed_and_accepted(tmp_path, monkeypatch):
    """A process that registered an entry of its own (library use, a test) lists and checks its live registries; the
    cache stays the files' catalogue."""
    from tta_bench import methods
    from tta_bench.cli import check_names
    from tta_bench.kernel import Entry
    from tta_bench.report import list_entries

    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(catalogue, "registries_loaded", lambda: False)
    catalogue.load()  # the files' catalogue, cached
    files = {p: p.read_bytes() for p in (tmp_path / "catalogue").iterdir()}
    monkeypatch.undo()
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path))
    tent = methods.METHODS.get("tent")
    monkeypatch.setitem(methods.METHODS._entries, "zz_mine", Entry("zz_mine", tent.factory, "my own adapter"))
    assert catalogue.registries_loaded()
    assert "  zz_mine " in list_entries("methods")
    check_names(["zz_mine"], ["digits-c"], None, {"method_opts": {"lr": 0.1}})  # known here: no error
    assert {p: p.read_bytes() for p in (tmp_path / "catalogue").iterdir()} == files  # nothing written
