"""Harness overhead: per-batch time of `tent` run by the harness vs a bare hand-written Tent loop.

Same model (digits-c's small-cnn), same data (the 15 corrupted domains, generated once), same batch size,
in one process, alternating bare and harness repeats; prints the medians and their ratio (target <= 1.10).

    python -m benchmarks.overhead [--repeats 3] [--batch-size 64] [--limit 600] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn as nn

from tta_bench.config import RunConfig, cache_dir_default, weights_dir_default
from tta_bench.models import ModelContext, build_model
from tta_bench.runner import run
from tta_bench.streams import build_stream, stream_options


def bare_tent_seconds_per_batch(
    model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], bs: int, device: torch.device
) -> float:
    """Tent written out by hand (Wang et al. 2021): BN batch statistics, Adam on BN affine, entropy loss."""
    model.eval()
    params = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
            params += [m.weight, m.bias]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    correct = torch.zeros((), device=device)
    n_batches = 0
    t0 = time.perf_counter()
    for x_all, y_all in data:
        for i in range(0, len(x_all), bs):
            x, y = x_all[i : i + bs].to(device), y_all[i : i + bs].to(device)
            out = model(x)
            loss = -(out.softmax(1) * out.log_softmax(1)).sum(1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            correct += (out.argmax(1) == y).sum()
            n_batches += 1
    float(correct)  # one sync at the end, as the harness does
    return (time.perf_counter() - t0) / n_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=600, help="samples per domain")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    spec = build_stream("digits-c", None, 0, stream_options("digits-c"))
    ctx = ModelContext(weights_dir_default(), cache_dir_default(), device)
    source = build_model("small-cnn", spec, ctx, {})
    data = [spec.load(d, 5, args.limit).tensors for d in spec.domain_names]
    bare, harness = [], []
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(
            method="tent",
            stream="digits-c",
            batch_size=args.batch_size,
            limit=args.limit,
            clean_eval="off",
            device=args.device,
            out=out,
        )
        for _ in range(args.repeats):
            bare.append(bare_tent_seconds_per_batch(copy.deepcopy(source), data, args.batch_size, device))
            s = run(cfg, force=True, quiet=True).summary
            n_batches = sum((min(args.limit, 600) + args.batch_size - 1) // args.batch_size for _ in spec.domain_names)
            harness.append(s["stream_seconds"] / n_batches)
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"device {device}, batch {args.batch_size}, {args.limit} samples x 15 domains, {args.repeats} repeats")
    print(f"bare Tent loop   {b * 1e3:8.2f} ms/batch   (all: {', '.join(f'{v * 1e3:.2f}' for v in bare)})")
    print(f"harness (tent)   {h * 1e3:8.2f} ms/batch   (all: {', '.join(f'{v * 1e3:.2f}' for v in harness)})")
    print(f"ratio harness / bare = {h / b:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
