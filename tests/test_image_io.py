import io

import numpy as np
import pytest
from PIL import Image

from deepfake_moe.data.image_io import ImageReadError, read_image
from helpers import write_image


def _jpeg_bytes(size=(64, 48), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")])
@pytest.mark.parametrize("backend", ["pil", "opencv"])
def test_reads_common_formats_as_rgb(tmp_path, fmt, ext, backend):
    p = write_image(tmp_path / f"a.{ext}", size=(40, 30), fmt=fmt)
    arr = read_image(p, backend=backend)
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8


def test_lossless_formats_keep_pixels_exactly(tmp_path):
    p = write_image(tmp_path / "a.png", size=(17, 9), seed=3)
    assert np.array_equal(read_image(p), np.asarray(Image.open(p)))
    assert np.array_equal(read_image(p, backend="opencv"), np.asarray(Image.open(p)))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(base[:, :, 0].astype(np.uint16) * 257)
        ext = "png"
    elif mode in ("I", "F"):
        img = Image.fromarray(base[:, :, 0]).convert(mode)
        ext = "tif"
    else:
        img = Image.fromarray(base).convert(mode)
        ext = "jpg" if mode == "CMYK" else ("png" if mode != "1" else "bmp")
    path = tmp_path / f"img.{ext}"
    img.save(path)
    arr = read_image(path)
    assert arr.shape == (20, 24, 3) and arr.dtype == np.uint8
    if mode == "I;16":  # 16-bit scaled back to the 8-bit values it was made from
        assert np.abs(arr[:, :, 0].astype(int) - base[:, :, 0]).max() <= 1


def test_sixteen_bit_png_opencv_backend(tmp_path):
    img = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    img.save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png", backend="opencv").min() == 255


def test_rgba_alpha_goes_onto_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = read_image(tmp_path / "a.png")
    assert (arr[:2] == 200).all() and (arr[2:] == 0).all()


def test_palette_gif_first_frame(tmp_path):
    frames = [Image.new("P", (10, 8), color=i * 40) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = read_image(tmp_path / "anim.gif")
    assert first.shape == (8, 10, 3)
    assert np.array_equal(first, np.asarray(frames[0].convert("RGB")))
    assert read_image(tmp_path / "anim.gif", backend="opencv").shape == (8, 10, 3)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (30, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rot.jpg").shape == (30, 10, 3)
    assert read_image(tmp_path / "rot.jpg", backend="opencv").shape == (30, 10, 3)


@pytest.mark.parametrize("backend", ["pil", "opencv"])
def test_truncated_jpeg_is_a_read_error(tmp_path, backend):
    data = _jpeg_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated|corrupt|decode"):
        read_image(tmp_path / "t.jpg", backend=backend)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image\n" * 10, "not an image"),
    ],
)
def test_bad_files_have_clear_reasons(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    for backend in ("pil", "opencv"):
        with pytest.raises(ImageReadError, match=reason):
            read_image(tmp_path / name, backend=backend)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # A valid PNG header claiming 60000x60000 pixels, with almost no data behind it.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    for backend in ("pil", "opencv"):
        with pytest.raises(ImageReadError, match="60000x60000.*above the limit"):
            read_image(tmp_path / "bomb.png", backend=backend)
