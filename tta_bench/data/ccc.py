"""`ccc` / `ccc-cifar`: Continuously Changing Corruptions (Press et al., "RDumb", NeurIPS 2023), generated on the fly.

Construction, as in the official generator (oripress/CCC `generate.py`, HEAD 656dec3):
- every image carries two corruptions, ``n1`` at severity ``s1`` then ``n2`` at ``s2`` (a severity of 0 skips it;
  the image is quantised to uint8 in between, ``np.uint8`` truncation, and JPEG-encoded at quality 85 at the end);
- a *walk* for a pair ``(n1, n2)`` starts at ``(s1 = i, s2 = 0)`` and each step lowers ``s1`` or raises ``s2`` until
  ``s1 = 0``: ``n1`` fades out while ``n2`` fades in. The walk is the official greedy dynamic programme
  (`find_path`/`traverse_graph`) over the source model's accuracy matrix ``acc[s1][s2]`` of the pair: from every
  cell it moves to the neighbour whose running mean accuracy is closest to the target, and the start ``i >= 1``
  whose whole walk's mean is closest wins (ties: the later option, as the official strict ``<``);
- each walk step holds ``speed`` images (the transition speed; the paper uses 1000, 2000, 5000), drawn at random
  from the clean pool (a fresh shuffle per step) with a random horizontal flip and RandomResizedCrop(224);
- when a walk ends, ``n1 <- n2`` and a new ``n2 != n1`` is drawn at random; the first pair is drawn at random;
- difficulty = target source accuracy on the calibration set: easy 40 %, medium 20 %, hard 0 %, with the
  official corruption lists (>= 40: the 15 ImageNet-C corruptions without brightness; >= 20: also without JPEG;
  below: gaussian, shot, impulse noise and contrast).

Deviations (why): severities move on the integer grid 0..5 (the official grid is 0..5 in steps of 0.25 with
linearly interpolated corruption parameters; `corruptions.corrupt` takes the published integer levels), so a
walk has at most 11 steps instead of up to 41; the accuracy matrix is measured here against the run's source
model (`calibrate`, cached under the cache dir by model, data fingerprint, seed and calibration size) on
`calib_size` images passed through the same pipeline as the stream (flip, crop, JPEG), instead of the official
pre-computed ImageNet pickle (computed for ResNet-50 on un-cropped images), so the target holds for any model;
randomness comes from seeded generators (per image: view and pool draw; per 50-image chunk: the corruption noise),
so the stream is identical for any batch size; `ccc-cifar` keeps CIFAR's 32x32 images (random flip, no crop).
Held-out clean split (ours; the official stream has none): `clean_size` pool images (500, at most a tenth of the
pool), picked in a fixed seed-independent order, are taken out of the pool before anything else: the stream, its
calibration and the source split never draw them, and they measure forgetting (`clean`; `stream.clean_size=0`:
no clean split, the whole pool streamed as before). The rest of the pool's clean images (ImageNet: resize 256,
centre crop 224) are the stream's `source` (prepare stages, e.g. EATA's Fisher). CCC has no discrete domains: the
stream is one domain, ``ccc``; curves over time are batches.csv and the window errors in summary.json.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tta_bench import corruptions
from tta_bench.data.cifar import U8Images
from tta_bench.data.folders import (
    ImageFiles,
    fixed_order,
    image_errors,
    is_image_folder,
    list_image_folder,
    rgb_image,
)
from tta_bench.kernel import (
    UserError,
    discard_cache_entry,
    dumps_json,
    fingerprint_files,
    hash_json,
    read_cache_entry,
    read_cifar_pickle,
    write_cache_entry,
)
from tta_bench.kernel.options import MAX_IMAGES, MAX_SIDE
from tta_bench.kernel.progressbar import progress
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

DIFFICULTY = {"easy": 40.0, "medium": 20.0, "hard": 0.0}  # target source accuracy (%), official --baseline
_EASY = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
GRID = (0, 1, 2, 3, 4, 5)  # severities a walk moves on
CHUNK = 50  # images corrupted together with one seeded generator (never crosses a walk step)
JPEG_QUALITY = 85  # the official generator stores every image as JPEG quality 85
VERSION = 1  # of the construction; part of the calibration cache key


def noises_for(target: float) -> tuple[str, ...]:
    """The official corruption list for a target accuracy (`GenerateDataset`'s `baseline` branches)."""
    if target >= 40:
        return _EASY
    if target >= 20:
        return _EASY[:-1]
    return ("gaussian_noise", "shot_noise", "impulse_noise", "contrast")


def find_path(acc: np.ndarray, target: float) -> list[tuple[int, int]]:
    """The official walk over `acc[s1][s2]` (% accuracy): cells from ``(i, 0)``, i >= 1, to a cell with s1 = 0.

    Bottom-up form of `traverse_graph`'s memoised recursion: ``mean(i, j)`` of the best walk from (i, j) picks
    the neighbour (i-1, j) or (i, j+1) whose running mean is closer to `target` (strictly, else (i, j+1)).
    """
    rows, cols = acc.shape
    big = 9999999999999.0  # the official off-grid cost (a one-cell path), so the boundary compares the same way
    cost: dict[tuple[int, int], float] = {}
    path: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(rows):
        cost[(i, cols)], path[(i, cols)] = big, [(-1, -1)]
        for j in range(cols - 1, -1, -1):
            if i == 0:
                cost[(i, j)], path[(i, j)] = float(acc[0][j]), [(0, j)]
                continue
            down = (cost[(i - 1, j)] + acc[i][j]) / (len(path[(i - 1, j)]) + 1)
            right = (cost[(i, j + 1)] + acc[i][j]) / (len(path[(i, j + 1)]) + 1)
            nxt = (i - 1, j) if abs(down - target) < abs(right - target) else (i, j + 1)
            cost[(i, j)], path[(i, j)] = cost[nxt] + float(acc[i][j]), [(i, j)] + path[nxt]
    best, best_gap = None, float("inf")
    for i in range(1, rows):
        gap = abs(cost[(i, 0)] / len(path[(i, 0)]) - target)
        if gap < best_gap:
            best, best_gap = path[(i, 0)], gap
    assert best is not None and (-1, -1) not in best, "the accuracy matrix needs at least 2 rows and columns"
    return best


@dataclass(frozen=True)
class Step:
    """One walk step: `speed` images with `n1` at severity `s1` then `n2` at `s2`."""

    n1: str
    s1: int
    n2: str
    s2: int


def plan_walks(noises, target: float, length: int, speed: int, seed: int, matrix) -> list[Step]:
    """Walk steps covering `length` images; `matrix(n1, n2)` returns the pair's accuracy matrix (lazily)."""
    rng = np.random.default_rng(segment_seed(seed, "ccc-walk"))
    n1 = str(rng.choice(noises))
    n2 = str(rng.choice([n for n in noises if n != n1]))
    steps: list[Step] = []
    while len(steps) * speed < length:
        for i, j in find_path(matrix(n1, n2), target):
            steps.append(Step(n1, i, n2, j))
            if len(steps) * speed >= length:
                break
        n1, n2 = n2, str(rng.choice([n for n in noises if n != n2]))
    return steps


def apply_step(x: torch.Tensor, step: Step, g: torch.Generator, jpeg: int | None = JPEG_QUALITY) -> torch.Tensor:
    """(N,3,H,W) float [0,1] -> the step's two corruptions, uint8-truncated in between, JPEG at the end."""
    if step.s1 > 0:
        x = corruptions.corrupt(x, step.n1, step.s1, generator=g).mul(255.0).floor_().div_(255.0)
    if step.s2 > 0:
        x = corruptions.corrupt(x, step.n2, step.s2, generator=g)
    return jpeg_roundtrip(x, jpeg) if jpeg else x.mul(255.0).floor_().div_(255.0)


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image uint8-truncated (as `np.uint8`), encoded by Pillow at `quality` (optimize=True) and decoded."""
    u8 = x.mul(255.0).floor_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in u8:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality, optimize=True)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255.0).to(x.device)


# --- the clean pool and its per-image views -------------------------------------------------------------------------
class Pool:
    """Clean images to draw from: files of an ImageFolder, or a (N,3,H,W) uint8 tensor."""

    def __init__(self, labels: np.ndarray, files: list[Path] | None = None, x: torch.Tensor | None = None,
                 exact_size: int | None = None):  # fmt: skip
        self.labels, self.files, self.x = np.asarray(labels, dtype=np.int64), files, x
        self.exact_size = exact_size  # files must be exact_size² (ccc-cifar: no crop, so sizes must agree)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        if self.files is not None:
            with image_errors(self.files[i]), Image.open(self.files[i]) as im:
                n = self.exact_size
                if n is not None and im.size != (n, n):
                    raise UserError(
                        f"{self.files[i]}: image is {im.size[0]}×{im.size[1]}; ccc-cifar streams CIFAR-10 test "
                        f"images as they are ({n}×{n}, no crop). Point stream.clean_dir at 32×32 CIFAR-10 images."
                    )
                return rgb_image(im, self.files[i])
        return Image.fromarray(self.x[i].permute(1, 2, 0).numpy())

    def take(self, idx: np.ndarray) -> Pool:
        """The pool of images `idx` (in that order)."""
        files = [self.files[i] for i in idx] if self.files is not None else None
        x = self.x[torch.as_tensor(idx, dtype=torch.long)] if self.x is not None else None
        return Pool(self.labels[idx], files=files, x=x, exact_size=self.exact_size)

    def held_out(self, clean_size: int) -> tuple[Pool, Pool | None]:
        """(the stream's pool, the held-out clean pool or None): min(`clean_size`, a tenth of the pool) images picked
        in a fixed, seed-independent order (so every seed holds out the same ones); the rest keep their order."""
        k = min(int(clean_size), len(self) // 10)
        if k <= 0:
            return self, None
        pick = fixed_order(len(self), "ccc-clean")[:k]
        return self.take(np.setdiff1d(np.arange(len(self)), pick)), self.take(pick)

    def fingerprint(self) -> str:
        if self.files is not None:
            return fingerprint_files(self.files)
        h = hashlib.sha256(self.x.numpy().tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]


def random_resized_crop(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params (scale 0.08..1, ratio 3/4..4/3, 10 tries, centre fallback)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, cw, ch
    ratio = w / h
    cw, ch = (w, int(round(w / (3 / 4)))) if ratio < 3 / 4 else (int(round(h * 4 / 3)), h) if ratio > 4 / 3 else (w, h)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def view(pool: Pool, i: int, rng: np.random.Generator, size: int | None) -> torch.Tensor:
    """Image `i` flipped with p=0.5 and, with `size`, RandomResizedCrop(size): (3,H,W) uint8."""
    im = pool.image(i)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if size is not None:
        left, top, cw, ch = random_resized_crop(im.width, im.height, rng)
        im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


# --- the stream -------------------------------------------------------------------------------------------------------
def _cached_cells(path: Path, key: str) -> dict[str, float]:
    """The calibration cells cached at `path` for `key`; {} when there are none or the entry cannot be trusted
    (another key's file, replaced or damaged bytes, a directory: reported, removed and measured again)."""
    data, problem, _ = read_cache_entry(path, key)
    cells = None
    if data is not None:
        try:
            cells = dict(json.loads(data)["cells"])
        except (ValueError, KeyError, TypeError):
            problem = "is not a calibration file"
    if problem is not None:
        print(f"note: CCC calibration cache {path} {problem}; rebuilding it", file=sys.stderr)
        discard_cache_entry(path)
    return cells or {}


@dataclass
class CCC:
    """One CCC stream over `pool`: calibrate against a source model, then `dataset()` yields its images."""

    pool: Pool
    target: float
    length: int
    speed: int
    seed: int
    size: int | None  # crop size (None: keep the pool's size, flip only)
    calib_size: int = 200
    jpeg: int | None = JPEG_QUALITY
    steps: list[Step] | None = None
    cells: dict[str, float] = field(default_factory=dict)

    def pick(self, step: int) -> np.ndarray:
        """Pool indices of a step's images (a fresh shuffle per step, as the official `np.random.shuffle`)."""
        rng = np.random.default_rng(segment_seed(self.seed, "ccc-pick", step))
        reps = -(-self.speed // len(self.pool))
        return np.concatenate([rng.permutation(len(self.pool)) for _ in range(reps)])[: self.speed]

    def images(self, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream images `first .. first+n-1` (one walk step, one chunk): (n,3,H,W) float and (n,) labels."""
        step = first // self.speed
        idx = self.pick(step)[first - step * self.speed :][:n]
        x = torch.stack([self._view(int(k), "ccc-view", first + t) for t, k in enumerate(idx)]).float().div_(255.0)
        g = torch.Generator().manual_seed(segment_seed(self.seed, "ccc-noise", first))
        return apply_step(x, self.steps[step], g, self.jpeg), torch.as_tensor(self.pool.labels[idx])

    def _view(self, k: int, tag: str, t: int) -> torch.Tensor:
        """Pool image `k` as the `t`-th image of `tag` (its own seeded flip and crop)."""
        return view(self.pool, k, np.random.default_rng(segment_seed(self.seed, tag, t)), self.size)

    # --- calibration
    def cache_key(self, model_key: dict[str, Any]) -> str:
        return hash_json(
            {
                "version": VERSION,
                "model": model_key,
                "data": self.pool.fingerprint(),
                "seed": self.seed,
                "calib_size": self.calib_size,
                "size": self.size,
                "jpeg": self.jpeg,
            }
        )

    def calibrate(self, model: torch.nn.Module, device: torch.device, cache_dir: Path, model_key: dict) -> dict:
        """Plan the walks with accuracy matrices of `model` (eval mode, not changed), measured where needed."""
        key = self.cache_key(model_key)
        path = Path(cache_dir) / "ccc" / f"calibration-{key}.json"
        self.cells = _cached_cells(path, key)
        known = len(self.cells)
        net = copy.deepcopy(model).eval()
        calib = self._calibration_set()
        bar = progress(desc=f"CCC calibration ({self.calib_size} images a cell, {known} cells cached)", unit="cells")

        def matrix(n1: str, n2: str) -> np.ndarray:
            acc = np.zeros((len(GRID), len(GRID)))
            for i in GRID:
                for j in GRID:
                    cell = cell_key(n1, i, n2, j)  # not `key`: that is the cache entry's key, sealed below
                    if cell not in self.cells:
                        self.cells[cell] = _accuracy(net, calib, Step(n1, i, n2, j), self.seed, cell, device, self.jpeg)
                        bar.update(1)
                    acc[i, j] = self.cells[cell]
            if len(self.cells) > known:
                path.parent.mkdir(parents=True, exist_ok=True)
                cells = dumps_json({"model": model_key, "seed": self.seed, "cells": self.cells}).encode()
                write_cache_entry(path, cells, key)  # with its record: key and digest, checked on every read
            return acc

        with bar:
            self.steps = plan_walks(noises_for(self.target), self.target, self.length, self.speed, self.seed, matrix)
        return {
            "cache": str(path),
            "cells_measured": len(self.cells) - known,
            "walk": [[s.n1, s.s1, s.n2, s.s2] for s in self.steps],
            "expected_source_accuracy": float(
                np.mean([self.cells[cell_key(s.n1, s.s1, s.n2, s.s2)] for s in self.steps])
            ),
        }

    def _calibration_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(segment_seed(self.seed, "ccc-calib"))
        idx = rng.permutation(len(self.pool))[: self.calib_size]
        x = torch.stack([self._view(int(k), "ccc-calib", t) for t, k in enumerate(idx)])
        return x.float().div_(255.0), torch.as_tensor(self.pool.labels[idx])

    def dataset(self, limit: int | None = None) -> CCCImages:
        if self.steps is None:
            raise UserError(
                "CCC streams are planned against the source model: call calibrate() first (the runner does)."
            )
        return CCCImages(self, min(self.length, limit or self.length))


def cell_key(n1: str, s1: int, n2: str, s2: int) -> str:
    """Calibration cell name; a cell with one severity 0 is the other corruption alone (shared between pairs)."""
    parts = ([f"{n1}@{s1}"] if s1 else []) + ([f"{n2}@{s2}"] if s2 else [])
    return "+".join(parts) or "clean"


@torch.no_grad()
def _accuracy(net, calib, step: Step, seed: int, key: str, device: torch.device, jpeg: int | None) -> float:
    x, y = calib
    correct = 0
    for k in range(0, len(y), CHUNK):
        g = torch.Generator().manual_seed(segment_seed(seed, "ccc-calib-noise", key, k))
        xc = apply_step(x[k : k + CHUNK], step, g, jpeg).to(device)
        correct += int((net(xc).argmax(1).cpu() == y[k : k + CHUNK]).sum())
    return 100.0 * correct / max(len(y), 1)


class CCCImages(Dataset):
    """The first `n` images of a planned CCC stream; chunks of `CHUNK` images are generated once and kept."""

    def __init__(self, ccc: CCC, n: int) -> None:
        self.ccc, self.n = ccc, n
        self._chunks: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def chunk_of(self, i: int) -> tuple[int, int]:
        """(first image, size) of the chunk holding image `i`: chunks restart at every walk step."""
        step_start = (i // self.ccc.speed) * self.ccc.speed
        first = step_start + (i - step_start) // CHUNK * CHUNK
        return first, min(CHUNK, step_start + self.ccc.speed - first)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        first, size = self.chunk_of(i)
        if first not in self._chunks:
            self._chunks[first] = self.ccc.images(first, size)
            while len(self._chunks) > 4:
                self._chunks.popitem(last=False)
        x, y = self._chunks[first]
        return x[i - first], int(y[i - first])

    @property
    def targets(self) -> np.ndarray:
        return np.concatenate([self.ccc.pool.labels[self.ccc.pick(s)] for s in range(-(-self.n // self.ccc.speed))])[
            : self.n
        ]


# --- registered streams --------------------------------------------------------------------------------------------
def _options(
    difficulty: str, length: int, speed: int, calib_size: int, target: float | None, size: int | None = None
) -> float:
    """The target source accuracy (%) of the walk; every option is checked whatever the others are (a given
    `target_accuracy` replaces `difficulty`'s target but not the checks of length, speed or calib_size)."""
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 100:
            raise UserError(f"stream.target_accuracy is a source accuracy in percent (0..100), got {target}.")
    if difficulty not in DIFFICULTY:
        raise UserError(
            f"stream.difficulty must be one of {', '.join(DIFFICULTY)} (CCC-Easy/Medium/Hard), got {difficulty!r}."
        )
    for name, v, what in (
        ("length", length, "images in the stream"),
        ("speed", speed, "images a walk step"),
        ("calib_size", calib_size, "images a calibration cell"),
        ("size", size, "pixels of an image's side"),
    ):
        if name == "size" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= (MAX_SIDE if name == "size" else MAX_IMAGES):
            high = MAX_SIDE if name == "size" else MAX_IMAGES
            raise UserError(f"stream.{name} must be a whole number from 1 to {high:,} ({what}), got {v!r}.")
    return float(target) if target is not None else DIFFICULTY[difficulty]


def _clean_views(pool: Pool, size: int | None) -> Dataset:
    """A pool's clean, uncorrupted views (ImageNet: resize 256, centre crop `size`)."""
    if pool.files is not None:
        return ImageFiles(pool.files, pool.labels, 256, size)
    return U8Images(pool.x, torch.as_tensor(pool.labels))


def _spec(name: str, ccc: CCC, held: Pool | None, num_classes: int, data_fingerprint: str, info: dict) -> StreamSpec:
    def load(domain: str, severity: int | None, limit: int | None) -> CCCImages:
        return ccc.dataset(limit)

    spec = StreamSpec(
        calibrate=ccc.calibrate,  # the runner calls it with the source model before the stream
        source=_clean_views(ccc.pool, ccc.size),  # the stream's pool, clean (prepare stages, e.g. EATA's Fisher)
        clean=_clean_views(held, ccc.size) if held is not None else None,  # never streamed (forgetting)
        name=name,
        domain_names=["ccc"],
        load=load,
        num_classes=num_classes,
        data_fingerprint=data_fingerprint,
        source_fingerprint=None,  # the source split is the stream's own pool (clean): data_fingerprint covers it
        severities=None,
        info={"difficulty_target_accuracy": ccc.target, "length": ccc.length, "speed": ccc.speed, **info},
    )
    spec.info["pool"], spec.info["clean_held_out"] = len(ccc.pool), len(held) if held is not None else 0
    return spec


CLEAN = CleanSplit(
    "stream.clean_size (500, at most a tenth of the pool) pool images picked in a fixed order and taken out of the "
    "pool: never streamed, calibrated on or used as source data",
    disjoint=True,
    reason="stream.clean_size=0 (the whole pool streamed, as the official CCC)",
)


@register(
    "ccc",
    default_model="resnet50",
    family="imagenet-c",
    description="CCC (RDumb): two blended corruptions, continuously changing",
    clean=CLEAN,
)
def ccc_stream(
    *,
    data_dir=None,
    seed: int = 0,
    clean_dir: str | None = None,
    difficulty: str = "medium",
    length: int = 100_000,
    speed: int = 1000,
    calib_size: int = 200,
    size: int = 224,
    target_accuracy: float | None = None,
    clean_size: int = 500,
) -> StreamSpec:
    """CCC on the fly from an ImageNet ImageFolder `stream.clean_dir` (e.g. ImageNet val by wnid)."""
    target = _options(difficulty, length, speed, calib_size, target_accuracy, size)
    root = Path(clean_dir) if clean_dir else Path(data_dir or ".") / "imagenet" / "val"
    if not is_image_folder(root):
        raise UserError(
            f"ccc needs clean ImageNet images as an ImageFolder (<root>/<wnid>/<image>.JPEG) at {root}; "
            "point at it with --set stream.clean_dir=PATH (e.g. the ImageNet validation set sorted by wnid)."
        )
    files, labels, classes = list_image_folder(root, what="ccc clean ImageFolder")
    if len(classes) != 1000:
        raise UserError(
            f"ccc: {root} has {len(classes)} class folders; it needs the 1,000 ImageNet wnid folders (labels are "
            "their positions in sorted order, the ImageNet class indices)."
        )
    full = Pool(labels, files=files)
    pool, held = full.held_out(clean_size)
    ccc = CCC(pool, target, length, speed, seed, size, calib_size)
    return _spec("ccc", ccc, held, 1000, full.fingerprint(), {"clean_dir": str(root)})


@register(
    "ccc-cifar",
    default_model="wrn28-10-cifar10",
    family="cifar10-c",
    description="CCC on CIFAR-10-sized images (32x32)",
    clean=CLEAN,
)
def ccc_cifar_stream(
    *,
    data_dir=None,
    seed: int = 0,
    clean_dir: str | None = None,
    difficulty: str = "medium",
    length: int = 20_000,
    speed: int = 1000,
    calib_size: int = 200,
    target_accuracy: float | None = None,
    clean_size: int = 500,
) -> StreamSpec:
    """CCC from CIFAR-10's test set: `cifar-10-batches-py` (test_batch) or a 32x32 ImageFolder at `stream.clean_dir`."""
    target = _options(difficulty, length, speed, calib_size, target_accuracy)
    root = Path(clean_dir) if clean_dir else Path(data_dir or ".") / "cifar-10-batches-py"
    if not (root / "test_batch").is_file() and not is_image_folder(root) and is_image_folder(root / "test"):
        root = root / "test"  # e.g. cifar10-test-jpeg/test/<class>/
    if (root / "test_batch").is_file():
        x, y = read_cifar_pickle(root / "test_batch", b"labels")
        pool = Pool(np.asarray(y), x=torch.from_numpy(np.array(x, dtype=np.uint8)))
    elif is_image_folder(root):
        files, labels, classes = list_image_folder(root, what="ccc-cifar clean ImageFolder")
        if len(classes) != 10:
            raise UserError(
                f"ccc-cifar: {root} has {len(classes)} class folders; it needs CIFAR-10's 10 (labels are the "
                "sorted folder names' positions, airplane=0 … truck=9). Point stream.clean_dir at a CIFAR-10 test "
                "ImageFolder or at cifar-10-batches-py."
            )
        pool = Pool(labels, files=files, exact_size=32)
        pool.image(0)  # a folder of other-sized images fails here, before the model is built
    else:
        raise UserError(
            f"ccc-cifar needs CIFAR-10 test images at {root}: the torchvision folder cifar-10-batches-py "
            "(with test_batch) or an ImageFolder <root>/<class>/<image>; point at it with --set stream.clean_dir=PATH."
        )
    full = pool
    pool, held = full.held_out(clean_size)
    ccc = CCC(pool, target, length, speed, seed, None, calib_size)
    # every image it may read: the run id's data fingerprint
    return _spec("ccc-cifar", ccc, held, 10, full.fingerprint(), {"clean_dir": str(root)})
