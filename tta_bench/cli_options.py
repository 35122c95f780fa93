"""The run options shared by the `run` and `sweep` commands: their argparse definitions and the RunConfig fields
they give. Part of the harness (the sweep uses it), so the CLI (`tta_bench.cli`) is imported only by `__main__`.
"""

from __future__ import annotations

import argparse

from tta_bench.kernel import UserError, parse_sets


def add_run_arguments(p: argparse.ArgumentParser, many: bool = False) -> None:
    """Options shared by `run` and `sweep` (sweep takes lists for method/stream/model/seed)."""
    if not many:
        p.add_argument("--method", required=True, help="adapter name (see `list methods`)")
        p.add_argument("--stream", required=True, help="stream name (see `list streams`)")
        p.add_argument("--model", default=None, help="model name (default: the stream's default model)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--setting", default="continual", help="continual | episodic | gradual | mixed | non-iid | realistic"
    )
    p.add_argument("--severity", type=int, default=5, help="corruption severity 1-5 (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="test batch size (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the stream N times (default 1)")
    p.add_argument("--limit", type=int, default=None, help="samples per domain (default: all)")
    p.add_argument("--precision", default="fp32", help="fp32 | amp (bf16 autocast)")
    p.add_argument("--clean-eval", default="domain", help="forgetting measured after every domain | end | off")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the adapted model (falls back to eager with a warning)"
    )
    p.add_argument(
        "--channels-last",
        default="auto",
        help="channels-last memory format for model and batches: auto (CUDA only, default) | on | off; "
        "on speeds up depthwise-conv models on CPU (EfficientNet ~1.9x), results within float tolerance",
    )
    p.add_argument(
        "--data-dir", default=None, help="datasets root (default $TTA_BENCH_DATA or ~/.cache/tta_bench/data)"
    )
    p.add_argument("--out", default="runs", help="folder for run folders (default runs/)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SCOPE.KEY=VALUE",
        help="override an option: method.<hp>, stream.<opt>, model.<opt> (repeatable)",
    )
    p.add_argument(
        "--preset",
        default="auto",
        help="official method settings: auto (those of the stream's benchmark family, default) | none (class "
        "defaults) | cifar10-c | cifar100-c | imagenet-c | segmentation; --set method.<hp>= still wins",
    )
    p.add_argument(
        "--domains",
        default=None,
        metavar="A,B,C",
        help="run only these domains of the stream, in this order (same as --set stream.domains=A,B,C)",
    )
    p.add_argument("--force", action="store_true", help="run again even if a completed run folder exists")


def config_kwargs(args: argparse.Namespace) -> dict:
    """The RunConfig keyword arguments the shared options give (all but method/stream/model/seed)."""
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
    return dict(
        setting=args.setting,
        severity=args.severity,
        batch_size=args.batch_size,
        rounds=args.rounds,
        limit=args.limit,
        precision=args.precision,
        clean_eval=args.clean_eval,
        preset=getattr(args, "preset", "auto"),
        device=args.device,
        workers=args.workers,
        compile=getattr(args, "compile", False),
        channels_last=getattr(args, "channels_last", "auto"),
        data_dir=args.data_dir,
        out=args.out,
        method_opts=sets["method"],
        stream_opts=sets["stream"],
        model_opts=sets["model"],
    )


def _domain_names(value: object) -> object:
    """Domain names as a list, whether given as text ("fog, snow") or a list (["fog", "snow"]); others unchanged
    (the stream's own check names them)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(n, str) for n in items):
        return value
    return [n.strip() for n in items if n.strip()]
