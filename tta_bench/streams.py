"""Streams: the shifted data an adapter sees, and the TTA settings as functions over domain lists.

A registered stream factory returns a `StreamSpec` (domains, how to load each, source/clean data, task).
A setting turns the spec's domain list into a list of `Segment`s (which data, in which order, whether
the adapter is reset first); `batches()` yields the `Batch`es of one segment.
Settings never live inside methods: an adapter only sees `forward(x)` and `reset()`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from tta_bench import markov
from tta_bench.kernel import Registry, UserError, close_matches, declared_options
from tta_bench.rundir import DEFAULT_WINDOW
from tta_bench.settings import GRADUAL_SEVERITIES, SETTINGS, Segment  # noqa: F401  (part of the streams API)

STREAMS = Registry("stream", "python -m tta_bench list streams", packages=("tta_bench.data",))  # loaded on first use
# Options every stream accepts (--set stream.<key>=...), handled by the harness, not the factory.
COMMON_OPTIONS: dict[str, Any] = {
    "gamma": 0.1,  # Dirichlet concentration of the non-iid setting
    "window": DEFAULT_WINDOW,  # images per window of the long-horizon metrics (tta_bench.rundir.metrics)
    "speed_ratio": None,  # realistic setting: fixed relative cost k (None: measured on the run's device)
    "domains": None,  # a subset / custom order of the stream's domains, e.g. "fog,snow" (None: all, standard order)
    # markov setting (tta_bench.markov): preset or UniTTA code, and overrides of its chain (None: from the preset)
    "markov": None,
    "domain_stay": None,
    "class_stay": None,
    "domain_imbalance": None,
    "class_imbalance": None,
    "utility_tau": None,  # realistic setting: time constant of the time-dependent utility (None: protocols default)
    # open-world streams (tta_bench.outliers): where outlier images come from, and their fraction of the stream
    "outliers": None,
    "outlier_ratio": None,
}
# Common options of one setting, left out of the resolved options (and so of the run id) while unset: run ids of runs
# that do not use them stay what they were before the options existed.
UNSET_NOT_HASHED = ("markov", "domain_stay", "class_stay", "domain_imbalance", "class_imbalance", "utility_tau",
                    "outliers", "outlier_ratio")  # fmt: skip


@dataclass
class Batch:
    """One step of the stream. `x` (N,C,H,W) float in [0,1]; `y` (N,) class ids or (N,H,W) label maps."""

    x: torch.Tensor
    y: torch.Tensor
    domain: str
    severity: int | None
    domain_ids: torch.Tensor  # (N,) index into StreamSpec.domain_names, per sample
    # (N,) positions in the segment dataset when `x` still has to be finished on the run device (clean uint8
    # images of a generated stream, corrupted by `to_device`); None when `x` is final.
    index: torch.Tensor | None = None


@dataclass
class StreamSpec:
    """What a stream factory returns.

    `load(domain, severity, limit)` returns a Dataset of `(x, y)` for that domain (its first `limit`
    samples when `limit` is set, as RobustBench does). `source` is clean source-domain training data
    (for source models, warm-ups and prepare stages); `clean` a fixed held-out clean sample used to
    measure forgetting. `severities` is None for natural shifts that have no severity levels.

    The two inputs of the run id a stream supplies are typed fields every factory must pass (keyword-only, no
    default: leaving one out is a TypeError where the stream is built, not a run id that ignores changed data):
    - `data_fingerprint`: what the stream reads from disk (`kernel.fingerprint_files` of its files: names, sizes,
      contents) or generates (a hash of the generator's inputs); None only for data fully determined by the stream's
      options and the code (then the options, already in the run id, identify it);
    - `source_fingerprint`: the same for its source split (keys of cached source models and prepare stages); None
      when the stream has no source split.
    Datasets it returns may implement the fast data path (`FastDataset`).
    """

    name: str
    domain_names: list[str]
    load: Callable[[str, int | None, int | None], Dataset]
    num_classes: int
    _: KW_ONLY
    data_fingerprint: str | None
    source_fingerprint: str | None
    task: str = "classification"
    source: Dataset | None = None
    clean: Dataset | None = None
    severities: tuple[int, ...] | None = (1, 2, 3, 4, 5)
    class_names: list[str] | None = None
    ignore_index: int = 255
    info: dict[str, Any] = field(default_factory=dict)  # recorded in config.json
    # Domain -> class ids the domain is scored over (e.g. ImageNet-R's 200 classes, base/new splits):
    # logits of other classes are masked out for the metrics (labels stay in the model's class space).
    class_subsets: dict[str, Sequence[int]] = field(default_factory=dict)
    # Extra summary.json keys computed from {domain: error %} (e.g. base/new harmonic mean).
    summarize: Callable[[dict[str, float]], dict[str, Any]] | None = None
    # Streams built against the source model (CCC's calibration): `calibrate(model, device, cache_dir, model_key)`
    # is called by the runner before the stream and returns info recorded in config.json (stream_info.calibration).
    calibrate: Callable[..., dict[str, Any]] | None = None
    # How to give the stream a source split when it has none (`source` None; e.g. "--set stream.source_dir=PATH ..."):
    # the end of the runner's error for a method that needs one.
    source_hint: str | None = None


@dataclass(frozen=True)
class CleanSplit:
    """Where a stream's held-out clean sample (the forgetting measure) comes from, declared at registration.

    `source` says which images, in words (None: the stream has no held-out clean data; `reason` says why, and no
    forgetting is measured). `disjoint`: the clean images are never among the images the stream shows (checked by
    tests/test_clean_splits.py). `reason` with a `source`: when the split is absent (e.g. `stream.holdout=0`).
    Whatever order the files are in, the runner draws a clean evaluation's batches in `CLEAN_ORDER`.
    """

    source: str | None
    disjoint: bool = False
    reason: str | None = None

    def describe(self) -> str:
        """One line for `list streams -v`."""
        if self.source is None:
            return f"clean split: none ({self.reason}); forgetting not measured"
        where = "disjoint from the stream's images" if self.disjoint else "NOT disjoint from the stream's images"
        absent = f"; none when {self.reason}" if self.reason else ""
        return f"clean split: {self.source}; {where}; order: {CLEAN_ORDER}{absent}"


# Order of a clean evaluation's batches (tta_bench.runner.clean_loader): never the files' (often class-sorted) order,
# which would hand batch-statistics methods one-class batches.
CLEAN_ORDER = "shuffled, seeded by the run seed (the same batches before and after the stream)"
NO_CLEAN = CleanSplit(None, reason="not declared")


def schedule(setting: str, spec: StreamSpec, severity: int, rounds: int = 1) -> list[Segment]:
    """The segments of a setting over `spec`'s domains, repeated `rounds` times."""
    sev = severity if spec.severities is not None else None
    out: list[Segment] = []
    for r in range(rounds):
        out += SETTINGS[setting](spec.domain_names, sev, r, spec.severities is not None)
    return out


def dirichlet_order(labels: np.ndarray, gamma: float, rng: np.random.Generator, slots: int | None = None) -> np.ndarray:
    """A label-correlated permutation of range(len(labels)) (the non-i.i.d. protocol of NOTE/RoTTA).

    The stream is cut into `slots` consecutive time slots (default: one per class). Each class spreads its
    samples over the slots with proportions drawn from Dirichlet(gamma); slots are then visited in order,
    shuffled within. Small gamma concentrates each class in few slots (strong label correlation); large
    gamma approaches an i.i.d. shuffle.
    """
    if not gamma > 0:  # also NaN
        raise UserError(f"stream.gamma (Dirichlet concentration) must be > 0, got {gamma!r} (--set stream.gamma=0.1).")
    classes = np.unique(labels)
    slots = slots or len(classes)
    bins: list[list[int]] = [[] for _ in range(slots)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(slots, gamma))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
        for s, part in enumerate(np.split(idx, cuts)):
            bins[s] += part.tolist()
    return np.concatenate([rng.permutation(np.asarray(b, dtype=np.int64)) for b in bins])


@runtime_checkable
class FastDataset(Protocol):
    """The fast data path of a stream's dataset (optional; a plain `(x, y)` Dataset, or one with `.tensors` like
    TensorDataset, works too, one sample at a time):

    - `targets`: the labels, indexable by a numpy array of positions;
    - `raw(idx)`: the images at positions `idx` before their last step (clean uint8 images of a generated stream, or
      the encoded files), cheap to move;
    - `finish(x, idx, device)`: `raw` images -> float [0,1] `(N,C,H,W)` on `device` (corruption, decoding);
    - optionally `load_batch(idx)` = `finish(raw(idx), idx)` done faster in the loader.

    A dataset that has some of `raw`/`finish`/`targets` but not all is a programming error (it would silently take
    the slow path): `check_fast_dataset` raises TypeError naming what is missing, where the stream's datasets are
    gathered (`_Tagged`, every run and every test that iterates a stream).
    """

    targets: Any

    def raw(self, idx: np.ndarray) -> Any: ...

    def finish(self, x: Any, idx: np.ndarray, device: torch.device | None = None) -> torch.Tensor: ...


FAST_MEMBERS = ("targets", "raw", "finish")


def check_fast_dataset(ds: Any) -> bool:
    """True when `ds` implements `FastDataset`; False when it implements none of it; TypeError for a partial one."""
    has = [m for m in FAST_MEMBERS if hasattr(ds, m)]
    if has and len(has) < len(FAST_MEMBERS) and ("raw" in has or "finish" in has):
        missing = [m for m in FAST_MEMBERS if m not in has]
        raise TypeError(
            f"{type(ds).__name__} implements {has} of the fast data path (tta_bench.streams.FastDataset) but not "
            f"{missing}: implement all of {list(FAST_MEMBERS)} or none"
        )
    return isinstance(ds, FastDataset)


class _Tagged(Dataset):
    """Concatenation of datasets whose items are tagged with their domain index.

    Indexed with a list of indices it returns a whole batch `(x, y, domain_ids)` at once; datasets that hold
    their samples as tensors (TensorDataset-like, `.tensors`) are sliced without a per-sample Python loop.
    """

    def __init__(self, parts: list[tuple[Dataset, int]], defer: bool = False) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(d) for d, _ in parts])
        # Datasets with `raw(idx)` (clean uint8 images, or encoded files) and `finish(x, idx, device)` (-> float
        # [0,1] on the device): finished here in the loader (`load_batch(idx)` when they have one), or (`defer`) by
        # `finish` on the run device; the images are the same either way on one device.
        self.finishable = all([check_fast_dataset(d) for d, _ in parts])  # every part checked
        self.defer = defer and self.finishable

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        xs, ys, pos = [], [], []
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            ds, _ = self.parts[k]
            local = idx[sel] - self.offsets[k]
            tensors = getattr(ds, "tensors", None)
            if self.finishable:
                y = torch.as_tensor(np.asarray(ds.targets)[local])
                if self.defer:
                    x = ds.raw(local)
                else:
                    x = ds.load_batch(local) if hasattr(ds, "load_batch") else ds.finish(ds.raw(local), local)
            elif tensors is not None:
                t = torch.as_tensor(local)
                x, y = tensors[0][t], tensors[1][t]
            else:
                items = [ds[int(i)] for i in local]
                x = torch.stack([torch.as_tensor(a) for a, _ in items])
                y = torch.stack([torch.as_tensor(b) for _, b in items])
            xs.append(x), ys.append(y), pos.append(sel)
        order = torch.as_tensor(np.argsort(np.concatenate(pos), kind="stable"))
        doms = torch.as_tensor(np.asarray([self.parts[k][1] for k in part], dtype=np.int64))
        if self.defer:
            if isinstance(xs[0], list):  # encoded files: a list of byte tensors
                flat = [a for part_x in xs for a in part_x]
                return [flat[j] for j in order.tolist()], torch.cat(ys)[order], doms, torch.as_tensor(idx)
            return torch.cat(xs)[order], torch.cat(ys)[order], doms, torch.as_tensor(idx)
        return torch.cat(xs)[order], torch.cat(ys)[order], doms

    def finish(self, x, index: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Deferred images `x` (clean uint8 on the run device, or a list of encoded files) at dataset positions
        `index` -> float [0,1] on `device` (default: `x`'s)."""
        idx = index.cpu().numpy()
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        if (part == part[0]).all():  # one dataset (every setting but mixed): no scatter, no index upload
            return self.parts[part[0]][0].finish(x, idx - self.offsets[part[0]], device)
        out = None
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            ds, _ = self.parts[k]
            if isinstance(x, list):
                y = ds.finish([x[j] for j in sel.tolist()], idx[sel] - self.offsets[k], device)
                t = _upload(sel, y.device)
            else:
                t = _upload(sel, x.device)
                y = ds.finish(x[t], idx[sel] - self.offsets[k], device)
            out = torch.empty((len(idx), *y.shape[1:]), dtype=y.dtype, device=y.device) if out is None else out
            out[t] = y
        return out

    def labels(self) -> np.ndarray:
        """Class labels of every item (for label-dependent orders); uses `ds.targets` when present."""
        out = []
        for ds, _ in self.parts:
            t = getattr(ds, "targets", None)
            out.append(np.asarray(t) if t is not None else np.asarray([int(ds[j][1]) for j in range(len(ds))]))
        return np.concatenate(out)


def segment_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed derived from the run seed and names (independent of iteration order)."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _upload(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small index array on `device` without a host sync (pinned, non-blocking on CUDA)."""
    t = torch.as_tensor(a)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def defer_on(device: torch.device) -> bool:
    """Whether generated images are corrupted in the batch loop on `device` (CUDA: yes; CPU: in the loader, where
    workers run in parallel). `TTA_BENCH_DEVICE_DATA=1|0` forces it either way (the images are the same)."""
    forced = os.environ.get("TTA_BENCH_DEVICE_DATA")
    if forced in ("0", "1"):
        return forced == "1"
    return torch.device(device).type != "cpu"


def to_device(ds: _Tagged, b: Batch, device: torch.device) -> torch.Tensor:
    """Batch `b`'s images on `device`, float [0,1]: moved (non-blocking from pinned memory), and finished there
    when they were deferred (`batches(defer=True)`: clean uint8 in, corrupted on the device)."""
    x = b.x.to(device, non_blocking=True) if torch.is_tensor(b.x) else b.x  # a list: encoded files, decoded there
    return x if b.index is None else ds.finish(x, b.index, device)


def segment_dataset(spec: StreamSpec, seg: Segment, limit: int | None) -> _Tagged:
    return _Tagged([(spec.load(d, s, limit), spec.domain_names.index(d)) for d, s in seg.parts])


def batches(
    ds: _Tagged,
    seg: Segment,
    batch_size: int,
    seed: int = 0,
    gamma: float = 0.1,
    workers: int = 0,
    pin_memory: bool = False,
    defer: bool = False,
    options: dict[str, Any] | None = None,
) -> Iterator[Batch]:
    """Yield the Batches of one segment's dataset (on the CPU; the runner moves them to the device with `to_device`).

    `defer`: datasets that can (generated corruptions) hand clean uint8 images and their positions instead, and
    `to_device` corrupts them on the run device; the images are the same as without it on that device.
    `options`: the resolved stream options (the `markov` order reads its chain from them)."""
    order = segment_order(ds, seg, seed, gamma, options)
    if defer and ds.finishable and not hasattr(ds, "mix_order"):  # outliers mixed in: finished in the loader
        ds = _Tagged(ds.parts, defer=True)
    loader = DataLoader(  # each sampler element is a list of indices: the dataset returns the whole batch
        ds,
        sampler=BatchSampler(order.tolist(), batch_size, drop_last=False),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
    )
    source = prefetched(loader) if pin_memory and workers == 0 else loader  # workers > 0 prefetch by themselves
    for x, y, dom, *index in source:
        yield Batch(x, y, seg.domain, seg.severity, dom, index[0] if index else None)


def segment_order(
    ds: _Tagged, seg: Segment, seed: int = 0, gamma: float = 0.1, options: dict[str, Any] | None = None
) -> np.ndarray:
    """The positions of `ds`'s samples in the order the segment shows them, fixed before batching (so the sample
    sequence does not depend on the batch size) and drawn from the run seed and the segment's names."""
    if hasattr(ds, "mix_order"):  # outliers mixed in (tta_bench.outliers): the stream's own order, outliers slotted in
        return ds.mix_order(segment_order(ds.inner, seg, seed, gamma, options))
    rng = np.random.default_rng(segment_seed(seed, seg.domain, seg.severity, seg.round))
    if seg.order == "shuffle":
        return rng.permutation(len(ds))
    if seg.order == "dirichlet":
        return dirichlet_order(ds.labels(), gamma, rng)
    if seg.order == "markov":
        parts = np.repeat(np.arange(len(ds.parts)), np.diff(ds.offsets))  # position of each sample's domain
        return markov.markov_order(ds.labels(), parts, markov.chain_from_options(options), rng)
    return np.arange(len(ds))


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`items`, produced `depth` ahead by a background thread (reading, decoding and pinning the next batch overlap
    the device's work on this one); an exception there is raised here, at the item it stopped."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(v: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(v, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for it in items:
                if not put((it, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((end, e))

    t = threading.Thread(target=produce, name="tta-bench-prefetch", daemon=True)
    t.start()
    try:
        while True:
            it, err = q.get()
            if it is end:
                if err is not None:
                    raise err
                return
            yield it
    finally:
        stop.set()


def register(
    name: str,
    default_model: str,
    description: str | None = None,
    family: str | None = None,
    clean: CleanSplit | None = None,
    source_option: str | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator for stream factories `fn(*, data_dir, seed, **options) -> StreamSpec`.

    `default_model` is the model used when `--model` is not given (known before any data is read); `family` is
    the benchmark family whose official method settings apply to it (tta_bench/presets.py; None: none); `clean`
    where its held-out clean sample comes from (`CleanSplit`; shown by `list streams -v`, recorded in config.json);
    `source_option` the stream option without which it has no source split (e.g. "source_dir"; None: it has one
    whenever its data allows, or never), known before any data is read (`reproduce --plan` flags such runs).
    """

    def deco(fn: Callable) -> Callable:
        meta = {"default_model": default_model, "family": family, "clean": clean or NO_CLEAN,
                "source_option": source_option}  # fmt: skip
        STREAMS.add(name, fn, description, **meta)  # the registry entry holds them (Entry.attrs), not the function
        return fn

    return deco


def default_model(name: str) -> str:
    """The model stream `name` runs on when `--model` is not given (declared at registration)."""
    return STREAMS.get(name).attrs["default_model"]


def family(name: str) -> str | None:
    """The benchmark family whose presets apply to stream `name` (declared at registration; None: none)."""
    return STREAMS.get(name).attrs["family"]


def clean_split(name: str) -> CleanSplit:
    """The clean split stream `name` declared at registration."""
    return STREAMS.get(name).attrs["clean"]


def missing_source_option(name: str, opts: dict[str, Any]) -> str | None:
    """The option (`register(source_option=...)`) that stream `name` needs for a source split and `opts` leave unset;
    None when it is set or the stream declares none."""
    option = STREAMS.get(name).attrs["source_option"]
    return option if option and not opts.get(option) else None


def stream_options(name: str) -> dict[str, Any]:
    """Declared options of stream `name` (its keyword-only defaults) plus the common ones."""
    own = declared_options(STREAMS.get(name).factory)
    own.pop("data_dir", None), own.pop("seed", None)  # passed by the harness, not user options
    return {**COMMON_OPTIONS, **own}


# Stream options that count images (any stream that declares one): their smallest sensible value.
COUNT_OPTIONS: dict[str, int] = {"clean_size": 0, "clean_n": 0, "holdout": 0, "shots": 1, "source_limit": 1,
                                 "source_size": 1, "image_size": 1}  # fmt: skip


def check_counts(opts: dict[str, Any]) -> None:
    """UserError naming the first counting option (COUNT_OPTIONS) given a number below its minimum."""
    for key, low in COUNT_OPTIONS.items():
        v = opts.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < low:
            raise UserError(f"stream.{key} counts images and must be >= {low}, got {v!r} (--set stream.{key}=...).")


def build_stream(name: str, data_dir: Any, seed: int, opts: dict[str, Any]) -> StreamSpec:
    """Create the registered stream `name`; `opts` are its resolved options (common ones dropped)."""
    check_counts(opts)
    own = {k: v for k, v in opts.items() if k not in COMMON_OPTIONS}
    spec = STREAMS.get(name).factory(data_dir=data_dir, seed=seed, **own)
    return select_domains(spec, normalize_domains(opts.get("domains")))


def normalize_domains(value: Any) -> list[str] | None:
    """`stream.domains` as a list of names: "fog, snow" or ["fog", "snow"] -> ["fog", "snow"]; None stays None."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise UserError(f"stream.domains must be comma-separated domain names (--domains fog,snow), got {value!r}.")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("stream.domains is empty: name at least one domain (--domains fog,snow), or omit it.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"stream.domains names {', '.join(repeated)} twice; to repeat the stream use --rounds N.")
    return names


def check_domains(opts: dict[str, Any]) -> dict[str, Any]:
    """Resolved stream options with `domains` in its normal form (so equal selections hash the same), and the
    setting-specific options of `UNSET_NOT_HASHED` dropped while unset (None)."""
    from tta_bench import outliers  # imports this module

    opts = {k: v for k, v in outliers.check_options(opts).items() if not (k in UNSET_NOT_HASHED and v is None)}
    return {**opts, "domains": normalize_domains(opts.get("domains"))} if "domains" in opts else opts


def select_domains(spec: StreamSpec, domains: list[str] | None) -> StreamSpec:
    """`spec` restricted to `domains`, in that order (None: unchanged); unknown names are a UserError."""
    if domains is None:
        return spec
    for d in domains:
        if d not in spec.domain_names:
            hint = close_matches(d, spec.domain_names)
            raise UserError(
                f"Stream '{spec.name}' has no domain '{d}'." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                + f" Its domains, in order: {', '.join(spec.domain_names)} (--domains a,b,c)."
            )  # fmt: skip
    return replace(spec, domain_names=list(domains), info={**spec.info, "all_domains": list(spec.domain_names)})
