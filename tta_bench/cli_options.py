"""The run options shared by the `run` and `sweep` commands: their argparse flags, generated from RunConfig's
declarations (one per option: default, meaning, choices; `tta_bench.config.option`), and the RunConfig fields they
give. Part of the harness (the sweep uses it), so the CLI (`tta_bench.cli`) is imported only by `__main__`.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any

from tta_bench.config import RunConfig
from tta_bench.kernel import UserError, parse_sets


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(f: Field, default: Any = MISSING) -> str:
    """The flag's help from the field's declaration: its meaning, choices and default (the declared one unless
    the command gives its own)."""
    meta, default = f.metadata, f.default if default is MISSING else default
    choices = f" ({' | '.join(meta['choices'])})" if meta["choices"] and " | " not in meta["help"] else ""
    shown = "" if default is MISSING or default is None or isinstance(default, bool) else f"; default {default}"
    return f"{meta['help']}{choices}{shown}"


def declared() -> list[Field]:
    """The RunConfig fields that have a flag of their own (every run option but the `--set` dictionaries)."""
    return [f for f in fields(RunConfig) if f.metadata.get("flag")]


def _add_flag(p: argparse.ArgumentParser, f: Field, required: bool = True, default: Any = MISSING) -> None:
    """The flag of declared run option `f` (its declared default unless `default` is given)."""
    meta = f.metadata
    default = f.default if default is MISSING else default
    text = _help(f, default)
    if f.type in ("bool", bool) or isinstance(f.default, bool):
        p.add_argument(_flag(f.name), action="store_true", help=text)
    elif default is MISSING:
        p.add_argument(_flag(f.name), required=required, default=None, help=text)
    else:
        p.add_argument(_flag(f.name), type=meta["kind"] or str, default=default, help=text)


def add_run_arguments(p: argparse.ArgumentParser, many: bool = False, required: bool = True) -> None:
    """The run options as flags, generated from RunConfig's declarations (`tta_bench.config.option`); `sweep`
    (`many=True`) declares its own list-valued flags for the options marked `many` (method, stream, model, seed).
    `required=False`: the options without a default (method, stream) may come from elsewhere (`run --config`,
    `run --from`); the caller checks they were given."""
    for f in declared():
        if not (many and f.metadata["many"]):
            _add_flag(p, f, required)
    add_set_argument(p, "override an option: method.<hp>, stream.<opt>, model.<opt> (repeatable)")
    p.add_argument(
        "--domains",
        default=None,
        metavar="A,B,C",
        help="run only these domains of the stream, in this order (same as --set stream.domains=A,B,C)",
    )
    add_force_argument(p)


def add_run_options(p: argparse.ArgumentParser, names: tuple[str, ...], defaults: dict[str, Any] | None = None) -> None:
    """Flags for the declared run options `names` only, from the same declarations (`reproduce` takes the execution
    options this way; `defaults` overrides a declared default, e.g. `clean_eval="off"` for published tables)."""
    by_name = {f.name: f for f in declared()}
    for name in names:
        _add_flag(p, by_name[name], default=(defaults or {}).get(name, MISSING))


def add_set_argument(p: argparse.ArgumentParser, help: str) -> None:  # noqa: A002 (argparse's word)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SCOPE.KEY=VALUE", help=help)


def add_force_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="run again even if a completed run folder exists")


def config_kwargs(args: argparse.Namespace) -> dict:
    """The RunConfig keyword arguments the shared options give (all but the `many` ones: method/stream/model/seed,
    which `run` passes itself and `sweep` expands)."""
    sets = parse_sets(args.sets)
    domains = getattr(args, "domains", None)
    if domains is not None:
        given = sets["stream"].get("domains", domains)
        if _domain_names(given) != _domain_names(domains):
            raise UserError(
                f"--domains {domains} and --set stream.domains={given} disagree; give the domains once (either "
                "option), or the same names in the same order in both."
            )
        sets["stream"]["domains"] = domains
    kwargs = {f.name: getattr(args, f.name, f.default) for f in declared() if not f.metadata["many"]}
    given = getattr(args, "file_opts", None) or {}  # from `run --config` / `--from`: the command line's --set wins
    return {**kwargs, **{f"{s}_opts": {**given.get(s, {}), **sets[s]} for s in ("method", "stream", "model")}}


def _domain_names(value: object) -> object:
    """Domain names as a list, whether given as text ("fog, snow") or a list (["fog", "snow"]); others unchanged
    (the stream's own check names them)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(n, str) for n in items):
        return value
    return [n.strip() for n in items if n.strip()]
