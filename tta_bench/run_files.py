"""`run --config FILE.yaml|json` and `run --from RUN_FOLDER`: run options read from a file, as defaults of the flags.

A config file is a mapping whose keys are the `run` command's options, spelled as the flags without `--` (`method`,
`stream`, `batch_size` or `batch-size`, `set`, `domains`, ...; the values typed as on the command line would give
them: `severity: 3`, `compile: true`), plus `method_opts`, `stream_opts` and `model_opts`: mappings of `--set` values
(`method_opts: {lr: 0.001}`, the names config.json uses). Flags given on the command line override the file, `--set`
per key. An unknown key, a value of the wrong type, a file that is not a mapping, truncated or not JSON/YAML is a
UserError naming the file (and the key, with the valid keys).

`--from RUN_FOLDER` reads the folder's config.json: the recorded options (all resolved: every method, stream and
model option spelled out), the preset asked for, the data folder the run used (while it exists) and the folder's
parent as `--out`, so the same code and data give the same run id: the folder is found complete (not run again) or,
with `--force`, run again in place. Execution options (device, workers, compile, channels-last) are not taken from
the record (they do not change the run id): the command line's apply.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError, untrusted
from tta_bench.kernel.options import SCOPES, check_set_value, parse_sets

MAX_BYTES = 1 << 20  # a config file is a few hundred bytes; a larger one is refused unread
OPTS_KEYS = tuple(f"{s}_opts" for s in SCOPES)  # method_opts, stream_opts, model_opts
SUFFIXES = (".json", ".yaml", ".yml")
# config.json `config` keys that are not `run` flags of the same name (they are read into `file_opts`).
_SKIPPED = ("help", "config", "from_folder")


class Loaded(argparse.Namespace):
    """What a file gives: `defaults` (argparse dest -> value), `file_opts` ({scope: {key: value}}), and for a run
    folder the recorded `run_id` and `identity` (config.json's `config`)."""


def run_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The `run` options a file may set: argparse dest -> action (`sets` is spelled `set`)."""
    return {a.dest: a for a in parser._actions if a.dest not in _SKIPPED and a.dest != argparse.SUPPRESS}


def _key_name(dest: str) -> str:
    return "set" if dest == "sets" else dest


def _valid_keys(keys: Mapping[str, argparse.Action]) -> str:
    return ", ".join(sorted([_key_name(d) for d in keys] + list(OPTS_KEYS)))


def read_mapping(path: str) -> dict[str, Any]:
    """The top-level mapping of a `.json`, `.yaml` or `.yml` file (UserError naming the file otherwise)."""
    p = Path(path).expanduser()
    hint = "Pass a config file holding a mapping of run options (python -m tta_bench run --help lists them)."
    if p.is_dir():
        raise UserError(
            f"--config {path} is a folder. Pass a .json or .yaml file; to re-run a run folder, use --from {path}."
        )
    if not p.exists():
        raise UserError(f"--config {path} does not exist. Pass the path of a .json or .yaml file of run options.")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"--config {path}: the file name must end in .json, .yaml or .yml (it says which format it holds). "
            "Rename it, or pass a JSON or YAML file."
        )
    if suffix == ".json":
        obj = untrusted.read_json(p, MAX_BYTES, "config file", hint)
    else:
        obj = _read_yaml(p, hint)
    if not isinstance(obj, dict):
        kind = "empty" if obj is None else f"a {type(obj).__name__}, not a mapping of option names to values"
        raise UserError(f"--config {path} is {kind}. {hint} Example: `method: tent` and `stream: digits-c` lines.")
    return obj


def _read_yaml(p: Path, hint: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise UserError(
            f"--config {p}: reading YAML needs PyYAML, which is not installed: pip install pyyaml, or write the "
            "same options as a .json file."
        ) from None
    data = untrusted.read_bytes(p, MAX_BYTES, hint)
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"--config {p} is not UTF-8 text (byte {e.start}). {hint}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(
            f"--config {p} is not valid YAML{where}: {problem}. Fix the file or write it as JSON."
        ) from None


def _type_error(where: str, key: str, value: Any, want: str) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:60] + "..."
    return UserError(f"{where}: `{key}` is {shown} ({type(value).__name__}); it takes {want}. Fix it in the file.")


def _check_value(where: str, key: str, value: Any, action: argparse.Action) -> Any:
    """`value` for flag `action` if it has the type the flag would give (converted for `domains` lists)."""
    nullable = action.default is None
    if value is None and nullable:
        return None
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise _type_error(where, key, value, "true or false")
        return value
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, key, value, "a whole number")
        return value
    if isinstance(action, argparse._AppendAction):  # --set: a list of "scope.key=value" texts
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(where, key, value, 'a list of "scope.key=value" texts, e.g. ["method.lr=1e-4"]')
        return value
    if action.dest == "domains" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(where, key, value, "a number")
        return value
    if not isinstance(value, str):
        raise _type_error(where, key, value, "text" + (" (or null)" if nullable else ""))
    return value


def _plain(v: Any, depth: int = 0) -> bool:
    """True for what a --set value may be: text, numbers, true/false, null, and lists/mappings of those."""
    if depth > 16:
        return False
    if isinstance(v, (str, int, float, bool, type(None))):
        return True
    if isinstance(v, list):
        return all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _check_opts(where: str, key: str, value: Any) -> dict[str, Any]:
    """A `<scope>_opts` mapping: option names to values (each checked like a --set value)."""
    if not isinstance(value, dict):
        raise _type_error(where, key, value, "a mapping of option names to values, e.g. {lr: 0.001}")
    scope = key.removesuffix("_opts")
    out = {}
    for name, v in value.items():
        if not isinstance(name, str) or not name:
            raise _type_error(where, f"{key} key", name, "an option name (text)")
        if not _plain(v):
            raise _type_error(where, f"{key}.{name}", v, "a number, text, true/false, null or a list of those")
        out[name] = check_set_value(f"{scope}.{name}", v)
    return out


def from_mapping(obj: Mapping[str, Any], keys: Mapping[str, argparse.Action], where: str) -> Loaded:
    """The flag defaults and `--set` options a mapping gives, every key and value checked (`where`: the file)."""
    by_name = {_key_name(d): d for d in keys}
    defaults: dict[str, Any] = {}
    opts: dict[str, dict[str, Any]] = {s: {} for s in SCOPES}
    sets: list[str] = []
    for raw, value in obj.items():
        name = raw.replace("-", "_") if isinstance(raw, str) else raw
        if name in OPTS_KEYS:
            opts[name.removesuffix("_opts")].update(_check_opts(where, name, value))
            continue
        if name not in by_name:
            raise UserError(
                f"{where}: unknown option {str(raw)[:80]!r}. Valid keys (the `run` options, spelled as the flags "
                f"without --): {_valid_keys(keys)}."
            )
        dest = by_name[name]
        value = _check_value(where, str(raw), value, keys[dest])
        if dest == "sets":
            sets = value
        else:
            defaults[dest] = value
    for scope, given in parse_sets(sets).items():  # a `set:` list: each key once, and once with the mappings
        twice = sorted(set(given) & set(opts[scope]))
        if twice:
            raise UserError(
                f"{where}: {scope}.{twice[0]} is given twice (in `set` and in `{scope}_opts`). Give it once."
            )
        opts[scope].update(given)
    return Loaded(defaults=defaults, file_opts=opts, run_id=None, identity=None)


def load_config(path: str, keys: Mapping[str, argparse.Action]) -> Loaded:
    """`run --config FILE`: the file's options (UserError naming the file for anything wrong)."""
    obj = read_mapping(path)
    if "run_id" in obj and isinstance(obj.get("config"), dict):
        raise UserError(
            f"--config {path} is a run folder's config.json (it records a run, not options): re-run it with "
            f"--from {Path(path).parent}."
        )
    return from_mapping(obj, keys, f"--config {path}")


def load_run_folder(folder: str, keys: Mapping[str, argparse.Action]) -> Loaded:
    """`run --from RUN_FOLDER`: the options its config.json records, `--out` its parent folder."""
    from tta_bench.config import PRESET_CHOICES
    from tta_bench.rundir import CONFIG, is_run_id

    p = Path(folder).expanduser()
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is not a folder"
        raise UserError(f"--from {folder} {what}. Pass a run folder (<out>/<run id>/, written by `run`).")
    path = p / CONFIG
    hint = f"--from takes a run folder written by `run` (<out>/<run id>/ with {CONFIG})."
    if not path.exists():
        raise UserError(f"--from {folder}: it holds no {CONFIG}, so it is not a run folder. {hint}")
    record = untrusted.read_json(path, 64 << 20, "run config", hint)
    if (
        not isinstance(record, dict)
        or not is_run_id(record.get("run_id"))
        or not isinstance(record.get("config"), dict)
    ):
        raise UserError(f"{path} is not a run record (no run id and `config` object). {hint}")
    where = str(path)
    identity = record["config"]
    loaded = from_mapping(identity, keys, where)
    defaults = loaded.defaults
    preset = record.get("preset")
    requested = preset.get("requested") if isinstance(preset, dict) else None
    if requested in PRESET_CHOICES:
        defaults["preset"] = requested
    execution = record.get("execution")
    data_dir = execution.get("data_dir") if isinstance(execution, dict) else None
    if isinstance(data_dir, str) and data_dir and Path(data_dir).is_dir():
        defaults["data_dir"] = data_dir
    defaults["out"] = str(p.resolve().parent)
    return Loaded(defaults=defaults, file_opts=loaded.file_opts, run_id=record["run_id"], identity=identity)
