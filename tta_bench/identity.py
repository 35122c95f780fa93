"""What a run is: `resolve(cfg)` (every name and option checked, every default filled in) and `run_id(cfg)`, the
name of its result (hash of the resolved identity and the stream's data fingerprint).

`RunConfig.run_id()` and the runner both call these. This module imports the registries (methods, streams,
models) but not `tta_bench.config` (its RunConfig is only annotated), so `config -> identity` is a one-way
arrow: no import cycle config -> runner -> config.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import methods
from tta_bench import rundir
from tta_bench import streams as st
from tta_bench.kernel import UserError, check_options, hash_json
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
    """What the stream read from disk (files' names, sizes, mtimes) or generated: a changed file, a new run id."""
    return spec.info.get("data_fingerprint")


def run_id(cfg: RunConfig, spec: st.StreamSpec | None = None) -> str:
    """The run id (16 hex): hash of the resolved config's identity and the stream's data fingerprint."""
    cfg = resolve(cfg)
    spec = spec if spec is not None else open_stream(cfg)
    return hash_json({**cfg.identity(), "data": data_fingerprint(spec)}, rundir.RUN_ID_LENGTH)
