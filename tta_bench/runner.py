"""run(cfg) -> RunResult: stream a shifted dataset through an adapter and write the run folder.

Run folder `<out>/<run id>/`: `config.json` (resolved config, versions, git commit, weights, domain order,
samples per domain), `batches.csv` (one row per batch), `domains.csv` (one row per domain per round),
`summary.json`, and `done`, written last. Every file is written atomically (temp file + rename). A folder
with `done` is complete and is not run again (unless `force`); a folder without it is the remains of an
interrupted run and is cleared before running again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import methods
import tta_bench
from tta_bench import streams as st
from tta_bench.config import RunConfig, cache_dir_default, check_options, weights_dir_default
from tta_bench.kernel import UserError
from tta_bench.memory import measure
from tta_bench.metrics import forgetting, make_meter
from tta_bench.models import ModelContext, build_model, model_info, model_options, recipe_hash

RUN_FILES = ("config.json", "batches.csv", "domains.csv", "summary.json", "done")


@dataclass
class RunResult:
    folder: Path
    summary: dict[str, Any]
    domains: pd.DataFrame
    skipped: bool  # True when a completed run folder was found and nothing was run


def resolve(cfg: RunConfig) -> RunConfig:
    """Check every name and option; return the config with all defaults filled in (what is hashed)."""
    from tta_bench.models import load_zoo

    load_zoo()
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise UserError(
            f"Data directory {cfg.data_dir} does not exist. Pass --data-dir pointing at the folder that holds your "
            "datasets (each in its usual folder name; layouts in the README's Streams section), or omit it to use "
            "$TTA_BENCH_DATA / ~/.cache/tta_bench/data."
        )
    method_cls = methods.get(cfg.method)
    spec_opts = check_options("stream", cfg.stream, cfg.stream_opts, st.stream_options(cfg.stream))
    model = cfg.model or _default_model(cfg.stream)
    return replace(
        cfg,
        model=model,
        method_opts=check_options("method", cfg.method, cfg.method_opts, method_cls.defaults),
        stream_opts=spec_opts,
        model_opts=check_options("model", model, cfg.model_opts, model_options(model)),
    )


def _default_model(stream: str) -> str:
    return st.STREAMS.get(stream).factory.default_model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device here. Use --device cpu or auto.")
    return torch.device(name)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, pd.DataFrame(rows).to_csv(index=False))


def is_complete(folder: Path) -> bool:
    return (folder / "done").exists()


def load_result(folder: Path) -> RunResult:
    summary = json.loads((folder / "summary.json").read_text())
    return RunResult(folder, summary, pd.read_csv(folder / "domains.csv"), skipped=True)


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


def run(cfg: RunConfig, force: bool = False, quiet: bool = False) -> RunResult:
    """Run `cfg` (or return the completed run folder's results). Raises UserError on bad input."""
    cfg = resolve(cfg)
    folder = cfg.folder()
    if is_complete(folder) and not force:
        return load_result(folder)
    device = pick_device(cfg.device)
    spec = st.build_stream(cfg.stream, cfg.resolved_data_dir(), cfg.seed, cfg.stream_opts)
    ctx = ModelContext(weights_dir_default(), cache_dir_default(), device, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec, ctx, cfg.model_opts)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    weights = model_info(model)
    adapter = methods.create(cfg.method, model, inplace=True, **cfg.method_opts).to(device)
    segments = st.schedule(cfg.setting, spec, cfg.severity, cfg.rounds)

    if folder.exists():  # interrupted earlier (no `done`), or --force: start clean, never mix runs
        if not quiet:
            print(f"{'replacing completed' if is_complete(folder) else 'clearing interrupted'} run folder {folder}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    prep = _prepare(adapter, spec, cfg, ctx, weights, device)
    datasets = [st.segment_dataset(spec, s, cfg.limit) for s in segments]
    write_json(
        folder / "config.json",
        {
            "run_id": cfg.run_id(),
            "config": cfg.identity(),
            "execution": {
                "device": str(device),
                "data_dir": str(cfg.resolved_data_dir()),
                "out": cfg.out,
                "workers": cfg.workers,
                "host": platform.node(),
            },
            "versions": versions(),
            "git": git_commit(),
            "model_info": weights,
            "stream_info": spec.info,
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
            ],
            "samples_per_domain": {f"{s.round}/{s.domain}": len(d) for s, d in zip(segments, datasets)},
            "prepare": prep,
        },
    )
    summary, domains = _stream(adapter, spec, cfg, segments, datasets, device, folder, quiet)
    summary["prepare_s"], summary["prepare_adapt_mb"] = prep.get("seconds"), prep.get("adapt_mb")
    write_json(folder / "summary.json", summary)
    write_atomic(folder / "done", time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    return RunResult(folder, summary, pd.DataFrame(domains), skipped=False)


def _loader(data, batch_size: int, device: torch.device, workers: int, shuffle: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=workers, pin_memory=device.type == "cuda"
    )


def _prepare(adapter, spec, cfg: RunConfig, ctx: ModelContext, weights: dict, device: torch.device) -> dict:
    """Run adapter.prepare(source) once per (method, options, model, source data); cache its state."""
    if not adapter.needs_source:
        return {}
    if spec.source is None:
        raise UserError(
            f"Method '{cfg.method}' needs clean source data for its prepare stage, but stream "
            f"'{cfg.stream}' provides none. Use a stream with a source split (e.g. digits-c)."
        )
    key = recipe_hash(
        {
            "method": cfg.method,
            "hp": {k: repr(v) for k, v in vars(adapter.hp).items()},  # resolved: a changed default is a new key
            "state": [(k, tuple(v.shape)) for k, v in adapter.state_dict().items()],  # and a changed architecture
            "model": cfg.model,
            "weights": weights.get("sha256"),
            "stream": cfg.stream,
            "source": spec.info.get("source_fingerprint"),
            "seed": cfg.seed,
        }
    )
    path = ctx.cache_dir / "prepare" / f"{cfg.method}-{cfg.model}-{key}.pt"
    info: dict[str, Any] = {"cache": str(path)}
    if path.exists():
        adapter.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        info["cached"] = True
    else:  # hyper-parameters, architecture and source data are in the key, so a cached state always loads
        t0 = time.perf_counter()
        x0 = next(iter(_loader(spec.source, cfg.batch_size, device, 0)))[0].to(device)
        info["adapt_mb"] = measure_prepare(adapter, x0)
        adapter.prepare(_loader(spec.source, cfg.batch_size, device, cfg.workers, shuffle=True, seed=cfg.seed))
        info["seconds"] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(adapter.state_dict(), tmp)
        os.replace(tmp, path)
        info["cached"] = False
    adapter.snapshot()
    return info


def measure_prepare(adapter, x: torch.Tensor) -> float | None:
    """adapt_mb of one prepare step on `x` (`adapter.prepare_step()`), or None when the adapter has none."""
    step = adapter.prepare_step()
    return None if step is None else measure(step, x)["adapt_mb"]


@torch.no_grad()
def clean_error(adapter, spec, cfg: RunConfig, device: torch.device) -> float | None:
    """Error (%) of the adapter's current state on the held-out clean sample, without adapting on it."""
    if spec.clean is None or cfg.clean_eval == "off":
        return None
    meter = make_meter(spec, 1, device)
    for x, y in _loader(spec.clean, cfg.batch_size, device, 0):
        x, y = x.to(device), y.to(device)
        with _autocast(cfg, device):
            out = adapter.predict(x)
        meter.update(out, y, torch.zeros(len(y), dtype=torch.long, device=device))
    return meter.summary()["error"]


def class_mask(spec, seg, device: torch.device) -> torch.Tensor | None:
    """(C,) or (1,C,1,1)-broadcastable bool mask of the classes `seg`'s domain is scored over, or None."""
    subset = spec.class_subsets.get(seg.parts[0][0]) if len(seg.parts) == 1 else None
    if subset is None:
        return None
    mask = torch.zeros(spec.num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(list(subset), device=device)] = True
    return mask.view(1, -1, 1, 1) if spec.task == "segmentation" else mask


def _autocast(cfg: RunConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "amp")


def _stream(adapter, spec, cfg, segments, datasets, device, folder: Path, quiet: bool):
    cuda = device.type == "cuda"
    total = sum((len(d) + cfg.batch_size - 1) // cfg.batch_size for d in datasets)
    first = next(st.batches(datasets[0], segments[0], cfg.batch_size, cfg.seed, cfg.stream_opts["gamma"]))
    with _autocast(cfg, device):
        mem = measure(adapter, first.x.to(device))
    before = clean_error(adapter, spec, cfg, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    overall = make_meter(spec, len(spec.domain_names), device)
    batch_rows, dom_rows, stream_s = [], [], 0.0
    bar = tqdm(total=total, unit="batch", disable=None if not quiet else True, dynamic_ncols=True)
    after = before
    for seg, ds in zip(segments, datasets):
        if seg.reset:
            adapter.reset()
        meter = make_meter(spec, len(spec.domain_names), device)
        mask = class_mask(spec, seg, device)
        bar.set_description(f"r{seg.round} {seg.domain}")
        t0 = t_prev = time.perf_counter()
        times = []
        for i, b in enumerate(
            st.batches(ds, seg, cfg.batch_size, cfg.seed, cfg.stream_opts["gamma"], cfg.workers, cuda)
        ):
            x = b.x.to(device, non_blocking=True)
            y, dom = b.y.to(device, non_blocking=True), b.domain_ids.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(cfg, device):
                out = adapter(x)
            if mask is not None:
                out = out.masked_fill(~mask, float("-inf"))
            meter.update(out, y, dom)
            overall.update(out, y, dom)
            now = time.perf_counter()
            times.append(now - t_prev)
            t_prev = now
            bar.update(1)
            if i % 10 == 0 and bar.disable is False:
                bar.set_postfix(err=f"{meter.running_error():.1f}%")  # the one sync: only when a bar is shown
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        stream_s += seconds
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
        for j, (err, n, dt) in enumerate(zip(meter.batch_errors(), meter.batch_count, times)):
            batch_rows.append(
                {
                    "batch": len(batch_rows),
                    "round": seg.round,
                    "segment": seg.domain,
                    "index": j,
                    "severity": seg.severity,
                    "n": n,
                    "error": err,
                    "seconds": dt,
                    "adapt_mb": mem["adapt_mb"],
                    "peak_device_mb": peak,
                }
            )
        after = clean_error(adapter, spec, cfg, device) if cfg.clean_eval == "domain" else after
        seg_summary = meter.summary()
        for d, res in meter.domain_results().items():
            name = spec.domain_names[d] if seg.domain == "mixed" else seg.domain
            row = {
                "round": seg.round,
                "segment": seg.domain,
                "domain": name,
                "severity": seg.severity,
                **{k: v for k, v in seg_summary.items() if k not in res},
                **res,
                "clean_error": after,
                "seconds": seconds,
                "images_per_s": seg_summary["n"] / max(seconds, 1e-9),
            }
            dom_rows.append(row)
    bar.close()
    if cfg.clean_eval == "end":
        after = clean_error(adapter, spec, cfg, device)
    write_csv(folder / "batches.csv", batch_rows)
    write_csv(folder / "domains.csv", dom_rows)
    df = pd.DataFrame(dom_rows)
    domain_errors = df.groupby("domain", sort=False)["error"].mean().to_dict()
    tot = overall.summary()
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
        "clean_error_before": before,
        "clean_error_after": after,
        "forgetting": forgetting(before, after),
        "adapt_mb": mem["adapt_mb"],
        "memory": mem,
        "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "images_per_s": tot["n"] / max(stream_s, 1e-9),
        "stream_seconds": stream_s,
    }
    if spec.summarize is not None:
        summary.update(spec.summarize(domain_errors))
    return summary, dom_rows
