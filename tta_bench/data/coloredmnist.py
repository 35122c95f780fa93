"""`coloredmnist`: a spurious-correlation shift generated from the embedded digits (no download), following
TTAB's ColoredMNIST (Zhao et al., ICML 2023; `ColoredSyntheticShift` in LINs-lab/ttab, stored snapshot
ffee2e2f37b3e78ad5faf6288ffc8ceca33683fa), itself DomainBed's version of Arjovsky et al.'s IRM construction.

Construction (per image, TTAB's parameters): the binary label is `0` for digits 0-4 and `1` for 5-9, flipped
with probability `label_noise` (0.25); the colour is red for label 0 and green for label 1, flipped with
probability `train_flip` (0.1) in the source and clean splits and `test_flip` (0.9) in the test stream. So in
training the colour predicts the label 90 % of the time and the shape only 75 %: the source model learns
colour, and on the stream (colour agrees with the label 10 % of the time) a colour model is mostly wrong.
The image is the grey digit in the red (R) or green (G) channel, the other channels zero (3 x 32 x 32).

Images: scikit-learn's bundled digits upsampled to 32 x 32 (as `digits-c`), in its fixed split (600 target,
200 clean, 997 source); the digits differ between splits. The draws (label and colour flips) use a generator
seeded by `stream.data_seed` (default 0), not the run seed, so every run seed sees the same data and the
source model is trained once.

Groups: (class, colour), four of them, recorded per sample: the labels the stream hands are group ids
`label + 2 * colour` (colour 0 red, 1 green; `tta_bench.metrics.encode_groups`), the names are in
`info["groups"]`, and the metrics report worst-group and average-group accuracy (`worst_group_acc`,
`avg_group_acc`). One domain, `test`, no severities.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tta_bench.data.digits import Labeled, digits_32, split
from tta_bench.kernel import UserError
from tta_bench.metrics import GROUP_INFO, encode_groups
from tta_bench.streams import CleanSplit, StreamSpec, register

CLASS_NAMES = ["0-4", "5-9"]
COLOURS = ["red", "green"]
GROUP_NAMES = [f"{c}/{col}" for col in COLOURS for c in CLASS_NAMES]  # group id = label + 2 * colour
TTAB_COMMIT = "ffee2e2f37b3e78ad5faf6288ffc8ceca33683fa"


class Grouped(Labeled):
    """Coloured digits whose labels are group ids (`label + C * colour`); `targets` are the class labels.

    `x`: the grey digits before colouring (what names an image: the clean-split tests compare these);
    `colours`: (N,) 0 red / 1 green."""

    def __init__(self, images: torch.Tensor, groups: torch.Tensor, grey: torch.Tensor, colours: torch.Tensor,
                 num_classes: int) -> None:  # fmt: skip
        super().__init__(images, groups)
        self.x, self.colours, self.num_classes = grey, colours, num_classes

    @property
    def targets(self) -> np.ndarray:
        return (self.tensors[1] % self.num_classes).numpy()

    def head(self, n: int) -> Grouped:
        x, g = self.tensors
        return Grouped(x[:n], g[:n], self.x[:n], self.colours[:n], self.num_classes)


def colourise(grey: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) grey images (equal channels) -> the digit in the red (colour 0) or green (colour 1) channel."""
    out = torch.zeros_like(grey)
    rows = torch.arange(len(grey))
    out[rows, colours] = grey[rows, 0]
    return out


def make_split(idx: np.ndarray, flip: float, label_noise: float, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """TTAB's draws for the digits `idx`: binary label (noisy), colour from the label flipped with `flip`."""
    x, digit = digits_32()
    t = torch.as_tensor(idx)
    label = (digit[t] >= 5).long()
    label = label ^ torch.as_tensor(rng.random(len(idx)) < label_noise).long()
    colour = label ^ torch.as_tensor(rng.random(len(idx)) < flip).long()
    return {"grey": x[t], "label": label, "colour": colour}


def grouped(parts: dict[str, torch.Tensor]) -> Grouped:
    return Grouped(colourise(parts["grey"], parts["colour"]), encode_groups(parts["label"], parts["colour"], 2),
                   parts["grey"], parts["colour"], 2)  # fmt: skip


def agreement(ds: Grouped) -> float:
    """Fraction of images whose colour 'predicts' the label (red for 0-4, green for 5-9)."""
    return float((ds.colours == torch.as_tensor(ds.targets)).double().mean())


@register(
    "coloredmnist",
    default_model="small-cnn",
    description="ColoredMNIST (TTAB): colour predicts the label in the source, reversed in the stream",
    family="cifar10-c",  # 32x32 images and a small BN CNN: the small-image settings (tta_bench/presets.py)
    clean=CleanSplit("200 digits of the fixed digits split, coloured as the source (train_flip)", disjoint=True),
)
def coloredmnist(*, data_dir=None, seed: int = 0, train_flip: float = 0.1, test_flip: float = 0.9,
                 label_noise: float = 0.25, data_seed: int = 0) -> StreamSpec:  # fmt: skip
    """ColoredMNIST (TTAB/IRM, binary) from the embedded digits: colour predicts the label in the source, reversed in
    the stream; worst-group accuracy over (class, colour)."""
    for name, p in (("train_flip", train_flip), ("test_flip", test_flip), ("label_noise", label_noise)):
        if not 0.0 <= p <= 1.0:
            raise UserError(
                f"stream.{name}={p} is not a probability: give a value in [0, 1], e.g. --set stream.{name}=0.1 "
                "(TTAB: train_flip 0.1, test_flip 0.9, label_noise 0.25)."
            )
    parts = split()
    rng = np.random.default_rng(data_seed)  # one generator, drawn in a fixed order: source, clean, target
    source = grouped(make_split(parts["source"], train_flip, label_noise, rng))
    clean = grouped(make_split(parts["clean"], train_flip, label_noise, rng))
    target = grouped(make_split(parts["target"], test_flip, label_noise, rng))
    plain_source = Labeled(source.tensors[0], torch.as_tensor(source.targets))  # the model trains on class labels
    plain_source.x = source.x  # the grey digits name its images (as for the other splits)

    def load(domain: str, severity: int | None, limit: int | None) -> Grouped:
        return target if limit is None else target.head(limit)

    def digest(*ds: Grouped) -> str:
        h = hashlib.sha256()
        for d in ds:
            h.update(d.tensors[0].numpy().tobytes() + d.tensors[1].numpy().tobytes())
        return h.hexdigest()[:16]

    return StreamSpec(
        name="coloredmnist",
        domain_names=["test"],
        load=load,
        num_classes=2,
        data_fingerprint=f"coloredmnist-{digest(target, clean)}",
        source_fingerprint=f"coloredmnist-{digest(source)}",
        source=plain_source,
        clean=clean,
        severities=None,
        class_names=CLASS_NAMES,
        info={
            "source": "generated",
            GROUP_INFO: GROUP_NAMES,
            "construction": f"TTAB ColoredSyntheticShift (LINs-lab/ttab@{TTAB_COMMIT[:8]}) on the embedded digits",
            "split": {"source": len(source), "clean": len(clean), "test": len(target)},
            "colour_label_agreement": {
                "source": agreement(source),
                "clean": agreement(clean),
                "test": agreement(target),
            },  # fmt: skip
        },
    )
