"""Batched decoding (tta_bench.data.decode): torchvision's decode + eval transform equals Pillow's (folders.read_u8)
within one grey level, on synthetic JPEGs/PNGs of several sizes and modes and on real ImageNet JPEGs; the
deferred stream path (bytes in the loader, decoded where the batch runs) gives the loader path's images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench import streams as st
from tta_bench.data.decode import EncodedFiles, decode_batch, read_bytes
from tta_bench.data.imagenet import CorruptedFiles
from tta_bench.kernel import UserError

ONE = 1 / 255 + 1e-6


def _write(tmp_path, sizes=((300, 400), (256, 256), (224, 224), (500, 333), (240, 260))):
    rng = np.random.default_rng(0)
    files = []
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], -1).astype(np.uint8)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        f = tmp_path / f"{k}.jpg"
        Image.fromarray(img).save(f, quality=85)
        files.append(f)
    Image.fromarray(np.full((230, 310), 120, np.uint8), "L").save(tmp_path / "gray.jpg")  # a grayscale JPEG
    Image.fromarray(rng.integers(0, 255, (250, 260, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    return files + [tmp_path / "gray.jpg", tmp_path / "img.png"]


def _check_equal(files, resize=256, crop=224):
    ds = EncodedFiles(files, [0] * len(files), resize, crop)
    idx = np.arange(len(files))
    pil = ds.load_batch(idx)
    dec = ds.finish(ds.raw(idx), idx)
    assert pil.shape == dec.shape == (len(files), 3, crop, crop)
    assert (pil - dec).abs().max() <= ONE
    return pil, dec


def test_decode_equals_pillow_on_synthetic_files(tmp_path, one_thread):
    _check_equal(_write(tmp_path))


def test_decode_without_crop_keeps_the_size(tmp_path):
    f = _write(tmp_path, sizes=((64, 48),))[0]
    (img,) = decode_batch([read_bytes(f)], "cpu", None, None)
    assert img.shape == (3, 64, 48) and img.dtype == torch.uint8


@pytest.mark.real
def test_decode_equals_pillow_on_real_imagenet_jpegs(shared_data, one_thread):
    files = sorted((shared_data / "imagenet-sample" / "images").rglob("*.JPEG"))[::50]
    assert len(files) >= 20
    _check_equal(files)


def test_deferred_stream_path_gives_the_loader_images(tmp_path, one_thread):
    files = _write(tmp_path)
    ds = EncodedFiles(files, list(range(len(files))), 256, 224)
    tagged = st._Tagged([(ds, 0)])
    seg = st.Segment("d", None, 0, False, (("d", None),))
    loader = [st.to_device(tagged, b, torch.device("cpu")) for b in st.batches(tagged, seg, 3)]
    batches = list(st.batches(tagged, seg, 3, defer=True))
    assert isinstance(batches[0].x, list) and batches[0].index is not None  # bytes travel, not pixels
    deferred = [st.to_device(tagged, b, torch.device("cpu")) for b in batches]
    assert (torch.cat(loader) - torch.cat(deferred)).abs().max() <= ONE
    assert torch.equal(torch.cat([b.y for b in batches]), torch.arange(len(files)))


@pytest.mark.parametrize("name", ["gaussian_noise", "brightness"])
def test_generated_imagenet_c_deferred_equals_loader(tmp_path, name, one_thread):
    files = _write(tmp_path, sizes=((260, 300), (256, 256), (280, 256)))
    ds = CorruptedFiles(files, [0, 1, 2], name, 3, seed=4)
    idx = np.arange(3)
    a = torch.stack([ds[i][0] for i in range(3)])
    b = ds.finish(ds.raw(idx), idx)
    # the same generator per image; a decoded pixel a grey level apart may move by two after brightness's HSV step
    assert (a - b).abs().max() <= 3 / 255 and (a - b).abs().mean() < 0.1 / 255


def test_a_damaged_jpeg_is_a_user_error_naming_it(tmp_path):
    files = _write(tmp_path, sizes=((100, 100),))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(files[0].read_bytes()[:200])
    ds = EncodedFiles([files[0], bad], [0, 0], 256, 224)
    with pytest.raises(UserError, match="bad.jpg"):
        ds.finish(ds.raw([0, 1]), [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nvjpeg_decode_close_to_pillow(tmp_path):
    """nvjpeg's IDCT/upsampling is not libjpeg-turbo's: a few grey levels at most, almost all pixels within one."""
    files = _write(tmp_path)
    ds = EncodedFiles(files, [0] * len(files), 256, 224)
    idx = np.arange(len(files))
    pil = ds.load_batch(idx)
    dec = ds.finish(ds.raw(idx), idx, torch.device("cuda")).cpu()
    d = (pil - dec).abs()
    assert d.max() <= 4 / 255 + 1e-6 and (d > ONE).float().mean() < 0.01
