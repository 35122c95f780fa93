"""Model zoo: registry, input normalisation, checksummed weights, cached source-model training.

A model factory is registered with `@MODELS.register(name)` and called as
`factory(spec, ctx, **opts)`; its keyword-only parameters with defaults are the options a user can
`--set model.<opt>=...`. It returns an `nn.Module` that takes inputs in [0, 1] (normalisation belongs to
the model, not the stream) and may describe itself with `describe(model, weights=..., sha256=...)`
(recorded in config.json). Architectures live in `tta_bench/zoo/`, one family per file.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tta_bench.kernel import (
    NoSpace,
    Registry,
    UserError,
    declared_options,
    discard_cache_entry,
    download,
    hash_file,
    hash_json,
    read_cache_entry,
    write_cache_entry,
)

MODELS = Registry("model", "python -m tta_bench list models", packages=("tta_bench.zoo",))  # loaded on first use


@dataclass(frozen=True)
class ModelContext:
    """Where a factory may read/write: weights (downloads, user-placed files) and the cache (trained models)."""

    weights_dir: Path
    cache_dir: Path
    device: torch.device
    seed: int = 0


class Normalized(nn.Module):
    """`model((x - mean) / std)` for x in [0, 1]; mean/std per channel (buffers, so they follow .to())."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def describe(model: nn.Module, **info: Any) -> nn.Module:
    """Attach provenance (weights path, sha256, recipe) recorded in the run's config.json."""
    model.tta_info = {**getattr(model, "tta_info", {}), **info}  # type: ignore[attr-defined]
    return model


def model_info(model: nn.Module) -> dict[str, Any]:
    return dict(getattr(model, "tta_info", {}))


def model_options(name: str) -> dict[str, Any]:
    return declared_options(MODELS.get(name).factory)


def build_model(name: str, spec: Any, ctx: ModelContext, opts: dict[str, Any]) -> nn.Module:
    """Create registered model `name` for stream `spec`, on ctx.device, in eval mode."""
    model = MODELS.get(name).factory(spec, ctx, **opts)
    return model.to(ctx.device).eval()


# --- weights -----------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """sha256 hex digest of a weights file (`kernel.hash_file`)."""
    return hash_file(path, "sha256")


def check_model_options(model: str, values: dict[str, Any], minimum: dict[str, float], strict: tuple = ()) -> None:
    """UserError naming the first option below its minimum (`strict`: options that must be above it)."""
    for key, low in minimum.items():
        v = values[key]
        if not (v > low if key in strict else v >= low):
            raise UserError(
                f"model '{model}' option '{key}' must be {'>' if key in strict else '>='} {low}, got {v!r} "
                f"(--set model.{key}=...)."
            )


def needs_source(model: str, spec: Any) -> None:
    """UserError when a model trained on the stream's source split is asked for on a stream without one."""
    if getattr(spec, "source", None) is None:
        raise UserError(
            f"Model '{model}' is trained on the stream's source split, and stream '{spec.name}' has none; choose a "
            "pretrained model with --model (`python -m tta_bench list streams` shows each stream's default model)."
        )


def load_state_file(path: Path | str) -> dict[str, Any]:
    """The state_dict in a weights file (`torch.load(weights_only=True)` on the CPU: nothing in the file runs).

    A `{"state_dict": ...}` checkpoint is unwrapped and `module.` prefixes are dropped. A missing, truncated or
    damaged file, or one holding anything but tensors and plain data, is a UserError naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Model weights file not found: {path}. Pass an existing file with --set model.weights=PATH.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and storage errors all mean "not a usable weights file"
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"Cannot load the weights file {path} ({type(e).__name__}: {why}); it is truncated, damaged, not a "
            "torch.save file, or holds objects other than tensors. Replace it (--set model.weights=PATH)."
        ) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise UserError(f"The weights file {path} holds a {type(sd).__name__}, not a state_dict (name -> tensor).")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_into(net: nn.Module, state: dict[str, Any], path: Path | str, strict: bool = True) -> None:
    """`net.load_state_dict(state)`; weights of another architecture are a UserError naming the file."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=strict)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(
            f"The weights file {path} does not fit {type(net).__name__}: {' '.join(str(e).split())[:300]}. Check that "
            "the file is for this model (--model) and architecture options."
        ) from None
    if missing or unexpected:  # strict=False callers: report what did not match
        raise UserError(
            f"The weights file {path} does not fit {type(net).__name__}: missing keys {missing[:4]}, unexpected keys "
            f"{unexpected[:4]}. Check that the file is for this model (--model)."
        )


def fetch(url: str, dest: Path, sha256: str | None = None, what: str = "file") -> Path:
    """Return `dest`, downloading `url` there first if missing; verify the checksum (prefix allowed).

    Offline or on a failed download: a UserError naming the file to place at `dest` by hand (`kernel.download`:
    a unique temporary name beside `dest`, removed on failure).
    """
    return download(url, dest, sha256=sha256, what=what, hint="(set $TTA_BENCH_WEIGHTS to change the weights folder)")


# --- trained-on-first-use source models -----------------------------------------------------------------
def recipe_hash(recipe: dict[str, Any]) -> str:
    """16 hex of the recipe's canonical JSON (`kernel.hash_json`)."""
    return hash_json(recipe)


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes of every tensor, in order)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_cache(
    path: Path, state: dict[str, torch.Tensor], key: Any = None, extra: dict[str, Any] | None = None
) -> None:
    """Write a cached state and its record (`<path>.json`: `key`, the sha256 of the bytes, `extra`), atomically
    (unique temporary names beside `path`, removed on failure; the temporaries of writers killed more than an hour
    ago are removed too). A full disk is a UserError naming the cache folder and the entry's size."""
    path = Path(path)
    for old in path.parent.glob(f".{path.name}*.tmp"):
        try:
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink()
        except OSError:
            pass  # another process removed or renamed it
    buf = io.BytesIO()
    torch.save(state, buf)  # serialised in memory: the file write is one plain write (a full disk is an OSError)
    try:
        write_cache_entry(path, buf.getvalue(), key, extra)
    except NoSpace as e:
        raise e.regarding(path.parent, hint="the cache, $TTA_BENCH_CACHE") from None


def load_cache(
    path: Path,
    device: torch.device | str = "cpu",
    what: str = "cache",
    quiet: bool = False,
    key: Any = None,
    with_record: bool = False,
):
    """The state cached at `path` for `key`, or None when absent or not to be trusted: unreadable (truncated,
    corrupt), not a file (a directory), without its record, made for another key (e.g. another recipe's model copied
    over it) or with bytes other than recorded (reported, removed: the caller rebuilds it). `with_record`: returns
    (state, record) with the record's extra facts."""
    path = Path(path)
    data, problem, record = read_cache_entry(path, key)
    state = None
    if data is not None:
        try:
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable cache file is rebuilt, never fatal
            problem = f"is unreadable ({type(e).__name__})"
    if problem is not None:
        if not quiet:
            print(f"note: {what} {path} {problem}; rebuilding it", file=sys.stderr)
        discard_cache_entry(path)
        state, record = None, {}
    return (state, record) if with_record else state


def cached_training(
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], None],
    recipe: dict[str, Any],
    cache_dir: Path,
    tag: str,
) -> nn.Module:
    """A model trained once and cached at `cache_dir/models/<tag>-<recipe hash>.pt`.

    `build()` makes the untrained architecture (initialised under the recipe's `seed`, default 0, whatever the
    caller's RNG state: a run of another seed on a cold cache trains the same model), `train(model)` trains it
    in place (seeded by the recipe;
    `training.train_classifier` is deterministic whatever the thread count). The cache key is a hash of
    `recipe`, so changing any ingredient retrains. Writes are atomic; an unreadable cache file is reported
    and retrained. `sha256` (recorded in config.json) is the hash of the trained weights themselves.
    """
    path = Path(cache_dir) / "models" / f"{tag}-{recipe_hash(recipe)}.pt"
    key = {"tag": tag, "recipe": recipe}  # checked on every read: another recipe's file at this name is rebuilt
    model = build()
    state = load_cache(path, "cpu", "cached source model", key=key)
    if state is None or not try_load_state(model, state):
        with torch.random.fork_rng(devices=[]):  # initialised from the recipe's seed, not the caller's RNG state
            torch.manual_seed(int(recipe.get("seed", 0)))
            model = build()
        train(model)
        save_cache(path, model.state_dict(), key=key)
    for p in model.parameters():
        p.grad = None  # nothing of training reaches the stream
    return describe(model.eval(), weights=str(path), sha256=state_sha256(model), recipe=recipe)


def try_load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load `state` into `model`; False (model unchanged or partly loaded: rebuild it) when the keys or shapes do not
    match (a cache file of another architecture or version)."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError):
        return False
    return True
