"""Hostile image files, built byte by byte (nothing committed): tests and benchmarks/hostile_inputs.py.

Each builder returns the bytes of one file that is small on disk and asks a decoder for far more
than it is worth, or that is in a format outside the documented list.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: int | None = None, color_type: int = 0) -> bytes:
    """A PNG declaring width x height whose IDAT inflates to `rows` rows of zeros (all rows by default).

    Zero rows compress about 1000:1, so a 100 MP image is a file of about 100 kB.
    """
    rows = height if rows is None else rows
    channels = {0: 1, 2: 3}[color_type]
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)
    body = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def zero_bomb_png(megapixels: int = 105) -> bytes:
    """A tiny PNG that inflates to `megapixels` MP of zeros (grey, 8 bit)."""
    side = int((megapixels * 1_000_000) ** 0.5) + 1
    return png(side, side)


def strip_png(width: int = 1, height: int = 60000) -> bytes:
    return png(width, height)


def lying_bmp(width: int = 30000, height: int = 30000) -> bytes:
    """A BMP header claiming width x height (24 bit) followed by a few bytes of pixels."""
    pixels = b"\x7f" * 64
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + len(pixels), 0, 0, 54) + header + pixels


def lying_png(width: int = 9000, height: int = 9000) -> bytes:
    """A PNG under the pixel limit whose data stops after a few rows (a truncated decode)."""
    return png(width, height, rows=4, color_type=2)


def saved_by_pillow(fmt: str, size: tuple[int, int] = (32, 32), **kw) -> bytes:
    """A real file in `fmt` (ICO, TGA, PCX, DDS, ...): outside the documented list."""
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(arr).convert("RGBA" if fmt == "DDS" else "RGB")
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ico_with_huge_png(declared: int = 16, real: int = 20000) -> bytes:
    """An ICO whose directory says `declared` px but whose embedded PNG is real x real pixels."""
    inner = png(real, real, rows=1)
    entry = struct.pack("<BBBBHHII", declared % 256, declared % 256, 0, 0, 1, 32, len(inner), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + inner


def icns_with_huge_png(real: int = 20000, rows: int = 1) -> bytes:
    """An ICNS whose 1024 px slot ("ic10") holds a PNG of real x real pixels."""
    inner = png(real, real, rows=rows)
    block = b"ic10" + struct.pack(">I", 8 + len(inner)) + inner
    return b"icns" + struct.pack(">I", 8 + len(block)) + block


def many_frames_gif(frames: int = 5000) -> bytes:
    """A 1x1 GIF with `frames` frames, each a copy of one tiny image block."""
    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, format="GIF")
    data = buf.getvalue()
    gct = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    start = 13 + gct
    block = data[start : len(data) - 1]  # extensions + image descriptor + data, without the trailer
    return data[:start] + block * frames + b";"


def huge_tile_tiff(width: int = 16, height: int = 16, tile: int = 65536) -> bytes:
    """A small greyscale TIFF whose tiles are declared tile x tile pixels (a decoder allocates one tile)."""
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 0), (325, 4, 1, 64),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 324 else value
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + b"\0" * 64
    return bytes(out)


def truncated_jpeg(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


HOSTILE = {
    "icns.icns": lambda: icns_with_huge_png(32, rows=32),
    "ico.ico": lambda: saved_by_pillow("ICO"),
    "tga.tga": lambda: saved_by_pillow("TGA"),
    "pcx.pcx": lambda: saved_by_pillow("PCX"),
    "dds.dds": lambda: saved_by_pillow("DDS"),
    "icns_as.png": lambda: icns_with_huge_png(32, rows=32),  # the name lies too
    "huge_frame.ico": ico_with_huge_png,
    "huge_frame.icns": icns_with_huge_png,
    "lying_bmp.bmp": lying_bmp,
    "lying_png.png": lying_png,
    "strip_1x60000.png": strip_png,
    "zero_bomb.png": zero_bomb_png,
    "frames_5000.gif": many_frames_gif,
    "huge_tile.tif": huge_tile_tiff,
    "truncated.jpg": truncated_jpeg,
}
"""Name -> builder: one file of every hostile kind the tests and the benchmark use."""
