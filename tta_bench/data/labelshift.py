"""`digits-ls`: a label-shift stream on the embedded digits (no download): the images are the clean target split
of `digits-c` (600 digits, no corruption), and only the class priors change over time, in a stated sequence.

The stream is `stream.steps` domains `t00`, `t01`, ... of `stream.per_step` images each; step t draws its
class counts from Multinomial(per_step, p_t), then that many images of each class from the target split
(each class's images in a seeded random order, reused cyclically when a step asks for more than the class has).
The prior sequence p_0..p_{T-1} (`stream.priors`):

- `dirichlet` (TTAB's label-shift protocol, per step): p_t ~ Dirichlet(alpha * 1), `stream.alpha` (default 0.5;
  small: few classes dominate each step; large: close to uniform);
- `step`: the classes are cut into `steps` consecutive blocks; at step t the classes of block t share
  `stream.peak` (default 0.8) of the mass and the others the rest, uniformly: an abrupt prior change per step;
- `uniform`: p_t = 1/C (no label shift: the control).

The priors and draws use a generator seeded by the run seed (reproducible by seed); the sequence is recorded in
config.json (`stream_info.class_priors`). Each step is a domain, so the continual setting keeps the sequence
(shuffled only within a step). Groups are the classes (`info["groups"]`): worst-group accuracy is the worst
class's accuracy, average-group accuracy the class-balanced accuracy. The source model is `small-cnn` trained on
the digits' source split (the 997 digits `digits-c` trains on).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tta_bench.data.digits import CLASS_NAMES, Labeled, digits_32, split, subset
from tta_bench.kernel import UserError
from tta_bench.metrics import GROUP_INFO
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

PRIORS = ("dirichlet", "step", "uniform")


def prior_sequence(kind: str, steps: int, num_classes: int, rng: np.random.Generator, alpha: float = 0.5,
                   peak: float = 0.8) -> np.ndarray:  # fmt: skip
    """(steps, num_classes) class priors, one row per step (rows sum to 1)."""
    if kind == "dirichlet":
        return rng.dirichlet(np.full(num_classes, alpha), size=steps)
    if kind == "uniform":
        return np.full((steps, num_classes), 1.0 / num_classes)
    out = np.empty((steps, num_classes))
    for t, block in enumerate(np.array_split(np.arange(num_classes), steps)):
        inside = np.zeros(num_classes, bool)
        inside[block] = True
        out[t] = np.where(inside, peak / max(1, inside.sum()), (1 - peak) / max(1, (~inside).sum()))
        if inside.all():  # one step holds every class: uniform
            out[t] = 1.0 / num_classes
    return out / out.sum(1, keepdims=True)


def draw(labels: np.ndarray, priors: np.ndarray, per_step: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per step, positions into `labels`: class counts ~ Multinomial(per_step, p_t), each class's images taken in a
    seeded order, cyclically (a class is reused only once all of its images were shown)."""
    classes = priors.shape[1]
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(classes)]
    cursor = np.zeros(classes, dtype=np.int64)
    out = []
    for p in priors:
        counts = rng.multinomial(per_step, p)
        idx = []
        for c, k in enumerate(counts):
            if k and len(pools[c]):
                idx.append(pools[c][(cursor[c] + np.arange(k)) % len(pools[c])])
                cursor[c] += k
        out.append(rng.permutation(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64))
    return out


@register(
    "digits-ls",
    default_model="small-cnn",
    description="label shift on the embedded digits: class priors per step (dirichlet | step | uniform)",
    family="cifar10-c",  # 32x32 images and a small BN CNN: the small-image settings (tta_bench/presets.py)
    clean=CleanSplit("200 digits of the fixed split (600 target, 200 clean, 997 source)", disjoint=True),
)
def digits_ls(*, data_dir=None, seed: int = 0, priors: str = "dirichlet", steps: int = 10, per_step: int = 100,
              alpha: float = 0.5, peak: float = 0.8) -> StreamSpec:  # fmt: skip
    """Label shift on the embedded digits: class priors change per step (dirichlet | step | uniform)."""
    if priors not in PRIORS:
        raise UserError(f"stream.priors={priors!r} is not a prior sequence: use one of {', '.join(PRIORS)} "
                        "(e.g. --set stream.priors=dirichlet --set stream.alpha=0.5).")  # fmt: skip
    if steps < 1 or per_step < 1:
        raise UserError(f"stream.steps={steps} and stream.per_step={per_step} must both be at least 1 "
                        "(e.g. --set stream.steps=10 --set stream.per_step=100).")  # fmt: skip
    if alpha <= 0 or not 0 <= peak <= 1:
        raise UserError(f"stream.alpha={alpha} must be > 0 and stream.peak={peak} in [0, 1] "
                        "(e.g. --set stream.alpha=0.5 or --set stream.peak=0.8).")  # fmt: skip
    parts = split()
    x, y = digits_32()
    target_idx = parts["target"]
    labels = y[torch.as_tensor(target_idx)].numpy()
    rng = np.random.default_rng(segment_seed(seed, "digits-ls", priors, steps, per_step, alpha, peak))
    p = prior_sequence(priors, steps, 10, rng, alpha, peak)
    chosen = draw(labels, p, per_step, rng)
    names = [f"t{t:02d}" for t in range(steps)]
    by_name = dict(zip(names, chosen))

    def load(domain: str, severity: int | None, limit: int | None) -> Labeled:
        idx = by_name[domain] if limit is None else by_name[domain][:limit]
        return subset(target_idx[idx])

    x_all = x.numpy().tobytes() + y.numpy().tobytes()
    data_fp = hashlib.sha256(x_all + np.concatenate(chosen).tobytes()).hexdigest()[:16]
    src_fp = hashlib.sha256(parts["source"].tobytes()).hexdigest()[:12]
    return StreamSpec(
        name="digits-ls",
        domain_names=names,
        load=load,
        num_classes=10,
        data_fingerprint=f"digits-ls-{data_fp}",
        source_fingerprint=f"sklearn-digits-{src_fp}",
        source=subset(parts["source"]),
        clean=subset(parts["clean"]),
        severities=None,
        class_names=CLASS_NAMES,
        info={
            "source": "generated",
            GROUP_INFO: CLASS_NAMES,
            "priors": priors,
            "class_priors": np.round(p, 4).tolist(),
            "class_counts": [np.bincount(labels[c], minlength=10).tolist() for c in chosen],
        },
    )
