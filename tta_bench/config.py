"""RunConfig: the frozen description of one run, a plain value; its resolved identity names the run folder.

`RunConfig(...)` checks only what needs no file and no registry (types, choices, ranges, the `--set` bounds that
hold for any method or stream) and imports no torch; the registries' checks (method, stream, protocol options) and the
file system's (`--set` paths, `--data-dir`) are `tta_bench.identity.resolve`'s, once per run, and the folders a run
writes are checked where it starts (`check_run_paths`, `check_device`: the runner, the CLI).

Only fields that change the numbers enter the hash (not the device, output folder, data location or
worker count), so the same experiment run twice, or on another machine, lands in the same folder.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tta_bench.kernel.errors import UserError
from tta_bench.kernel.options import (
    MAX_BATCH,
    MAX_IMAGES,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SIDE,
    MAX_WORKERS,
    check_float,
    check_int,
    check_path,
)
from tta_bench.presets import CHOICES as PRESET_CHOICES
from tta_bench.settings import SETTINGS as _SETTING_FNS

SETTINGS = tuple(_SETTING_FNS)  # declared once, in tta_bench/settings.py
PRECISIONS = ("fp32", "amp")
CLEAN_EVAL = ("domain", "end", "off")
# Fields that say where/how a run executes, not what it computes: excluded from the hash.
_EXECUTION_FIELDS = ("device", "data_dir", "out", "workers", "compile", "channels_last")
CHANNELS_LAST = ("auto", "on", "off")
# Fields that only choose defaults of other fields (recorded in config.json, hashed through what they chose).
_CHOOSER_FIELDS = ("preset",)


DATA_ENV, WEIGHTS_ENV, CACHE_ENV = "TTA_BENCH_DATA", "TTA_BENCH_WEIGHTS", "TTA_BENCH_CACHE"


def _env_dir(var: str, leaf: str) -> Path:
    """`$var` when set (checked: an empty value, which would mean the current folder, a name too long for the file
    system or a symlink loop is a UserError naming the variable), else `~/.cache/tta_bench/<leaf>`."""
    value = os.environ.get(var)
    if value is None:
        return Path.home() / ".cache" / "tta_bench" / leaf
    return check_path(value, f"${var}", empty=f"Set it to a folder, or unset it for ~/.cache/tta_bench/{leaf}.")


def data_dir_default() -> Path:
    """`$TTA_BENCH_DATA` or `~/.cache/tta_bench/data`: where streams look for datasets."""
    return _env_dir(DATA_ENV, "data")


def weights_dir_default() -> Path:
    """`$TTA_BENCH_WEIGHTS` or `~/.cache/tta_bench/weights`: downloaded / placed model weights."""
    return _env_dir(WEIGHTS_ENV, "weights")


def cache_dir_default() -> Path:
    """`$TTA_BENCH_CACHE` or `~/.cache/tta_bench/cache`: trained source models, warm-ups, prepares."""
    return _env_dir(CACHE_ENV, "cache")


def check_run_paths(cfg: RunConfig) -> None:
    """UserError, before any work, when a folder a run reads or writes is unusable; each named by the option or
    environment variable that set it: `--out` and `$TTA_BENCH_CACHE` must be (or be creatable as) folders this user
    can write (a read-only cache would fail only after the source model is trained), `--data-dir` / `$TTA_BENCH_DATA`
    and `$TTA_BENCH_WEIGHTS` usable paths that are not files. The runner calls it first."""
    check_writable_folder(cfg.out, "--out")
    check_writable_folder(cache_dir_default(), _env_name(CACHE_ENV, "cache"))
    data = ("--data-dir", Path(cfg.data_dir)) if cfg.data_dir is not None else None
    for option, path in (
        data or (_env_name(DATA_ENV, "datasets"), data_dir_default()),
        (_env_name(WEIGHTS_ENV, "weights"), weights_dir_default()),
    ):
        check_writable_folder(path, option, write=False)  # read (a shared read-only store is fine), not under a file


def _env_name(var: str, what: str) -> str:
    """How a message names a default folder: the variable when it is set, else the default it fell back to."""
    return f"${var}" if var in os.environ else f"the {what} folder (default, set with ${var})"


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_device_name(device: str) -> None:
    """UserError unless `device` is spelled auto, cpu, mps, cuda[:N] or xpu[:N] (a pure check: no torch)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise UserError(f"--device {device!r} is not a device here: use auto, cpu, cuda, cuda:N (N: GPU index) or mps.")


def check_device(device: str) -> None:
    """UserError unless `device` is auto, cpu, mps, cuda[:N] or xpu[:N] (N an index of a visible GPU). Asks torch
    when an accelerator is named, so it runs where a run starts (the runner, the CLI), not in RunConfig()."""
    check_device_name(device)
    if device in ("auto", "cpu"):
        return
    import torch  # lazy: only when an accelerator is named

    kind, _, index = device.partition(":")
    backends = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}
    backend = backends[kind]
    if backend is None or not backend.is_available():
        raise UserError(f"--device {device}: PyTorch sees no {kind.upper()} device here. Use --device cpu or auto.")
    n = backend.device_count() if index and hasattr(backend, "device_count") else None
    if n is not None and int(index) >= n:
        raise UserError(f"--device {device}: PyTorch sees {n} {kind.upper()} device(s): use a lower index or cpu.")


def check_writable_folder(path: str | Path, option: str, write: bool = True) -> None:
    """UserError when `path` (a folder, created on demand) is empty, too long, behind a symlink loop, under a file or
    (`write`) a folder this process cannot write; the message names `option` (e.g. "--out" or "$TTA_BENCH_CACHE")."""
    p = check_path(path, option, empty="Pass a folder (created if missing), or leave the option out.").absolute()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise UserError(f"{option} {path}: {q} is a file, not a folder. Pass a folder (created if missing).")
            if write and not os.access(q, os.W_OK | os.X_OK):
                raise UserError(f"{option} {path}: {q} is not writable by this user. Pass a folder you can write to.")
            return


# Ranges of the run's whole-number options: (smallest, largest, what the number means).
RANGES: dict[str, tuple[int, int, str]] = {
    "severity": (1, 5, "corruption severity"),
    "batch_size": (1, MAX_BATCH, "images per batch"),
    "seed": (0, MAX_SEED, "random seed, a signed 64-bit integer"),
    "limit": (1, MAX_IMAGES, "images per domain"),
    "rounds": (1, MAX_ROUNDS, "passes over the stream's domains"),
    "workers": (0, MAX_WORKERS, "DataLoader worker processes"),
}
# Upper bounds of `--set stream.* / model.*` options that count images or pixels, whichever stream or model declares
# them (their lower bounds are the streams' and models' own: tta_bench.streams.COUNT_OPTIONS, the model factories).
SET_BOUNDS: dict[str, tuple[int, str]] = {
    **dict.fromkeys(
        (
            "length",
            "speed",
            "calib_size",
            "clean_size",
            "clean_n",
            "holdout",
            "shots",
            "source_limit",
            "samples",
            "source_size",
        ),
        (MAX_IMAGES, "images"),
    ),
    "window": (MAX_IMAGES, "images per window"),
    **dict.fromkeys(("image_size", "size", "crop", "stride"), (MAX_SIDE, "pixels")),
    "width": (4096, "channels of the first stage; WRN-28-10's widest stage has 640"),
    "blocks": (1000, "residual blocks a stage"),
    "source_epochs": (100_000, "epochs of source training"),
    "batch_size": (MAX_BATCH, "images per training batch"),
    **dict.fromkeys(("seed", "init_seed"), (MAX_SEED, "random seed")),
}
# `--set` options that name files or folders (checked as paths: not empty, not too long, no symlink loop; when the run
# resolves, `tta_bench.identity.check_set_paths`).
PATH_OPTIONS = ("root", "clean_dir", "source_root", "source_dir", "weights", "data_dir")


REQUIRED = object()  # an option without a default (method, stream)


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    flag: bool = True,
    many: bool = False,
    kind: type | None = None,
) -> Any:
    """A RunConfig field declared once: its default, meaning and choices generate the `run`/`sweep` flag
    (`--<name>`), its help text and the check of its value. `many`: `sweep` takes a list of it (its own flag);
    `flag=False`: no flag of its own (set through `--set`); `kind`: the flag's type (int) when not text."""
    meta = {"help": help, "choices": choices, "flag": flag, "many": many, "kind": kind}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: one declaration per option (`option(...)`: default, meaning, choices), from
    which the `run` and `sweep` flags and their help are generated (tta_bench/cli_options.py). Option dicts hold
    `--set scope.key=value` overrides."""

    method: str = option(REQUIRED, "adapter name (see `list methods`)", many=True)
    stream: str = option(REQUIRED, "stream name (see `list streams`)", many=True)
    model: str | None = option(None, "model name (default: the stream's default model)", many=True)
    setting: str = option("continual", "how the stream's domains are ordered", choices=SETTINGS)
    severity: int = option(5, "corruption severity 1-5", kind=int)
    batch_size: int = option(64, "test batch size", kind=int)
    seed: int = option(0, "random seed", many=True, kind=int)
    limit: int | None = option(None, "samples per domain (default: all)", kind=int)
    rounds: int = option(1, "repeat the stream N times", kind=int)
    precision: str = option("fp32", "numeric precision (amp: bf16 autocast)", choices=PRECISIONS)
    clean_eval: str = option("domain", "forgetting: clean error after every domain | only at the end | off",
                             choices=CLEAN_EVAL)  # fmt: skip
    # Official method settings: "auto" (the stream's benchmark family) | "none" | a family (tta_bench/presets.py).
    # Not hashed by itself: it acts through the resolved method options, which are.
    preset: str = option("auto", "official method settings: auto = the stream's benchmark family's, none = class "
                         "defaults, or a family's; --set method.<hp>= still wins", choices=PRESET_CHOICES)  # fmt: skip
    method_opts: dict[str, Any] = option({}, "--set method.<hp>=value overrides", flag=False)
    stream_opts: dict[str, Any] = option({}, "--set stream.<opt>=value overrides", flag=False)
    model_opts: dict[str, Any] = option({}, "--set model.<opt>=value overrides", flag=False)
    # execution details (not hashed)
    device: str = option("auto", "auto | cpu | cuda[:N]")
    data_dir: str | None = option(None, "datasets root (default $TTA_BENCH_DATA or ~/.cache/tta_bench/data)")
    out: str = option("runs", "folder for run folders")
    workers: int = option(0, "DataLoader worker processes", kind=int)
    # torch.compile the adapted model (within float tolerance of eager: tta_bench/accel.py)
    compile: bool = option(False, "torch.compile the adapted model (falls back to eager with a warning)")
    # channels-last memory format for the model and batches: auto (on CUDA only) | on | off (float tolerance)
    channels_last: str = option("auto", "channels-last memory format for model and batches: auto (CUDA only) | on | "
                                "off; on speeds up depthwise-conv models on CPU (EfficientNet ~1.9x), results within "
                                "float tolerance", choices=CHANNELS_LAST)  # fmt: skip

    def __post_init__(self) -> None:
        if self.model == "" or not isinstance(self.model, (str, type(None))):
            raise UserError(
                f"--model is {self.model!r} (an unset shell variable?): name a model (see `list models`), or leave "
                "--model out for the stream's default model."
            )
        for f in fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if choices and value not in choices:
                flag = "--" + f.name.replace("_", "-")
                raise UserError(f"Unknown {f.name.replace('_', ' ')} {value!r}. Choose one of: {', '.join(choices)} "
                                f"({flag}).")  # fmt: skip
        for name, (low, high, what) in RANGES.items():
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), low, high, what, none_ok=name == "limit")
        if not isinstance(self.compile, bool):
            raise UserError(f"compile must be true or false (--compile), got {self.compile!r}.")
        check_device_name(self.device)
        self._check_options()

    def _check_options(self) -> None:
        """The bounds of the given `--set` values that hold whatever the method, stream and model are (pure
        functions of the values); names, types and the registered classes' own ranges are checked once, when the
        run resolves (`tta_bench.identity.resolve`)."""
        gamma = self.stream_opts.get("gamma")
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
            what = (
                "the Dirichlet concentration of the non-iid setting; small values give strongly label-correlated order"
            )
            check_float("stream.gamma", gamma, 0.0, 1e6, what, low_open=True)
        for scope, opts in (("stream", self.stream_opts), ("model", self.model_opts), ("method", self.method_opts)):
            for key, value in opts.items():
                self._check_set(scope, key, value)

    @staticmethod
    def _check_set(scope: str, key: str, value: Any) -> None:
        """The harness-wide bounds of one `--set scope.key` value: SET_BOUNDS, else every whole number (a count or
        size: method steps, augmentations, queue sizes, ...) fits a signed 32-bit integer. (PATH_OPTIONS are checked
        as paths when the run resolves: that reads the file system.)"""
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            high, what = SET_BOUNDS.get(key, (MAX_IMAGES, "a count or size, a signed 32-bit integer"))
            if value > high:
                option = f"--set {scope}.{key}"
                raise UserError(f"{option}={value:,} is too large: at most {high:,} ({what}). Pass a smaller number.")

    def identity(self) -> dict[str, Any]:
        """The hashed part of the config, JSON-ready."""
        d = asdict(self)
        for k in (*_EXECUTION_FIELDS, *_CHOOSER_FIELDS):
            d.pop(k)
        return d

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else data_dir_default()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
