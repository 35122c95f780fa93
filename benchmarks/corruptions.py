"""Throughput of the torch corruptions vs the reference per-image loop (imagecorruptions).

    python -m benchmarks.corruptions            # 64 x 3 x 224 x 224, severities 1-5, CPU
    python -m benchmarks.corruptions --device cuda
    python -m benchmarks.corruptions --quick    # 16 images, severity 3, fewer reference images

Ours: ``corruptions.corrupt`` on a float batch ``(N, 3, 224, 224)`` on ``--device`` (synchronised).
Reference: ``imagecorruptions`` (the Hendrycks & Dietterich code made size-agnostic) called per
image on a PIL image, output converted to uint8 as make_imagenet_c.py does; it runs on the CPU
whatever ``--device`` is. A per-image loop's images/s does not depend on how many images it runs,
so the reference is timed on ``--ref-images`` images (its glass blur takes ~0.7 s per image).
Both are timed in the same process, interleaved per corruption; ``--repeats N`` alternates N passes
of each and keeps the best of each side (a noisy shared machine only ever slows a pass down).
``--threads N`` sets torch's and OpenCV's thread counts (OpenCV keeps a pool of its own, so
``--threads 1`` alone is single-threaded). Prints a table and the overall ratio = (reference
seconds per image summed over the corruptions) / (ours, likewise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_corruptions import photos  # noqa: E402
from test_corruptions_fidelity import load_reference  # noqa: E402  (NumPy 2 / skimage 0.26 shims)

from tta_bench import corruptions  # noqa: E402


def time_ours(x: torch.Tensor, name: str, severities: list[int]) -> float:
    """Seconds per image, averaged over the severities."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    corruptions.corrupt(x[:2], name, severities[0], gen)  # warm caches (matrices, textures, tables)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in severities:
        corruptions.corrupt(x, name, s, gen)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (len(severities) * len(x))


def time_reference(ref, imgs: np.ndarray, name: str, severities: list[int]) -> float:
    fn = getattr(ref, name)
    np.random.seed(0)
    start = time.perf_counter()
    for s in severities:
        for im in imgs:
            np.uint8(np.clip(np.asarray(fn(Image.fromarray(im), s), dtype=np.float32), 0, 255))
    return (time.perf_counter() - start) / (len(severities) * len(imgs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--ref-images", type=int, default=16)
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--corruptions", nargs="+", default=list(corruptions.BENCHMARK + corruptions.EXTRA))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and OpenCV, both sides (default: each library's choice)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed passes per corruption, ours and the reference alternating; the best of each counts",
    )
    p.add_argument("--quick", action="store_true", help="16 images, severity 3, 4 reference images")
    args = p.parse_args()
    args.repeats = max(1, args.repeats)
    if args.threads:  # OpenCV keeps a thread pool of its own, which both sides' cv2 calls use
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.quick:
        args.images, args.ref_images, args.severities = 16, 4, [3]
    ref = load_reference()
    base = photos(224)
    x = base.repeat((args.images + 2) // 3, 1, 1, 1)[: args.images].float().to(args.device)
    u8 = np.uint8(np.clip(base.permute(0, 2, 3, 1).numpy() * 255 + 1e-6, 0, 255))
    ref_imgs = np.concatenate([u8] * ((args.ref_images + 2) // 3))[: args.ref_images]
    print(
        f"device={args.device} torch threads={torch.get_num_threads()} OpenCV threads={cv2.getNumThreads()} "
        f"batch={tuple(x.shape)} severities={args.severities} reference images={len(ref_imgs)} "
        f"repeats={args.repeats}"
    )
    print(f"{'corruption':<18} {'ours img/s':>11} {'ref img/s':>10} {'speed-up':>9}")
    tot_ours = tot_ref = 0.0
    for name in args.corruptions:
        t_ours = t_ref = float("inf")
        for _ in range(args.repeats):
            t_ours = min(t_ours, time_ours(x, name, args.severities))
            t_ref = min(t_ref, time_reference(ref, ref_imgs, name, args.severities))
        tot_ours, tot_ref = tot_ours + t_ours, tot_ref + t_ref
        print(f"{name:<18} {1 / t_ours:>11.1f} {1 / t_ref:>10.1f} {t_ref / t_ours:>8.1f}x", flush=True)
    n = len(args.corruptions)
    print(f"{'whole set':<18} {n / tot_ours:>11.1f} {n / tot_ref:>10.1f} {tot_ref / tot_ours:>8.1f}x")


if __name__ == "__main__":
    main()
