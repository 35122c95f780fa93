"""End-to-end throughput: the harness (`tta_bench.run`) against a bare hand-written loop doing the same work.

    python -m benchmarks.throughput [--device cpu|cuda] [--precision fp32|amp] [--compile] [--quick]
                                    [--methods source,tent,eata,cotta,ecotta] [--model resnet20|wrn28|resnet50]
                                    [--batch-size N] [--limit N] [--domains a,b] [--repeats N] [--out FILE]

Both sides stream the same generated corruptions (`cifar10-c` made from a clean set, or `imagenet-c` from an
ImageNet-style folder for `--model resnet50`) through the same model and the same adapter (`methods.create` with
the resolved options of the harness run, presets included):

- harness: `tta_bench.run(cfg, force=True)`, timed from the call to its return (resolve, stream, model, prepare
  state from its cache, data loading, corruption, adaptation, metrics, run files);
- bare: read the clean images, build the model, wrap it with the adapter, then per domain and batch: corrupt the
  batch (`corruptions.corrupt`, one generator per domain), round to uint8 levels, move to the device, adapt, count
  errors on the device; one sync at the end. Its prepare stage (EATA's Fisher, EcoTTA's warm-up) runs untimed, as
  the harness reads it from its cache.

Repeats alternate bare and harness per method; the medians are reported, with their ratio (target: harness ≤
1.05× the bare loop's time) and images/s, and the median of each repeat's own harness/bare ratio ("paired": the
two runs of a repeat are back to back, so a shared machine's slow drifts cancel). On CPU one extra,
untimed-for-the-ratio harness run per method measures where its time goes: outside the batch loop (setup,
files), data (loading, batching, copies), corruption, the adaptation step (model) and metrics, by timing
wrappers around those calls. Timings use one CPU thread
(OMP_NUM_THREADS=1, torch.set_num_threads(1)) unless --threads says otherwise.

Models: `resnet20` = ResNet-20 CIFAR-10 (akamaster weights from ../shared/data when present, else random
weights), `wrn28` = WideResNet-28-10 (random weights: throughput does not depend on them), `resnet50` =
torchvision ResNet-50 (random weights) at 224² on imagenet-c generated from ../shared/data/imagenet-sample (or
random JPEGs). Random weights are said so in the output. `--quick`: 3 domains, a few batches, CoTTA with 4
augmented teacher views on both sides (a CPU-sized run).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from tta_bench import (
    corruptions,  # noqa: E402
    methods,  # noqa: E402
)
from tta_bench.config import RunConfig  # noqa: E402
from tta_bench.identity import open_stream, resolve  # noqa: E402
from tta_bench.models import IMAGENET_MEAN, IMAGENET_STD, MODELS, ModelContext, Normalized, build_model, describe  # noqa: E402
from tta_bench.runner import pick_device, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
METHODS = ("source", "tent", "eata", "cotta", "ecotta")
QUICK_DOMAINS = ("gaussian_noise", "fog", "contrast")  # one stochastic noise, one stochastic weather, one deterministic


# --- models with random weights (registered for this process only) --------------------------------------------
def _random_model(spec, ctx: ModelContext, *, arch: str = "resnet50", weights: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    if arch == "resnet50":
        import torchvision

        net = Normalized(torchvision.models.resnet50(num_classes=spec.num_classes), IMAGENET_MEAN, IMAGENET_STD)
    elif arch == "resnet20":
        from tta_bench.zoo.cifar_resnet import CifarResNet

        net = Normalized(CifarResNet(20, spec.num_classes), IMAGENET_MEAN, IMAGENET_STD)
    elif arch == "wrn28":
        from tta_bench.compat import import_robustbench

        import_robustbench()
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        net = WideResNet(depth=28, widen_factor=10, num_classes=spec.num_classes)
    else:
        raise ValueError(arch)
    return describe(net, weights="random (throughput only)", sha256=f"random-{arch}")


if "bench-random" not in MODELS.names():
    MODELS.add("bench-random", _random_model, "random-weight ResNet-50 / WRN-28-10 for benchmarks/throughput.py")


# --- data ---------------------------------------------------------------------------------------------------
def write_cifar_pickles(folder: Path, n: int) -> None:
    """torchvision's cifar-10-batches-py/test_batch with `n` images: the real CIFAR-10 test JPEGs when present."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = SHARED / "cifar10-test-jpeg" / "test"
    if jpeg.is_dir():
        from PIL import Image

        classes = sorted(p.name for p in jpeg.iterdir() if p.is_dir())
        xs, ys = [], []
        for i in range(n):
            c = i % len(classes)
            f = sorted((jpeg / classes[c]).iterdir())[i // len(classes)]
            xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).reshape(-1))
            ys.append(c)
        x = np.stack(xs)
    else:
        x = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
        ys = [i % 10 for i in range(n)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": x, b"labels": ys, b"batch_label": b"throughput"}, f)


def write_imagenet_folder(folder: Path, n: int) -> Path:
    """An ImageFolder by wnid of `n` JPEGs: ../shared/data/imagenet-sample's images when present, else random."""
    src = SHARED / "imagenet-sample" / "images"
    if src.is_dir():
        return src
    from PIL import Image

    from tta_bench.data.folders import imagenet_wnids

    rng = np.random.default_rng(0)
    for i, w in enumerate(imagenet_wnids()[:n]):
        (folder / w).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(folder / w / f"{i}.JPEG", quality=90)
    return folder


# --- the bare loop -----------------------------------------------------------------------------------------
def bare_loop(cfg: RunConfig, timers: dict[str, float] | None = None, plain: bool = False) -> tuple[float, int, float]:
    """The same work written out: (seconds, images, seconds of the batch loop). `timers` (CPU) receives seconds per
    stage. `plain`: fp32 eager whatever the harness's precision (the baseline of --compile / --precision amp)."""
    t = timers if timers is not None else defaultdict(float)
    t_start = time.perf_counter()
    device = pick_device(cfg.device)
    spec = open_stream(cfg)  # reads the clean images (as a hand-written loop reads its data)
    ctx = ModelContext(Path(cfg.out) / "bare-weights", Path(cfg.out) / "bare-cache", device, cfg.seed)
    model = build_model(cfg.model, spec, ctx, cfg.model_opts)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed)
    adapter = methods.create(cfg.method, model, inplace=True, **cfg.method_opts).to(device)
    t_setup = time.perf_counter() - t_start
    if adapter.needs_source:  # untimed (the harness reads it from its cache)
        loader = torch.utils.data.DataLoader(spec.source, batch_size=cfg.batch_size, shuffle=True)
        adapter.prepare(loader)
        adapter.snapshot()
    domains = cfg.stream_opts.get("domains") or spec.domain_names
    t0 = time.perf_counter()
    wrong = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    amp = cfg.precision == "amp" and not plain
    for d in domains:
        c0 = time.perf_counter()
        ds = spec.load(d, cfg.severity, cfg.limit)
        every = np.arange(len(ds))  # clean uint8 (N,3,H,W), decoded (Pillow) / read once
        clean = ds.uint8(every) if hasattr(ds, "uint8") else ds.raw(every)
        labels = torch.as_tensor(np.asarray(ds.targets))
        t["data"] += time.perf_counter() - c0
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        for i in range(0, len(labels), cfg.batch_size):
            c0 = time.perf_counter()
            xb = clean[i : i + cfg.batch_size].to(device, non_blocking=True).float().div_(255)
            yb = labels[i : i + cfg.batch_size].to(device, non_blocking=True)
            c1 = time.perf_counter()
            xb = corruptions.corrupt(xb, d, cfg.severity, generator=g).mul_(255).round_().div_(255)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            c2 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = adapter(xb)
            c3 = time.perf_counter()
            wrong += (out.argmax(1) != yb).sum()
            n += len(yb)
            c4 = time.perf_counter()
            t["data"] += c1 - c0
            t["corruption"] += c2 - c1
            t["model"] += c3 - c2
            t["metrics"] += c4 - c3
    err = 100.0 * int(wrong) / max(n, 1)  # the one sync
    loop = time.perf_counter() - t0
    t["outside loop"] += t_setup
    t["error %"] = err
    return t_setup + loop, n, loop


# --- the harness, with timing wrappers for the breakdown -----------------------------------------------------
@contextlib.contextmanager
def harness_timers(t: dict[str, float]):
    """Wrap the harness's corruption, adaptation step and metric updates with timers (CPU: synchronous)."""
    import tta_bench.data.generated as gen
    import tta_bench.runner as runner

    originals = (gen.corruptions.corrupt, runner.build_adapter, runner.make_meter)

    def timed(key, fn):
        def wrapper(*a, **k):
            c0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                t[key] += time.perf_counter() - c0

        return wrapper

    class _Corr:  # tta_bench.data.generated calls corruptions.corrupt through the module
        def __getattr__(self, name):
            return timed("corruption", originals[0]) if name == "corrupt" else getattr(corruptions, name)

    def build_adapter(*a, **k):
        adapter, w = originals[1](*a, **k)
        adapter.forward = timed("model", adapter.forward)
        return adapter, w

    def make_meter(*a, **k):
        m = originals[2](*a, **k)
        m.update = timed("metrics", m.update)
        return m

    gen.corruptions = _Corr()
    runner.build_adapter, runner.make_meter = build_adapter, make_meter
    try:
        yield
    finally:
        gen.corruptions = corruptions
        runner.build_adapter, runner.make_meter = originals[1], originals[2]


def harness_run(cfg: RunConfig) -> tuple[float, int, float, dict]:
    """(seconds, images, seconds of the batch loop, summary) of one harness run."""
    t0 = time.perf_counter()
    s = run(cfg, force=True, quiet=True).summary
    return time.perf_counter() - t0, int(s["n_samples"]), s["stream_seconds"], s


def corruption_costs(device: str, n: int, size: int, out: list[dict]) -> None:
    """ms per batch of `n` images `size`² of each benchmark corruption (median of 5 timed calls): one batched call
    with one generator (what a bare loop does) against `corrupt_images`, one batched call with a generator per image
    plus the uint8 rounding (what the harness does, for independence of batching)."""
    from tta_bench.data.generated import corrupt_images

    dev = torch.device(device)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=dev)

    def clock(fn) -> float:
        fn()  # warm
        times = []
        for _ in range(5):  # median: the machine may be shared
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    print(f"corruption cost, {n} x 3 x {size}² on {device}: ms per batch (one generator / a generator per image)")
    for name in corruptions.BENCHMARK:
        g = torch.Generator(device=dev).manual_seed(0)
        b = clock(lambda name=name, g=g: corruptions.corrupt(x.float().div(255), name, 3, generator=g))
        p = clock(lambda name=name: corrupt_images(x, range(n), name, 3, 0, quantize=True))
        out.append({"corruption": name, "batched_ms": b, "per_image_generators_ms": p})
        print(f"  {name:18s} {b:9.1f} {p:9.1f}", flush=True)


# --- main ----------------------------------------------------------------------------------------------------
def configs(args, tmp: Path) -> dict[str, RunConfig]:
    common = dict(batch_size=args.batch_size, limit=args.limit, clean_eval="off", device=args.device,
                  precision=args.precision, compile=args.compile, out=str(tmp / "runs"), seed=0)  # fmt: skip
    if args.model == "resnet50":
        clean = write_imagenet_folder(tmp / "imagenet", min(args.limit, 1000))
        stream, sopts = "imagenet-c", {"clean_dir": str(clean), "samples": "all"}
        model, mopts = "bench-random", {"arch": "resnet50"}
    else:
        write_cifar_pickles(tmp / "cifar" / "cifar-10-batches-py", args.limit + 200)
        stream, sopts = "cifar10-c", {"clean_dir": str(tmp / "cifar"), "holdout": 200, "clean_size": 100}
        if args.model == "wrn28":
            model, mopts = "bench-random", {"arch": "wrn28"}
        else:
            w = sorted((SHARED / "models" / "cifar10-resnet").glob("resnet20-*.th"))
            model, mopts = "resnet20-cifar10", {"weights": str(w[0])} if w else {}
            if not w:
                model, mopts = "bench-random", {"arch": "resnet20"}
    if args.domains:
        sopts["domains"] = args.domains
    out = {}
    for m in args.methods:
        mo = {"n_aug": args.n_aug} if m == "cotta" and args.n_aug else {}
        out[m] = resolve(RunConfig(method=m, stream=stream, model=model, model_opts=mopts, stream_opts=sopts,
                                   method_opts=mo, **common))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "amp"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model", default=None, choices=("resnet20", "wrn28", "resnet50"))
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="images per domain")
    ap.add_argument("--domains", default=None, help="comma-separated corruptions (default: all 15; --quick: 3)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--n-aug", type=int, default=None, help="CoTTA's augmented teacher views (both sides)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="harness with --compile (bare loop: plain fp32 eager)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--corruption-costs", action="store_true", help="only time the corruptions (per-image generators)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.corruption_costs:
        costs: list[dict] = []
        big = args.model == "resnet50"
        corruption_costs(args.device, args.batch_size or 64, 224 if big else 32, costs)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "corruption_costs": costs}, indent=1))
        return 0
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("wrn28" if cuda else "resnet20")
    big = args.model == "resnet50"
    args.batch_size = args.batch_size or (64 if big or not cuda else 200)
    args.limit = args.limit or (2 * args.batch_size if args.quick else (64 if big else 1000))
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.quick:
        args.domains = args.domains or ",".join(QUICK_DOMAINS)
        args.n_aug = args.n_aug or (None if cuda else 4)
    if big:
        args.limit = min(args.limit, 1000)  # the clean folder's size (../shared/data/imagenet-sample: 1,000)
    if not cuda:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = configs(args, Path(tmp))
        random_w = any(c.model == "bench-random" for c in cfgs.values())
        print(f"device {args.device}, precision {args.precision}, model {args.model}"
              f"{' (RANDOM weights: throughput only)' if random_w else ''}, batch {args.batch_size}, "
              f"{args.limit} images x {len((args.domains or '').split(',')) if args.domains else 15} domains, "
              f"{args.repeats} repeats (medians), threads {torch.get_num_threads()}", flush=True)  # fmt: skip
        accelerated = args.compile or args.precision == "amp"  # vs a plain fp32 eager loop: a speed-up
        for m, cfg in cfgs.items():
            harness_run(cfg)  # warm: the prepare cache, compilation, first-use imports (not timed)
            times: dict[str, list] = {"bare": [], "harness": [], "bare_loop": [], "harness_loop": []}
            n_img = 0
            for r in range(args.repeats):
                pair = [
                    ("bare", lambda c=cfg: bare_loop(c, plain=accelerated)[:3]),
                    ("harness", lambda c=cfg: harness_run(c)[:3]),
                ]
                for name, fn in pair if r % 2 == 0 else pair[::-1]:  # alternate which goes first
                    sec, n_img, loop = fn()
                    times[name].append(sec)
                    times[f"{name}_loop"].append(loop)
            b, h = statistics.median(times["bare"]), statistics.median(times["harness"])
            bl, hl = statistics.median(times["bare_loop"]), statistics.median(times["harness_loop"])
            # each repeat's pair ran back to back: the median of their ratios cancels slow drifts of a shared machine
            paired = statistics.median(x / y for x, y in zip(times["harness"], times["bare"]))
            row = {"method": m, "images": n_img, "bare_s": b, "harness_s": h, "ratio": h / b, "loop_ratio": hl / bl,
                   "paired_ratio": paired, "bare_img_s": n_img / b, "harness_img_s": n_img / h}  # fmt: skip
            row.update({f"{k}_all": v for k, v in times.items()})
            if not cuda:
                tb: dict[str, float] = defaultdict(float)
                bare_loop(cfg, tb, plain=accelerated)
                th: dict[str, float] = defaultdict(float)
                with harness_timers(th):
                    total, _, loop, s = harness_run(cfg)
                th["outside loop"] = total - loop
                th["data"] = loop - th["corruption"] - th["model"] - th["metrics"]
                th["error %"] = s["mean_error"]
                row["where_bare"], row["where_harness"] = dict(tb), dict(th)
            rows.append(row)
            what = (f"speed-up {b / h:5.2f}x (batch loops {bl / hl:5.2f}x)" if accelerated
                    else f"ratio {h / b:5.3f} (batch loops {hl / bl:5.3f}; paired {paired:5.3f})")  # fmt: skip
            print(f"{m:8s} bare {b:7.2f} s ({n_img / b:8.1f} img/s)  harness {h:7.2f} s ({n_img / h:8.1f} img/s)  "
                  f"{what}", flush=True)  # fmt: skip
            for side in ("bare", "harness"):
                w = row.get(f"where_{side}")
                if w:
                    parts = "  ".join(f"{k} {v:.2f}" + ("" if k == "error %" else " s") for k, v in w.items())
                    print(f"         where ({side}): {parts}", flush=True)
    if accelerated:
        worst = min(r["bare_s"] / r["harness_s"] for r in rows)
        print(f"lowest speed-up over a plain fp32 eager loop = {worst:.2f}x (target >= 1.5)")
    else:
        worst = max(r["ratio"] for r in rows)
        paired = max(r["paired_ratio"] for r in rows)
        print(f"worst ratio harness/bare = {worst:.3f}, of paired repeats {paired:.3f} (target <= 1.05)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
