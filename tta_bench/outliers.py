"""Open-world streams: outlier images mixed into any classification stream (`--set stream.outliers=...`).

Options (common to every stream, `tta_bench.streams.COMMON_OPTIONS`; left out of the run id while unset):
- `stream.outliers`: where the outlier images come from: `noise` (STAMP's `noise_cifar`: clip(N(0.5, 1), 0, 1)
  quantised to uint8, per pixel and channel), `uniform` (uniform noise in [0, 1], quantised to uint8), or the name of
  another registered stream (its clean split, else its source split, else its first domain; resized and converted to
  the stream's image shape: e.g. `digits-c` when the stream is CIFAR-like, a different class set);
- `stream.outlier_ratio`: the fraction of outliers in the mixed stream (default 0.2 once `stream.outliers` is set:
  STAMP's 2,500 noise images beside 10,000 CIFAR-C images per domain). Each segment of n images gets
  m = round(n * ratio / (1 - ratio)) outliers.

How they are mixed: a segment's in-distribution order (shuffled, dirichlet, markov, ...) is drawn exactly as without
outliers; the m outliers are then put into m slots of the n + m positions drawn uniformly from a generator seeded by
the run seed and the segment's names (`streams.segment_seed(seed, "outliers", ...)`); the in-distribution images keep
their relative order. The outlier images themselves are drawn from the same seed, so a run is reproducible by seed.

Labels: an outlier is labelled `OUTLIER_LABEL` (-1) in the batch (`Batch.y`); adapters never see labels. The meter
(`tta_bench.metrics.OpenWorldMeter`) decodes the label: outliers count neither as errors nor as correct (every
error, ECE, per-domain and per-batch figure is over the in-distribution samples) and they are scored for
outlier detection: `ood_auroc` and `ood_fpr95` (summary.json, domains.csv). The outlier score is the adapter's
`ood_score(x)` (higher = more likely an outlier), called right after the adapter's forward on the same batch, when
the adapter defines it; else 1 - the maximum softmax probability of the returned logits (Hendrycks & Gimpel 2017).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tta_bench import streams as st
from tta_bench.kernel import UserError, close_matches

OUTLIER_LABEL = -1
NOISE_SOURCES = ("noise", "uniform")
DEFAULT_RATIO = 0.2
OPTIONS = ("outliers", "outlier_ratio")


def enabled(opts: dict[str, Any]) -> bool:
    """Whether the resolved stream options ask for outliers."""
    return opts.get("outliers") is not None


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Resolved stream options with the outlier options checked and `outlier_ratio` filled in (DEFAULT_RATIO) when
    `outliers` is set; unchanged (both None, dropped from the run id by the caller) when it is not."""
    src, ratio = opts.get("outliers"), opts.get("outlier_ratio")
    if src is None:
        if ratio is not None:
            raise UserError(
                f"stream.outlier_ratio={ratio!r} is set but stream.outliers is not: name where the outliers come from "
                "(--set stream.outliers=noise, uniform or another stream's name), or drop stream.outlier_ratio."
            )
        return opts
    if not isinstance(src, str) or (src not in NOISE_SOURCES and src not in st.STREAMS):
        known = [*NOISE_SOURCES, *st.STREAMS.names()]
        hint = close_matches(str(src), known)
        raise UserError(
            f"stream.outliers={src!r} is neither a noise source ({', '.join(NOISE_SOURCES)}) nor a registered stream."
            + (f" Did you mean: {', '.join(hint)}?" if hint else "")
            + " Use --set stream.outliers=noise, or a stream name from `python -m tta_bench list streams`."
        )
    ratio = DEFAULT_RATIO if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise UserError(
            f"stream.outlier_ratio is the fraction of outliers in the mixed stream and must be a number in (0, 1), "
            f"got {ratio!r} (--set stream.outlier_ratio=0.2)."
        )
    return {**opts, "outlier_ratio": float(ratio)}


def check_task(spec: Any, opts: dict[str, Any]) -> None:
    """UserError when outliers are asked for on a stream whose task has no per-image label (segmentation)."""
    if enabled(opts) and spec.task not in ("classification", "binary"):
        raise UserError(
            f"stream.outliers works on classification streams only; stream '{spec.name}' is a {spec.task} stream "
            "(an outlier image has no per-pixel labels to leave out). Drop --set stream.outliers."
        )


def outlier_count(n: int, ratio: float) -> int:
    """Outliers beside `n` in-distribution images so that they make up `ratio` of the mixed segment."""
    return int(np.floor(n * ratio / (1.0 - ratio) + 0.5 + 1e-9))  # halves round up


class OutlierImages(Dataset):
    """Float [0,1] (N,C,H,W) outlier images labelled OUTLIER_LABEL; implements the fast data path and `.tensors`."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.targets = np.full(len(images), OUTLIER_LABEL, dtype=np.int64)
        self.tensors = (images, torch.as_tensor(self.targets))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], OUTLIER_LABEL

    def raw(self, idx: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(idx)]

    def finish(self, x: torch.Tensor, idx: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        return x if device is None else x.to(device)


def _quantised(a: np.ndarray) -> torch.Tensor:
    """(N,H,W,C) floats in [0,1] -> uint8 as STAMP's noise sets store them -> float (N,C,H,W) in [0,1]."""
    u8 = np.asarray(np.clip(a, 0, 1) * 255, dtype=np.uint8)
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255)


def fit_shape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Images `x` (N,C',H',W') in [0,1] as (N,C,H,W) = `shape`: channels repeated (1 -> C) or averaged (-> 1), size
    resized bilinearly (antialiased when shrinking)."""
    c, h, w = shape
    x = x.float()
    if x.shape[1] != c:
        if c != 1 and x.shape[1] != 1:
            raise UserError(f"stream.outliers: cannot turn images of {x.shape[1]} channels into {c} channels.")
        x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x.contiguous()


class OutlierSource:
    """Draws outlier images of a given shape from `name` (a noise source or a registered stream)."""

    def __init__(self, name: str, data_dir: Any, seed: int) -> None:
        self.name, self.data_dir, self.seed = name, data_dir, seed
        self._pool: Any = None

    def pool(self) -> Any:
        """The other stream's images (a `_Tagged` dataset): clean split, else source split, else its first domain."""
        if self._pool is None:
            opts = {k: v for k, v in st.stream_options(self.name).items() if k not in st.COMMON_OPTIONS}
            spec = st.build_stream(self.name, self.data_dir, self.seed, opts)
            if spec.task not in ("classification", "binary"):
                raise UserError(f"stream.outliers={self.name!r} is a {spec.task} stream; name a classification stream.")
            ds = next((d for d in (spec.clean, spec.source) if d is not None and len(d) > 0), None)
            if ds is None:
                sev = max(spec.severities) if spec.severities else None
                ds = spec.load(spec.domain_names[0], sev, None)
            self._pool = st._Tagged([(ds, 0)])
        return self._pool

    def images(self, n: int, shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
        """`n` outlier images (N,C,H,W) float [0,1] of `shape` (C,H,W), drawn with `rng`."""
        c, h, w = shape
        if self.name == "noise":  # STAMP src/data/Gaussian.py (noise_cifar): clip(randn + 0.5, 0, 1) as uint8
            return _quantised(rng.standard_normal((n, h, w, c)) + 0.5)
        if self.name == "uniform":  # STAMP's Uniform: rand * 255 as uint8
            return _quantised(rng.random((n, h, w, c)))
        pool = self.pool()
        idx = rng.choice(len(pool), n, replace=n > len(pool))  # each image once while the pool allows
        x = pool[np.sort(idx).tolist()][0] if n else torch.zeros(0, c, h, w)
        return fit_shape(x, shape)


def mix(spec: Any, segments: list, datasets: list, cfg: Any) -> list:
    """Each segment's dataset with its outliers appended (`MixedSegment`); unchanged when `stream.outliers` is unset.
    Records what was mixed in `spec.info["outliers"]` (config.json's stream_info)."""
    opts = cfg.stream_opts
    if not enabled(opts):
        return datasets
    check_task(spec, opts)
    source = OutlierSource(opts["outliers"], cfg.resolved_data_dir(), cfg.seed)
    out, counts = [], {}
    for seg, ds in zip(segments, datasets):
        n = len(ds)
        m = outlier_count(n, opts["outlier_ratio"])
        shape = tuple(ds[[0]][0].shape[1:]) if n else (3, 32, 32)
        seed = st.segment_seed(cfg.seed, "outliers", seg.domain, seg.severity, seg.round)
        images = source.images(m, shape, np.random.default_rng(seed))
        dom = spec.domain_names.index(seg.parts[0][0])
        out.append(MixedSegment(ds, OutlierImages(images), dom, seed))
        counts[f"{seg.round}/{seg.domain}"] = m
    spec.info["outliers"] = {"from": opts["outliers"], "ratio": opts["outlier_ratio"], "label": OUTLIER_LABEL,
                             "per_segment": counts}  # fmt: skip
    return out


def mixed_order(inner_order: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Positions of a segment of n = len(inner_order) images plus m outliers (positions n..n+m-1): the outliers in
    m slots drawn uniformly (seeded), in a seeded random order; the in-distribution positions keep their order."""
    n = len(inner_order)
    rng = np.random.default_rng(seed)
    slots = np.zeros(n + m, dtype=bool)
    slots[rng.choice(n + m, m, replace=False)] = True
    order = np.empty(n + m, dtype=np.int64)
    order[slots] = n + rng.permutation(m)
    order[~slots] = inner_order
    return order


class MixedSegment(st._Tagged):
    """A segment's dataset plus its outliers (last part, domain id of the segment's first domain)."""

    def __init__(self, inner: st._Tagged, outliers: OutlierImages, domain_id: int, seed: int) -> None:
        super().__init__([*inner.parts, (outliers, domain_id)])
        self.inner, self.n_outliers, self.seed = inner, len(outliers), seed

    def mix_order(self, inner_order: np.ndarray) -> np.ndarray:
        """The mixed segment's order from its in-distribution order (`mixed_order`)."""
        return mixed_order(inner_order, self.n_outliers, self.seed)


@torch.no_grad()
def score(adapter: Any, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N,) outlier scores of the batch just forwarded (higher = more likely an outlier): the adapter's
    `ood_score(x)` when it has one, else 1 - max softmax of `logits` (a non-finite prediction: 0, confident)."""
    fn = getattr(adapter, "ood_score", None)
    if fn is not None:
        s = fn(x)
        if s is not None:
            return s.detach().float().reshape(-1)
    from tta_bench.metrics import scores

    return 1.0 - scores(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))[1]
