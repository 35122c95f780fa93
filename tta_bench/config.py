"""RunConfig: the frozen description of one run; its hash names the run folder.

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
from tta_bench.kernel.options import SCOPES, check_options, coerce, parse_sets, parse_value  # noqa: F401  (re-exported)
from tta_bench.presets import CHOICES as PRESET_CHOICES

SETTINGS = ("continual", "episodic", "gradual", "mixed", "non-iid", "realistic")
PRECISIONS = ("fp32", "amp")
CLEAN_EVAL = ("domain", "end", "off")
# Fields that say where/how a run executes, not what it computes: excluded from the hash.
_EXECUTION_FIELDS = ("device", "data_dir", "out", "workers", "compile", "channels_last")
CHANNELS_LAST = ("auto", "on", "off")
# Fields that only choose defaults of other fields (recorded in config.json, hashed through what they chose).
_CHOOSER_FIELDS = ("preset",)


def data_dir_default() -> Path:
    """`$TTA_BENCH_DATA` or `~/.cache/tta_bench/data`: where streams look for datasets."""
    return Path(os.environ.get("TTA_BENCH_DATA", Path.home() / ".cache" / "tta_bench" / "data"))


def weights_dir_default() -> Path:
    """`$TTA_BENCH_WEIGHTS` or `~/.cache/tta_bench/weights`: downloaded / placed model weights."""
    return Path(os.environ.get("TTA_BENCH_WEIGHTS", Path.home() / ".cache" / "tta_bench" / "weights"))


def cache_dir_default() -> Path:
    """`$TTA_BENCH_CACHE` or `~/.cache/tta_bench/cache`: trained source models, warm-ups, prepares."""
    return Path(os.environ.get("TTA_BENCH_CACHE", Path.home() / ".cache" / "tta_bench" / "cache"))


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_device(device: str) -> None:
    """UserError unless `device` is auto, cpu, mps, cuda[:N] or xpu[:N] (N an index of a visible GPU)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise UserError(f"--device {device!r} is not a device here: use auto, cpu, cuda, cuda:N (N: GPU index) or mps.")
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


def check_writable_folder(path: str | Path, option: str) -> None:
    """UserError when `path` (a folder, created on demand) is under a file or a folder this process cannot write."""
    p = Path(path).expanduser().absolute()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise UserError(f"{option} {path}: {q} is a file, not a folder. Pass a folder (created if missing).")
            if not os.access(q, os.W_OK | os.X_OK):
                raise UserError(f"{option} {path}: {q} is not writable by this user. Pass a folder you can write to.")
            return


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Option dicts hold `--set scope.key=value` overrides."""

    method: str
    stream: str
    model: str | None = None  # None: the stream's default model
    setting: str = "continual"
    severity: int = 5
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None  # samples per domain (None: all)
    rounds: int = 1
    precision: str = "fp32"
    clean_eval: str = "domain"  # forgetting: clean error after every domain | only at the end | off
    # Official method settings: "auto" (the stream's benchmark family) | "none" | a family (tta_bench/presets.py).
    # Not hashed by itself: it acts through the resolved method options, which are.
    preset: str = "auto"
    method_opts: dict[str, Any] = field(default_factory=dict)
    stream_opts: dict[str, Any] = field(default_factory=dict)
    model_opts: dict[str, Any] = field(default_factory=dict)
    # execution details (not hashed)
    device: str = "auto"
    data_dir: str | None = None
    out: str = "runs"
    workers: int = 0
    compile: bool = False  # torch.compile the adapted model (within float tolerance of eager: tta_bench/accel.py)
    # channels-last memory format for the model and batches: auto (on CUDA only) | on | off (float tolerance)
    channels_last: str = "auto"

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise UserError(f"Unknown setting '{self.setting}'. Choose one of: {', '.join(SETTINGS)} (--setting).")
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{self.precision}'. Choose fp32 or amp (--precision).")
        if self.clean_eval not in CLEAN_EVAL:
            raise UserError(f"--clean-eval must be one of {', '.join(CLEAN_EVAL)}, got '{self.clean_eval}'.")
        for name in ("severity", "batch_size", "seed", "rounds", "workers", "limit"):
            v = getattr(self, name)
            whole = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            if not whole and not (name == "limit" and v is None):
                raise UserError(f"--{name.replace('_', '-')} takes a whole number, got {v!r} ({type(v).__name__}).")
        if not 1 <= self.severity <= 5:
            raise UserError(f"Severity must be 1..5, got {self.severity} (--severity).")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be a positive number of samples per domain, got {self.limit}.")
        if self.stream_opts.get("speed_ratio") is not None or "window" in self.stream_opts:
            from tta_bench.protocols import check_stream_options  # lazy: it imports torch

            check_stream_options(self.setting, self.stream_opts)
        if self.preset not in PRESET_CHOICES:
            raise UserError(f"Unknown preset '{self.preset}'. Choose one of: {', '.join(PRESET_CHOICES)} (--preset).")
        if not isinstance(self.compile, bool):
            raise UserError(f"compile must be true or false (--compile), got {self.compile!r}.")
        if self.channels_last not in CHANNELS_LAST:
            raise UserError(
                f"--channels-last must be auto (on for CUDA devices only), on or off, got {self.channels_last!r}."
            )
        for name in ("seed", "workers"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be 0 or more, got {getattr(self, name)}.")
        check_device(self.device)
        check_writable_folder(self.out, "--out")
        if self.data_dir is not None and Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            raise UserError(f"--data-dir {self.data_dir} is a file, not a folder. Pass the datasets folder.")
        self._check_options()

    def _check_options(self) -> None:
        """Range checks of the given `--set` values (types and names are checked when the run resolves)."""
        gamma = self.stream_opts.get("gamma")
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and not gamma > 0:
            raise UserError(
                f"stream.gamma (the Dirichlet concentration of the non-iid setting) must be > 0, got {gamma!r}; small "
                "values give strongly label-correlated order. Example: --set stream.gamma=0.1."
            )
        if self.stream_opts:
            from tta_bench.streams import check_counts  # lazy: streams imports torch

            check_counts(self.stream_opts)
        if self.method_opts:
            from tta_bench import methods  # lazy: the registry imports torch

            cls = methods.get(self.method)
            cls.validate(check_options("method", self.method, self.method_opts, cls.defaults))

    def identity(self) -> dict[str, Any]:
        """The hashed part of the config, JSON-ready."""
        d = asdict(self)
        for k in (*_EXECUTION_FIELDS, *_CHOOSER_FIELDS):
            d.pop(k)
        return d

    def run_id(self) -> str:
        """Short stable hash of the resolved `identity()` (every default filled in), of the stream's data
        fingerprint (files' names, sizes, mtimes) and, when `model.weights` names a file or folder, of its
        fingerprint: the run folder's name (`tta_bench.identity.run_id`).

        Resolving first means `RunConfig(method="tent", stream="digits-c")` and the same config with Tent's
        default lr spelled out name the same folder; a data file changed in place names a new one.
        """
        from tta_bench.identity import run_id  # lazy: resolving loads the registries and opens the stream

        return run_id(self)

    def folder(self) -> Path:
        return Path(self.out) / self.run_id()

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else data_dir_default()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
