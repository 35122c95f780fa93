"""Image decoding never silently changes pixels: every Pillow mode becomes the 8-bit RGB it shows, or is refused
with the file named (`tta_bench.corruptions.images.rgb_image`, used by the folder loaders, the device decode path
and make-c).

Each case writes a small file in that mode and compares the decoded pixels with the expected 8-bit RGB computed here
from the stored samples: 16-bit samples v -> round(v * 255 / 65535), a palette looked up, alpha composited over
white (c * a + 255 * (1 - a)), CMYK -> (255 - C)(255 - K) / 255. Before, a 16-bit grey PNG decoded as white.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tta_bench.corruptions import make_c
from tta_bench.corruptions.images import rgb_image
from tta_bench.data.decode import decode_batch, read_bytes
from tta_bench.data.folders import ImageFiles, read_u8
from tta_bench.kernel import UserError

RNG = np.random.default_rng(0)
H, W = 5, 7


def png16(path: Path, samples: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): grey 0, RGB 2, grey+alpha 4, RGBA 6."""
    h, w = samples.shape[:2]
    raw = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def over_white(rgb: np.ndarray, alpha: np.ndarray, full: float = 255.0) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / full
    return np.rint(rgb.astype(np.float64) / full * 255.0 * a + 255.0 * (1 - a)).astype(np.uint8)


def u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, (H, W, *shape)).astype(np.uint16).squeeze()


def u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, (H, W, *shape)).astype(np.uint8).squeeze()


def scale16(v: np.ndarray) -> np.ndarray:
    return np.rint(v / 257.0).astype(np.uint8)


def grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def case(name: str, tmp: Path) -> tuple[Path, np.ndarray]:
    """(file, expected (H, W, 3) uint8) for one mode (its samples drawn from a generator seeded by the name)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(name.encode()))
    p = tmp / f"{name}.png"
    if name == "RGB":
        a = u8(3)
        Image.fromarray(a, "RGB").save(p)
        return p, a
    if name == "L":
        a = u8()
        Image.fromarray(a, "L").save(p)
        return p, grey3(a)
    if name == "1":
        a = u8() > 127
        Image.fromarray(a).convert("1").save(p)
        return p, grey3(np.where(a, 255, 0).astype(np.uint8))
    if name in ("P", "P+transparency"):
        palette = u8(3).reshape(-1, 3)[:16]
        idx = RNG.integers(0, 16, (H, W)).astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette(palette.flatten().tolist())
        if name == "P":
            im.save(p)
            return p, palette[idx]
        alpha = RNG.integers(0, 256, 16).astype(np.uint8)
        im.save(p, transparency=alpha.tobytes())
        return p, over_white(palette[idx], alpha[idx])
    if name == "L+colour key":
        a = u8()
        key = int(a[0, 0])
        Image.fromarray(a, "L").save(p, transparency=key)
        return p, np.where(grey3(a) == key, 255, grey3(a)).astype(np.uint8)
    if name == "RGBA":
        a = u8(4)
        Image.fromarray(a, "RGBA").save(p)
        return p, over_white(a[..., :3], a[..., 3])
    if name == "RGBA opaque":
        a = u8(4)
        a[..., 3] = 255
        Image.fromarray(a, "RGBA").save(p)
        return p, a[..., :3]
    if name == "LA":
        a = u8(2)
        Image.fromarray(a, "LA").save(p)
        return p, over_white(grey3(a[..., 0]), a[..., 1])
    if name == "CMYK (JPEG)":
        p = tmp / "cmyk.jpg"
        Image.fromarray(u8(4), "CMYK").save(p, quality=95)
        with Image.open(p) as im:  # JPEG is lossy: the expectation is computed from the decoded CMYK samples
            c = np.asarray(im).astype(np.float64)
        return p, np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)
    if name == "CMYK (TIFF)":
        p, c = tmp / "cmyk.tif", u8(4)
        Image.fromarray(c, "CMYK").save(p)
        c = c.astype(np.float64)
        return p, np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)
    if name == "I;16 (PNG)":
        v = u16()
        Image.fromarray(v).save(p)  # uint16: mode I;16
        return p, grey3(scale16(v))
    if name == "I;16B (TIFF)":
        p, v = tmp / "i16b.tif", u16()
        Image.frombytes("I;16B", (W, H), v.astype(">u2").tobytes()).save(p)
        return p, grey3(scale16(v))
    if name == "16-bit RGB (PNG)":
        v = u16(3)
        return png16(p, v, 2), scale16(v)
    if name == "16-bit RGBA (PNG)":
        v = u16(4)
        return png16(p, v, 6), over_white(v[..., :3], v[..., 3], full=65535.0)
    if name == "16-bit LA (PNG)":
        v = u16(2)
        return png16(p, v, 4), over_white(grey3(v[..., 0]), v[..., 1], full=65535.0)
    if name.startswith("PGM") or name.startswith("PPM"):  # Netpbm: samples of 0..maxval, 1 or 2 bytes each
        maxval = int(name.split("maxval ")[1].rstrip(")"))
        colour = name.startswith("PPM")
        v = RNG.integers(0, maxval + 1, (H, W, 3) if colour else (H, W)).astype(np.uint16)
        p = tmp / ("x.ppm" if colour else "x.pgm")
        body = v.astype(">u2" if maxval > 255 else np.uint8).tobytes()
        p.write_bytes(f"{'P6' if colour else 'P5'}\n{W} {H}\n{maxval}\n".encode() + body)
        rgb = v if colour else grey3(v)
        return p, np.rint(rgb.astype(np.float64) * 255.0 / maxval).astype(np.uint8)
    raise AssertionError(name)


MODES = ["RGB", "L", "1", "P", "P+transparency", "L+colour key", "RGBA", "RGBA opaque", "LA", "CMYK (JPEG)",
         "CMYK (TIFF)", "I;16 (PNG)", "I;16B (TIFF)", "16-bit RGB (PNG)", "16-bit RGBA (PNG)",
         "16-bit LA (PNG)", "PGM (maxval 65535)", "PGM (maxval 1000)", "PPM (maxval 65535)", "PPM (maxval 100)",
         "PGM (maxval 255)"]  # fmt: skip


ROUNDED_TWICE = ("PGM (maxval 1000)", "PPM (maxval 100)")


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_decodes_to_the_rgb_it_shows(mode, tmp_path):
    path, expected = case(mode, tmp_path)
    got = read_u8(path)
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    if mode in ROUNDED_TWICE:  # Pillow scales an odd maxval to 0..65535 (or 0..255) first: a tie may round apart
        assert np.abs(got.astype(int) - expected).max() <= 1
        expected = got
    np.testing.assert_array_equal(got, expected)
    # the same pixels on every path: the device decode path (CPU here), make-c's reader, a dataset's item
    dev = decode_batch([read_bytes(path)], "cpu", None, None, [path])[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(dev, expected)
    np.testing.assert_array_equal(np.asarray(make_c._open_rgb(path)), expected)
    x, _ = ImageFiles([path], [0], resize=None, crop=None)[0]
    np.testing.assert_array_equal((x * 255).round().byte().permute(1, 2, 0).numpy(), expected)


def test_16_bit_png_gives_the_pixels_of_the_same_8_bit_image(tmp_path):
    """The issue's case: a 16-bit PNG (v = 257 * c) decoded white; it must equal its 8-bit original exactly."""
    c = u8(3)
    png16(tmp_path / "rgb16.png", c.astype(np.uint16) * 257, 2)
    Image.fromarray(c[..., 0], "L").save(tmp_path / "grey8.png")
    Image.fromarray(c[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    np.testing.assert_array_equal(read_u8(tmp_path / "rgb16.png"), c)
    np.testing.assert_array_equal(read_u8(tmp_path / "grey16.png"), read_u8(tmp_path / "grey8.png"))
    assert read_u8(tmp_path / "grey16.png").mean() < 200  # not clipped to white


@pytest.mark.parametrize("mode", ["PA", "RGBa", "La", "RGBX", "YCbCr"])
def test_modes_only_made_in_memory(mode):
    """Modes Pillow makes (decoders, conversions) but will not save to PNG: converted by their meaning."""
    if mode == "PA":
        palette, idx, alpha = u8(3).reshape(-1, 3)[:8], RNG.integers(0, 8, (H, W)).astype(np.uint8), u8()
        im = Image.fromarray(idx, "P")
        im.putpalette(palette.flatten().tolist())
        im = im.convert("PA")
        im.putalpha(Image.fromarray(alpha, "L"))
        expected = over_white(palette[idx], alpha)
    elif mode in ("RGBa", "La"):
        a = u8(4) if mode == "RGBa" else u8(2)
        a[..., -1] = 255  # premultiplication is lossy below 255: the opaque case is exact
        im = Image.fromarray(a, "RGBA" if mode == "RGBa" else "LA").convert(mode)
        expected = a[..., :3] if mode == "RGBa" else grey3(a[..., 0])
    elif mode == "RGBX":
        a = u8(4)
        im = Image.fromarray(a, "RGBA").convert("RGB").convert("RGBX")
        expected = a[..., :3]
    else:
        ycc = u8(3).astype(np.float64)
        im = Image.fromarray(ycc.astype(np.uint8), "YCbCr")
        y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
        expected = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        got = np.asarray(rgb_image(im, "mem"))
        assert np.abs(got.astype(int) - expected).max() <= 1  # JFIF's fixed-point rounding
        return
    np.testing.assert_array_equal(np.asarray(rgb_image(im, "mem")), expected)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_modes_of_unstated_range_are_refused_with_the_file_named(mode, tmp_path):
    path = tmp_path / f"odd-{mode}.tif"
    a = (RNG.random((H, W)) * 1000).astype(np.int32 if mode == "I" else np.float32)
    Image.fromarray(a, mode).save(path)
    for read in (read_u8, make_c._open_rgb, lambda p: decode_batch([read_bytes(p)], "cpu", None, None, [p])):
        with pytest.raises(UserError, match=f"{path}.*pixel mode '{mode}'"):
            read(path)


def test_refused_mode_is_one_paragraph_from_the_cli(tmp_path, capsys):
    from tta_bench.cli import main

    src = tmp_path / "src" / "n01440764"
    src.mkdir(parents=True)
    Image.fromarray((RNG.random((40, 40)) * 10).astype(np.float32), "F").save(src / "x.tif")
    (src / "x.tif").rename(src / "x.png")  # a float image hiding behind a .png name
    code = main(["make-c", "--src", str(src.parent), "--out", str(tmp_path / "out"), "--format", "imagenet-c",
                 "--corruptions", "contrast", "--severities", "1", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "pixel mode 'F'" in err and str(src / "x.png") in err and "Traceback" not in err


def test_damaged_16_bit_png_is_named(tmp_path):
    path = png16(tmp_path / "cut.png", u16(3), 2)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(UserError, match=str(path)):
        read_u8(path)
