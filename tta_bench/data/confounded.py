"""`confounded`: a class-group confounded split with the association reversed at test (KnoBo-style;
Yang et al. 2024, "A Textbook Remedy for Domain Shifts: Knowledge Priors for Medical Image Analysis").

Input: a CSV with columns `path,label,group` (one row per image; `path` relative to the CSV's folder or
absolute; `label` a class id 0..C-1 or a class name; `group` any string: the hospital, scanner,
sex, age band, ...). Pass it as `--set stream.root=PATH/TO/split.csv`.

Train/test assignment: `--set stream.train_groups="0:A,1:B"` says that in training, class 0 is seen only
in group A and class 1 only in group B; the test stream holds every other (label, group) pair, i.e. class
0 from B and class 1 from A: the class-group association is reversed, so a model that learned the
group as a shortcut fails. Default (empty): the sorted labels paired with the sorted groups in order
(needs as many groups as labels). Source data: the training pairs, less a fixed random
`clean_fraction` held out as the clean sample (forgetting). One domain, `reversed`. Images are read
as RGB and resized to `size` x `size`. Two classes use the `binary` task (balanced error and AUC).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from tta_bench.data.folders import image_errors, rgb_image
from tta_bench.kernel import UserError
from tta_bench.streams import CleanSplit, StreamSpec, register

FORMAT = "a CSV with header path,label,group (path relative to the CSV's folder or absolute)"


class ImageFiles(Dataset):
    """`(x, y)`: x float `(3, size, size)` in [0, 1] (RGB, bilinear resize) read on access, y int."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        self.paths, self.labels, self.size = paths, np.asarray(labels, dtype=np.int64), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with image_errors(self.paths[i]), Image.open(self.paths[i]) as im:
            im = rgb_image(im, self.paths[i])
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255), int(self.labels[i])

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def take(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in idx], self.labels[idx], self.size)


def read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The table with `label` mapped to class ids; returns it and the class names."""
    try:
        df = pd.read_csv(path, dtype={"path": str, "group": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"Could not read the confounded split {path} ({e}); expected {FORMAT}.") from None
    missing = [c for c in ("path", "label", "group") if c not in df.columns]
    if missing or df.empty:
        raise UserError(
            f"{path} lacks columns {missing} or has no rows (columns: {list(df.columns)}); expected {FORMAT}."
        )
    if pd.api.types.is_integer_dtype(df["label"]):
        names = [str(i) for i in range(int(df["label"].max()) + 1)]
        if df["label"].min() < 0:
            raise UserError(f"{path}: integer labels must be class ids 0..C-1, found {df['label'].min()}.")
    else:
        names = sorted(df["label"].astype(str).unique())
        df["label"] = df["label"].astype(str).map({n: i for i, n in enumerate(names)})
    df["path"] = [p if Path(p).is_absolute() else str(path.parent / p) for p in df["path"]]
    return df, names


def train_pairs(spec: str, names: list[str], groups: list[str]) -> dict[int, str]:
    """`"0:A,1:B"` (labels as ids or names) -> {class id: the one group it is seen in during training}."""
    if not spec:
        if len(groups) != len(names):
            raise UserError(
                f"The default assignment pairs sorted labels with sorted groups, but there are {len(names)} labels and "
                f'{len(groups)} groups ({", ".join(groups)}). Give it explicitly: --set stream.train_groups="0:A,1:B".'
            )
        return dict(enumerate(groups))
    out: dict[int, str] = {}
    for item in spec.split(","):
        lab, sep, grp = item.strip().partition(":")
        cls = names.index(lab) if lab in names else int(lab) if lab.isdigit() else -1
        if not sep or not 0 <= cls < len(names) or grp not in groups:
            raise UserError(
                f"Bad stream.train_groups item '{item}': expected label:group with a label in {names} and a group in "
                f'{groups}, e.g. --set stream.train_groups="0:{groups[0]},1:{groups[-1]}".'
            )
        out[cls] = grp
    if len(out) != len(names):
        raise UserError(f"stream.train_groups must give a group for every label {names}; got {spec!r}.")
    return out


@register(
    "confounded",
    default_model="medical-resnet",
    description="class-group association reversed at test",
    family="cifar10-c",  # small images, a small BN ResNet trained on the source: small-image settings
    clean=CleanSplit(
        "stream.clean_fraction (0.1) of the training (class, group) images, not trained on",
        disjoint=True,
        reason="stream.clean_fraction rounds to 0 images",
    ),
)
def confounded(*, data_dir=None, seed: int = 0, root: str | None = None, train_groups: str = "", size: int = 64,
               clean_fraction: float = 0.1) -> StreamSpec:  # fmt: skip
    """Confounded split from a `path,label,group` CSV: train on one group per class, test on the others."""
    if root is None:
        raise UserError(f"Stream 'confounded' needs its split file: --set stream.root=PATH/split.csv ({FORMAT}).")
    path = Path(root).expanduser()
    if not path.is_file():
        raise UserError(f"Confounded split file {path} not found; expected {FORMAT} (--set stream.root=...).")
    df, names = read_csv(path)
    groups = sorted(df["group"].unique())
    pairs = train_pairs(train_groups, names, groups)
    aligned = np.array([pairs.get(int(lab)) == g for lab, g in zip(df["label"], df["group"])])
    if aligned.all() or not aligned.any():
        raise UserError(f"{path}: the assignment {pairs} leaves no {'test' if aligned.all() else 'training'} images.")
    files = ImageFiles(list(df["path"]), df["label"].values, size)
    train_idx = np.random.default_rng(0).permutation(np.flatnonzero(aligned))
    n_clean = int(round(clean_fraction * len(train_idx)))
    test = files.take(np.flatnonzero(~aligned))
    source, clean = files.take(train_idx[n_clean:]), files.take(train_idx[:n_clean])
    fp = hashlib.sha256(repr((source.paths, source.labels.tolist(), size)).encode()).hexdigest()[:16]

    def load(domain: str, severity: int | None, limit: int | None) -> ImageFiles:
        return test if limit is None else test.take(np.arange(min(limit, len(test))))

    return StreamSpec(
        name="confounded",
        domain_names=["reversed"],
        load=load,
        num_classes=len(names),
        data_fingerprint=None,
        source_fingerprint=f"confounded-{fp}",
        task="binary" if len(names) == 2 else "classification",
        source=source,
        clean=clean if len(clean) else None,
        severities=None,
        class_names=names,
        info={
            "source": "files",
            "csv": str(path),
            "train_groups": {names[k]: v for k, v in pairs.items()},
            "split": {"source": len(source), "clean": len(clean), "reversed": len(test)},
        },
    )
