"""The Adapter contract and the pieces adapters share (entropy, BN helpers, EMA, optimizers).

An `Adapter` wraps a model. `forward(x)` returns predictions (logits `(N,C)`, or dense logits
`(N,C,H,W)` for segmentation) **and adapts as a side effect**, Tent-style, so an adapter is a drop-in
model in anyone's loop. It owns `reset()` (restore the exact source state), declares its
hyper-parameters with defaults in the class attribute `defaults`, and says which parameters it trains
(`trainable_parameters()`). No adapter reads a global config, a dataset name or a file path.

Optional stage: `prepare(source)` (a warm-up / finetuning on clean source data before the stream);
adapters that need it set `needs_source = True`, and may expose one step of it as a module (`prepare_step()`)
for the harness's memory figure. Prediction without adaptation (used by the harness to measure forgetting on
clean data) is `predict(x)`; subclasses customise it through `infer(x)`.

The caller's model is never changed: `Adapter(model, **hp)` wraps a deep copy of it (parameters, buffers,
hooks and all), so everything an adapter does (training weights, dropping or swapping BN layers, adding
forward hooks, changing modes and requires_grad) happens to the copy, and a second adapter built on the same
`model` starts from the same untouched source. `Adapter(model, inplace=True, **hp)` opts out: no copy (one
set of weights less in memory), and `model` *is* `adapter.model`, adapted and changed in place (the harness
does this: it builds a model for the adapter alone). tests/test_adapter_contract.py checks both for every
registered adapter.

State the harness reads or restores: `source_state` (what `reset()` restores; `snapshot()` retakes it, e.g.
after `prepare`), `optimizer` (or None), `trainable_parameters()`. Adapters import from `tta_bench` only
`tta_bench.kernel`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError, check_options
from tta_bench.methods._doc import COMMON_OPTION_DOCS, document

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
NORM_TYPES = BN_TYPES + (nn.LayerNorm, nn.GroupNorm)


class NothingToAdapt(UserError):
    """The model has no parameter of the kind the adapter trains (raised by make_optimizer, named by Adapter)."""


@dataclass(frozen=True)
class Opt:
    """One adapter option, declared once: its default, its meaning and (optionally) its valid values.

    `range` is a spec of the range language (see `Adapter.ranges`) or a tuple of choices; None means "any value of
    the default's type" (or the common range of a shared key such as `lr`, see COMMON_RANGES).
    """

    default: Any
    help: str = ""
    range: Any = None


def opt(default: Any, help: str = "", range: Any = None) -> Opt:  # noqa: A002 (the natural names)
    """Declare an option: `options = {"steps": opt(1, "optimizer steps per test batch", ">=1")}`."""
    return Opt(default, help, range)


class Adapter(nn.Module):
    """Base class: subclasses declare `options`, override `configure()` and `adapt(x)`."""

    name: ClassVar[str] = ""  # registry name, set by methods.register
    # The single declaration of the adapter's options: {name: opt(default, meaning, range)}, in the order shown by
    # listings. `defaults`, `ranges` and `option_docs` below are derived from it when the class is created (an
    # adapter declares `options`, not those three; a class that still sets `defaults` by hand keeps working, with
    # `ranges`/`option_docs` of its own). Optimizer options come from `optimizer_options(...)`.
    options: ClassVar[dict[str, Opt]] = {}
    defaults: ClassVar[dict[str, Any]] = {}
    needs_source: ClassVar[bool] = False  # prepare(source) must run before the stream
    episodic: ClassVar[bool] = False  # reset before every batch (Tent's episodic flag)
    # Official settings per benchmark family ("cifar10-c", "cifar100-c", "imagenet-c", "segmentation"):
    # {family: {"source": "<owner/repo>:<path>[@<commit>]", "options": {hp: value, ...}}}. The harness applies the
    # preset of the stream's family on top of `defaults` (user --set overrides win); library use keeps `defaults`.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Valid values of numeric / choice hyper-parameters beyond their type, {key: spec}. The range language, in full:
    #   ">=a"   a or more          ">a"   more than a          (a: any float literal, e.g. ">=1", ">0", ">=1e-8")
    #   "[a,b]" a..b, both ends    "[a,b)" "(a,b]" "(a,b)"  the same with an open end (e.g. "[0,1)", "(0,1]")
    #   (c1, c2, ...)  one of these choices (strings or numbers, compared with ==)
    # A tuple or list value (e.g. Adam's betas) is checked element by element; NaN and booleans are never in a
    # numeric range; None is allowed where the default is None. Merged over COMMON_RANGES (lr, steps, betas, ...);
    # checked by `validate()` at construction and by the harness before a run starts (a one-line error, not a crash
    # later); `range_text()` renders a spec in messages. tests/test_adapter_contract.py checks every form.
    ranges: ClassVar[dict[str, Any]] = {}
    # {option: one-line meaning}; shown by help(Cls), IDEs (a generated "Options" docstring section and keyword
    # signature, methods/_doc.py) and `python -m tta_bench list methods -v`. Optimizer keys are documented already.
    option_docs: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "options" in own:
            clash = [k for k in ("defaults", "ranges", "option_docs") if k in own]
            if clash:  # a programming error in the adapter: two declarations of the same facts
                raise TypeError(f"{cls.__name__} declares `options` and {clash}: declare each option once")
            bad = [k for k, o in cls.options.items() if not isinstance(o, Opt)]
            if bad:
                raise TypeError(f"{cls.__name__}.options{bad}: declare each option with opt(default, meaning, range)")
            cls.defaults = {k: o.default for k, o in cls.options.items()}
            cls.ranges = {k: o.range for k, o in cls.options.items() if o.range is not None}
            cls.option_docs = {k: o.help for k, o in cls.options.items() if o.help}
        document(cls)

    def __init__(self, model: nn.Module, *, inplace: bool = False, **hparams: Any) -> None:
        """Wrap `model` (a deep copy of it unless `inplace=True`: the caller's model is never changed).

        `inplace=True` adapts `model` itself and saves one copy of its weights (for memory-bound users and for
        the harness, which builds a model for the adapter alone).
        """
        super().__init__()
        self.hp = SimpleNamespace(**check_options("method", self.name or type(self).__name__, hparams, self.defaults))
        self.validate(vars(self.hp))
        self.model = model if inplace else copy.deepcopy(model)
        self.optimizer: torch.optim.Optimizer | None = None
        try:
            self.configure()
        except NothingToAdapt as e:
            raise UserError(f"method '{self.name or type(self).__name__}': {e}") from None
        self.reset_state()  # non-tensor state starts as reset() leaves it: configure() need not call it
        self.snapshot()

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        """UserError naming the first option of `hp` (type-checked values) outside its declared range."""
        for key, value in hp.items():
            spec = cls.ranges.get(key, COMMON_RANGES.get(key)) if key in cls.defaults else None
            if spec is not None and value is not None and not in_range(value, spec):
                d = cls.defaults[key]
                example = str(list(d)).replace(" ", "") if isinstance(d, tuple) else d
                raise UserError(
                    f"method '{cls.name or cls.__name__}' option '{key}' must be {range_text(spec)}, got {value!r}. "
                    f"Example: --set method.{key}={example}."
                )

    # --- to override -------------------------------------------------------------------------------
    def configure(self) -> None:
        """Put the model in its adaptation mode and create `self.optimizer` (if any)."""

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """One adaptation step on batch `x`; returns the predictions for `x`."""
        return self.model(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions of the current state, without adapting (called under no_grad)."""
        return self.model(x)

    def prepare(self, source: Iterable) -> None:
        """Optional stage before the stream (warm-up on source batches `(x, y)`); default: nothing."""

    def reset_state(self) -> None:
        """Reset non-tensor state (queues, memory banks, counters): called after `configure()` at construction and
        by `reset()`, so an adapter sets such state here only."""

    def prepare_step(self) -> nn.Module | None:
        """One step of `prepare` as a module, or None when the adapter has no prepare step.

        Its `forward(x)` runs one step (forward, loss, backward, optimizer step) on a batch `x` of source images;
        it exposes `trainable_parameters()` and `optimizer` like an adapter, so the harness measures its memory
        (`adapt_mb` of the prepare stage) with the same tool as a stream step. Adapters never measure memory
        themselves (methods/ imports nothing of the harness).
        """
        return None

    # --- the contract --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.episodic:
            self.reset()
        with torch.enable_grad():  # adapt even when the caller runs under torch.no_grad()
            return self.adapt(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions without any side effect: buffers (e.g. BN running stats) are restored afterwards."""
        saved = [(b, b.clone()) for b in self.buffers()]
        out = self.infer(x)
        for b, v in saved:
            b.copy_(v)
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters this adapter updates (those with requires_grad)."""
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self) -> None:
        """Restore the exact state after construction (or after `prepare`): tensors, optimizer, queues."""
        with torch.no_grad():
            for k, t in self.state_dict(keep_vars=True).items():
                t.copy_(self._source[k])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._optim_source))
        self.reset_state()

    def snapshot(self) -> None:
        """Remember the current state as the one reset() returns to (the harness calls it again after prepare)."""
        self._source = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self._optim_source = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None

    @property
    def source_state(self) -> dict[str, torch.Tensor]:
        """The snapshot reset() restores: `state_dict()` keys (e.g. `model.<param name>`) -> tensors. Read-only use."""
        return self._source

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self.hp).items())


# --- hyper-parameter ranges --------------------------------------------------------------------------
COMMON_RANGES: dict[str, Any] = {
    "lr": ">=0", "wd": ">=0", "momentum": ">=0", "betas": "[0,1)", "steps": ">=1",
    "epochs": ">=0", "warmup_epochs": ">=0", "warmup_lr": ">=0", "optimizer": ("adam", "sgd", "adamw"),
}  # fmt: skip


def in_range(value: Any, spec: Any) -> bool:
    """`value` (a number, a tuple of numbers, or a choice) satisfies `spec` (see `Adapter.ranges`)."""
    if isinstance(spec, tuple):
        return value in spec
    if isinstance(value, (tuple, list)):
        return all(in_range(v, spec) for v in value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # NaN is never in range
        return False
    if spec.startswith(">="):
        return value >= float(spec[2:])
    if spec.startswith(">"):
        return value > float(spec[1:])
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    return (lo <= value if spec[0] == "[" else lo < value) and (value <= hi if spec[-1] == "]" else value < hi)


def range_text(spec: Any) -> str:
    if isinstance(spec, tuple):
        return "one of " + ", ".join(repr(c) for c in spec)
    if spec[0] in "[(":
        return "in " + spec.replace(",", ", ")
    return spec.replace(">=", ">= ") if spec.startswith(">=") else spec.replace(">", "> ")


# --- shared helpers ------------------------------------------------------------------------------------
def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along `dim`; computed in float32. Shape: logits without `dim`."""
    logits = logits.float()
    return -(logits.softmax(dim) * logits.log_softmax(dim)).sum(dim)


def softmax_entropy_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy over samples (and pixels, for dense `(N,C,H,W)` logits)."""
    return entropy(logits, 1).mean()


def bn_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, BN_TYPES))


def use_batch_stats(model: nn.Module) -> None:
    """Normalise every BN layer with the current batch's statistics only (Tent / BN-adapt).

    Running statistics are dropped (track_running_stats=False, buffers None) so that train-mode BN
    neither reads nor writes them; the rest of the model stays in eval mode (dropout off).
    """
    model.eval()
    for _, m in bn_layers(model):
        m.train()
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None


def norm_affine_params(model: nn.Module, types: tuple = NORM_TYPES) -> list[nn.Parameter]:
    """Affine weights and biases of normalisation layers (Tent's `collect_params`), model order."""
    out = []
    for _, m in model.named_modules():
        if isinstance(m, types):
            out += [p for p in (m.weight, m.bias) if p is not None]
    return out


def train_only(model: nn.Module, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every parameter of `model` except `params` (returned as a list)."""
    params = list(params)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


def optimizer_defaults(
    optimizer: str = "adam",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    wd: float = 0.0,
    nesterov: bool = False,
) -> dict[str, Any]:
    """Every optimizer key with its default, for classes that set `defaults` by hand (new adapters declare
    `options = {**optimizer_options(...), ...}` instead, which keeps only the keys of the optimizers they use)."""
    return {"optimizer": optimizer, "lr": lr, "betas": betas, "momentum": momentum, "wd": wd, "nesterov": nesterov}


OPTIMIZER_KEYS = tuple(optimizer_defaults())
# The keys each optimizer reads (besides `optimizer` itself).
KEYS_OF_OPTIMIZER: dict[str, tuple[str, ...]] = {
    "adam": ("lr", "betas", "wd"),
    "adamw": ("lr", "betas", "wd"),
    "sgd": ("lr", "momentum", "wd", "nesterov"),
}


def optimizer_options(
    optimizer: str = "adam",
    lr: float = 1e-3,
    *,
    also: tuple[str, ...] = (),
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    wd: float = 0.0,
    nesterov: bool = False,
) -> dict[str, Opt]:
    """The optimizer options of an adapter that uses `optimizer` (and the optimizers in `also`, e.g. those its
    presets switch to): `optimizer` with exactly those choices, and only the keys they read, in a fixed order.

    Use: `options = {**optimizer_options("sgd", lr=0.00025), "steps": opt(1, "...", ">=1")}`. An Adam-only
    method has no `momentum`/`nesterov` option, an SGD-only one no `betas`.
    """
    used = (optimizer, *(o for o in also if o != optimizer))
    unknown = [o for o in used if o not in KEYS_OF_OPTIMIZER]
    if unknown:
        raise TypeError(f"optimizer_options: unknown optimizer(s) {unknown}; known: {sorted(KEYS_OF_OPTIMIZER)}")
    values = {"lr": lr, "betas": betas, "momentum": momentum, "wd": wd, "nesterov": nesterov}
    keys = {k for o in used for k in KEYS_OF_OPTIMIZER[o]}
    out = {"optimizer": Opt(optimizer, f"optimizer of the adapted parameters: {' or '.join(used)}", used)}
    for k in ("lr", "betas", "momentum", "wd", "nesterov"):  # the order of optimizer_defaults
        if k in keys:
            out[k] = Opt(values[k], COMMON_OPTION_DOCS[k], COMMON_RANGES.get(k))
    return out


def make_optimizer(params: list[nn.Parameter], hp: SimpleNamespace) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD from the adapter's declared options (those of `optimizer_options(...)`).

    Raises UserError when there is nothing to adapt (the model has no parameter of the kind the adapter trains,
    e.g. Tent on a model without normalisation layers) instead of torch's "empty parameter list".
    """
    needed = ("optimizer", *KEYS_OF_OPTIMIZER.get(hp.optimizer, ()))
    missing = [k for k in needed if not hasattr(hp, k)]
    if missing:  # a programming error in the adapter, not user input
        raise TypeError(
            f"make_optimizer: the adapter's options lack {missing} for optimizer {hp.optimizer!r}; declare them with "
            f"optimizer_options({hp.optimizer!r}, ...)"
        )
    params = list(params)
    if not params:
        raise NothingToAdapt(
            "the adapter has no parameter to train in this model (it trains e.g. the affine parameters of "
            "normalisation layers, and the model has none of them, or all are frozen). Use a model with the layers "
            "the method adapts (python -m tta_bench list methods -v says what each method trains), or a "
            "method that trains nothing (source, norm)."
        )
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.wd)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.wd, nesterov=hp.nesterov)
    if hp.optimizer == "adamw":  # decoupled weight decay (TPT's official optimizer)
        return torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.wd)
    raise UserError(
        f"method option 'optimizer' must be 'adam', 'adamw' or 'sgd', got {hp.optimizer!r} "
        "(--set method.optimizer=adam)."
    )


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, for parameters (buffers untouched).

    Computed out of place in this exact order, as CoTTA's and RoTTA's official `update_ema_variables`, so the
    float rounding (and hence every later step) matches theirs bit for bit (a fused add_(alpha=) does not).
    """
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.copy_(momentum * pt + (1 - momentum) * ps.detach())


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off (teachers, anchors)."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def cross_entropy_soft(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy -sum(p_target * log_softmax(logits)) along dim 1."""
    return -(target_probs * F.log_softmax(logits.float(), 1)).sum(1)
