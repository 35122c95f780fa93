"""Command line: python -m tta_bench run | list | leaderboard | sweep | make-c | reproduce (each has --help)."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from tta_bench.cli_options import add_run_arguments, config_kwargs
from tta_bench.kernel import UserError


def cmd_run(args: argparse.Namespace) -> int:
    from tta_bench.config import RunConfig

    cfg = RunConfig(method=args.method, stream=args.stream, model=args.model, seed=args.seed, **config_kwargs(args))
    check_names([cfg.method], [cfg.stream], [cfg.model] if cfg.model else None, config_kwargs(args))
    from tta_bench.report import print_result  # torch from here on: the config and names are checked
    from tta_bench.runner import run

    result = run(cfg, force=args.force, quiet=args.quiet)
    print_result(result)
    record = getattr(args, "loaded", None)
    if (
        record is not None
        and record.run_id
        and result.folder.name != record.run_id
        and cfg.identity() == record.identity
    ):
        print(
            f"warning: {args.from_folder} recorded run id {record.run_id}; the same options now give "
            f"{result.folder.name}: the stream's data (its fingerprint is in config.json) or the code changed since.",
            file=sys.stderr,
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tta_bench.report import list_entries

    print(list_entries(args.what, verbose=args.verbose))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The sweep, then (unless --no-leaderboard) the leaderboard of its --out folder: only the CLI joins the two."""
    from tta_bench import sweep

    models = _split(args.models) if args.models else None
    check_names(_split(args.methods), _split(args.streams), models, config_kwargs(args))
    status = sweep.main(args)
    if not args.no_leaderboard:
        from tta_bench.leaderboard.cli import build_and_report

        print(build_and_report(Path(args.out), Path(args.site)))
    return status


def cmd_reproduce(args: argparse.Namespace) -> int:
    """A published table's grid and parity report, then (unless --no-leaderboard) the leaderboard of --out."""
    from tta_bench.reproduce import command

    status = command.main(args)
    if args.table != "list" and not args.plan and not args.no_leaderboard:
        from tta_bench.leaderboard.cli import build_and_report

        print(build_and_report(Path(args.out), Path(args.site)))
    return status


def _split(values: list[str]) -> list[str]:
    """`["a,b", "c"]` -> `["a", "b", "c"]` (sweep lists are space- or comma-separated)."""
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def check_names(methods: list[str], streams: list[str], models: list[str] | None, opts: dict) -> None:
    """An unknown method / stream / model name, or an unknown `--set` option of one, is the registry's own UserError
    (the same message: close matches, known names), told without importing torch when the cached catalogue matches
    the code (`tta_bench.catalogue`); otherwise nothing is checked here and the run checks them when it resolves.
    `models` None: each stream's default model; `opts`: `method_opts`, `stream_opts`, `model_opts` as given.
    Options that name paths are left to the run (it checks the path first, whether or not the option exists)."""
    from tta_bench import catalogue
    from tta_bench.config import PATH_OPTIONS
    from tta_bench.kernel import check_options, unknown_name

    cat = catalogue.cached()
    if cat is None:
        return
    models = models if models is not None else [cat["default_model"].get(s) for s in streams]
    for kind, names in (("method", methods), ("stream", streams), ("model", models)):
        known = [r[0] for r in cat["sections"][f"{kind}s"]]
        for name in names:
            if name not in known:
                raise unknown_name(kind, name, known, f"python -m tta_bench list {kind}s")
    for kind, names in (("method", methods), ("stream", streams), ("model", models)):
        given = {k: v for k, v in (opts.get(f"{kind}_opts") or {}).items() if k not in PATH_OPTIONS}
        for name in names if given else ():
            check_options(kind, name, given, dict.fromkeys(cat["options"][kind][name]))  # unknown keys only


def _add_leaderboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", default="leaderboard_site", help="leaderboard site folder (default leaderboard_site/)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not regenerate the leaderboard at the end")


# Sub-commands implemented in other packages, each module with add_arguments(parser) and main(args) -> int:
# name -> (module, help, what the CLI runs: None for the module's main, or a command that runs it and then builds
# the leaderboard of --out, which also gets --site and --no-leaderboard).
DELEGATED = {
    "leaderboard": ("tta_bench.leaderboard.cli", "aggregate run folders into CSVs, plots, HTML", None),
    "sweep": ("tta_bench.sweep", "run a grid of configs (local, Ray or Slurm), then the leaderboard", cmd_sweep),
    "make-c": ("tta_bench.corruptions.make_c", "write an ImageNet-C / CIFAR-C dataset to disk", None),
    "reproduce": ("tta_bench.reproduce.command", "rerun a published table and report parity with it", cmd_reproduce),
}


def build_parser(argv: list[str], run_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; only the chosen sub-command's module is imported (`--help` and `list` stay light).
    `run_defaults`: defaults of the `run` options read from `--config` / `--from` (the command line overrides)."""
    parser = argparse.ArgumentParser(prog="python -m tta_bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,leaderboard,sweep,make-c,reproduce}")
    p = sub.add_parser("run", help="run one method on one stream and write a run folder")
    add_run_arguments(p, required=False)  # --method/--stream may come from --config/--from: checked in main()
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        metavar="FILE",
        help="read the run options from FILE (.yaml, .yml or .json: a mapping whose keys are the options above "
        "without --, e.g. method: tent, batch_size: 64, set: [method.lr=1e-4], or method_opts: {lr: 1e-4}); "
        "options given on the command line override the file",
    )
    source.add_argument(
        "--from",
        dest="from_folder",
        metavar="RUN_FOLDER",
        help="re-run what RUN_FOLDER/config.json records (same options, same run id; --out defaults to the folder's "
        "parent, so a complete run is found, or run again with --force); options given here override the record",
    )
    p.set_defaults(func=cmd_run, **(run_defaults or {}))
    parser.run_parser = p  # type: ignore[attr-defined]  (main() names its missing options)
    p = sub.add_parser("list", help="list methods, streams, models, corruptions or settings")
    p.add_argument(
        "what", nargs="?", default="all", choices=["all", "methods", "streams", "models", "corruptions", "settings"]
    )
    p.add_argument("-v", "--verbose", action="store_true", help="methods: every option with its default and meaning")
    p.set_defaults(func=cmd_list)
    chosen = argv[0] if argv else None
    for name, (module, help_, then_leaderboard) in DELEGATED.items():
        p = sub.add_parser(name, help=help_)
        if name != chosen:  # import the implementation only when that sub-command is used
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
        if then_leaderboard is not None:
            _add_leaderboard_arguments(p)
            p.set_defaults(func=then_leaderboard)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line's arguments; for `run --config FILE` / `--from RUN_FOLDER`, the file's options as the
    defaults of the flags (UserError for a bad file). A `run` without --method/--stream is argparse's usage error."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command != "run":
        return args
    if args.config is not None or args.from_folder is not None:
        from tta_bench import run_files

        keys = run_files.run_keys(parser.run_parser)
        if args.config is not None:
            loaded = run_files.load_config(args.config, keys)
        else:
            loaded = run_files.load_run_folder(args.from_folder, keys)
        defaults = {**loaded.defaults, "file_opts": loaded.file_opts, "loaded": loaded}
        parser = build_parser(argv, run_defaults=defaults)
        args = parser.parse_args(argv)
    missing = [flag for flag, value in (("--method", args.method), ("--stream", args.stream)) if value is None]
    if missing:
        parser.run_parser.error(
            f"the following arguments are required: {', '.join(missing)} (on the command line, in --config FILE, or "
            "from a run folder: --from RUN_FOLDER)"
        )
    return args


# OSErrors that mean "this path cannot be used here", which the user fixes (not bugs).
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                       errno.ENAMETOOLONG, errno.ELOOP}  # fmt: skip

# Options of any command, checked before it runs (argparse dest -> option): paths, and whole numbers with their
# ranges (`tta_bench.config.RANGES` for the run options, shared by every command that declares them).
_PATH_OPTIONS = {"out": "--out", "data_dir": "--data-dir", "runs": "--runs", "src": "--src", "site": "--site"}
_ENV_COMMANDS = ("run", "sweep", "reproduce")  # commands that read $TTA_BENCH_DATA / _WEIGHTS / _CACHE


def check_args(args: argparse.Namespace) -> None:
    """UserError (one paragraph naming the option or environment variable) for a path option that is empty, too
    long for the file system or behind a symlink loop; a whole-number option outside its range; a bad
    `$TTA_BENCH_PROGRESS_INTERVAL`; and, for the commands that run, a bad `$TTA_BENCH_DATA/WEIGHTS/CACHE`."""
    from tta_bench.config import RANGES, cache_dir_default, data_dir_default, weights_dir_default
    from tta_bench.kernel.options import MAX_WORKERS, check_float, check_int, check_path
    from tta_bench.kernel.progressbar import interval

    for dest, option in _PATH_OPTIONS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str):
            required = args.command == "make-c" and dest in ("src", "out")
            path = check_path(value, option, empty="Pass a folder" + ("." if required else f", or leave {option} out."))
            setattr(args, dest, str(path))  # `--out=~/runs` (no shell expansion after '='): the home folder's runs/
    ranges = {**RANGES, "processes": (1, MAX_WORKERS, "worker processes")}
    for dest, (low, high, what) in ranges.items():
        value = getattr(args, dest, None)
        if isinstance(value, int) and not isinstance(value, bool):
            check_int(f"--{dest.replace('_', '-')}", value, low, high, what)
    if getattr(args, "gpus_per_run", None) is not None:
        check_float("--gpus-per-run", args.gpus_per_run, 0.0, 1024.0, "GPUs each Ray task reserves")
    interval()
    if os.environ.get("TTA_BENCH_DEVICE_DATA", "") not in ("", "0", "1"):
        raise UserError(
            f"$TTA_BENCH_DEVICE_DATA={os.environ['TTA_BENCH_DEVICE_DATA']!r}: set it to 1 (corrupt generated images "
            "on the device) or 0 (in the loader), or unset it for the default (on the device for CUDA only)."
        )
    if args.command in _ENV_COMMANDS:
        data_dir_default(), weights_dir_default(), cache_dir_default()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if hasattr(sys.stdout, "reconfigure"):  # a path with undecodable bytes prints escaped, never a UnicodeEncodeError
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        args = parse(argv)
        check_args(args)
        return int(args.func(args) or 0)
    except UserError as e:
        msg = str(e)
        if "\nOriginal Traceback" in msg:  # re-raised from a DataLoader worker: the worker's own message only
            msg = msg.rstrip().splitlines()[-1].partition(": ")[2] or msg
        print("error: " + " ".join(map(_shorten, msg.split())), file=sys.stderr)  # one paragraph, whatever it holds
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the environment refused a path (permissions, a file where a folder belongs, disk full)
        if e.errno not in _ENVIRONMENT_ERRNOS or not e.filename:
            raise  # anything else (e.g. a missing file the code should have checked) is a bug: keep its traceback
        where = _set_by(e.filename) or (
            "Check the paths given (--out, --data-dir, --src, --runs or a --set ...=PATH option)"
        )
        print(
            f"error: cannot write or read {_shorten(os.fsdecode(e.filename))}: {e.strerror}. {where}: folders must be "
            "folders (not files) this user may write, on a disk with free space.",
            file=sys.stderr,
        )
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's allocation failures are RuntimeErrors (OutOfMemoryError)
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise
        print(
            "error: out of memory: the run asked for more memory than this machine has (" + _first_line(e) + "). "
            "Lower --batch-size or --workers, or the sizes given with --set (e.g. model.width, stream.image_size), "
            "or run on a machine with more memory.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: completed results are untouched; the unfinished run's private temporary folder is removed "
            "on the next run",
            file=sys.stderr,
        )
        return 130


def _out_of_memory(e: BaseException) -> bool:
    """True for torch's failed allocations (CPU: "can't allocate memory"; CUDA/MPS: "out of memory")."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def _shorten(word: str, most: int = 300) -> str:
    """A word of a message, its middle elided when it is longer than `most` characters (a pasted 100,000-character
    value is named, not repeated)."""
    return word if len(word) <= most else f"{word[:120]}...({len(word):,} characters)...{word[-60:]}"


def _set_by(filename: str | bytes) -> str | None:
    """ "It is under $VAR (folder)" when `filename` lies in the folder an environment variable set, else None."""
    from tta_bench.config import CACHE_ENV, DATA_ENV, WEIGHTS_ENV

    path = os.path.abspath(os.fsdecode(filename))
    for var in (CACHE_ENV, WEIGHTS_ENV, DATA_ENV):
        folder = os.environ.get(var)
        if folder and (path == os.path.abspath(folder) or path.startswith(os.path.abspath(folder) + os.sep)):
            return f"It is under ${var} ({folder}); set ${var} to another folder, or fix this one"
    return None
