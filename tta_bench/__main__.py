"""Command line: python -m tta_bench run | list | leaderboard | sweep | make-c (each has --help)."""

from __future__ import annotations

import argparse
import importlib
import sys

from tta_bench.kernel import UserError


def add_run_arguments(p: argparse.ArgumentParser, many: bool = False) -> None:
    """Options shared by `run` and `sweep` (sweep takes lists for method/stream/model/seed)."""
    if not many:
        p.add_argument("--method", required=True, help="adapter name (see `list methods`)")
        p.add_argument("--stream", required=True, help="stream name (see `list streams`)")
        p.add_argument("--model", default=None, help="model name (default: the stream's default model)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--setting", default="continual", help="continual | episodic | gradual | mixed | non-iid")
    p.add_argument("--severity", type=int, default=5, help="corruption severity 1-5 (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="test batch size (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the stream N times (default 1)")
    p.add_argument("--limit", type=int, default=None, help="samples per domain (default: all)")
    p.add_argument("--precision", default="fp32", help="fp32 | amp (bf16 autocast)")
    p.add_argument("--clean-eval", default="domain", help="forgetting measured after every domain | end | off")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
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
    p.add_argument("--force", action="store_true", help="run again even if a completed run folder exists")


def config_kwargs(args: argparse.Namespace) -> dict:
    from tta_bench.config import parse_sets

    sets = parse_sets(args.sets)
    return dict(
        setting=args.setting,
        severity=args.severity,
        batch_size=args.batch_size,
        rounds=args.rounds,
        limit=args.limit,
        precision=args.precision,
        clean_eval=args.clean_eval,
        device=args.device,
        workers=args.workers,
        data_dir=args.data_dir,
        out=args.out,
        method_opts=sets["method"],
        stream_opts=sets["stream"],
        model_opts=sets["model"],
    )


def cmd_run(args: argparse.Namespace) -> int:
    from tta_bench.config import RunConfig
    from tta_bench.report import print_result
    from tta_bench.runner import run

    cfg = RunConfig(method=args.method, stream=args.stream, model=args.model, seed=args.seed, **config_kwargs(args))
    result = run(cfg, force=args.force, quiet=args.quiet)
    print_result(result)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tta_bench.report import list_entries

    print(list_entries(args.what))
    return 0


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tta_bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,leaderboard,sweep,make-c}")
    p = sub.add_parser("run", help="run one method on one stream and write a run folder")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("list", help="list methods, streams, models, corruptions or settings")
    p.add_argument(
        "what", nargs="?", default="all", choices=["all", "methods", "streams", "models", "corruptions", "settings"]
    )
    p.set_defaults(func=cmd_list)
    # Implemented in other packages, each module with add_arguments(parser) and main(args) -> int.
    delegated = {
        "leaderboard": ("leaderboard.cli", "aggregate run folders into CSVs, plots, HTML"),
        "sweep": ("tta_bench.sweep", "run a grid of configs (local or Ray), then the leaderboard"),
        "make-c": ("corruptions.make_c", "write an ImageNet-C / CIFAR-C dataset to disk"),
    }
    chosen = argv[0] if argv else None
    for name, (module, help_) in delegated.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # import the implementation only when that sub-command is used
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run folder has no `done` marker and will be cleared on the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
