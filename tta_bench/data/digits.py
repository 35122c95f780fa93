"""`digits-c`: the embedded default stream (no download). scikit-learn's bundled digits (1,797 real
8×8 images, 10 classes), upsampled to 32×32 RGB, target split streamed through the 15 benchmark
corruptions (CIFAR-10-C parameter table) in the standard continual order.

Split (fixed, independent of the run seed): a permutation with seed 0; the first 600 images are the
target split, the next 200 the held-out clean sample (forgetting), the remaining 997 the source split
the default model trains on.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tta_bench import corruptions
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

N_TARGET, N_CLEAN = 600, 200
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class Labeled(TensorDataset):
    """A TensorDataset of (x, y) that exposes `targets` (class labels as a numpy array)."""

    @property
    def targets(self) -> np.ndarray:
        return self.tensors[1].numpy()


@lru_cache(maxsize=1)
def digits_32() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N,3,32,32) float in [0,1] (bilinear upsampling) and (N,) labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return x.contiguous(), torch.tensor(d.target, dtype=torch.long)


def split() -> dict[str, np.ndarray]:
    perm = np.random.default_rng(0).permutation(len(digits_32()[1]))
    return {
        "target": perm[:N_TARGET],
        "clean": perm[N_TARGET : N_TARGET + N_CLEAN],
        "source": perm[N_TARGET + N_CLEAN :],
    }


def subset(idx: np.ndarray) -> Labeled:
    x, y = digits_32()
    t = torch.as_tensor(idx)
    return Labeled(x[t], y[t])


@register(
    "digits-c",
    default_model="small-cnn",
    family="cifar10-c",  # 32x32 images and a small BN CNN: the CIFAR-10-C settings (tta_bench/presets.py)
    clean=CleanSplit("200 digits of the fixed split (600 target, 200 clean, 997 source)", disjoint=True),
)
def digits_c(*, data_dir=None, seed: int = 0) -> StreamSpec:
    """Embedded default: sklearn digits upsampled to 32×32, through the 15 corruptions (no download)."""
    parts = split()
    target = subset(parts["target"])
    cache: dict[tuple, Labeled] = {}

    def load(domain: str, severity: int | None, limit: int | None) -> Labeled:
        key = (domain, severity, limit)
        if key not in cache:
            x, y = target.tensors
            if limit is not None:
                x, y = x[:limit], y[:limit]
            g = torch.Generator().manual_seed(segment_seed(seed, "digits-c", domain, severity))
            cache[key] = Labeled(corruptions.corrupt(x, domain, severity, generator=g), y)
        return cache[key]

    fp = hashlib.sha256(parts["source"].tobytes()).hexdigest()[:12]
    x, y = digits_32()  # generated from scikit-learn's bundled copy: its content is the data fingerprint
    data_fp = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
    return StreamSpec(
        name="digits-c",
        domain_names=list(corruptions.BENCHMARK),
        load=load,
        num_classes=10,
        data_fingerprint=f"sklearn-digits-{data_fp}",
        source_fingerprint=f"sklearn-digits-{fp}",
        source=subset(parts["source"]),
        clean=subset(parts["clean"]),
        class_names=CLASS_NAMES,
        info={
            "source": "generated",
            "split": {k: len(v) for k, v in parts.items()},
        },
    )
