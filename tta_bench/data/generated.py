"""Generated corruptions seeded per image: the same pixels whatever the batching, worker count or device placement.

Streams that generate their corruptions from clean images (`cifar10-c`/`cifar100-c` with a clean set,
`imagenet-c` from a validation folder) corrupt through `corrupt_images(x_u8, index, ...)`:

- image `i` of a domain's dataset draws all its randomness from its own generator, seeded with
  `segment_seed(seed, i)` on the images' device, so a batch of any composition gives every image the same
  pixels (no dependence on batch size, batch boundaries, shuffling or loader workers);
- corruptions that draw no random numbers (brightness, contrast, defocus/zoom blur, pixelate, JPEG, ...) run on
  the whole batch at once; stochastic ones (noises, glass/motion blur, snow, frost, fog, elastic, spatter) run one
  image per call, each with its generator. Which kind a corruption is, is observed on its first image (the
  generator's state moves or not) and remembered.

Cost: a stochastic corruption runs one call per image, so it loses the batching of `corruptions.corrupt` (measured
on CPU, 64 CIFAR images: fog 1.4 ms batched vs ~30-110 ms per image, Gaussian noise 1.2 vs 11 ms; see
`python -m benchmarks.throughput --corruption-costs`). Against a ResNet-20 adaptation step on one CPU thread that is
~5-10 % of a run, against WRN-28-10 or ResNet-50 well under 1 %; on a GPU the per-image calls are launch-bound
(benchmarks/gpu_check.sh measures them). Drawing per-image randomness inside a batched call (each corruption taking
one generator per image) would remove it; it needs the corruption functions' cooperation.

Where it runs: a stream dataset with `raw(idx)` (clean uint8 images) and `finish(x, idx)` (corrupt them) is
finished in the loader on CPU runs and in the batch loop, on the run device, on CUDA runs
(`tta_bench.streams.batches(defer=...)`, `streams.to_device`). On one device both places give identical images.

Bit-identity across devices: deterministic corruptions give the same images on CPU and CUDA up to the float
rounding of the device's kernels (convolutions, resampling; after the uint8 quantisation of CIFAR-C usually
identical, at most a grey level apart). Stochastic ones are not bit-identical between CPU and CUDA: a CUDA
generator (Philox) draws other numbers than a CPU one (Mersenne Twister) for the same seed; they agree in
distribution (same severity tables, same noise law).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

import corruptions
from tta_bench.streams import segment_seed

_STOCHASTIC: dict[tuple[str, int], bool] = {}  # (corruption, severity) -> whether it draws random numbers


def image_generator(seed: int, i: int, device: torch.device) -> torch.Generator:
    """The generator of image `i` of a dataset seeded with `seed`, on `device`."""
    return torch.Generator(device=device).manual_seed(segment_seed(seed, int(i)))


def _state(g: torch.Generator) -> bytes:
    return g.get_state().numpy().tobytes()


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
    key = (name, int(severity))
    out = torch.empty_like(xf)
    start = 0
    if key not in _STOCHASTIC:  # observe the first image: does its generator move?
        g = image_generator(seed, idx[0], xf.device)
        before = _state(g)
        out[:1] = corruptions.corrupt(xf[:1], name, severity, generator=g)
        _STOCHASTIC[key] = _state(g) != before
        start = 1
    if _STOCHASTIC[key]:
        for j in range(start, len(idx)):
            out[j : j + 1] = corruptions.corrupt(
                xf[j : j + 1], name, severity, generator=image_generator(seed, idx[j], xf.device)
            )
    elif start < len(idx):
        out[start:] = corruptions.corrupt(xf[start:], name, severity, generator=None)
    if quantize:
        out = out.mul_(255.0).round_().clamp_(0, 255).div_(255.0)
    return out
