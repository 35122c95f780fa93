"""What a run is: `resolve(cfg)` (every name and option checked, every default filled in) and `run_id(cfg)`, the
name of its result (hash of the resolved identity, the stream's data fingerprint and, when `model.weights` names a
file or folder, that path's fingerprint).

`RunConfig.run_id()` and the runner both call these. This module imports the registries (methods, streams,
models) but not `tta_bench.config` (its RunConfig is only annotated), so `config -> identity` is a one-way
arrow: no import cycle config -> runner -> config.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tta_bench import methods, rundir
from tta_bench import streams as st
from tta_bench.kernel import UserError, check_options, fingerprint_files, hash_json
from tta_bench.models import model_options
from tta_bench.presets import with_preset

if TYPE_CHECKING:
    from tta_bench.config import RunConfig


def resolve(cfg: RunConfig) -> RunConfig:
    """Check every name and option; return the config with all defaults filled in (what is hashed)."""
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise UserError(
            f"Data directory {cfg.data_dir} does not exist. Pass --data-dir pointing at the folder that holds your "
            "datasets (each in its usual folder name; layouts in the README's Streams section), or omit it to use "
            "$TTA_BENCH_DATA / ~/.cache/tta_bench/data."
        )
    method_cls = methods.get(cfg.method)
    spec_opts = st.check_domains(check_options("stream", cfg.stream, cfg.stream_opts, st.stream_options(cfg.stream)))
    model = cfg.model or default_model(cfg.stream)
    return replace(
        cfg,
        model=model,
        method_opts=check_options("method", cfg.method, with_preset(cfg, method_cls), method_cls.defaults),
        stream_opts=spec_opts,
        model_opts=check_options("model", model, cfg.model_opts, model_options(model)),
    )


def default_model(stream: str) -> str:
    """The model a stream runs on when `--model` is not given (declared at registration)."""
    return st.STREAMS.get(stream).factory.default_model


def open_stream(cfg: RunConfig) -> st.StreamSpec:
    """The stream of a resolved config (data located and indexed; images are read lazily)."""
    return st.build_stream(cfg.stream, cfg.resolved_data_dir(), cfg.seed, cfg.stream_opts)


def data_fingerprint(spec: st.StreamSpec) -> str | None:
    """What the stream read from disk (files' relative names, sizes and contents: `kernel.fingerprint_files`) or
    generated: a changed file, a new run id; the same bytes under another folder, the same fingerprint."""
    return spec.info.get("data_fingerprint")


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


def run_id(cfg: RunConfig, spec: st.StreamSpec | None = None) -> str:
    """The run id (16 hex): hash of the resolved config's identity, the stream's data fingerprint and the weights'
    fingerprint (only when `model.weights` names a file or folder, so other run ids are unchanged)."""
    cfg = resolve(cfg)
    spec = spec if spec is not None else open_stream(cfg)
    key = {**cfg.identity(), "data": data_fingerprint(spec)}
    weights = weights_fingerprint(cfg.model_opts)
    if weights is not None:
        key["weights"] = weights
    if spec.clean is not None and cfg.clean_eval != "off":  # clean batches are shuffled (runs before: file order)
        key["clean_order"] = "shuffled"
    return hash_json(key, rundir.RUN_ID_LENGTH)
