"""`camelyon17`: hospital shift on lymph-node histopathology (Camelyon17-WILDS, Koh et al. 2021; Bandi et al.
2019). 96x96 RGB patches, label 1 when the central 32x32 region contains tumour tissue.

Layout (the WILDS download, https://wilds.stanford.edu, `camelyon17_v1.0/`)::

    camelyon17_v1.0/metadata.csv      ,patient,node,x_coord,y_coord,tumor,slide,center,split
    camelyon17_v1.0/patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png

(`patient` is zero-padded to 3 digits; `center` is the hospital 0-4; `split` 0 = train, 1 = in-distribution
val.) Found at `--set stream.root=PATH` (the `camelyon17_v1.0` folder or its parent) or under
`<data-dir>/camelyon17_v1.0`. Official WILDS split: source hospitals {0, 3, 4}; the stream visits
hospital 1 (the OOD val hospital) then hospital 2 (the test hospital). Metrics: balanced error and AUC
(headline, `task="binary"`), error.
Source data: the source hospitals' train patches (a fixed random `source_limit` of them, to bound the
first-use training of the default model; None = all ~302k); held-out clean sample: `clean_size` of
their in-distribution val patches. Within each hospital, patches follow a fixed random order (seed 0), so
`--limit N` streams a random sample rather than the first slide.
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

FOLDER = "camelyon17_v1.0"
COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "center", "split")
SOURCE_CENTERS, TARGET_CENTERS = (0, 3, 4), (1, 2)
LAYOUT = (
    f"{FOLDER}/metadata.csv (columns ,patient,node,x_coord,y_coord,tumor,slide,center,split) and "
    f"{FOLDER}/patches/patient_PPP_node_N/patch_patient_PPP_node_N_x_X_y_Y.png"
)


def patch_path(patient: str, node: int, x: int, y: int) -> str:
    """Relative path of a patch in the WILDS layout (`patient` already zero-padded, e.g. "004")."""
    return f"patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"


class Patches(Dataset):
    """`(x, y)`: x float `(3, 96, 96)` in [0, 1] read from PNG on access, y the tumour label."""

    def __init__(self, root: Path, rel_paths: list[str], labels: np.ndarray) -> None:
        self.root, self.paths, self.labels = root, rel_paths, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with image_errors(self.root / self.paths[i]), Image.open(self.root / self.paths[i]) as im:
            arr = np.asarray(rgb_image(im, self.root / self.paths[i]), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255), int(self.labels[i])

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def head(self, n: int | None) -> Patches:
        return self if n is None else Patches(self.root, self.paths[:n], self.labels[:n])


def find_root(data_dir: Path | None, root: str | None) -> Path:
    cands = [Path(root).expanduser()] if root else [Path(data_dir or ".")]
    for c in list(cands):
        cands.append(c / FOLDER)
    for c in cands:
        if (c / "metadata.csv").is_file():
            return c
    where = root or f"{data_dir}/{FOLDER}"
    raise UserError(
        f"Camelyon17-WILDS not found at {where}: expected {LAYOUT}. Download it with the `wilds` package "
        f"(python -c \"import wilds; wilds.get_dataset('camelyon17', download=True, root_dir='DIR')\", ~10 GB) "
        f"and pass --set stream.root=DIR/{FOLDER} or put it under --data-dir."
    )


def read_metadata(root: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(root / "metadata.csv", index_col=0, dtype={"patient": "str"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"Cannot read {root / 'metadata.csv'} ({type(e).__name__}: {e}); expected {LAYOUT}.") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{root / 'metadata.csv'} lacks columns {missing} (found {list(df.columns)}); expected {LAYOUT}."
        )
    df = df.reset_index(drop=True)
    df["patient"] = df["patient"].str.zfill(3)
    df["path"] = [patch_path(p, n, x, y) for p, n, x, y in df[["patient", "node", "x_coord", "y_coord"]].values]
    first = root / df["path"].iloc[0]
    if not first.is_file():
        raise UserError(f"metadata.csv lists {df['path'].iloc[0]}, but {first} does not exist; expected {LAYOUT}.")
    return df


def subset(root: Path, df: pd.DataFrame, n: int | None = None) -> Patches:
    """Rows of `df` in a fixed random order (seed 0), the first `n` of them."""
    order = np.random.default_rng(0).permutation(len(df))[:n]
    return Patches(root, df["path"].values[order].tolist(), df["tumor"].values[order])


@register(
    "camelyon17",
    default_model="medical-resnet",
    description="Camelyon17-WILDS: hospitals 0,3,4 -> 1 -> 2",
    family="cifar10-c",  # 96 px patches, a small BN ResNet trained on the source: small-image settings
    clean=CleanSplit(
        "stream.clean_size (1,000) in-distribution val patches of the source hospitals 0, 3, 4", disjoint=True
    ),
)
def camelyon17(*, data_dir=None, seed: int = 0, root: str | None = None, source_limit: int | None = 20000,
               clean_size: int = 1000) -> StreamSpec:  # fmt: skip
    """Hospital shift: train on hospitals 0/3/4, stream hospital 1 (OOD val) then 2 (test)."""
    base = find_root(data_dir, root)
    df = read_metadata(base)
    src = df[df["center"].isin(SOURCE_CENTERS)]
    domains = {f"hospital{c}": subset(base, df[df["center"] == c]) for c in TARGET_CENTERS}
    source = subset(base, src[src["split"] == 0], source_limit)
    fp = hashlib.sha256("\n".join(source.paths).encode() + source.labels.tobytes()).hexdigest()[:16]

    def load(domain: str, severity: int | None, limit: int | None) -> Patches:
        return domains[domain].head(limit)

    return StreamSpec(
        name="camelyon17",
        domain_names=list(domains),
        load=load,
        num_classes=2,
        data_fingerprint=None,
        source_fingerprint=f"camelyon17-{fp}",
        task="binary",  # headline: balanced error and AUC (tumour = positive class), error kept
        source=source,
        clean=subset(base, src[src["split"] == 1], clean_size),
        severities=None,
        class_names=["normal", "tumor"],
        info={
            "source": "files",
            "flag": "camelyon17",
            "root": str(base),
            "split": {"source": len(source), **{k: len(v) for k, v in domains.items()}},
        },
    )
