"""Parity against the peer suite mariodoebler/test-time-adaptation, from the user's own checkout of it.

    python -m benchmarks.parity --peer PATH [--methods tent,eta,...] [--data DIR] [--record FILE.json] [--seed 0]

Builds every method the two suites share twice, from the peer's own classes (`PATH/classification/methods`,
constructed from its yacs `cfg` as its `test_time.py` does) and from ours (`tta_bench.methods.create`), wraps the
same model (ResNet-20, the real CIFAR-10 weights of ../shared/data when present, else fixed random ones), feeds
both the same batches (the 20 lossless CIFAR-10 test PNGs of ../shared/data, or seeded synthetic images, plus
their mirror images, under a noise corruption per batch from `tta_bench.corruptions` with one seeded generator
per image) with the same seeds, and prints per method: predictions agreeing (%), the max |logit difference| per
step and over steps, and the error of each side. The peer's cfg is set to our options (the `cifar10-c` preset on
the class defaults, plus the few parity choices of `SPECS`, e.g. a reset period short enough to be seen).

No peer code is copied here: `PATH/classification` goes first on `sys.path` (our adapters import as
`tta_bench.methods`, so the peer's top-level `methods` package does not clash with ours). The peer imports a few
packages at module level that its methods never use here: `autoattack` (RobustBench's attack, not on the package
registry) is stubbed when absent, and the peer's one `.cuda()` call without a device check (CMF) is answered on a
CPU-only machine by the tensor itself; both are printed. The peer's data pipeline is not run: its source loader
(EATA's Fisher, SANTA's and RMT's prototypes, RMT's warm-up and replay) is the list of source batches our
`prepare()` gets, and where it expects augmented views from its loader (MEMO, TTAug: [x, v_1..v_n] per image;
AdaContrast: [x, x_w, x_q, x_k]) it gets the views our adapter drew. Nothing else of the peer is changed: its
classes, cfg defaults and update rules run as they are. Its other needs: `pip install -e ".[parity]"` (yacs,
iopath, einops, webdataset, timm, open_clip_torch).

`--record FILE` writes the peer's outputs (per method, per step: predictions and logits to 4 decimals) with the
peer commit and the inputs' recipe: tests/test_parity.py recomputes our side from that file, without the peer.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import random
import subprocess
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

PEER_REPO = "mariodoebler/test-time-adaptation"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
WEIGHTS = DATA / "models" / "cifar10-resnet" / "resnet20-12fca82f.th"
PNG20 = DATA / "cifar10-test-png20"
JPEG = DATA / "cifar10-test-jpeg" / "test"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# One noise corruption per batch: element-wise draws from per-image generators, so the inputs are the same bits on
# every CPU (no reduction whose order could differ).
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


# --- the shared model and inputs ---------------------------------------------------------------------------------
class Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ParityNet(nn.Module):
    """ResNet-20 laid out as the peer's `split_up_model` expects of a 'resnet' arch: `normalize`, then `model`
    whose children run in order and end with `fc` (our LAME/AdaContrast take the input of the last Linear: the
    same features). Input (N,3,32,32) in [0,1] -> logits (N,10)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.normalize = Normalize()
        stem = nn.Sequential(net.conv1, net.bn1, nn.ReLU())
        parts = [("stem", stem), ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3)]
        parts += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", net.linear)]
        self.model = nn.Sequential(OrderedDict(parts))
        self.model_preprocess = None  # read (not used) by the peer's EATA/SANTA/RMT source loaders

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def use_data(folder: Path) -> None:
    """Read the real weights and images from `folder` (the layout of ../shared/data) instead."""
    global DATA, WEIGHTS, PNG20, JPEG
    DATA = Path(folder).expanduser()
    WEIGHTS = DATA / "models" / "cifar10-resnet" / "resnet20-12fca82f.th"
    PNG20, JPEG = DATA / "cifar10-test-png20", DATA / "cifar10-test-jpeg" / "test"


def build_model(seed: int, weights: Path | None = None) -> tuple[nn.Module, str]:
    """ParityNet(ResNet-20) in eval mode with the real weights if `weights` exists, else seeded random weights."""
    from tta_bench.zoo.cifar_resnet import CifarResNet, load_checkpoint

    weights = WEIGHTS if weights is None else weights
    torch.manual_seed(seed)
    net = CifarResNet(20, 10)
    if weights is not None and Path(weights).is_file():
        load_checkpoint(net, Path(weights))
        what = f"resnet20 {Path(weights).name}"
    else:
        what = f"resnet20 random (torch.manual_seed({seed}))"
    return ParityNet(net).eval(), what


def base_images(seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 20 lossless CIFAR-10 test PNGs (labels from the names) or 20 seeded synthetic images, (20,3,32,32)."""
    files = sorted(PNG20.glob("cifar10_*_*.png"))
    if len(files) == 20:
        from PIL import Image

        x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
        y = torch.tensor([int(f.stem.split("_")[2]) for f in files])
        return x.float() / 255, y, "cifar10-test-png20"
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(20, 3, 8, 8, generator=g)
    x = nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return x, torch.randint(0, 10, (20,), generator=g), f"synthetic (seed {seed})"


def make_batches(seed: int, severity: int = 3) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """Batches of 40: the 20 base images and their mirror images, batch b corrupted with CORRUPTIONS[b] at
    `severity`, image j with its own generator seeded `seed * 10_000 + b * 100 + j`. Returns (batches, recipe)."""
    from tta_bench.corruptions import corrupt

    x0, y0, images = base_images(seed)
    x0, y0 = torch.cat([x0, x0.flip(3)]), torch.cat([y0, y0])
    batches = []
    for b, name in enumerate(CORRUPTIONS):
        gens = [torch.Generator().manual_seed(seed * 10_000 + b * 100 + j) for j in range(len(x0))]
        batches.append((corrupt(x0, name, severity, generator=gens), y0))
    recipe = {"images": images, "mirror": True, "corruptions": list(CORRUPTIONS), "severity": severity,
              "generator_seed": "seed * 10000 + batch * 100 + image", "seed": seed,
              "input_sum": round(float(sum(x.double().sum() for x, _ in batches)), 4)}  # fmt: skip
    return batches, recipe


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# --- what is shared: our name, the peer's class, its cfg from our options -----------------------------------------
def optim_cfg(hp: Any) -> dict[str, Any]:
    """The peer's OPTIM block for our optimizer options (its Adam takes betas (BETA, 0.999))."""
    assert tuple(hp.betas)[1] == 0.999, "the peer's Adam fixes beta2 = 0.999"
    return {
        "OPTIM.METHOD": {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[hp.optimizer],
        "OPTIM.LR": hp.lr,
        "OPTIM.BETA": hp.betas[0],
        "OPTIM.MOMENTUM": hp.momentum,
        "OPTIM.WD": hp.wd,
        "OPTIM.NESTEROV": hp.nesterov,
        "OPTIM.DAMPENING": 0.0,
        "OPTIM.STEPS": getattr(hp, "steps", 1),
    }


def keys(hp: Any, **names: str) -> dict[str, Any]:
    """{peer cfg key: our option value}: keys(hp, RPL__Q="q") -> {"RPL.Q": hp.q}."""
    return {k.replace("__", "."): getattr(hp, v) for k, v in names.items()}


def eata_cfg(hp: Any) -> dict[str, Any]:
    fisher = getattr(hp, "fisher_alpha", 0.0)
    samples = getattr(hp, "fisher_size", -1) if fisher else -1  # the peer skips the Fisher for NUM_SAMPLES <= 0
    out = {**optim_cfg(hp), **keys(hp, EATA__MARGIN_E0="e_margin_frac", EATA__D_MARGIN="d_margin")}
    return {**out, "EATA.FISHER_ALPHA": fisher, "SOURCE.NUM_SAMPLES": samples}


def roid_cfg(hp: Any) -> dict[str, Any]:
    out = keys(
        hp,
        ROID__USE_WEIGHTING="use_weighting",
        ROID__USE_PRIOR_CORRECTION="use_prior_correction",
        ROID__USE_CONSISTENCY="use_consistency",
        ROID__MOMENTUM_PROBS="momentum_probs",
        ROID__TEMPERATURE="temperature",
    )
    if hasattr(hp, "momentum_src"):
        out["ROID.MOMENTUM_SRC"] = hp.momentum_src
    return {**optim_cfg(hp), **out}


def cmf_cfg(hp: Any) -> dict[str, Any]:
    return {**roid_cfg(hp), **keys(hp, CMF__ALPHA="alpha", CMF__GAMMA="gamma", CMF__Q="q")}


def deyo_cfg(hp: Any) -> dict[str, Any]:
    names = {"DEYO__MARGIN": "margin", "EATA__MARGIN_E0": "margin_e0", "DEYO__PLPD": "plpd_threshold"}
    for k in ("reweight_ent", "reweight_plpd", "aug_type", "patch_len", "occlusion_size", "row_start", "column_start"):
        names[f"DEYO__{k.upper()}"] = k
    return {**optim_cfg(hp), **keys(hp, **names)}


def rotta_cfg(hp: Any) -> dict[str, Any]:
    names = {
        f"ROTTA__{k.upper()}": k for k in ("memory_size", "update_frequency", "nu", "alpha", "lambda_t", "lambda_u")
    }
    return {**optim_cfg(hp), **keys(hp, **names)}


def cotta_cfg(hp: Any) -> dict[str, Any]:
    names = {"M_TEACHER__MOMENTUM": "mt", "COTTA__RST": "rst", "COTTA__AP": "ap", "TEST__N_AUGMENTATIONS": "n_aug"}
    return {**optim_cfg(hp), **keys(hp, **names)}


def adacontrast_cfg(hp: Any) -> dict[str, Any]:
    names = {"ADACONTRAST__QUEUE_SIZE": "queue_size", "M_TEACHER__MOMENTUM": "m", "ADACONTRAST__ETA": "eta",
             "CONTRAST__TEMPERATURE": "temperature", "ADACONTRAST__NUM_NEIGHBORS": "num_neighbors",
             "ADACONTRAST__ALPHA": "alpha", "ADACONTRAST__BETA": "beta"}  # fmt: skip
    assert hp.warmup_samples == 1024, "the peer's AdaContrast fixes its warm-up at 1024 samples"
    return {**optim_cfg(hp), **keys(hp, **names)}


def santa_cfg(hp: Any) -> dict[str, Any]:
    names = {"SANTA__LAMBDA_CE_TRG": "lambda_ce_trg", "SANTA__LAMBDA_CONT": "lambda_cont",
             "CONTRAST__TEMPERATURE": "temperature", "CONTRAST__PROJECTION_DIM": "projection_dim"}  # fmt: skip
    return {**optim_cfg(hp), **keys(hp, **names)}


def rmt_cfg(hp: Any) -> dict[str, Any]:
    names = {"RMT__LAMBDA_CE_SRC": "lambda_ce_src", "RMT__LAMBDA_CE_TRG": "lambda_ce_trg",
             "RMT__LAMBDA_CONT": "lambda_cont", "RMT__NUM_SAMPLES_WARM_UP": "num_samples_warm_up",
             "M_TEACHER__MOMENTUM": "mt", "CONTRAST__TEMPERATURE": "temperature",
             "CONTRAST__PROJECTION_DIM": "projection_dim"}  # fmt: skip
    return {**optim_cfg(hp), **keys(hp, **names)}


@dataclass
class Spec:
    """One shared method: our registry name, the peer's class name, the peer cfg from our resolved options,
    our parity options (over the cifar10-c preset), and whether the two draw random numbers in the same order
    (then outputs can agree to float rounding; otherwise only statistically)."""

    ours: str
    peer: str
    cfg: Callable[[Any], dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    extra_cfg: dict[str, Any] = field(default_factory=dict)
    needs_source: bool = False
    output: str = "logits"  # "probs": both sides return probabilities (LAME)
    # "image" / "batch": the peer takes augmented views from its data pipeline ([x, v_1, .., v_n] per image, or
    # [x, x_w, x_q, x_k] per batch): it gets exactly the views our adapter drew (`views()`, recorded)
    views: str = ""
    known_issue: str = ""  # why the peer's code cannot run here, printed when it fails


SPECS: dict[str, Spec] = {
    s.ours: s
    for s in [
        Spec("source", "Source", lambda hp: {}),
        Spec("norm", "BNTest", lambda hp: {}),
        Spec("alpha_bn", "BNAlpha", lambda hp: {"BN.ALPHA": 1 - hp.source_weight}),
        Spec("tent", "Tent", optim_cfg),
        Spec("eta", "EATA", eata_cfg),
        Spec("eata", "EATA", eata_cfg, options={"fisher_size": 80}, needs_source=True),
        Spec("rdumb", "EATA", lambda hp: {**eata_cfg(hp), "MODEL.RESET_AFTER_NUM_UPDATES": hp.reset_every},
             options={"reset_every": 2}),
        Spec("sar", "SAR", lambda hp: {**optim_cfg(hp), **keys(hp, EATA__MARGIN_E0="margin_e0_frac",
                                                                SAR__RESET_CONSTANT_EM="reset_constant")}),
        Spec("rpl", "RPL", lambda hp: {**optim_cfg(hp), **keys(hp, RPL__Q="q")}),
        Spec("roid", "ROID", roid_cfg),
        Spec("cmf", "CMF", cmf_cfg),
        Spec("deyo", "DeYO", deyo_cfg),
        Spec("lame", "LAME", lambda hp: keys(hp, LAME__AFFINITY="affinity", LAME__KNN="knn", LAME__SIGMA="sigma",
                                             LAME__FORCE_SYMMETRY="force_symmetry"),
             options={"output": "probs"}, output="probs"),
        # the suite's CoTTA draws the augmentations only when they are used (our `always_augment=False`); the
        # authors' CIFAR code (our cifar10-c preset) always draws them, which shifts the later random draws
        Spec("cotta", "CoTTA", cotta_cfg, options={"always_augment": False}),
        # the preset's 64-sample updates: the first batch of 40 runs before the peer's first update fails
        Spec("rotta", "RoTTA", rotta_cfg,
             known_issue="the peer's RoTTA calls loss_calculation(x), defined without x, on every update outside "
                         "CUDA mixed precision (methods/rotta.py), so it fails at its first update on a CPU"),
        Spec("memo", "MEMO", lambda hp: {**optim_cfg(hp), "BN.ALPHA": 1 / (hp.prior_strength + 1),
                                         "TEST.N_AUGMENTATIONS": hp.n_aug, "MODEL.EPISODIC": True},
             views="image"),
        Spec("tta_aug", "TTAug", lambda hp: {"BN.ALPHA": 1 - hp.bn_prior, "TEST.N_AUGMENTATIONS": hp.n_aug},
             views="image"),
        Spec("adacontrast", "AdaContrast", adacontrast_cfg, views="batch"),
        Spec("santa", "SANTA", santa_cfg, needs_source=True),
        Spec("rmt", "RMT", rmt_cfg, options={"num_samples_warm_up": 80, "replay_size": 80}, needs_source=True),
    ]
}  # fmt: skip
# The peer's methods this tool does not run, and why.
NOT_RUN = {
    "GTTA": "no GTTA adapter here",
    "TPT, VTE": "CLIP test-time prompt tuning: the peer wraps its own OpenCLIP model (models/custom_clip.py) with "
    "pretrained weights from the hub; this ResNet cannot stand in",
    "BNEMA": "no EMA-statistics BN adapter here",
}


# --- the peer ------------------------------------------------------------------------------------------------------
PEER_TOP = ("methods", "models", "utils", "datasets", "augmentations", "conf", "robustbench")


def load_peer(path: Path) -> types.SimpleNamespace:
    """Import the peer's `conf` and `methods` from `path/classification` (first on sys.path)."""
    root = Path(path).expanduser().resolve() / "classification"
    if not (root / "methods" / "base.py").is_file() or not (root / "conf.py").is_file():
        raise SystemExit(f"--peer {path}: no classification/methods/base.py and conf.py: not a checkout of {PEER_REPO}")
    for name in list(sys.modules):  # names our process may hold from elsewhere (e.g. an installed robustbench)
        if name.split(".")[0] in PEER_TOP:
            del sys.modules[name]
    sys.path.insert(0, str(root))
    notes = []
    try:
        import autoattack  # noqa: F401
    except ImportError:
        stub = types.ModuleType("autoattack")
        stub.AutoAttack = None
        sys.modules["autoattack"] = stub
        notes.append("stubbed 'autoattack' (imported at the top of the peer's robustbench/eval.py, unused here)")
    try:
        conf, methods = importlib.import_module("conf"), importlib.import_module("methods")
    except ImportError as e:
        raise SystemExit(f"importing the peer failed: {e}. Install its needs: pip install -e '.[parity]'") from e
    return types.SimpleNamespace(root=root, conf=conf, methods=methods, commit=peer_commit(root.parent), notes=notes)


def peer_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        marker = path / "PEER_COMMIT"
        return marker.read_text().strip() if marker.is_file() else "unknown"


@contextlib.contextmanager
def cpu_cuda_shim() -> Iterator[None]:
    """On a machine without CUDA, `tensor.cuda()` returns the tensor (the peer's CMF calls it unconditionally)."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def peer_cfg(peer: types.SimpleNamespace, values: dict[str, Any], batch_size: int, scratch: Path) -> Any:
    cfg = peer.conf._CFG_DEFAULT.clone()
    cfg.defrost()
    base = {"CORRUPTION.DATASET": "cifar10_c", "MODEL.ARCH": "resnet20", "TEST.BATCH_SIZE": batch_size,
            "CKPT_DIR": str(scratch), "DATA_DIR": str(scratch), "SOURCE.NUM_WORKERS": 0}  # fmt: skip
    for key, value in {**base, **values}.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"the peer's cfg has no {key}")
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (bool, int, float)) else value
    return cfg


def run_peer(peer, spec: Spec, hp: Any, model: nn.Module, batches, source, seed: int, views):
    """The peer's outputs per batch, and the error (or None) that stopped its stream early (a known peer bug:
    the steps before it are still compared)."""
    import tempfile

    cls = getattr(peer.methods, spec.peer)
    batch_size = 1 if spec.views == "image" else len(batches[0][0])
    with tempfile.TemporaryDirectory() as scratch, cpu_cuda_shim():
        cfg = peer_cfg(peer, {**spec.cfg(hp), **spec.extra_cfg}, batch_size, Path(scratch))
        if spec.needs_source:
            for mod in ("methods.eata", "methods.santa", "methods.rmt"):
                sys.modules[mod].get_source_loader = lambda **kw: (None, SourceLoader(source))
        seed_all(seed)
        adapter = cls(cfg, copy.deepcopy(model), num_classes=10)
        seed_all(seed)
        outs, drawn = [], iter(views)
        for x, _ in batches:
            try:
                if spec.views == "image":  # one test point at a time: [x_i, v_1, .., v_n], each (1,C,H,W)
                    out = torch.cat([adapter([xi[None], *next(drawn)[:, None]]) for xi in x])
                elif spec.views == "batch":
                    out = adapter([x, *next(drawn)])
                else:
                    out = adapter(x)
            except Exception as e:
                if not spec.known_issue or not outs:
                    raise
                return outs, e
            outs.append(out.detach().float().clone())
        return outs, None


def our_options(name: str) -> dict[str, Any]:
    """Our cifar10-c preset (what the harness runs on CIFAR-10-C) plus the parity choices of SPECS."""
    from tta_bench import methods

    preset = methods.get(name).presets.get("cifar10-c", {}).get("options", {})
    return {**preset, **SPECS[name].options}


def run_ours(name: str, model: nn.Module, batches, source, seed: int) -> tuple[list[torch.Tensor], Any, list]:
    """Our outputs per batch, our resolved options, and the views our adapter drew (in order)."""
    from tta_bench import methods

    seed_all(seed)
    adapter = methods.create(name, copy.deepcopy(model), **our_options(name))
    if SPECS[name].needs_source:
        adapter.prepare(source)
        adapter.snapshot()
    drawn = []
    if SPECS[name].views:
        draw = adapter.views

        def recording(x: torch.Tensor):
            drawn.append(draw(x))
            return drawn[-1]

        adapter.views = recording
    seed_all(seed)
    return [adapter(x).detach().float().clone() for x, _ in batches], adapter.hp, drawn


def compare(ours: list[torch.Tensor], peer: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, Any]:
    """Predictions agreeing (%), max |difference| per step and over steps, error (%) of each side."""
    agree = torch.cat([o.argmax(1) == p.argmax(1) for o, p in zip(ours, peer)]).float().mean().item() * 100
    diffs = [(o - p).abs().max().item() for o, p in zip(ours, peer)]
    y = torch.cat(labels)
    err = [(torch.cat([t.argmax(1) for t in side]) != y).float().mean().item() * 100 for side in (ours, peer)]
    return {"agree": agree, "max_diff_steps": diffs, "max_diff": max(diffs), "error_ours": err[0], "error_peer": err[1]}


def source_batches(seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """Clean source data (EATA's Fisher, SANTA's and RMT's prototypes, RMT's warm-up and replay): two batches of 40,
    4 images of every class (CIFAR-10 test JPEGs 0000-0003, then 0004-0007, classes in label order; the 20 PNGs
    lack two classes), or seeded synthetic images labelled 0..9 in turn."""
    if all((JPEG / c).is_dir() for c in CIFAR10_CLASSES):
        from PIL import Image

        def load(i: int) -> torch.Tensor:
            return torch.from_numpy(np.array(Image.open(JPEG / CIFAR10_CLASSES[i % 10] / f"{i // 10:04d}.jpg")))

        batches = []
        for b in range(2):
            x = torch.stack([load(i).permute(2, 0, 1) for i in range(40 * b, 40 * b + 40)]).float() / 255
            batches.append((x, torch.arange(40) % 10))
        return batches, "cifar10-test-jpeg, 4 per class, 2 batches of 40"
    g = torch.Generator().manual_seed(seed + 1)
    low = torch.rand(80, 3, 8, 8, generator=g)
    x = nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return [(x[:40], torch.arange(40) % 10), (x[40:], torch.arange(40) % 10)], f"synthetic (seed {seed + 1})"


class SourceLoader(list):
    """The source batches as the peer's methods read their source loader (a list with `batch_size`)."""

    def __init__(self, batches: list) -> None:
        super().__init__(batches)
        self.batch_size = len(batches[0][0])


def record_entry(outs: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [{"pred": o.argmax(1).tolist(), "logits": [[round(v, 4) for v in row] for row in o.tolist()]} for o in outs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peer", required=True, type=Path, help=f"a checkout of {PEER_REPO}")
    ap.add_argument("--methods", default=",".join(SPECS), help="comma-separated, ours names (default: all shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="real weights and images, laid out as ../shared/data (absent: seeded random weights and synthetic images)",
    )
    ap.add_argument("--record", type=Path, help="write the peer's outputs and the recipe to this JSON file")
    args = ap.parse_args(argv)
    use_data(args.data)
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise SystemExit(f"--methods: not shared with the peer here: {unknown}; choose from {list(SPECS)}")
    model, model_what = build_model(args.seed)
    batches, recipe = make_batches(args.seed)
    source, recipe["source"] = source_batches(args.seed)
    peer = load_peer(args.peer)
    print(f"peer: {PEER_REPO} @ {peer.commit} ({peer.root})\nmodel: {model_what}\ninputs: {json.dumps(recipe)}")
    if not torch.cuda.is_available():
        peer.notes.append("no CUDA here: tensor.cuda() returns the tensor (the peer's CMF calls it unconditionally)")
    for note in peer.notes:
        print(f"note: {note}")
    labels = [y for _, y in batches]
    head = (
        f"{'method':<10} {'peer class':<10} {'agree %':>8} {'max |Δ| over steps':>19}  {'err ours':>8} {'err peer':>8}"
    )
    print(head + "  max |Δ| per step")
    record = {"peer": PEER_REPO, "peer_commit": peer.commit, "model": model_what, "recipe": recipe, "methods": {}}
    failed = {}
    for name in names:
        spec = SPECS[name]
        try:
            ours, hp, views = run_ours(name, model, batches, source, args.seed)
            theirs, stopped = run_peer(peer, spec, hp, model, batches, source, args.seed, views)
        except Exception as e:  # report and go on: one method's failure must not hide the others
            failed[name] = spec.known_issue or f"{type(e).__name__}: {e}"
            print(f"{name:<10} {spec.peer:<10} FAILED {failed[name]}")
            continue
        c = compare(ours[: len(theirs)], theirs, labels[: len(theirs)])
        steps = " ".join(f"{d:.1e}" for d in c["max_diff_steps"])
        if stopped is not None:
            c["peer_stopped"] = f"after step {len(theirs)} of {len(batches)}: {spec.known_issue}"
            steps += f"  (peer stopped {c['peer_stopped']})"
        print(f"{name:<10} {spec.peer:<10} {c['agree']:8.1f} {c['max_diff']:19.2e}  "
              f"{c['error_ours']:8.1f} {c['error_peer']:8.1f}  {steps}")  # fmt: skip
        record["methods"][name] = {"peer_class": spec.peer, "options": our_options(name), "output": spec.output,
                                   "parity": c, "steps": record_entry(theirs)}  # fmt: skip
    for what, why in NOT_RUN.items():
        print(f"not run: {what}: {why}")
    if args.record:
        args.record.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        print(f"recorded: {args.record} ({args.record.stat().st_size / 1e3:.0f} kB)")
    return 1 if any(not SPECS[n].known_issue for n in failed) else 0  # a known peer bug is reported, not failed


if __name__ == "__main__":
    sys.exit(main())
