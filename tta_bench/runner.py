"""run(cfg) -> RunResult: stream a shifted dataset through an adapter and write the run folder.

Read top to bottom as the data flows: `resolve` (names and options checked, defaults filled in) -> `open_stream`
and `run_id` (the resolved config plus the data fingerprint; these three are `tta_bench.identity`'s) -> `run`
(lock, reuse or build aside, commit) ->
`execute`: `build_adapter` -> `prepare` (cached) -> `config_record` -> `stream` (segments, batches, meters) ->
`summarize` -> files. The run folder layout and summary schema are `tta_bench.rundir`'s; a run is built in a
private temporary folder and swapped in whole (`rundir.commit`), so nothing completed is ever lost.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

import tta_bench
from tta_bench import methods, outliers, presets, protocols, rundir
from tta_bench import streams as st
from tta_bench.accel import compile_adapter
from tta_bench.config import RunConfig, cache_dir_default, check_device, check_run_paths, weights_dir_default
from tta_bench.identity import data_fingerprint, open_stream, resolve, run_id
from tta_bench.kernel import NoSpace, UserError, folder_bytes, hash_json
from tta_bench.memory import StepMemory, measure
from tta_bench.metrics import OpenWorldMeter, forgetting, make_meter
from tta_bench.models import ModelContext, build_model, load_cache, model_info, save_cache, try_load_state
from tta_bench.progress import progress, quiet_while
from tta_bench.training import deterministic, zero_grads

RUN_FILES = rundir.RUN_FILES
is_complete = rundir.is_complete


@dataclass
class RunResult:
    folder: Path
    summary: dict[str, Any]
    domains: pd.DataFrame
    skipped: bool  # True when a completed run folder was found and nothing was run


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device here. Use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu or cuda[:N].") from None


# --- the run folder -----------------------------------------------------------------------------------------
def load_result(folder: Path) -> RunResult:
    """A completed run folder's results (validated summary.json, domains.csv)."""
    summary = rundir.load_summary(folder)
    return RunResult(Path(folder), dict(summary), pd.read_csv(Path(folder) / rundir.DOMAINS), skipped=True)


def _reusable(folder: Path | None, quiet: bool) -> RunResult | None:
    """The result in complete folder `folder`, or None (none, or damaged: it is run again and replaced)."""
    if folder is None:
        return None
    try:
        return load_result(folder)
    except (UserError, OSError, ValueError) as e:
        _say(quiet, f"note: the completed run folder {folder} is unreadable ({e}); running it again")
        return None


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def run(cfg: RunConfig, force: bool = False, quiet: bool = False) -> RunResult:
    """Run `cfg`, or return its completed result. `force`: run again; the old result stays until the new one is
    complete. A concurrent run of the same id is waited for and its result reused. Raises UserError on bad input."""
    check_device(cfg.device)  # a named accelerator PyTorch sees
    check_run_paths(cfg)  # --out, the cache (writable), data and weights folders: before any work
    cfg = resolve(cfg)  # the one resolution (and check of every option) of this run
    spec = open_stream(cfg)
    check_source(cfg, spec)  # before the model is built (or its weights downloaded)
    rid, out = run_id(cfg, spec), Path(cfg.out)
    found = _reusable(rundir.find_complete(out, rid), quiet)
    if found is not None and not force:
        return found
    with rundir.run_lock(out, rid, on_wait=lambda: _say(quiet, f"waiting for another run of {out / rid} ...")):
        found = _reusable(rundir.recover(out, rid), quiet)
        if found is not None and not force:
            return found  # finished by the run we waited for
        for p in rundir.clean_stale(out, rid):
            _say(quiet, f"removed the remains of an interrupted run: {p}")
        tmp = rundir.temp_folder(out, rid)
        try:
            with quiet_while(quiet):  # training and prepare progress too
                summary, domains = execute(cfg, spec, rid, tmp, quiet)
            rundir.commit(tmp, out / rid)
        except BaseException as e:
            written = folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, NoSpace) and (e.folder == tmp or tmp in e.folder.parents):  # the run folder's disk
                need = max(written, folder_bytes(out / rid)) + (64 << 10)  # so far, or the earlier result
                raise e.regarding(out, need, hint="--out") from None
            raise
    return RunResult(out / rid, summary, pd.DataFrame(domains), skipped=False)


def execute(cfg: RunConfig, spec: st.StreamSpec, rid: str, folder: Path, quiet: bool) -> tuple[dict, list[dict]]:
    """Build, prepare and stream `cfg`, writing every run file into `folder` (`done` last)."""
    device = pick_device(cfg.device)
    ctx = ModelContext(weights_dir_default(), cache_dir_default(), device, cfg.seed)
    adapter, weights = build_adapter(cfg, spec, ctx)
    segments = st.schedule(cfg.setting, spec, cfg.severity, cfg.rounds)
    prep = prepare(adapter, spec, cfg, ctx, weights, quiet)
    if cfg.compile:  # after prepare: the prepare stage and its cache stay eager
        compile_adapter(adapter)
    datasets = [st.segment_dataset(spec, s, cfg.limit) for s in segments]
    datasets = outliers.mix(spec, segments, datasets, cfg)  # open-world streams only (stream.outliers)
    record = config_record(cfg, rid, device, spec, weights, segments, datasets, prep)
    rundir.write_json_file(folder / rundir.CONFIG, record)
    if record["preset"].get("defaults_note"):  # the run header: settings from another benchmark family
        _say(quiet, f"WARNING: {record['preset']['defaults_note']}")
    torch.manual_seed(cfg.seed)  # the stream starts from the same RNG state whether prepare ran or was cached
    rec = stream(adapter, spec, cfg, segments, datasets, device, quiet)
    rundir.write_file(folder / rundir.BATCHES, _csv(rec.batch_rows, rundir.BATCH_COLUMNS))
    rundir.write_file(folder / rundir.DOMAINS, _csv(rec.domain_rows, rundir.DOMAIN_COLUMNS))
    summary = summarize(cfg, spec, rec, prep)
    rundir.write_json_file(folder / rundir.SUMMARY, summary)
    rundir.write_file(folder / rundir.DONE, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    return summary, rec.domain_rows


def _csv(rows: list[dict[str, Any]], front: tuple[str, ...]) -> str:
    df = pd.DataFrame(rows)
    return df[[c for c in front if c in df] + [c for c in df if c not in front]].to_csv(index=False)


# --- model and adapter ----------------------------------------------------------------------------------------
def build_adapter(cfg: RunConfig, spec: st.StreamSpec, ctx: ModelContext) -> tuple[methods.Adapter, dict]:
    """The model (trained or loaded) wrapped by the method, and the model's provenance for config.json."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec, ctx, cfg.model_opts)
    if use_channels_last(cfg, ctx.device):
        model = model.to(memory_format=torch.channels_last)
    weights = model_info(model)
    if spec.calibrate is not None:  # a stream built against the source model (CCC), before the method wraps it
        key = {"model": cfg.model, "options": cfg.model_opts, "weights": weights}
        spec.info["calibration"] = spec.calibrate(model, ctx.device, ctx.cache_dir, key)
    zero_grads(model)
    torch.manual_seed(cfg.seed)  # the adapter's own initialisation does not depend on whether training ran
    return methods.create(cfg.method, model, inplace=True, **cfg.method_opts).to(ctx.device), weights


def use_channels_last(cfg: RunConfig, device: torch.device) -> bool:
    """`--channels-last`: auto is on for CUDA only (faster convolutions there; on CPU it depends on the model)."""
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def _loader(data, batch_size: int, device: torch.device, workers: int, shuffle: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=workers, pin_memory=device.type == "cuda"
    )


def prepare_key(adapter: methods.Adapter, spec: st.StreamSpec, cfg: RunConfig, weights: dict, device) -> str:
    """Everything the prepare stage's result depends on (the cache key of its state)."""
    return hash_json(
        {
            "method": cfg.method,
            "hp": {k: repr(v) for k, v in vars(adapter.hp).items()},  # resolved: a changed default is a new key
            "state": [(k, tuple(v.shape)) for k, v in adapter.state_dict().items()],  # and a changed architecture
            "model": cfg.model,
            "weights": weights.get("sha256"),
            "stream": cfg.stream,
            "source": spec.source_fingerprint,
            "data": data_fingerprint(spec),
            "batch_size": cfg.batch_size,  # prepare loops over source batches of the run's batch size
            "seed": cfg.seed,
            "device": torch.device(device).type,
            "torch": torch.__version__.split("+")[0],
        }
    )


def check_source(cfg: RunConfig, spec: st.StreamSpec) -> None:
    """UserError when the method needs clean source data (`needs_source`) and the stream has no source split; checked
    as soon as the stream is open, before the model is built or downloaded."""
    if methods.get(cfg.method).needs_source and spec.source is None:
        raise UserError(
            f"Method '{cfg.method}' needs clean source data for its prepare stage, but stream "
            f"'{cfg.stream}' provides none. "
            + (spec.source_hint or "Use a stream with a source split (e.g. digits-c).")
        )


def prepare(adapter, spec, cfg: RunConfig, ctx: ModelContext, weights: dict, quiet: bool = True) -> dict:
    """Run adapter.prepare(source) once per key (see `prepare_key`); cache its state; snapshot the result."""
    if not adapter.needs_source:
        return {}
    check_source(cfg, spec)
    key = prepare_key(adapter, spec, cfg, weights, ctx.device)
    path = ctx.cache_dir / "prepare" / f"{cfg.method}-{cfg.model}-{key}.pt"
    info: dict[str, Any] = {"cache": str(path), "key": key}
    state, facts = load_cache(path, ctx.device, "prepare-stage cache", quiet, key=key, with_record=True)
    if state is not None and try_load_state(adapter, state):
        info.update({k: facts.get(k) for k in ("adapt_mb", "seconds")}, cached=True)  # measured when it was made
        took = f", made in {info['seconds']:.1f} s" if info.get("seconds") is not None else ""
        _say(quiet, f"prepare {cfg.method}: cached state loaded ({path.name}{took})")
    else:
        facts = _run_prepare(adapter, spec, cfg, ctx.device, quiet)
        save_cache(path, adapter.state_dict(), key=key, extra=facts)  # its record holds the key, digest and facts
        info.update(facts, cached=False)
    zero_grads(adapter)
    adapter.snapshot()
    return info


def _run_prepare(adapter, spec, cfg: RunConfig, device: torch.device, quiet: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    x0 = next(iter(_loader(spec.source, cfg.batch_size, device, 0)))[0].to(device)
    adapt_mb = measure_prepare(adapter, x0)
    torch.manual_seed(cfg.seed)
    with deterministic(device):  # one thread on CPU: the cached state does not depend on the machine's cores
        source = _loader(spec.source, cfg.batch_size, device, cfg.workers, shuffle=True, seed=cfg.seed)
        # every pass over the source data is shown (warm-up epochs, a Fisher pass, prompt learning)
        with progress(source, desc=f"prepare {cfg.method}", unit="batch", disable=quiet) as shown:
            adapter.prepare(shown)
    return {"adapt_mb": adapt_mb, "seconds": time.perf_counter() - t0}


def measure_prepare(adapter, x: torch.Tensor) -> float | None:
    """adapt_mb of one prepare step on `x` (`adapter.prepare_step()`), or None when the adapter has none."""
    step = adapter.prepare_step()
    return None if step is None else measure(step, x)["adapt_mb"]


# --- config.json --------------------------------------------------------------------------------------------
def git_commit() -> dict[str, Any]:
    root = Path(tta_bench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "tta_bench": tta_bench.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda or "",
    }


def config_record(cfg, rid: str, device, spec, weights: dict, segments, datasets, prep: dict) -> dict[str, Any]:
    """config.json: the resolved config, where/how it ran, versions, weights, data, domain order, prepare info."""
    return {
        "run_id": rid,
        "config": cfg.identity(),
        "preset": presets.record(cfg, methods.get(cfg.method)),  # official settings applied (tta_bench/presets.py)
        "execution": {
            "device": str(device),
            "data_dir": str(cfg.resolved_data_dir()),
            "out": cfg.out,
            "workers": cfg.workers,
            "compile": cfg.compile,
            "channels_last": use_channels_last(cfg, device),
            "threads": torch.get_num_threads(),
            "host": platform.node(),
        },
        "versions": versions(),
        "git": git_commit(),
        "model_info": weights,
        "stream_info": {**spec.info, "source_fingerprint": spec.source_fingerprint},
        "data_fingerprint": data_fingerprint(spec),
        "task": spec.task,
        "num_classes": spec.num_classes,
        "domain_order": [
            {
                "round": s.round,
                "domain": s.domain,
                "severity": s.severity,
                "reset": s.reset,
                "order": s.order,
                "parts": [list(p) for p in s.parts],
            }
            for s in segments
        ],  # fmt: skip
        "samples_per_domain": {f"{s.round}/{s.domain}": len(d) for s, d in zip(segments, datasets)},
        "prepare": prep,
        "clean_split": clean_record(cfg, spec),
    }


def clean_record(cfg: RunConfig, spec) -> dict[str, Any]:
    """config.json's `clean_split`: where the stream's held-out clean sample comes from (declared at registration),
    whether it is disjoint from the stream's images, its size, the order of its batches, and whether forgetting is
    measured (else why not)."""
    declared = st.clean_split(cfg.stream)
    n = len(spec.clean) if spec.clean is not None else 0
    why = None
    if not n:
        why = declared.reason if declared.source is None else f"no clean split in this run ({declared.reason})"
    elif cfg.clean_eval == "off":
        why = "--clean-eval off"
    return {
        "from": declared.source,
        "disjoint": declared.disjoint if n else None,
        "n": n,
        "order": st.CLEAN_ORDER if n else None,
        "when": cfg.clean_eval,
        "measured": why is None,
        "not_measured_because": why,
    }


# --- the stream ---------------------------------------------------------------------------------------------
@dataclass
class StreamRecord:
    """What streaming produced: rows of batches.csv / domains.csv and the run-level figures."""

    batch_rows: list[dict[str, Any]] = field(default_factory=list)
    domain_rows: list[dict[str, Any]] = field(default_factory=list)
    overall: dict[str, Any] = field(default_factory=dict)  # meter summary over the whole stream
    memory: dict[str, Any] = field(default_factory=dict)
    clean_before: float | None = None
    clean_after: float | None = None
    seconds: float = 0.0
    peak_device_mb: float | None = None
    protocol: dict[str, Any] = field(default_factory=dict)  # the realistic setting's figures (tta_bench.protocols)

    @property
    def first_diverged_batch(self) -> int | None:
        return next((r["batch"] for r in self.batch_rows if r["nonfinite"] > 0), None)


def _autocast(cfg: RunConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "amp")


def clean_loader(clean, batch_size: int, seed: int, device: torch.device | None = None) -> DataLoader:
    """The held-out clean sample's batches in a shuffled order seeded by the run seed (`streams.CLEAN_ORDER`): the
    same batches at every evaluation of a run, never the files' order (often class-sorted: one-class batches would
    break any method that normalises with test-batch statistics)."""
    device = torch.device("cpu") if device is None else device
    return _loader(clean, batch_size, device, 0, shuffle=True, seed=st.segment_seed(seed, "clean-eval"))


@torch.no_grad()
def clean_error(adapter, spec, cfg: RunConfig, device: torch.device, quiet: bool = True) -> float | None:
    """Error (%) of the adapter's current state on the held-out clean sample, without adapting on it."""
    if spec.clean is None or len(spec.clean) == 0 or cfg.clean_eval == "off":
        return None
    meter = make_meter(spec, 1, device)
    loader = clean_loader(spec.clean, cfg.batch_size, cfg.seed, device)
    shown = progress(loader, desc="clean evaluation", unit="batch", announce=False, leave=False, disable=quiet)
    for x, y in shown:
        x, y = x.to(device), y.to(device)
        with _autocast(cfg, device):
            out = adapter.predict(x)
        meter.update(out, y, torch.zeros(len(y), dtype=torch.long, device=device))
    shown.close()
    return meter.summary()["error"]


def class_mask(spec, seg, device: torch.device) -> torch.Tensor | None:
    """(C,) or (1,C,1,1)-broadcastable bool mask of the classes `seg`'s domain is scored over, or None."""
    subset = spec.class_subsets.get(seg.parts[0][0]) if len(seg.parts) == 1 else None
    if subset is None:
        return None
    mask = torch.zeros(spec.num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(list(subset), device=device)] = True
    return mask.view(1, -1, 1, 1) if spec.task == "segmentation" else mask


def stream(adapter, spec, cfg: RunConfig, segments, datasets, device: torch.device, quiet: bool) -> StreamRecord:
    """Every segment through the adapter, in order; per-batch and per-domain rows, clean error, memory, time."""
    cuda = device.type == "cuda"
    rec = StreamRecord()
    rec.memory = {}  # adapt_mb: measured on the stream's first real step (run_segment), no extra step
    rec.clean_before = rec.clean_after = clean_error(adapter, spec, cfg, device, quiet)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    overall = stream_meter(spec, cfg, device)
    total = sum((len(d) + cfg.batch_size - 1) // cfg.batch_size for d in datasets)
    clock = protocols.clock_for(cfg.setting, cfg.stream_opts, device)  # None: every batch adapted
    with progress(total=total, desc="stream", unit="batch", disable=quiet) as bar:
        for seg, ds in zip(segments, datasets):
            if seg.reset:
                adapter.reset()
            meter, times, seconds = run_segment(adapter, spec, cfg, seg, ds, device, overall, bar, clock, rec.memory)
            rec.seconds += seconds
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
            rec.batch_rows += batch_rows(meter, seg, times, len(rec.batch_rows), rec.memory.get("adapt_mb"), peak)
            if cfg.clean_eval == "domain":  # per-domain clean error only here (`end`: after the stream only)
                rec.clean_after = clean_error(adapter, spec, cfg, device, quiet)
            clean_now = rec.clean_after if cfg.clean_eval == "domain" else None
            rec.domain_rows += domain_rows(meter, spec, seg, seconds, clean_now)
            bar.log(domain_line(seg, rec.domain_rows, seconds, clean_now))
    if cfg.clean_eval == "end":
        rec.clean_after = clean_error(adapter, spec, cfg, device, quiet)
    rec.overall = overall.summary()
    errors = [r["error"] for r in rec.batch_rows]  # the realistic setting's time-dependent utility reads them
    rec.protocol = protocols.adapted_summary(clock, len(rec.batch_rows), errors, cfg.stream_opts.get("utility_tau"))
    rec.peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return rec


def run_segment(adapter, spec, cfg: RunConfig, seg, ds, device, overall, bar, clock=None, memory=None):
    """One segment's batches through the adapter: (its meter, seconds per batch, seconds in all).

    `clock` (realistic setting) decides per batch whether the method adapts or the current model predicts.
    `memory`: an empty dict is filled with the memory of this segment's first step (`tta_bench.memory.StepMemory`)."""
    if clock is not None:
        clock.start_segment()
    cuda = device.type == "cuda"
    cl = use_channels_last(cfg, device)
    meter = stream_meter(spec, cfg, device)
    open_world = outliers.enabled(cfg.stream_opts)
    mask = class_mask(spec, seg, device)
    bar.set_description(f"r{seg.round} {seg.domain}")
    t0 = t_prev = time.perf_counter()
    times = []
    defer = st.defer_on(device)  # generated corruptions: on the run device in this loop (CUDA), else in the loader
    opts = cfg.stream_opts
    batches = st.batches(ds, seg, cfg.batch_size, cfg.seed, opts["gamma"], cfg.workers, cuda, defer, options=opts)
    for i, b in enumerate(batches):
        x = st.to_device(ds, b, device)
        y, dom = b.y.to(device, non_blocking=True), b.domain_ids.to(device, non_blocking=True)
        if cl and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg, device), StepMemory(adapter, x) if memory == {} else nullcontext() as mem:
            out = adapter(x) if clock is None else clock.step(adapter, x)
        if mem is not None:
            memory.update(mem.result)
        if mask is not None:
            out = out.masked_fill(~mask, float("-inf"))
        extra = {"ood_score": outliers.score(adapter, x, out)} if open_world else {}
        meter.update(out, y, dom, **extra)
        overall.update(out, y, dom, **extra)
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        bar.update(1)
        if i % 10 == 0 and bar.shows_postfix:  # the one sync: only when a live bar is drawn
            bar.set_postfix(f"err {meter.running_error():.1f}%")
    if cuda:
        torch.cuda.synchronize(device)
    return meter, times, time.perf_counter() - t0


def stream_meter(spec, cfg: RunConfig, device: torch.device):
    """The stream task's meter, wrapped in `OpenWorldMeter` (outliers decoded out) when stream.outliers is set."""
    meter = make_meter(spec, len(spec.domain_names), device)
    return OpenWorldMeter(meter) if outliers.enabled(cfg.stream_opts) else meter


def domain_line(seg, rows: list[dict[str, Any]], seconds: float, clean: float | None) -> str:
    """The plain progress line of a finished segment: its error (and headline metric, when the task has one)."""
    mine = [r for r in rows if r["round"] == seg.round and r["segment"] == seg.domain]
    err = sum(r["error"] * r["n"] for r in mine) / max(1, sum(r["n"] for r in mine))
    names = {"miou": "mIoU", "balanced_error": "balanced error"}
    extra = "".join(f", {v} {mine[-1][k]:.1f} %" for k, v in names.items() if mine[-1].get(k) is not None)
    after = f", clean error {clean:.1f} %" if clean is not None else ""
    n = sum(r["n"] for r in mine)
    return f"r{seg.round} {seg.domain}: error {err:.1f} %{extra}{after} ({n} samples, {seconds:.1f} s)"


def batch_rows(meter, seg, times: list[float], start: int, adapt_mb, peak) -> list[dict[str, Any]]:
    """batches.csv rows of one segment (global batch numbers from `start`)."""
    return [
        {"batch": start + j, "round": seg.round, "segment": seg.domain, "index": j, "severity": seg.severity,
         "n": n, "error": err, "nonfinite": bad, "seconds": dt, "adapt_mb": adapt_mb, "peak_device_mb": peak}
        for j, (err, bad, n, dt) in enumerate(zip(meter.batch_errors(), meter.batch_nonfinite(), meter.batch_count,
                                                  times))
    ]  # fmt: skip


def domain_rows(meter, spec, seg, seconds: float, clean_after: float | None) -> list[dict[str, Any]]:
    """domains.csv rows of one segment: one per domain seen (several for a mixed segment)."""
    seg_summary = meter.summary()
    rows = []
    for d, res in meter.domain_results().items():
        rows.append(
            {
                "round": seg.round,
                "segment": seg.domain,
                "domain": spec.domain_names[d] if seg.domain == "mixed" else seg.domain,
                "severity": seg.severity,
                **{k: v for k, v in seg_summary.items() if k not in res},
                **res,
                "clean_error": clean_after,
                "seconds": seconds,
                "images_per_s": seg_summary["n"] / max(seconds, 1e-9),
            }
        )
    return rows


def summarize(cfg: RunConfig, spec, rec: StreamRecord, prep: dict) -> dict[str, Any]:
    """summary.json (schema: `rundir.Summary`; task/stream-specific scalars added after it)."""
    df = pd.DataFrame(rec.domain_rows)
    domain_errors = df.groupby("domain", sort=False)["error"].mean().to_dict()
    tot = rec.overall
    first_bad = rec.first_diverged_batch
    summary = {
        "method": cfg.method,
        "stream": cfg.stream,
        "model": cfg.model,
        "setting": cfg.setting,
        "seed": cfg.seed,
        "severity": cfg.severity,
        "rounds": cfg.rounds,
        "batch_size": cfg.batch_size,
        "task": spec.task,
        "mean_error": float(df["error"].mean()),
        "domain_errors": domain_errors,
        "round_errors": df.groupby("round")["error"].mean().tolist(),
        **{k: v for k, v in tot.items() if k not in ("error", "n")},
        "n_samples": tot["n"],
        "clean_error_before": rec.clean_before,
        "clean_error_after": rec.clean_after,
        "forgetting": forgetting(rec.clean_before, rec.clean_after),
        "adapt_mb": rec.memory["adapt_mb"],
        "memory": rec.memory,
        "peak_device_mb": rec.peak_device_mb,
        "images_per_s": tot["n"] / max(rec.seconds, 1e-9),
        "stream_seconds": rec.seconds,
        "prepare_s": prep.get("seconds"),
        "prepare_adapt_mb": prep.get("adapt_mb"),
        "diverged": first_bad is not None,
        "first_diverged_batch": first_bad,
        **rec.protocol,
        **protocols.long_horizon(
            [r["n"] for r in rec.batch_rows],
            [r["error"] for r in rec.batch_rows],
            cfg.stream_opts.get("window", protocols.DEFAULT_WINDOW),
            spec.num_classes,
        ),
    }
    if spec.summarize is not None:
        summary.update(spec.summarize(domain_errors))
    return summary
