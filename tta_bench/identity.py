"""What a run is: `resolve(cfg)` (every name and option checked, every default filled in: the resolved run), and
`run_id(run)` / `folder(run)`, the name and place of its result (hash of the resolved identity, the stream's data
fingerprint and, when `model.weights` names a file or folder, that path's fingerprint).

`RunConfig(...)` is a plain value (it checks only what needs no file and no registry); everything that needs the
registries (method options against the method class, its ranges included; stream and protocol options) or the file
system (`--set` paths, `--data-dir`) is checked here, once per run: `resolve` marks what it returns, and `run_id` /
`folder` resolve only a config not resolved yet. This module imports `tta_bench.config`; config imports nothing of
it (not even lazily): no import cycle.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tta_bench import methods, protocols, rundir
from tta_bench import streams as st
from tta_bench.config import PATH_OPTIONS
from tta_bench.kernel import UserError, check_options, fingerprint_files, hash_json
from tta_bench.kernel.options import check_path
from tta_bench.models import model_options
from tta_bench.presets import with_preset

if TYPE_CHECKING:
    from tta_bench.config import RunConfig

# The attribute `resolve` sets on the config it returns (not a field: not hashed, not in config.json). A copy made
# with `dataclasses.replace` lacks it, so a changed config is resolved (and checked) again.
_RESOLVED = "_resolved"


def resolve(cfg: RunConfig) -> RunConfig:
    """Check every name and option; return the resolved run: the config with all defaults filled in (what is
    hashed), marked resolved. A resolved run is returned as it is (nothing is checked twice)."""
    if is_resolved(cfg):
        return cfg
    check_set_paths(cfg)
    if cfg.stream_opts:  # the user's values, each whatever the others are (defaults are valid)
        protocols.check_stream_options(cfg.setting, cfg.stream_opts)
        st.check_counts(cfg.stream_opts)
    method_cls = methods.get(cfg.method)
    method_opts = check_options("method", cfg.method, with_preset(cfg, method_cls), method_cls.defaults)
    method_cls.validate(method_opts)  # the class's ranges: the one check before the adapter is built
    check_data_dir(cfg)
    spec_opts = st.check_domains(check_options("stream", cfg.stream, cfg.stream_opts, st.stream_options(cfg.stream)))
    model = cfg.model or default_model(cfg.stream)
    run = replace(
        cfg,
        model=model,
        method_opts=method_opts,
        stream_opts=spec_opts,
        model_opts=check_options("model", model, cfg.model_opts, model_options(model)),
    )
    object.__setattr__(run, _RESOLVED, True)  # frozen dataclass: set once, here
    return run


def is_resolved(cfg: RunConfig) -> bool:
    """True for a config `resolve` returned (unchanged since)."""
    return vars(cfg).get(_RESOLVED) is True


def check_set_paths(cfg: RunConfig) -> None:
    """UserError for a `--set` option that names a file or folder (PATH_OPTIONS) and is empty, too long for the file
    system or behind a symbolic-link loop (it reads the file system, so RunConfig() does not call it)."""
    for scope, opts in (("stream", cfg.stream_opts), ("model", cfg.model_opts), ("method", cfg.method_opts)):
        for key, value in opts.items():
            if key in PATH_OPTIONS and isinstance(value, str):
                option = f"--set {scope}.{key}"
                check_path(value, option, empty=f"Pass a path, or leave {option} out.")


def check_data_dir(cfg: RunConfig) -> None:
    """UserError when `--data-dir` is given and is not a folder."""
    if cfg.data_dir is None or Path(cfg.data_dir).is_dir():
        return
    if Path(cfg.data_dir).exists():
        raise UserError(f"--data-dir {cfg.data_dir} is a file, not a folder. Pass the datasets folder.")
    raise UserError(
        f"Data directory {cfg.data_dir} does not exist. Pass --data-dir pointing at the folder that holds your "
        "datasets (each in its usual folder name; layouts in the README's Streams section), or omit it to use "
        "$TTA_BENCH_DATA / ~/.cache/tta_bench/data."
    )


def default_model(stream: str) -> str:
    """The model a stream runs on when `--model` is not given (declared at registration)."""
    return st.default_model(stream)


def open_stream(cfg: RunConfig) -> st.StreamSpec:
    """The stream of a resolved config (data located and indexed; images are read lazily)."""
    return st.build_stream(cfg.stream, cfg.resolved_data_dir(), cfg.seed, cfg.stream_opts)


def data_fingerprint(spec: st.StreamSpec) -> str | None:
    """What the stream read from disk (files' relative names, sizes and contents: `kernel.fingerprint_files`) or
    generated: a changed file, a new run id; the same bytes under another folder, the same fingerprint."""
    return spec.data_fingerprint


def weights_fingerprint(model_opts: dict) -> str | None:
    """Fingerprint (names, sizes, contents) of the file, or of the files directly in the folder (a saved Hugging Face
    model: config and weights side by side; not recursive, so a mistaken `/` costs nothing), that `model.weights`
    names; None when it names none (default weights: fixed, checksummed files; a hub name such as segformer's).

    The path alone is not enough: weights retrained or replaced at the same path must not reuse the old result.
    """
    w = model_opts.get("weights")
    p = Path(w).expanduser() if isinstance(w, str) and w else None
    if p is None or not p.exists():
        return None
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]  # a file (or a device: stat)
    return fingerprint_files(files, root=p.parent)


def run_id(run: RunConfig, spec: st.StreamSpec | None = None) -> str:
    """The run id (16 hex) of a resolved run (a config not resolved yet is resolved first): hash of its identity, the
    stream's data fingerprint (`spec`, the opened stream, or opened here) and the weights' fingerprint (only when
    `model.weights` names a file or folder, so other run ids are unchanged).

    Resolving first means `RunConfig(method="tent", stream="digits-c")` and the same config with Tent's default lr
    spelled out name the same folder; a data file changed in place names a new one."""
    run = run if is_resolved(run) else resolve(run)
    spec = spec if spec is not None else open_stream(run)
    key = {**run.identity(), "data": data_fingerprint(spec)}
    weights = weights_fingerprint(run.model_opts)
    if weights is not None:
        key["weights"] = weights
    if spec.clean is not None and run.clean_eval != "off":  # clean batches are shuffled (runs before: file order)
        key["clean_order"] = "shuffled"
    return hash_json(key, rundir.RUN_ID_LENGTH)


def folder(run: RunConfig, spec: st.StreamSpec | None = None) -> Path:
    """Where the result of `run` lives: `<out>/<run id>`."""
    return Path(run.out) / run_id(run, spec)
