"""Per-image generators inside one batched `corruptions.corrupt` call (corruptions/_rng.py).

Key property: `corrupt(x, name, s, generator=[g_0, .., g_{N-1}])` gives image `j` exactly the pixels of
`corrupt(x[j:j+1], name, s, generator=g_j')`, `g_j'` a fresh generator with `g_j`'s seed, and leaves `g_j` in
the state the single-image call leaves `g_j'` (the same sequence of draws). Checked bit for bit (`torch.equal`,
no tolerance) for every registered corruption at severities 1 and 5 on CPU float32 (the kernels of the batched
call and of the single-image calls round alike), on gray and float64 batches, and at 224 px for the stochastic
benchmark corruptions.
"""

from __future__ import annotations

import pytest
import torch

from tta_bench import corruptions
from tta_bench.corruptions import _rng
from tta_bench.corruptions.noise import poisson_8bit

N = 3


def _images(n: int, c: int = 3, size: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, c, size, size), generator=g).float()
    x[: n // 2 + 1] = torch.nn.functional.avg_pool2d(x[: n // 2 + 1], 5, 1, 2).round()  # smooth ones too
    return (x / 255).to(dtype)


def _gens(n: int, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + j) for j in range(n)]


def _check(x: torch.Tensor, name: str, severity: int) -> None:
    gens = _gens(len(x))
    got = corruptions.corrupt(x, name, severity, generator=gens)
    assert got.shape == x.shape and got.dtype == x.dtype
    for j, g_batch in enumerate(_gens(len(x))):  # fresh generators, same seeds
        ref = corruptions.corrupt(x[j : j + 1], name, severity, generator=g_batch)
        assert torch.equal(got[j : j + 1], ref), (name, severity, j, (got[j] - ref[0]).abs().max().item())
        assert torch.equal(gens[j].get_state(), g_batch.get_state()), (name, severity, j, "other draws")


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", corruptions.names())
def test_per_image_generators_equal_single_image_calls(name, severity, one_thread):
    _check(_images(N), name, severity)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "snow", "frost"])
def test_gray_and_float64_batches(name, one_thread):
    _check(_images(N, c=1), name, 3)  # native gray, or RGB replicated and back to luma (frost)
    _check(_images(N, dtype=torch.float64), name, 3)  # float64: the torch paths instead of the numpy ones


@pytest.mark.parametrize("name", ["glass_blur", "motion_blur", "snow", "frost", "fog", "elastic_transform", "spatter"])
def test_imagenet_size(name, one_thread):
    _check(_images(2, size=224), name, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_fallback_decided_per_image(dtype):
    """An image off the 8-bit levels falls back to torch.poisson on its own; the others keep the table sampler."""
    x = _images(N, dtype=dtype)
    x[1] = x[1] + 0.3 / 255  # not 8-bit levels
    got = poisson_8bit(x, 20.0, _gens(N))
    for j, g in enumerate(_gens(N)):
        assert torch.equal(got[j : j + 1], poisson_8bit(x[j : j + 1], 20.0, g)), j


def test_helpers_draw_per_image_along_dim():
    gens = _gens(4)
    u = _rng.rand((2, 4, 5), gens, dim=1)
    for j in range(4):
        assert torch.equal(u[:, j : j + 1], torch.rand((2, 1, 5), generator=torch.Generator().manual_seed(100 + j)))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(
        _rng.randint(0, 9, (4, 6), g), torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(3))
    )
    assert torch.equal(
        _rng.randn((4, 6), torch.Generator().manual_seed(3)),
        torch.randn((4, 6), generator=torch.Generator().manual_seed(3)),
    )
    assert _rng.seeds(_gens(2), 2) == [_rng.seeds(g, 1)[0] for g in _gens(2)]
    with pytest.raises(ValueError, match="4 images on axis 0 but 3 generators"):
        _rng.rand((4, 2), _gens(3))


def test_corrupt_checks_the_generator_list():
    x = _images(N)
    with pytest.raises(ValueError, match=r"2 generators for a batch of 3 images"):
        corruptions.corrupt(x, "gaussian_noise", 1, generator=_gens(2))
    with pytest.raises(ValueError, match="torch.Generator"):
        corruptions.corrupt(x, "gaussian_noise", 1, generator=[None, None, None])
    assert corruptions.corrupt(x[:0], "fog", 1, generator=[]).shape == (0, 3, 32, 32)
    # deterministic corruptions ignore the generators and leave them untouched
    gens = _gens(N)
    out = corruptions.corrupt(x, "contrast", 2, generator=gens)
    assert torch.equal(out, corruptions.corrupt(x, "contrast", 2))
    assert all(torch.equal(g.get_state(), f.get_state()) for g, f in zip(gens, _gens(N)))


@pytest.mark.parametrize("size", [32, 224])
def test_motion_blur_fft_path_groups_images_by_padding(size):
    """CUDA's FFT path (forced here on CPU): with per-image generators each image gets the padding and FFT size
    of its single-image call, so its pixels do not depend on the other images' angles beyond float rounding (a
    batched FFT of two same-padded images may round differently from two single ones: measured up to ~1e-16 in
    float64 with 2 threads; without the grouping an image's FFT size itself changes with the batch)."""
    from tta_bench.corruptions.blur import motion_blur_batch

    x = _images(6, size=size, dtype=torch.float64)
    angles = torch.tensor([-44.0, -10.0, 0.5, 30.0, 44.9, -10.0], dtype=torch.float64)
    got = motion_blur_batch(x, 7.0 * size / 32, 3.0, angles, per_image=True, fft=True)
    for j in range(len(x)):
        one = motion_blur_batch(x[j : j + 1], 7.0 * size / 32, 3.0, angles[j : j + 1], fft=True)
        assert torch.allclose(got[j : j + 1], one, rtol=0, atol=1e-12), j
    assert torch.allclose(got, motion_blur_batch(x, 7.0 * size / 32, 3.0, angles, fft=False), atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "shot_noise", "motion_blur", "characters"])
def test_medmnist_c_per_dataset_tables(name, one_thread):
    """medmnist_c's own paths (e.g. its two-uniform impulse noise) with per-image generators."""
    from tta_bench.corruptions.medical import medmnist_c

    x = _images(N)
    got = medmnist_c(x, "dermamnist", name, 4, _gens(N))
    for j, g in enumerate(_gens(N)):
        assert torch.equal(got[j : j + 1], medmnist_c(x[j : j + 1], "dermamnist", name, 4, g)), (name, j)
