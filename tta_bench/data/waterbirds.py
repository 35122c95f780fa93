"""`waterbirds`: the Waterbirds spurious-correlation benchmark (Sagawa et al., ICLR 2020; used by TTAB) read from its
official on-disk layout: the folder `waterbird_complete95_forest2water2/` with `metadata.csv`
(`img_id,img_filename,y,split,place,place_filename`) and the images under it (`<class folder>/<file>.jpg`).

`y`: 0 landbird, 1 waterbird; `place` (the background): 0 land, 1 water; `split`: 0 train, 1 val, 2 test. In
the train split 95 % of each class sits on its own background (landbirds on land, waterbirds on water); val
and test put each class on both backgrounds equally often, so a model that learned the background fails on the
minority groups (waterbird on land, landbird on water).

Splits: the source model trains on `split == 0`; the held-out clean sample is `split == 1` (val, never streamed);
the stream is `split == 2`, one domain `test`, no severities. Images are read as RGB and resized to `size` x
`size` (default 64; TTAB uses ResNet-50 at 224: `--set stream.size=224`).

Groups: (class, place), four of them: the labels the stream hands are group ids `y + 2 * place`
(`tta_bench.metrics.encode_groups`), names in `info["groups"]`, reported as worst-group and average-group
accuracy. Point to the folder with `--set stream.root=PATH` (default: `<data dir>/waterbird_complete95_forest2water2`).
The layout is tested on generated stand-ins (tests/test_waterbirds.py); no copy of the data ships with tta_bench.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tta_bench.data.confounded import ImageFiles
from tta_bench.kernel import UserError, fingerprint_files
from tta_bench.metrics import GROUP_INFO, encode_groups
from tta_bench.streams import CleanSplit, StreamSpec, register

FOLDER = "waterbird_complete95_forest2water2"
COLUMNS = ("img_filename", "y", "split", "place")
CLASS_NAMES = ["landbird", "waterbird"]
PLACES = ["land", "water"]
GROUP_NAMES = [f"{c}/{p}" for p in PLACES for c in CLASS_NAMES]  # group id = y + 2 * place


class GroupedFiles(ImageFiles):
    """Image files whose labels are group ids (`y + 2 * place`); `targets` are the class labels."""

    @property
    def targets(self) -> np.ndarray:
        return self.labels % 2

    def take(self, idx: np.ndarray) -> GroupedFiles:
        return GroupedFiles([self.paths[i] for i in idx], self.labels[idx], self.size)


def read_metadata(root: Path) -> pd.DataFrame:
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise UserError(
            f"Waterbirds: {meta} not found. Point --set stream.root at the {FOLDER} folder (it holds metadata.csv "
            "with columns img_id,img_filename,y,split,place,place_filename and the images)."
        )
    try:
        df = pd.read_csv(meta)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"Could not read {meta} ({e}); expected the official Waterbirds metadata.csv.") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{meta} lacks columns {missing} (has {list(df.columns)}); expected the official layout.")
    for col, allowed in (("y", {0, 1}), ("place", {0, 1}), ("split", {0, 1, 2})):
        bad = sorted(set(df[col].unique()) - allowed)
        if bad:
            raise UserError(f"{meta}: column {col} holds {bad[:5]}; the official layout uses {sorted(allowed)}.")
    for s, name in enumerate(("train", "val", "test")):
        if not (df["split"] == s).any():
            raise UserError(f"{meta} has no {name} rows (split == {s}); the stream needs train, val and test.")
    return df


@register(
    "waterbirds",
    default_model="medical-resnet",  # a small BN ResNet trained on the source split (as the confounded stream)
    description="bird class vs background, reversed in the minority groups",
    family="cifar10-c",
    clean=CleanSplit("the official val split (split == 1), never streamed", disjoint=True),
)
def waterbirds(*, data_dir=None, seed: int = 0, root: str | None = None, size: int = 64) -> StreamSpec:
    """Waterbirds (official metadata.csv layout): train on split 0, stream split 2, groups (bird, background)."""
    folder = Path(root).expanduser() if root else Path(data_dir or ".") / FOLDER
    df = read_metadata(folder)
    paths = [folder / p for p in df["img_filename"]]
    y, place = df["y"].to_numpy(np.int64), df["place"].to_numpy(np.int64)
    groups = encode_groups(y, place, 2)
    split = df["split"].to_numpy()
    files = GroupedFiles(paths, groups, size)
    test = files.take(np.flatnonzero(split == 2))
    clean = files.take(np.flatnonzero(split == 1))
    src_idx = np.flatnonzero(split == 0)
    source = ImageFiles([paths[i] for i in src_idx], y[src_idx], size)  # the model trains on class labels

    def load(domain: str, severity: int | None, limit: int | None) -> GroupedFiles:
        return test if limit is None else test.take(np.arange(min(limit, len(test))))

    counts = {
        name: np.bincount(groups[split == s], minlength=4).tolist() for s, name in enumerate(("train", "val", "test"))
    }
    return StreamSpec(
        name="waterbirds",
        domain_names=["test"],
        load=load,
        num_classes=2,
        data_fingerprint=fingerprint_files([folder / "metadata.csv", *test.paths, *clean.paths]),
        source_fingerprint=fingerprint_files([folder / "metadata.csv", *source.paths]) + f"-{size}",
        source=source,
        clean=clean,
        severities=None,
        class_names=CLASS_NAMES,
        info={"source": "files", "root": str(folder), GROUP_INFO: GROUP_NAMES, "group_counts": counts},
    )
