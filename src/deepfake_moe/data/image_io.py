"""Image reading that never takes a batch down.

Every failure (missing, empty, truncated, not an image, too many pixels, odd mode) becomes one
`ImageReadError` with a message a user understands; callers turn it into an error row.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from deepfake_moe.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
)
DEFAULT_MAX_PIXELS = 100_000_000
"""Above this an image is refused before decoding (decompression bombs): 100 MP, about 300 MB RGB."""

# We check the pixel count ourselves, before decoding, with a clear message.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(InputError):
    """An image could not be read; the message says why in a user's words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(
    path: str | os.PathLike,
    backend: str = "pil",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read any common image file as an RGB uint8 array of shape (H, W, 3).

    backend "pil" reads every format and mode (EXIF orientation applied, 16-bit and float scaled
    to 8-bit, alpha dropped onto black as the published OpenCV path does, GIF first frame).
    backend "opencv" decodes with `cv2.imdecode` like the published inference script, falling
    back to PIL for what OpenCV cannot decode (GIF); both paths apply EXIF orientation.
    """
    data = _read_bytes(path)
    header = _open_checked(path, data, max_pixels)
    if backend == "opencv":
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if arr is not None:
            return np.ascontiguousarray(arr[:, :, ::-1])
    elif backend != "pil":
        raise ValueError(f"unknown image backend {backend!r}; use 'pil' or 'opencv'")
    return _decode_pil(path, header)


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _open_checked(path, data: bytes, max_pixels: int) -> Image.Image:
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file, or an image format that is not supported") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a read error for this file
        raise ImageReadError(path, f"cannot parse image header: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageReadError(path, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageReadError(
            path,
            f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard; raise --max-pixels if the file is trusted)",
        )
    return img


def _decode_pil(path, img: Image.Image) -> np.ndarray:
    try:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageReadError:
        raise
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageReadError(path, "truncated or corrupt image data") from None
        raise ImageReadError(path, f"cannot decode image: {msg}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a read error for this file
        raise ImageReadError(path, f"cannot decode image: {e}") from None


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
