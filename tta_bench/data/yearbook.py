"""`yearbook`: US high-school yearbook portraits 1930-2013 (Ginosar et al. 2015), the binary gender task under a
natural temporal shift, as TTAB uses it, read from the Wild-Time layout (Yao et al., NeurIPS 2022): one pickle
`yearbook.pkl` holding `{year: {mode: {"images": (N, 32, 32, 3) uint8 (or float in [0, 1]), "labels": (N,)}}}`
with modes 0 train, 1 in-distribution test, 2 all (Wild-Time's `Mode`).

Splits (a stated choice here: `stream.split_year`, default 1970): the source model trains on mode 0 of the years
before `split_year`, the held-out clean sample is mode 1 of those years (never trained on, never streamed), and
the stream is every image of the later years (mode 0 and 1, or mode 2 alone when a year has only that), in time
order: one domain per `stream.bin_years` years from `split_year` (default 10: `1970-1979`, `1980-1989`, ...), so
the continual setting walks forward in time (shuffled within a bin). Images are greyscale portraits stored as 3
equal channels; they are used as they are (32 x 32).

Groups: the two classes (`info["groups"]`), so worst-group accuracy is the worse class's accuracy and average-group
accuracy the class-balanced accuracy, per decade in domains.csv. Point to the pickle with
`--set stream.root=PATH/yearbook.pkl` (default: `<data dir>/yearbook.pkl`). The layout is tested on generated
stand-ins (tests/test_yearbook.py); no copy of the data ships with tta_bench.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tta_bench.data.digits import Labeled
from tta_bench.kernel import UserError, fingerprint_files, safe_unpickle
from tta_bench.metrics import GROUP_INFO
from tta_bench.streams import CleanSplit, StreamSpec, register

CLASS_NAMES = ["0", "1"]  # Wild-Time's labels (the portrait's gender), kept as ids
LAYOUT = '{year: {mode: {"images": (N,32,32,3), "labels": (N,)}}} (Wild-Time yearbook.pkl; modes 0 train, 1 test)'


def read_pickle(path: Path) -> dict[int, dict[int, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise UserError(f"Yearbook: {path} not found. Point --set stream.root at Wild-Time's yearbook.pkl ({LAYOUT}).")
    try:
        data = safe_unpickle(path, encoding="latin1")  # plain data only (dicts, arrays): no code runs from the file
    except OSError as e:
        raise UserError(f"Could not read {path} ({e}); expected {LAYOUT}.") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"{path} is not a dict of years; expected {LAYOUT}.")
    return data


def _part(data: dict, year: int, mode: int, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    entry = data[year].get(mode)
    if entry is None:
        return None
    try:
        images, labels = np.asarray(entry["images"]), np.asarray(entry["labels"]).reshape(-1)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: year {year} mode {mode} lacks images/labels ({e}); expected {LAYOUT}.") from None
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
        raise UserError(
            f"{path}: year {year} mode {mode} has images {images.shape} and {len(labels)} labels; expected {LAYOUT}."
        )
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    x = x / 255.0 if images.dtype == np.uint8 or (x.numel() and float(x.max()) > 1.0) else x
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels.astype(np.int64))


def _cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Labeled | None:
    parts = [p for p in parts if p is not None and len(p[1])]
    if not parts:
        return None
    return Labeled(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


@register(
    "yearbook",
    default_model="small-cnn",  # 32x32 images: the small BN CNN trained on the source years
    description="portraits 1930-2013, source years before split_year, stream forward in time",
    family="cifar10-c",
    clean=CleanSplit("Wild-Time's test mode (1) of the source years, never trained on nor streamed", disjoint=True),
)
def yearbook(*, data_dir=None, seed: int = 0, root: str | None = None, split_year: int = 1970,
             bin_years: int = 10) -> StreamSpec:  # fmt: skip
    """Yearbook (Wild-Time pickle): train on the years before split_year, stream the later ones by decade."""
    path = Path(root).expanduser() if root else Path(data_dir or ".") / "yearbook.pkl"
    if bin_years < 1:
        raise UserError(f"stream.bin_years={bin_years}: give the years per domain, at least 1 (e.g. 10).")
    data = read_pickle(path)
    years = sorted(int(y) for y in data)
    data = {int(y): v for y, v in data.items()}
    early, late = [y for y in years if y < split_year], [y for y in years if y >= split_year]
    if not early or not late:
        raise UserError(
            f"stream.split_year={split_year} leaves no {'source' if not early else 'stream'} years ({path} holds "
            f"{years[0]}-{years[-1]}); pick a year inside that range, "
            f"e.g. --set stream.split_year={years[len(years) // 2]}."
        )
    source = _cat([_part(data, y, 0, path) for y in early])
    clean = _cat([_part(data, y, 1, path) for y in early])
    if source is None:
        raise UserError(f"{path}: the years before {split_year} have no training images (mode 0); expected {LAYOUT}.")
    domains: dict[str, Labeled] = {}
    for y in late:
        parts = [_part(data, y, m, path) for m in (0, 1)]
        if all(p is None for p in parts):
            parts = [_part(data, y, 2, path)]
        start = split_year + (y - split_year) // bin_years * bin_years
        name = f"{start}-{start + bin_years - 1}" if bin_years > 1 else str(start)
        got = _cat(parts)
        if got is not None:
            domains[name] = got if name not in domains else _cat([domains[name].tensors, got.tensors])
    names = list(domains)

    def load(domain: str, severity: int | None, limit: int | None) -> Labeled:
        ds = domains[domain]
        return ds if limit is None else Labeled(*(t[:limit] for t in ds.tensors))

    fp = fingerprint_files([path])
    return StreamSpec(
        name="yearbook",
        domain_names=names,
        load=load,
        num_classes=2,
        data_fingerprint=fp,
        source_fingerprint=f"{fp}-before{split_year}",
        source=source,
        clean=clean,
        severities=None,
        class_names=CLASS_NAMES,
        info={
            "source": "files",
            "pickle": str(path),
            GROUP_INFO: CLASS_NAMES,
            "source_years": [early[0], early[-1]],
            "domains": {n: len(d) for n, d in domains.items()},
        },
    )
