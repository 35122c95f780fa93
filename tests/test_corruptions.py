"""corruptions: contract (shape, dtype, range, device, seeding, errors) and severity ordering.

Severity ordering is measured on real photos (scikit-image's bundled astronaut, chelsea, coffee)
at 224 px (ImageNet table) and 32 px (CIFAR table), with common random numbers (the same seed at
every severity) so that the comparison sees the table, not the draw.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from tta_bench import corruptions
from tta_bench.corruptions import tables

ALL = corruptions.names()  # every registered corruption (incl. modules added later)
OURS = corruptions.BENCHMARK + corruptions.EXTRA  # the ImageNet-C / CIFAR-C set with its tables
SEVERITIES = (1, 2, 3, 4, 5)


def photos(size: int, copies: int = 1) -> torch.Tensor:
    """The three sample photos, short side resized (area) to ``size`` (224: to 256 then centre-crop
    224, as ImageNet-C), 8-bit quantised, ``(3 * copies, 3, size, size)`` in [0, 1]."""
    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        t = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
        h, w = t.shape[-2:]
        short = 256 if size == 224 else size
        t = F.interpolate(t, size=(round(h * short / min(h, w)), round(w * short / min(h, w))), mode="area")
        h, w = t.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        out.append(t[..., top : top + size, left : left + size])
    return torch.cat(out).clamp(0, 1).mul(255).round().div(255).repeat(copies, 1, 1, 1)


@pytest.fixture(scope="module")
def small() -> torch.Tensor:
    return photos(32)[:2]


def test_registry_lists():
    assert len(corruptions.BENCHMARK) == 15 and len(corruptions.EXTRA) == 4
    assert list(corruptions.BENCHMARK) + list(corruptions.EXTRA) == ALL[:19]
    for name in ALL:
        assert isinstance(corruptions.describe(name), str) and corruptions.describe(name)


@pytest.mark.parametrize("name", ALL)
def test_contract_and_seeding(name: str, small: torch.Tensor):
    before = small.clone()
    for severity in SEVERITIES:
        a = corruptions.corrupt(small, name, severity, torch.Generator().manual_seed(7))
        b = corruptions.corrupt(small, name, severity, torch.Generator().manual_seed(7))
        assert a.shape == small.shape and a.dtype == small.dtype and a.device == small.device
        assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, b), f"{name} s{severity}: same seed, different output"
    assert torch.equal(small, before), f"{name} modified its input"


@pytest.mark.parametrize("name", ALL)
def test_global_rng_and_other_dtypes(name: str, small: torch.Tensor):
    torch.manual_seed(3)
    a = corruptions.corrupt(small, name, 3)
    torch.manual_seed(3)
    assert torch.equal(a, corruptions.corrupt(small, name, 3))
    for dtype in (torch.float64, torch.float16):
        y = corruptions.corrupt(small.to(dtype), name, 2, torch.Generator().manual_seed(0))
        assert y.dtype == dtype and y.shape == small.shape
    gray = corruptions.corrupt(small[:, :1], name, 5, torch.Generator().manual_seed(0))
    assert gray.shape == (2, 1, 32, 32) and 0 <= gray.min() and gray.max() <= 1


STOCHASTIC = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
    "spatter",
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_different_seeds_differ(name: str, small: torch.Tensor):
    a = corruptions.corrupt(small, name, 5, torch.Generator().manual_seed(0))
    b = corruptions.corrupt(small, name, 5, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_deterministic_ones_ignore_rng(small: torch.Tensor):
    for name in set(OURS) - STOCHASTIC:
        a = corruptions.corrupt(small, name, 4, torch.Generator().manual_seed(0))
        b = corruptions.corrupt(small, name, 4, torch.Generator().manual_seed(1))
        assert torch.equal(a, b), name


def test_gray_input():
    """Gray batches: channel-wise corruptions run natively (noise at full strength, as
    imagecorruptions on 2-D arrays), colour ones go through RGB and come back as luma."""
    flat = torch.full((8, 1, 32, 32), 0.5)
    noisy = corruptions.corrupt(flat, "gaussian_noise", 1, torch.Generator().manual_seed(0))
    assert abs((noisy - flat).std().item() - 0.04) < 0.004  # CIFAR severity 1: sigma 0.04
    g = photos(32)[:2]
    gray = (g * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    rgb = corruptions.corrupt(gray.expand(-1, 3, -1, -1), "frost", 3, torch.Generator().manual_seed(0))
    one = corruptions.corrupt(gray, "frost", 3, torch.Generator().manual_seed(0))
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    assert torch.allclose(one, luma, atol=1e-6)
    blurred = corruptions.corrupt(gray, "defocus_blur", 3)
    assert torch.allclose(blurred, corruptions.corrupt(gray.expand(-1, 3, -1, -1), "defocus_blur", 3)[:, :1], atol=1e-6)


def test_errors(small: torch.Tensor):
    with pytest.raises(ValueError, match="gaussian_noise"):
        corruptions.corrupt(small, "gaussian_nosie", 1)
    with pytest.raises(ValueError, match="Did you mean"):
        corruptions.describe("jpeg")
    for bad in (0, 6, 2.0, True, "3"):
        with pytest.raises(ValueError, match="severity"):
            corruptions.corrupt(small, "fog", bad)
    with pytest.raises(ValueError):
        corruptions.corrupt(small[0], "fog", 1)
    with pytest.raises(ValueError):
        corruptions.corrupt((small * 255).to(torch.uint8), "fog", 1)


def test_filter2d_paths_agree():
    """defocus blur: OpenCV plane by plane (float32 CPU), OpenCV on a padded tall image (float32 CPU,
    kernel radius >= the image size), conv2d (small kernels) and FFT (large) in float64: the same
    numbers as a float64 FFT of the reflect-101 padded batch."""
    from tta_bench.corruptions import _ops
    from tta_bench.corruptions.blur import disk_kernel

    for hw in ((64, 64), (5, 7), (9, 40)):
        x = F.interpolate(photos(64)[:2], size=hw, mode="area")
        for radius, alias in ((6, 0.5), (10, 0.5), (1, 0.2), (3, 0.1)):
            k = disk_kernel(radius, alias)
            r = k.shape[0] // 2
            exact = _ops.fft_correlate(
                _ops.pad2d(x.double(), r, r, r, r, "reflect101"), torch.from_numpy(k)[None, None], hw
            )
            for y in (_ops.filter2d(x.float(), k), _ops.filter2d(x.double(), k)):
                assert y.shape == x.shape and y.dtype in (torch.float32, torch.float64)
                tol = 1e-5 if y.dtype == torch.float32 else 1e-9
                assert (y.double() - exact).abs().max() < tol, (hw, radius, alias, y.dtype)


@pytest.mark.parametrize("size", [224, 32])
def test_disk_kernels_are_the_references_without_subnormals(size: int):
    """The reference blurs its disk with cv2.GaussianBlur (reflect-101) on a grid of half-size
    max(8, ceil(r)); ours drops the weights below float64 epsilon times the peak (~1e-44 with
    alias_blur 0.1, float32 subnormals that x86 multiplies slowly) and trims zero borders. Filtering
    with either kernel gives the same image to float64 rounding."""
    import cv2

    from tta_bench.corruptions.blur import disk_kernel
    from tta_bench.corruptions.tables import params

    img = np.random.default_rng(0).random((48, 48))
    for s in SEVERITIES:
        radius, alias = params("defocus_blur", s, size, size)
        half = 8 if radius <= 8 else int(np.ceil(radius))
        grid = np.arange(-half, half + 1)
        xx, yy = np.meshgrid(grid, grid)
        disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
        ref = cv2.GaussianBlur(disk / disk.sum(), (3, 3) if radius <= 8 else (5, 5), sigmaX=alias)
        ours = disk_kernel(radius, alias)
        k32 = ours.astype(np.float32)
        assert not ((k32 != 0) & (np.abs(k32) < np.finfo(np.float32).tiny)).any(), s
        assert ours.shape[0] % 2 == 1 and ours.shape[0] <= ref.shape[0]
        a = cv2.filter2D(img, -1, ref, borderType=cv2.BORDER_REFLECT_101)
        b = cv2.filter2D(img, -1, ours, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(a - b).max() < 1e-13, (size, s, np.abs(a - b).max())


def test_other_sizes_and_rectangles():
    x = photos(64)[:2]
    for h, w in ((28, 28), (48, 40), (128, 128)):
        xi = F.interpolate(x, size=(h, w), mode="area")
        for name in ALL:
            y = corruptions.corrupt(xi, name, 5, torch.Generator().manual_seed(0))
            assert y.shape == xi.shape and torch.isfinite(y).all(), (name, h, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda(name: str, small: torch.Tensor):
    x = small.cuda()
    a = corruptions.corrupt(x, name, 5, torch.Generator(device="cuda").manual_seed(0))
    b = corruptions.corrupt(x, name, 5, torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device and a.shape == x.shape and torch.equal(a, b)
    cpu = corruptions.corrupt(small, name, 5, torch.Generator().manual_seed(0))
    assert abs((a.cpu() - small).abs().mean() - (cpu - small).abs().mean()) < 0.03


# Steps s -> s + 1 at which the reference's own table does not increase the mean |x' - x|
# (so neither may ours): (name, size) -> severities s whose successor may be closer to clean.
NOT_MONOTONE = {
    # image weight falls while the frost weight stays: brighter/darker cancel in |x' - x|
    ("frost", 224): {3},
    ("frost", 32): {3, 4},
    # severities 2 and 3 whiten with the same blend (0.7); 3 has fewer, larger flakes
    ("snow", 224): {2},
    # ImageNet severities 1-2 are large smooth warps (sigma 0.7 / 0.08 * 244), 3-5 small local ones
    ("elastic_transform", 224): {2},
    # CIFAR: the affine jitter (the dominant term) shrinks from 2.56 px to 0.96 px with severity
    ("elastic_transform", 32): {1, 2, 3, 4},
    # severities 1-2 desaturate, 3-5 oversaturate
    ("saturate", 224): {2},
    ("saturate", 32): {2},
    # CIFAR: 1-3 liquid, 4-5 mud (different kind)
    ("spatter", 32): {3},
    # the shuffle iterations are not monotone in the tables (ImageNet 3 -> 2 at severity 4); CIFAR:
    # a larger sigma (0.25 -> 0.4 at equal iterations) smooths the 1-pixel copies away
    ("glass_blur", 224): {3},
    ("glass_blur", 32): {2, 4},
}
REL_TOL = 0.02  # equal-strength neighbours (e.g. CIFAR motion blur 3 -> 4) may tie within 2 %


@pytest.mark.parametrize("size", [224, 32])
def test_severity_increases_distance(size: int):
    x = photos(size, copies=1 if size == 224 else 4)
    failures = []
    for name in OURS:
        d = [
            (corruptions.corrupt(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean().item()
            for s in SEVERITIES
        ]
        allowed = NOT_MONOTONE.get((name, size), set())
        for s in (1, 2, 3, 4):
            if s not in allowed and d[s] < d[s - 1] * (1 - REL_TOL):
                failures.append(f"{name}@{size}: s{s}={d[s - 1]:.4f} > s{s + 1}={d[s]:.4f}")
    assert not failures, "\n".join(failures)


def test_cpu_fast_paths_match_generic_paths():
    """pixelate: numpy run sums (CPU float32) == the matmul/gather path (float64); JPEG: the per-image
    numpy path (CPU float32) == the batch torch uint8 path, bit for bit."""
    from tta_bench.corruptions import digital

    x = torch.rand(3, 3, 40, 37, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :3] = torch.tensor([0.5, 1.5, 254.5]) / 255  # rounding ties
    x[1, 1, 5, :4] = torch.tensor([-0.3, -0.4 / 255, 1.002, 1.5])  # out of range: clamped, not |x|
    for s in (1, 3, 5):
        fast = digital.pixelate(x, s, None)
        assert (fast.double() - digital.pixelate(x.double(), s, None)).abs().max() < 1e-6
        q = int(digital.params("jpeg_compression", s, 40, 37))
        u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        ref = torch.stack([torch.from_numpy(digital._jpeg_roundtrip(im, q).copy()) for im in u8]).permute(0, 3, 1, 2)
        out = digital.jpeg_compression(x, s, None)
        assert torch.equal(out, ref.float().mul_(1 / 255))
        assert 0 <= out.min() and out.max() <= 1  # registered in_range: corrupt() does not clamp it
        assert torch.equal(corruptions.corrupt(x, "jpeg_compression", s), out)


@pytest.mark.parametrize("mode", ["edge", "symmetric", "reflect101"])
def test_cpu_gaussian_filter_matches_the_matrix_path(mode: str):
    """CPU float32 blurs with OpenCV's separable filter; float64 with the dense matrices (the
    reference's boundary handling folded in). Same numbers, also for kernels longer than the image
    (repeated reflections) and one-pixel axes."""
    from tta_bench.corruptions import _ops

    gen = torch.Generator().manual_seed(0)
    for h, w in ((224, 224), (32, 32), (10, 7), (1, 5)):
        x = torch.rand(2, 3, h, w, generator=gen)
        for sigma, truncate in ((0.4, 4.0), (3.0, 4.0), (6.0, 3.0), (20.0, 4.0)):
            exact = _ops.gaussian_blur(x.double(), sigma, truncate, mode)
            direct = _ops._gaussian_blur_cv(x, sigma, truncate, mode)  # whatever the kernel length
            for fast in (direct, _ops.gaussian_blur(x, sigma, truncate, mode)):
                assert fast.dtype == torch.float32 and fast.shape == x.shape
                assert (fast.double() - exact).abs().max() < 2e-6, (h, w, sigma, truncate)


def test_impulse_cpu_path_flips_at_the_table_rate():
    """CPU float32 draws its uniforms from numpy (seeded by the generator), float64 from torch:
    both salt and pepper a fraction amount / 2 each, leave the rest untouched, and repeat a seed."""
    from tta_bench.corruptions.tables import params

    x = torch.full((8, 3, 64, 64), 0.5)
    for s in (1, 5):
        amount = params("impulse_noise", s, 64, 64)
        for dtype in (torch.float32, torch.float64):
            y, again = (
                corruptions.corrupt(x.to(dtype), "impulse_noise", s, torch.Generator().manual_seed(3)) for _ in range(2)
            )
            assert torch.equal(y, again)
            assert int((y == 0.5).sum() + (y == 1).sum() + (y == 0).sum()) == y.numel()
            salt, pepper = (y == 1).double().mean().item(), (y == 0).double().mean().item()
            tol = 5 * (amount / 2 / y.numel()) ** 0.5
            assert abs(salt - amount / 2) < tol and abs(pepper - amount / 2) < tol, (s, dtype, salt, pepper)
            other = corruptions.corrupt(x.to(dtype), "impulse_noise", s, torch.Generator().manual_seed(4))
            assert not torch.equal(y, other)


def test_cpu_jpeg_codec_matches_pillow_at_every_table_quality():
    """The CPU float32 path encodes and decodes with OpenCV's libjpeg-turbo; the reference saves and
    opens with Pillow's. Same pixels, for every quality in the ImageNet-C, CIFAR-C and MedMNIST-C
    tables (low qualities exercise the baseline clamp of the quantisation tables), on photos and
    on odd sizes (partial MCUs)."""
    from tta_bench.corruptions import digital

    qualities = (5, 7, 10, 15, 18, 20, 25, 30, 40, 50, 58, 65, 80, 85, 95)
    batches = [
        photos(224)[:2],
        photos(32),
        photos(28)[:1],
        torch.rand(2, 3, 17, 45, generator=torch.Generator().manual_seed(1)),
    ]
    for x in batches:
        src = x.contiguous().numpy()
        u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        out = np.empty_like(src)
        for q in qualities:
            for i in range(len(src)):
                digital._jpeg_image(src[i], out[i], q)
                ref = digital._jpeg_roundtrip(u8[i], q).transpose(2, 0, 1)
                assert np.array_equal(out[i], ref.astype(np.float32) * np.float32(1 / 255)), (x.shape, q, i)


# Sizes hitting every CPU pixelate case: runs of 1-2 inputs (CIFAR table; 224 and 128 at s1), tiling
# runs (224 and 128 at s2 and s5), runs of 2-3 / 3-4 / 4-5 (s3, s4; 100 x 90 at s5), rectangles.
PIXELATE_SIZES = [(32, 32), (28, 28), (64, 64), (128, 128), (224, 224), (37, 53), (100, 90), (5, 7)]


def _pillow_pixelate(x: torch.Tensor, severity: int) -> torch.Tensor:
    """Pillow itself on float ("F") planes: BOX down to ``int(c * size)``, BOX back up."""
    from PIL import Image

    h, w = x.shape[-2:]
    c = tables.params("pixelate", severity, h, w)
    planes = [
        Image.fromarray(p, mode="F").resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
        for p in x.reshape(-1, h, w).numpy()
    ]
    return torch.stack([torch.from_numpy(np.array(p)) for p in planes]).reshape(x.shape)  # a writable copy


@pytest.mark.parametrize("hw", PIXELATE_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_pixelate_cpu_path_matches_pillow_and_matmul_path(hw: tuple[int, int], one_thread):
    """The CPU float32 path (numpy run sums and gathers) == Pillow's float resize and == the general
    path (box matrices, index_select) in float64, to float32 rounding, at every severity."""
    from tta_bench.corruptions import digital

    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    x[0, :, : hw[0] // 2, : hw[1] // 2] = 1  # flat bright blocks: the largest rounding steps
    for s in SEVERITIES:
        fast = digital.pixelate(x, s, None)
        assert fast.dtype == torch.float32 and fast.shape == x.shape
        general = digital.pixelate(x.double(), s, None)
        assert (fast.double() - general).abs().max().item() <= 2e-7, f"{hw} s{s}"
        assert (fast - _pillow_pixelate(x, s)).abs().max().item() <= 2e-7, f"{hw} s{s}"
        assert (fast[0, :, 0, 0] == 1).all()


def test_pixelate_chunks_threads_and_gray(one_thread):
    """The CPU path runs ~1 MB of images per call (85 at 3 x 32 x 32, so 100 images make a full
    and a short call; 256 gray ones), serially or on the thread pool: planes are independent, so
    every split gives the same bits."""
    from tta_bench.corruptions import digital

    x = torch.rand(100, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    serial = digital.pixelate(x, 4, None)
    assert torch.equal(serial[:7], digital.pixelate(x[:7], 4, None))
    assert torch.equal(serial[:, 1:2], digital.pixelate(x[:, 1:2].contiguous(), 4, None))
    torch.set_num_threads(2)
    assert torch.equal(digital.pixelate(x, 4, None), serial)
