"""Image reading that never takes a batch down, and never lets a small file cost gigabytes.

Every failure (missing, empty, truncated, not an image, a format outside the list, too many
pixels, odd mode) becomes one `ImageReadError` with a message a user understands; callers turn
it into an error row.

Untrusted files are decoded under `ImageLimits`: only the listed formats, identified from the
content (never the file name), are decoded; every size the decoder will allocate (the image, each
TIFF tile or strip, each GIF frame, the frames nested in multi-size containers) is checked against
the pixel, side and aspect limits before any pixel memory exists. `decode_pool.DecodePool` adds a
per-process memory cap and a per-file timeout around the same reader.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from deepfake_moe.data.limits import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS, Failure, ImageLimits
from deepfake_moe.errors import ConfigError, InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
)
FORMAT_FAMILIES = {"JPEG": ("MPO",)}
"""Pillow opens camera JPEGs with a multi-picture index as MPO: the same JPEG decoder."""
CHEAP_FRAME_COUNT = frozenset({"PNG", "WEBP", "MPO"})
"""Formats whose frame count is read from a header (TIFF and GIF would walk every frame)."""
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS  # raised to an error inside our decodes
_PILLOW_LIMIT = threading.RLock()


class MediaReadError(InputError):
    """A file could not be read; `reason` says why in a user's words, `kind` (a Failure) for programs."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: Failure = Failure.CORRUPT):
        self.path = str(path)
        self.reason = reason
        self.kind = Failure(kind)
        super().__init__(f"{self.path}: {reason}")


class ImageReadError(MediaReadError):
    """An image could not be read."""


def known_formats() -> list[str]:
    Image.init()
    return sorted(Image.OPEN)


def parse_formats(spec: str) -> tuple[str, ...]:
    """"JPEG,PNG" -> exactly those; "+ICO,TGA" -> the default list plus those; "all" -> every format."""
    known = known_formats()
    spec = spec.strip()
    if spec.lower() == "all":
        return tuple(known)
    extra = spec.startswith("+")
    names = [s.strip().upper() for s in spec.lstrip("+").split(",") if s.strip()]
    names = ["JPEG" if n in ("JPG", "JFIF") else "TIFF" if n == "TIF" else n for n in names]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown image format(s) {unknown or spec!r}; Pillow here opens: {', '.join(known)}")
    return tuple(dict.fromkeys((*DEFAULT_FORMATS, *names) if extra else names))


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(
    path: str | os.PathLike,
    backend: str = "pil",
    max_pixels: int | None = None,
    limits: ImageLimits | None = None,
) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (H, W, 3), within `limits`.

    backend "pil" reads every mode (EXIF orientation applied, 16-bit and float scaled to 8-bit,
    alpha dropped onto black as the published OpenCV path does, first frame of animations).
    backend "opencv" decodes with `cv2.imdecode` like the published inference script, after
    Pillow has identified the format and checked the budget, falling back to Pillow for what
    OpenCV cannot decode (GIF); both paths apply EXIF orientation.
    """
    limits = _limits(limits, max_pixels)
    return read_image_bytes(read_file(path, limits), str(path), backend, limits)


def read_image_bytes(
    data: bytes,
    name: str = "<upload>",
    backend: str = "pil",
    limits: ImageLimits | None = None,
) -> np.ndarray:
    """`read_image` for bytes already in memory (an HTTP upload); `name` only labels errors."""
    if backend not in ("pil", "opencv"):
        raise ValueError(f"unknown image backend {backend!r}; use 'pil' or 'opencv'")
    limits = limits or ImageLimits()
    _check_length(data, name, limits)
    with _pillow_bomb_limit(limits.max_pixels):
        img = open_checked(name, data, limits)
        if backend == "opencv" and img.format != "GIF":
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if arr is not None:
                check_size(name, arr.shape[1::-1], limits)
                return np.ascontiguousarray(arr[:, :, ::-1])
        return _decode_pil(name, img, limits)


@dataclass(frozen=True)
class ImageReader:
    """`read_image` with fixed options as a picklable callable: the task of a decode pool.

    An item is a path, or the bytes of a file (an upload: `read_image_bytes`)."""

    backend: str = "pil"
    limits: ImageLimits = ImageLimits()

    def __call__(self, item: str | os.PathLike | bytes) -> np.ndarray:
        if isinstance(item, (bytes, bytearray)):
            return read_image_bytes(bytes(item), "<upload>", self.backend, self.limits)
        return read_image(item, backend=self.backend, limits=self.limits)


def _limits(limits: ImageLimits | None, max_pixels: int | None) -> ImageLimits:
    limits = limits or ImageLimits()
    return replace(limits, max_pixels=max_pixels) if max_pixels else limits


def _too_big(n: int, limits: ImageLimits) -> str:
    return f"file is {n / 2**20:,.0f} MiB, above the limit of {limits.max_file_bytes / 2**20:,.0f} MiB"


def read_file(path: str | os.PathLike, limits: ImageLimits) -> bytes:
    """A file's bytes, refused (ImageReadError) when missing, unreadable or above `limits.max_file_bytes`."""
    try:
        size = os.stat(path).st_size
        if size > limits.max_file_bytes:
            raise ImageReadError(path, _too_big(size, limits), Failure.TOO_LARGE)
        with open(path, "rb") as f:
            return f.read(size + 1)  # one more byte: read_image_bytes refuses a file that grew past the limit
    except FileNotFoundError:
        raise ImageReadError(path, "file not found", Failure.MISSING) from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file", Failure.MISSING) from None
    except PermissionError:
        raise ImageReadError(path, "permission denied", Failure.MISSING) from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror or e}", Failure.MISSING) from None


def read_header(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """The image in `data` opened from its headers, with every check `read_image_bytes` makes before it
    decodes (ImageReadError otherwise); nothing is decoded."""
    _check_length(data, name, limits)
    with _pillow_bomb_limit(limits.max_pixels):
        return open_checked(name, data, limits)


def _check_length(data: bytes, name: str, limits: ImageLimits) -> None:
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)", Failure.EMPTY)
    if len(data) > limits.max_file_bytes:
        raise ImageReadError(name, _too_big(len(data), limits), Failure.TOO_LARGE)


class _pillow_bomb_limit:
    """Pillow's own check, which also guards frames nested in containers (ICO, ICNS, MPO, GIF
    disposal, TIFF tiles), raised to an error at our pixel limit for the duration of a decode."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __enter__(self):
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # A process-wide setting: decodes with a different limit wait for each other.
        self.locked = Image.MAX_IMAGE_PIXELS != self.max_pixels
        if self.locked:
            _PILLOW_LIMIT.acquire()
            self.saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, self.max_pixels

    def __exit__(self, *exc):
        if self.locked:
            Image.MAX_IMAGE_PIXELS = self.saved
            _PILLOW_LIMIT.release()
        self.warnings.__exit__(*exc)


def identify(data: bytes) -> str | None:
    """The format these bytes are in (for the error message): the formats whose signature
    matches, then those without one (TGA, ...), opened within the caller's limits."""
    Image.init()
    prefix = data[:16]
    signed = []
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix) is True:
                signed.append(fmt)
        except Exception:  # noqa: BLE001 - a signature check that fails is a "no"
            continue
    unsigned = [fmt for fmt, (_, accept) in Image.OPEN.items() if accept is None]
    try:
        with Image.open(io.BytesIO(data), formats=signed + unsigned) as img:
            return img.format
    except Exception:  # noqa: BLE001 - the signature is the best answer left
        return signed[0] if signed else None


def _allowed(fmt: str | None, limits: ImageLimits) -> bool:
    families = {f for name in limits.formats for f in (name, *FORMAT_FAMILIES.get(name, ()))}
    return fmt in families


def open_checked(name: str, data: bytes, limits: ImageLimits) -> Image.Image:
    """Open headers only (an allowed format), then check every size the decoder will allocate."""
    if data[:6] in (b"GIF87a", b"GIF89a") and _allowed("GIF", limits):
        check_gif_frames(name, data, limits)
    try:
        img = Image.open(io.BytesIO(data), formats=_open_list(limits))
    except UnidentifiedImageError:
        fmt = identify(data)
        if fmt is not None:
            raise ImageReadError(name, f"unsupported format {fmt} (decoded: {', '.join(limits.formats)}; "
                                 "widen with --formats)", Failure.UNSUPPORTED_FORMAT) from None
        raise ImageReadError(name, "not an image file, or an image format that is not supported", Failure.NOT_AN_IMAGE) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        check_size(name, _header_size(data, limits), limits)  # says "W x H" when it can
        raise ImageReadError(name, _bomb_reason(e, limits), Failure.TOO_LARGE) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a read error for this file
        raise ImageReadError(name, f"cannot parse image header: {e}", Failure.CORRUPT) from None
    if not _allowed(img.format, limits):
        raise ImageReadError(name, f"unsupported format {img.format}", Failure.UNSUPPORTED_FORMAT)
    check_size(name, img.size, limits)
    if img.format == "PNG":
        check_png_data(name, data, img)
    check_decoder_plan(name, img, limits)
    return img


def _header_size(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """The size a header declares, with Pillow's bomb check off (headers only, under the lock)."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data), formats=_open_list(limits)) as img:
                return img.size
        except Exception:  # noqa: BLE001 - no size to report
            return (1, 1)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open_list(limits: ImageLimits) -> list[str]:
    Image.init()
    return [f for f in limits.formats if f in Image.OPEN]


def _bomb_reason(e: Exception, limits: ImageLimits) -> str:
    return f"a frame inside the file is too large ({e}); limit {limits.max_pixels:,} pixels"


def check_size(name: str, size, limits: ImageLimits, what: str = "image") -> None:
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ImageReadError(name, f"{what} has no pixels ({w}x{h})", Failure.CORRUPT)
    if w * h > limits.max_pixels:
        raise ImageReadError(
            name,
            f"{what} is {w}x{h} = {w * h:,} pixels, above the limit of {limits.max_pixels:,} "
            "(decompression-bomb guard; raise --max-pixels if the file is trusted)",
            Failure.TOO_LARGE,
        )
    if max(w, h) > limits.max_side:
        raise ImageReadError(name, f"{what} is {w}x{h}: a side above the limit of {limits.max_side:,} pixels", Failure.TOO_LARGE)
    if what == "image" and max(w, h) > limits.max_aspect * min(w, h):
        raise ImageReadError(name, f"image is {w}x{h}: aspect ratio above the limit of {limits.max_aspect:g}:1", Failure.TOO_LARGE)


def _check_area(name: str, w: int, h: int, limits: ImageLimits, what: str) -> None:
    if w < 0 or h < 0 or w * h > limits.max_pixels or max(w, h) > limits.max_side:
        raise ImageReadError(name, f"{what} is {w}x{h}, above the limits of {limits.max_pixels:,} pixels "
                             f"and {limits.max_side:,} per side", Failure.TOO_LARGE)


def check_decoder_plan(name: str, img: Image.Image, limits: ImageLimits) -> None:
    """Tiles and strips the decoder will fill, and declared frame counts, within the limits."""
    for tile in img.tile:
        x0, y0, x1, y1 = tile[1]
        _check_area(name, x1 - x0, y1 - y0, limits, "a tile")
    if img.format == "TIFF":
        tags = img.tag_v2
        if 322 in tags or 323 in tags:  # TileWidth, TileLength: libtiff allocates one whole tile
            _check_area(name, int(tags.get(322, 0)), int(tags.get(323, 0)), limits, "a TIFF tile")
        rows = min(int(tags.get(278, img.size[1])), img.size[1])  # RowsPerStrip
        _check_area(name, img.size[0], rows, limits, "a TIFF strip")
    if img.format in CHEAP_FRAME_COUNT:
        n = getattr(img, "n_frames", 1)
        if n > limits.max_frames:
            raise ImageReadError(name, f"animation declares {n:,} frames, above the limit of {limits.max_frames:,}", Failure.TOO_LARGE)


def check_gif_frames(name: str, data: bytes, limits: ImageLimits) -> None:
    """Count GIF frames and check each frame's size by skipping over the blocks (no decoding)."""
    pos, n = 13, 0
    if len(data) < 13:
        return  # Pillow reports the truncated header
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while pos < len(data):
        kind = data[pos]
        if kind == 0x3B:  # trailer
            return
        if kind == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif kind == 0x2C:  # image descriptor: x, y, w, h, flags [, local colour table], LZW size
            if pos + 10 > len(data):
                return
            x, y, w, h = struct.unpack_from("<4H", data, pos + 1)
            _check_area(name, x + w, y + h, limits, f"GIF frame {n + 1}")
            n += 1
            if n > limits.max_frames:
                raise ImageReadError(name, f"animation has more than {limits.max_frames:,} frames (the limit)", Failure.TOO_LARGE)
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
        else:
            return  # garbage after the frames: Pillow decides on the first frame


DEFLATE_MAX_RATIO = 1032
"""zlib cannot inflate one byte to more than this many (long runs of one value)."""


def check_png_data(name: str, data: bytes, img: Image.Image) -> None:
    """Refuse a PNG whose compressed pixels cannot hold the size its header declares."""
    idat, pos = 0, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            break
        pos += 12 + length
    w, h = img.size
    depth, color_type = data[24], data[25]  # from IHDR: bits per sample, colour type
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type, 1)
    raw = h * (1 + (w * bits + 7) // 8)
    if idat * DEFLATE_MAX_RATIO < raw:
        raise ImageReadError(name, f"PNG header declares {w}x{h} pixels but the file holds data for at most "
                             f"{100 * idat * DEFLATE_MAX_RATIO / raw:.2g}% of them (a header that lies)", Failure.TRUNCATED)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _decode_pil(name: str, img: Image.Image, limits: ImageLimits) -> np.ndarray:
    try:
        img.seek(0)
        check_size(name, img.size, limits)
        img.load()
        check_size(name, img.size, limits)  # containers (ICO, ICNS) pick their frame at load
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(name, _bomb_reason(e, limits), Failure.TOO_LARGE) from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageReadError(name, "truncated or corrupt image data", Failure.TRUNCATED) from None
        raise ImageReadError(name, f"cannot decode image: {msg}", Failure.CORRUPT) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a read error for this file
        raise ImageReadError(name, f"cannot decode image: {e}", Failure.CORRUPT) from None


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode to an RGB uint8 array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            hi = arr.max() if arr.size else 0
            arr = arr / 257.0 if hi > 255 else arr
        else:  # "F": scale its own range onto 0..255 unless it already is in 0..1 or 0..255
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
            if 0.0 <= lo and hi <= 1.0:
                arr = arr * 255.0
            elif lo < 0.0 or hi > 255.0:
                arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        rgba = np.asarray(img)
        alpha = rgba[:, :, 3:4].astype(np.uint16)
        rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
