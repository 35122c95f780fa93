"""Generated corruptions seeded per image: the same pixels whatever the batching, worker count or device placement.

Streams that generate their corruptions from clean images (`cifar10-c`/`cifar100-c` with a clean set,
`imagenet-c` from a validation folder) corrupt through `corrupt_images(x_u8, index, ...)`:

- image `i` of a domain's dataset draws all its randomness from its own generator, seeded with
  `segment_seed(seed, i)` on the images' device, so a batch of any composition gives every image the same
  pixels (no dependence on batch size, batch boundaries, shuffling or loader workers);
- the whole batch is corrupted in ONE `corruptions.corrupt` call given the list of the images' generators: every
  corruption draws image `j`'s random numbers from `generators[j]` only, the same draws in the same order as a
  call on that image alone (corruptions/_rng.py), so the pixels equal those of one call per image (what this
  function did before; tests/test_device_corruption.py compares it with such a loop, tests/test_per_image_rng.py
  checks the property for every corruption) while the work stays batched. Corruptions that draw nothing ignore
  the generators.

Cost: next to a batched call with one generator (what a bare loop does), the per-image generators add the small
per-image draws and the generators' creation. Measured on one CPU thread of a shared machine (medians,
interleaved; one generator / per-image generators now / the former one call per image): 64 CIFAR images 32², fog
1.1 / 3.5 / 28 ms, Gaussian noise 1.0 / 1.5 / 2.3, glass blur 2.7 / 3.4 / 12, elastic 2.4 / 3.2 / 18, snow
9.1 / 9.8 / 29, the 15 together 39 / 49 / 134 ms; 16 ImageNet images 224², the 15 together 323 / 356 / 372 ms
(per corruption within the machine's noise of the one-generator call). `python -m benchmarks.throughput
--corruption-costs` prints the first two columns. On a GPU each per-image draw is a small kernel launch (N per
draw site instead of one); benchmarks/gpu_check.sh measures it.

Where it runs: a stream dataset with `raw(idx)` (clean uint8 images) and `finish(x, idx)` (corrupt them) is
finished in the loader on CPU runs and in the batch loop, on the run device, on CUDA runs
(`tta_bench.streams.batches(defer=...)`, `streams.to_device`). On one device both places give identical images.

Bit-identity across devices: deterministic corruptions give the same images on CPU and CUDA up to the float
rounding of the device's kernels (convolutions, resampling; after the uint8 quantisation of CIFAR-C usually
identical, at most a grey level apart). Stochastic ones are not bit-identical between CPU and CUDA: a CUDA
generator (Philox) draws other numbers than a CPU one (Mersenne Twister) for the same seed; they agree in
distribution (same severity tables, same noise law). Within CUDA, batch independence holds up to the same kind of
float rounding: the random numbers are per image, but a batched matmul (the Gaussian blurs of glass blur, spatter
and elastic on CUDA) may pick another kernel for another batch size (motion blur's FFT is run on groups of images
with the same padding, as a single-image call pads, so only its float rounding can differ); on CPU the images are
bit-identical whatever the batch (tested).
Not checked on a GPU yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tta_bench import corruptions
from tta_bench.streams import segment_seed


def image_generator(seed: int, i: int, device: torch.device) -> torch.Generator:
    """The generator of image `i` of a dataset seeded with `seed`, on `device`."""
    return torch.Generator(device=device).manual_seed(segment_seed(seed, int(i)))


def corrupt_images(
    x: torch.Tensor, index: Sequence[int] | np.ndarray | torch.Tensor, name: str, severity: int, seed: int,
    quantize: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Corrupt clean images `x` ((N,C,H,W) uint8, or float in [0,1]) whose dataset positions are `index`.

    Returns float [0,1] on `x.device`; `quantize`: rounded to uint8 levels (as the published `.npy` files are).
    Image `index[j]` is corrupted with `image_generator(seed, index[j])`; see the module docstring."""
    idx = [int(i) for i in (index.tolist() if hasattr(index, "tolist") else index)]
    if len(idx) != len(x):
        raise ValueError(f"{len(x)} images but {len(idx)} indices")
    xf = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if len(idx) == 0:
        return xf
    gens = [image_generator(seed, i, xf.device) for i in idx]
    out = corruptions.corrupt(xf, name, severity, generator=gens)  # image j draws from gens[j] only
    if quantize:
        out = out.mul_(255.0).round_().clamp_(0, 255).div_(255.0)
    return out
