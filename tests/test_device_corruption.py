"""Generated corruptions seeded per image (tta_bench.data.generated): the loader path and the batch-loop path
(`streams.batches(defer=True)` + `streams.to_device`) give the same images, whatever the batch size, the batch
order or the loader workers; deterministic corruptions equal the former whole-set corruption; on CUDA
(when present) deterministic corruptions match the CPU within a grey level, stochastic ones in distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tta_bench import corruptions
from tta_bench import streams as st
from tta_bench.data.cifar import LazyCorrupted
from tta_bench.data.generated import corrupt_images

DETERMINISTIC = ("brightness", "contrast", "defocus_blur", "zoom_blur", "pixelate", "jpeg_compression")
STOCHASTIC = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
              "elastic_transform")  # fmt: skip
N = 12


@pytest.fixture(scope="module")
def clean() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[: N // 2] = torch.nn.functional.avg_pool2d(x[: N // 2].float(), 3, 1, 1).to(torch.uint8)  # smooth images too
    return x, torch.arange(N) % 10


def _segment(ds):
    seg = st.Segment("d", 5, 0, False, (("d", 5),), "shuffle")
    return st._Tagged([(ds, 0)]), seg


def _stream_images(ds, batch_size: int, defer: bool, workers: int = 0) -> torch.Tensor:
    """All images of the (shuffled) segment, put back in dataset order."""
    tagged, seg = _segment(ds)
    order = np.random.default_rng(st.segment_seed(0, seg.domain, seg.severity, seg.round)).permutation(len(ds))
    xs = [st.to_device(tagged, b, torch.device("cpu")) for b in st.batches(tagged, seg, batch_size, 0, 0.1, workers,
                                                                            False, defer)]  # fmt: skip
    out = torch.cat(xs)
    return out[torch.as_tensor(np.argsort(order))]


@pytest.mark.parametrize("name", ["gaussian_noise", "fog", "brightness", "defocus_blur"])
def test_same_images_any_batch_size_order_and_place(clean, name, one_thread):
    x, y = clean
    ds = LazyCorrupted(x, y, name, 3, seed=123)
    ref = torch.stack([ds[i][0] for i in range(N)])  # one image at a time, in the dataset
    for bs, defer in ((1, False), (5, False), (N, False), (5, True), (N, True)):
        got = _stream_images(ds, bs, defer)
        assert torch.equal(got, ref), (name, bs, defer)
    assert (ref - x.float() / 255).abs().mean() > 0.005  # it did corrupt


def test_worker_count_does_not_change_the_images(clean):
    x, y = clean
    ds = LazyCorrupted(x, y, "shot_noise", 4, seed=7)
    assert torch.equal(_stream_images(ds, 5, False, workers=0), _stream_images(ds, 5, False, workers=2))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_equal_the_whole_set_corruption(clean, name, one_thread):
    """What LazyCorrupted computed before per-image seeding: the whole set in one call, rounded to uint8."""
    x, y = clean
    before = corruptions.corrupt(x.float() / 255, name, 2, generator=torch.Generator().manual_seed(5))
    before = before.mul(255).round().clamp(0, 255).div(255)
    now = torch.stack([LazyCorrupted(x, y, name, 2, seed=5)[i][0] for i in range(N)])
    assert torch.equal(now, before)
    assert torch.equal(_stream_images(LazyCorrupted(x, y, name, 2, seed=5), 5, True), before)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_corruptions_are_per_image(clean, name, one_thread):
    """Image i's pixels depend on (seed, i) only: corrupting it alone or in a batch gives the same pixels, another
    seed gives other pixels."""
    x, _ = clean
    idx = [3, 7, 1]
    batch = corrupt_images(x[idx], idx, name, 3, seed=11)
    alone = torch.cat([corrupt_images(x[[i]], [i], name, 3, seed=11) for i in idx])
    assert torch.equal(batch, alone)
    assert not torch.equal(batch, corrupt_images(x[idx], idx, name, 3, seed=12))


def _per_image_reference(x, index, name, severity, seed):
    """What `corrupt_images` computed before per-image generators inside one call: one `corrupt` call per image,
    each with its own `image_generator`, then the uint8 rounding."""
    from tta_bench.data.generated import image_generator

    xf = x.float() / 255
    out = torch.cat([corruptions.corrupt(xf[j : j + 1], name, severity, generator=image_generator(seed, i, xf.device))
                     for j, i in enumerate(index)])  # fmt: skip
    return out.mul(255).round().clamp(0, 255).div(255)


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", corruptions.names())
def test_batched_call_gives_the_per_image_loop_images(clean, name, severity, one_thread):
    """One batched call with a generator per image: the very images of the former one-call-per-image loop."""
    x, _ = clean
    idx = [4, 0, 9, 2, 11]
    ref = _per_image_reference(x[idx], idx, name, severity, 3)
    assert torch.equal(corrupt_images(x[idx], idx, name, severity, seed=3), ref)


def test_stream_dataset_labels_follow_images(clean):
    x, y = clean
    tagged, seg = _segment(LazyCorrupted(x, y, "contrast", 1, seed=0))
    for b in st.batches(tagged, seg, 5, defer=True):
        assert b.index is not None and b.x.dtype == torch.uint8
        assert torch.equal(b.y, y[b.index])


def test_defer_on_follows_device_and_env(monkeypatch):
    monkeypatch.delenv("TTA_BENCH_DEVICE_DATA", raising=False)
    assert not st.defer_on(torch.device("cpu")) and st.defer_on(torch.device("cuda"))
    monkeypatch.setenv("TTA_BENCH_DEVICE_DATA", "1")
    assert st.defer_on(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["brightness", "contrast", "defocus_blur", "pixelate", "gaussian_noise", "fog"])
def test_cuda_device_corruption_matches_cpu(clean, name):
    """Deterministic: within one grey level of the CPU images. Stochastic: another RNG (Philox), so only the
    distribution agrees: the mean absolute change from the clean image within 10 % of the CPU one."""
    x, y = clean
    ds = LazyCorrupted(x, y, name, 3, seed=1)
    tagged, _ = _segment(ds)
    idx = torch.arange(N)
    cpu = tagged.finish(x, idx)
    cuda = tagged.finish(x.cuda(), idx).cpu()
    if name in DETERMINISTIC or name in ("pixelate",):
        assert (cuda - cpu).abs().max() <= 1 / 255 + 1e-6
    else:
        c0 = x.float() / 255
        a, b = (cpu - c0).abs().mean(), (cuda - c0).abs().mean()
        assert abs(a - b) <= 0.1 * a


def test_prefetched_keeps_order_and_raises_where_it_stopped():
    assert list(st.prefetched(iter(range(7)))) == list(range(7))

    def broken():
        yield 1
        raise ValueError("damaged file")

    got = []
    with pytest.raises(ValueError, match="damaged"):
        for v in st.prefetched(broken()):
            got.append(v)
    assert got == [1]
    early = st.prefetched(iter(range(1000)))
    assert next(early) == 0
    early.close()  # the consumer leaves early: the producer thread stops


def test_runner_same_run_with_corruption_in_the_loop_or_in_the_loader(tmp_path, monkeypatch, one_thread):
    """cifar10-c generated from a small clean set, Tent on a ResNet-20 (random weights): corrupting in the batch
    loop (TTA_BENCH_DEVICE_DATA=1, as on CUDA) gives the loader path's run exactly, and adapt_mb is measured."""
    import pickle

    from tta_bench.config import RunConfig
    from tta_bench.runner import run
    from tta_bench.zoo.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    w = tmp_path / "resnet20.th"
    torch.save({"state_dict": CifarResNet(20, 10).state_dict()}, w)
    folder = tmp_path / "clean" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "test_batch", "wb") as f:
        x = rng.integers(0, 256, (60, 3072), dtype=np.uint8)
        pickle.dump({b"data": x, b"labels": [i % 10 for i in range(60)]}, f)
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("TTA_BENCH_DEVICE_DATA", flag)
        cfg = RunConfig(method="tent", stream="cifar10-c", model="resnet20-cifar10", model_opts={"weights": str(w)},
                        stream_opts={"clean_dir": str(tmp_path / "clean"), "holdout": 20, "domains": "shot_noise,fog"},
                        batch_size=16, clean_eval="off", device="cpu", out=str(tmp_path / f"runs{flag}"))  # fmt: skip
        out[flag] = run(cfg, quiet=True).summary
    assert out["0"]["domain_errors"] == out["1"]["domain_errors"]
    assert out["0"]["adapt_mb"] == out["1"]["adapt_mb"] and out["0"]["adapt_mb"] > 0


def test_published_files_batches_are_sliced_and_finish_anywhere(clean):
    """CIFAR-C .npy data (U8Images): the stream slices uint8 batches; converting on the run device (deferred)
    gives the loader's floats exactly."""
    from tta_bench.data.cifar import U8Images

    x, y = clean
    ds = U8Images(x, y)
    ref = torch.stack([ds[i][0] for i in range(N)])
    for defer in (False, True):
        assert torch.equal(_stream_images(ds, 5, defer), ref)
