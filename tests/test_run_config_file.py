"""`run --config FILE.yaml|json` (the run options from a file; the command line overrides) and `run --from RUN_FOLDER`
(re-run what a run folder's config.json records: the same run id), and their hostile files (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tta_bench import rundir
from tta_bench.cli import main, parse
from tta_bench.cli_options import config_kwargs
from tta_bench.config import RunConfig
from tta_bench.kernel import UserError


def _config(argv: list[str]) -> RunConfig:
    """The RunConfig `python -m tta_bench run <argv>` would run (built as cmd_run builds it)."""
    args = parse(["run", *argv])
    return RunConfig(method=args.method, stream=args.stream, model=args.model, seed=args.seed, **config_kwargs(args))


YAML = """\
method: tent
stream: digits-c
batch-size: 32          # the flag's spelling works too
limit: 100
domains: [fog, snow]
compile: false
set: ["method.lr=0.002", "stream.gamma=0.5"]
model_opts: {width: 8}
"""


def test_a_yaml_file_gives_the_same_config_as_the_flags(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    flags = ["--method", "tent", "--stream", "digits-c", "--batch-size", "32", "--limit", "100", "--domains",
             "fog,snow", "--set", "method.lr=0.002", "--set", "stream.gamma=0.5", "--set", "model.width=8"]  # fmt: skip
    assert _config(["--config", str(tmp_path / "c.yaml")]) == _config(flags)
    cfg = _config(["--config", str(tmp_path / "c.yaml")])
    assert cfg.batch_size == 32 and cfg.limit == 100 and cfg.method_opts == {"lr": 0.002}
    assert cfg.stream_opts == {"gamma": 0.5, "domains": "fog,snow"} and cfg.model_opts == {"width": 8}


def test_the_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "tent", "stream": "digits-c", "seed": 3, "severity": 2, "quiet": True,
                                "method_opts": {"lr": 0.002, "steps": 2}, "out": "elsewhere"}))  # fmt: skip
    cfg = _config(["--config", str(path), "--seed", "7", "--method", "norm", "--set", "method.lr=0.01"])
    assert (cfg.method, cfg.seed, cfg.severity, cfg.out) == ("norm", 7, 2, "elsewhere")
    assert cfg.method_opts == {"lr": 0.01, "steps": 2}  # --set wins per key, the file's other keys stay
    assert parse(["run", "--config", str(path)]).quiet is True
    assert _config(["--config", str(path), "--domains", "fog"]).stream_opts == {"domains": "fog"}


def _fails(tmp_path: Path, name: str, text: str | bytes | None, *argv: str) -> str:
    """The one-paragraph error of `run --config <name>` (written with `text`), checked in-process."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as e:
        parse(["run", "--config", str(path), *argv])
    assert str(path) in str(e.value)
    return str(e.value)


def test_unknown_keys_and_wrong_types_name_the_key_and_the_file(tmp_path):
    msg = _fails(tmp_path, "a.yaml", "method: tent\nstreem: digits-c\n")
    assert "unknown option 'streem'" in msg and "Valid keys" in msg
    assert "stream" in msg.split("Valid keys")[1] and "method_opts" in msg and "batch_size" in msg
    assert "`severity` is '3' (str)" in _fails(tmp_path, "b.yaml", "severity: '3'\n")
    assert "`limit` is 1.5" in _fails(tmp_path, "c.json", '{"limit": 1.5}')
    assert "`compile` is 'yes'" in _fails(tmp_path, "d.json", '{"compile": "yes"}')
    assert "`set` is" in _fails(tmp_path, "e.yaml", "set: method.lr=1\n")
    assert "method_opts.when" in _fails(tmp_path, "f.yaml", "method_opts: {when: 2024-01-01}\n")
    assert "given twice" in _fails(tmp_path, "g.yaml", "set: [method.lr=1]\nmethod_opts: {lr: 2}\n")
    assert "is a run folder's config.json" in _fails(tmp_path, "config.json", '{"run_id": "ab", "config": {}}')


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("t.json", '{"method": "tent", "stre', "not strict JSON"),
        ("l.yaml", "- method\n- tent\n", "is a list, not a mapping"),
        ("s.yaml", "tent\n", "is a str, not a mapping"),
        ("e.yml", "", "is empty"),
        ("b.yaml", "method: [tent\n", "not valid YAML (line 2"),
        ("u.yaml", b"method: \xff\n", "not UTF-8"),
        ("x.txt", "method: tent\n", "must end in .json, .yaml or .yml"),
        ("missing.yaml", None, "does not exist"),
    ],
)
def test_hostile_config_files(tmp_path, name, text, needle):
    assert needle in _fails(tmp_path, name, text)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "tta_bench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_hostile_files_exit_2_without_traceback(tmp_path):
    (tmp_path / "t.json").write_text('{"method": "tent", "str')
    (tmp_path / "l.yaml").write_text("- a\n- b\n")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text('{"run_id": "0123456789abcdef", "config": {"method": "te')
    cases = {
        ("--config", "t.json"): "not strict JSON",
        ("--config", "l.yaml"): "not a mapping",
        ("--from", "not_a_run"): "holds no config.json, so it is not a run folder",
        ("--from", "damaged"): "not strict JSON",
        ("--from", "nowhere"): "does not exist",
        ("--config", "not_a_run"): "is a folder",
    }
    for args, needle in cases.items():
        r = _cli("run", *args, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_from_a_record_with_an_unknown_option_names_it(tmp_path):
    folder = tmp_path / "0123456789abcdef"
    folder.mkdir()
    record = {"run_id": folder.name, "config": {"method": "tent", "stream": "digits-c", "warp": 9}}
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"config.json: unknown option 'warp'"):
        parse(["run", "--from", str(folder)])


LIMIT = 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny tent run on digits-c (two domains, 40 images each), started from a YAML file."""
    base = tmp_path_factory.mktemp("from")
    (base / "c.yaml").write_text(
        f"method: tent\nstream: digits-c\nlimit: {LIMIT}\nbatch_size: 20\ndomains: [fog, snow]\n"
        f"method_opts: {{lr: 0.002}}\nout: {base / 'runs'}\nquiet: true\n"
    )
    assert main(["run", "--config", str(base / "c.yaml")]) == 0
    (folder,) = [p for p in (base / "runs").iterdir() if rundir.is_run_id(p.name)]
    return folder


def test_from_finds_the_same_run_complete(tiny_run, capsys):
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    assert main(["run", "--from", str(tiny_run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"completed run found (not run again; --force to redo): {tiny_run}" in out and "warning" not in err
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()} == before
    # the same options on the command line name the same folder too
    flags = ["--method", "tent", "--stream", "digits-c", "--limit", str(LIMIT), "--batch-size", "20", "--domains",
             "fog,snow", "--set", "method.lr=0.002", "--out", str(tiny_run.parent), "--quiet"]  # fmt: skip
    assert main(["run", *flags]) == 0
    assert f"completed run found (not run again; --force to redo): {tiny_run}" in capsys.readouterr().out


def test_from_into_another_folder_reruns_with_the_same_id_and_numbers(tiny_run, tmp_path, capsys):
    assert main(["run", "--from", str(tiny_run), "--out", str(tmp_path), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
    again = tmp_path / tiny_run.name
    assert rundir.is_complete(again)  # the same run id, run again (not found: another --out)
    first, second = rundir.load_summary(tiny_run), rundir.load_summary(again)
    assert second["mean_error"] == pytest.approx(first["mean_error"], abs=1e-9)
    assert second["domain_errors"] == pytest.approx(first["domain_errors"], abs=1e-9)
    a, b = (json.loads((f / "config.json").read_text()) for f in (tiny_run, again))
    assert a["config"] == b["config"] and a["preset"] == b["preset"]


def test_from_with_an_override_is_another_run(tiny_run):
    args = parse(["run", "--from", str(tiny_run), "--seed", "5"])
    assert args.seed == 5 and args.out == str(tiny_run.parent) and args.method == "tent"
    assert args.file_opts["method"]["lr"] == 0.002 and args.loaded.run_id == tiny_run.name


def test_from_a_record_whose_id_no_longer_matches_warns(tiny_run, tmp_path, capsys):
    """A record whose run id the same options no longer give (here: edited; in life: changed data or code)."""
    record = json.loads((tiny_run / "config.json").read_text())
    record["run_id"] = "fedcba9876543210"
    fake = tmp_path / record["run_id"]
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["run", "--from", str(fake), "--out", str(tiny_run.parent), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"completed run found (not run again; --force to redo): {tiny_run}" in out
    assert f"recorded run id fedcba9876543210; the same options now give {tiny_run.name}" in err
