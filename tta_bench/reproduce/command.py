"""`python -m tta_bench reproduce list | <table> [...]`: run a published table's grid and write its parity report.

The grid is the table's protocol (stream, model, setting, severity, samples per domain, batch size, seeds, the
cell's overrides) × its cells' adapters (a derived cell also runs its baseline); a table with `split_domains`
runs every domain as its own run (episodic: each from the source model). The runs go through the sweep's
executors (`tta_bench.sweep`: local, worker processes or Ray), so completed runs are skipped, an interrupted
reproduction resumes, presets are applied (`preset` of the protocol) and weights come from the model zoo's
checked downloads. Afterwards every cell's runs are read back and `<out>/parity/<table>.{json,csv}` written
(`tta_bench.reproduce.parity`).

`--limit N` shows N images per domain (cells then say `reduced`), `--seeds` other seeds, `--methods` some of the
table's adapters, `--plan` prints the grid without running it. `--stand-in` swaps the table's model and data for
its stand-in (a small builtin model on generated data, the table's `stand_in`), to test the machinery on a CPU:
those numbers are not comparable with the published ones, and their report says so (`<table>-stand-in.*`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tta_bench.cli_options import add_force_argument, add_run_options, add_set_argument
from tta_bench.config import RunConfig, check_device, check_run_paths
from tta_bench.kernel import UserError, parse_sets
from tta_bench.reproduce import parity
from tta_bench.reproduce.tables import Table, load, names
from tta_bench.sweep import _names, add_executor_arguments

EXECUTION_OPTIONS = ("out", "data_dir", "device", "workers", "compile", "channels_last", "clean_eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="`list`, a table name (see `reproduce list`) or the path of a table .json file")
    p.add_argument("--methods", nargs="+", default=None, help="only these of the table's adapters (default: all)")
    p.add_argument("--seeds", nargs="+", default=None, help="seeds (default: the published ones)")
    p.add_argument("--limit", type=int, default=None, help="images per domain (default: the protocol's; fewer = "
                   "reduced, not comparable)")  # fmt: skip
    p.add_argument("--stand-in", action="store_true", help="the table's stand-in model and data (tests the "
                   "machinery on a CPU; not comparable)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="print the grid (runs, images) and exit without running")
    # the run options it shares with `run`, from their one declaration (the report goes to <out>/parity/); the
    # published tables report no forgetting, so clean evaluation is off unless asked for
    add_run_options(p, EXECUTION_OPTIONS, defaults={"clean_eval": "off"})
    add_set_argument(p, "extra options for every run (e.g. stream.root=PATH, model.weights=PATH)")
    add_force_argument(p)
    add_executor_arguments(p)  # the sweep's (local, ray, slurm); on Slurm it waits for the array (--slurm-wait)


@dataclass(frozen=True)
class Planned:
    """One run of the grid: which cell and role (`method` or `baseline`) it measures, its seed and domain."""

    cell: str
    role: str
    seed: int
    domain: str | None
    cfg: RunConfig


def listing() -> str:
    lines = ["tables (python -m tta_bench reproduce <table>):"]
    for n in names():
        t = load(n)
        p = t.protocol
        settings = sorted({t.cell_protocol(c)["setting"] for c in t.cells})
        split = " (one run per domain)" if p.get("split_domains") else ""
        lines.append(f"  {n:<26} {t.title}")
        lines.append(f"  {'':<26} source: {t.source_text()}")
        lines.append(
            f"  {'':<26} protocol: {p['stream']} / {p['model']} / {' + '.join(settings)}{split}, "
            f"batch {p['batch_size']}, "
            f"{p['samples_per_domain']} images per domain, seeds {' '.join(map(str, p['seeds']))}; "
            f"{len(t.cells)} cells: {', '.join(t.methods())}"
        )
    lines.append("Not included: CCC-medium (Press et al., NeurIPS 2023): its numbers were not found in a readable "
                 "source (the oripress/CCC README has none).")  # fmt: skip
    return "\n".join(lines)


def _seeds(args: argparse.Namespace, table: Table) -> list[int]:
    if not args.seeds:
        return list(table.protocol["seeds"])
    try:
        return [int(s) for s in _names(args.seeds)]
    except ValueError as e:
        raise UserError(f"--seeds takes integers, e.g. --seeds 1 2 3 ({e}).") from None


def _cells(args: argparse.Namespace, table: Table) -> list:
    if not args.methods:
        return list(table.cells)
    wanted = _names(args.methods)
    unknown = [m for m in wanted if m not in table.methods()]
    if unknown:
        raise UserError(
            f"--methods {', '.join(unknown)}: not in table {table.name}, whose adapters are "
            f"{', '.join(table.methods())}. Name some of those (or leave --methods out for all)."
        )
    chosen = [c for c in table.cells if c.method in wanted]
    if not chosen:
        raise UserError(
            f"--methods {', '.join(wanted)}: no cell of table {table.name} is measured with them alone (a baseline "
            f"runs with its cell's method). Name a cell's method: {', '.join(c.method for c in table.cells)}."
        )
    return chosen


def expand(args: argparse.Namespace, table: Table) -> list[Planned]:
    """The table's grid as resolved runs (names, options, the device and folders checked before anything runs)."""
    from tta_bench.identity import resolve

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (images per domain), got {args.limit}.")
    if args.stand_in and not table.stand_in:
        raise UserError(
            f"Table {table.name} has no stand-in (no small model and generated data stand for its stream): run it "
            "at full scale with its data and weights, or reduced with --limit N."
        )
    sets = parse_sets(args.sets)
    seeds, planned = _seeds(args, table), []
    out = str(Path(args.out).resolve())
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    for cell in _cells(args, table):
        p = table.cell_protocol(cell)
        stream, model, preset = p["stream"], p["model"], p.get("preset", "auto")
        stream_opts, model_opts = dict(p.get("stream_opts", {})), dict(p.get("model_opts", {}))
        limit = min(args.limit, p["samples_per_domain"]) if args.limit else p["samples_per_domain"]
        if args.stand_in:
            si = table.stand_in or {}
            stream, model, preset = si["stream"], si["model"], si.get("preset", preset)
            stream_opts, model_opts = {}, {}  # the real stream's and model's options do not apply
            limit = args.limit or si.get("limit", 64)
        domains = p.get("domains") or []
        groups = [[d] for d in domains] if p.get("split_domains") else [domains]
        roles = [("method", cell.method)] + ([("baseline", cell.baseline)] if cell.baseline else [])
        for seed in seeds:
            for role, method in roles:
                for group in groups:
                    s_opts = {**stream_opts, **({"domains": ",".join(group)} if group else {}), **_for(stream, sets)}
                    m_opts = {**(p.get("method_opts", {}) if role == "method" else {}), **sets["method"]}
                    cfg = RunConfig(
                        method=method,
                        stream=stream,
                        model=model,
                        seed=seed,
                        setting=p["setting"],
                        severity=p.get("severity") or 5,
                        batch_size=p["batch_size"],
                        limit=limit,
                        precision=p.get("precision", "fp32"),
                        clean_eval=args.clean_eval,
                        preset=preset,
                        method_opts=m_opts,
                        stream_opts=s_opts,
                        model_opts={**model_opts, **sets["model"]},
                        device=args.device,
                        workers=args.workers,
                        compile=args.compile,
                        channels_last=args.channels_last,
                        data_dir=data_dir,
                        out=out,
                    )
                    domain = group[0] if p.get("split_domains") else None
                    if not planned:  # the device and folders every run shares (each run checks them too)
                        check_device(cfg.device)
                        check_run_paths(cfg)
                    planned.append(Planned(cell.id, role, seed, domain, resolve(cfg)))
    _all_used(sets["stream"], {p.cfg.stream for p in planned})
    return planned


def _for(stream: str, sets: dict) -> dict[str, Any]:
    """The `--set stream.*` options stream `stream` declares: a table whose cells run on several streams (EcoTTA's
    imagenet-c and cifar10-c) takes e.g. `stream.source_dir` for the cells whose stream has it."""
    from tta_bench.streams import stream_options

    return {k: v for k, v in sets["stream"].items() if k in stream_options(stream)}


def _all_used(given: dict[str, Any], streams: set[str]) -> None:
    """UserError for a `--set stream.KEY` that none of the grid's streams declares (a typo is not dropped silently)."""
    from tta_bench.streams import stream_options

    for key in given:
        if not any(key in stream_options(s) for s in streams):
            known = sorted(set().union(*(stream_options(s) for s in streams)))
            raise UserError(
                f"--set stream.{key}: no stream of this grid ({', '.join(sorted(streams))}) has the option '{key}'. "
                f"Their options: {', '.join(known)}."
            )


def plan_text(table: Table, planned: list[Planned]) -> str:
    runs = {json.dumps(asdict(p.cfg), sort_keys=True, default=str) for p in planned}  # no data needed (no run id)
    lines = [f"{table.name}: {len(planned)} cell run(s), {len(runs)} distinct run(s)"]
    images, unsourced = 0, {}
    for p in planned:
        cfg = p.cfg
        images += (cfg.limit or 0) * (1 if p.domain else len(table.cell_protocol(_cell(table, p.cell))["domains"]))
        where = f", domain {p.domain}" if p.domain else ""
        option = missing_source(cfg)
        if option:
            unsourced.setdefault(option, set()).add(p.cell)
        lines.append(
            f"  {p.cell:<20} {p.role:<8} {cfg.method:<12} {cfg.stream}/{cfg.model} {cfg.setting} seed {cfg.seed} "
            f"batch {cfg.batch_size} limit {cfg.limit}{where}"
            + (f"  [fails: no source split, {option}]" if option else "")
        )
    lines.append(f"{images:,} images through the adapters in all")
    for option, cells in unsourced.items():
        lines.append(
            f"missing source split: cell(s) {', '.join(sorted(cells))} run a method with a prepare stage on clean "
            f"source data and will fail (and stay 'missing') unless --set stream.{option}=PATH is given (the "
            "README's Streams section says what it holds)."
        )
    return "\n".join(lines)


def missing_source(cfg: RunConfig) -> str | None:
    """The stream option a planned run still needs for its method's prepare stage (None: none needed or set)."""
    from tta_bench import methods
    from tta_bench.streams import missing_source_option

    return missing_source_option(cfg.stream, cfg.stream_opts) if methods.get(cfg.method).needs_source else None


def _cell(table: Table, cell_id: str):
    return next(c for c in table.cells if c.id == cell_id)


def execute(planned: list[Planned], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the grid's missing runs with the sweep's executors; the failed runs' outcomes."""
    from tta_bench import sweep

    if args.processes < 1:
        raise UserError(f"--processes must be at least 1 (local worker processes), got {args.processes}.")
    from tta_bench.identity import run_id

    configs = list({run_id(p.cfg): p.cfg for p in planned}.values())
    return sweep.execute(configs, args, "reproduce")


def measured(table: Table, planned: list[Planned]) -> dict[str, dict[str, dict[int, float]]]:
    """measured[cell][role][seed] from the completed run folders (split domains: the mean over the domains,
    only when every domain of that seed completed)."""
    from tta_bench import rundir
    from tta_bench.identity import folder as folder_of

    key = table.metric["key"]
    parts: dict[tuple[str, str, int], list[float | None]] = {}
    for p in planned:
        folder = folder_of(p.cfg)
        value = None
        if rundir.is_complete(folder):
            v = rundir.load_summary(folder).get(key)
            value = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        parts.setdefault((p.cell, p.role, p.seed), []).append(value)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for (cell, role, seed), values in parts.items():
        if values and all(v is not None for v in values):
            out.setdefault(cell, {}).setdefault(role, {})[seed] = sum(values) / len(values)  # type: ignore[arg-type]
    return out


def failures(planned: list[Planned], failed: list[dict[str, Any]]) -> dict[str, str]:
    """cell id -> the first line of the first failure among its runs (for the report's `missing` reason)."""
    from tta_bench.identity import folder

    by_folder = {
        o["folder"]: o["error"].strip().splitlines()[0].removeprefix("error: ") for o in failed if o.get("error")
    }
    out: dict[str, str] = {}
    for p in planned:
        msg = by_folder.get(str(folder(p.cfg)))
        if msg and p.cell not in out:
            out[p.cell] = f"{p.cfg.method} failed: {msg}"
    return out


def main(args: argparse.Namespace) -> int:
    if args.table == "list":
        print(listing())
        return 0
    table = load(args.table)
    planned = expand(args, table)
    if args.plan:
        print(plan_text(table, planned))
        return 0
    if args.executor == "slurm":
        args.slurm_wait = True  # the parity report needs the runs' results: wait for the array, then report
    failed = execute(planned, args)
    mode, seeds = ("stand-in" if args.stand_in else "full"), _seeds(args, table)
    errors = failures(planned, failed)
    rows = parity.rows(table, measured(table, planned), mode=mode, limit=args.limit, seeds=seeds, errors=errors)
    if (
        mode == "full"
        and args.limit
        and any(args.limit < table.cell_protocol(c)["samples_per_domain"] for c in table.cells)
    ):
        mode = "reduced"
    rep = parity.report(table, rows, mode=mode, limit=args.limit, seeds=seeds)
    js, cs = parity.write(rep, Path(args.out) / "parity")
    print(parity.text(rep))
    print(f"parity report: {cs} and {js}")
    if failed:
        print(f"reproduce: {len(failed)} run(s) failed (see above); run the same command again to retry them")
        return 1
    return 0
