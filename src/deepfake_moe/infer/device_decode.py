"""JPEG decoding and preprocessing on the model's device (nvJPEG on CUDA), so decoding does not cap a GPU.

A GPU scores a batch of a small model faster than a few CPU cores decode its JPEGs. With
`predict --jpeg-decoder device`, the decoding workers still read every file and check its headers
under their caps, but pass an ordinary JPEG on as bytes instead of decoding it (`jpeg_for_device`):
baseline or extended sequential (no progressive file, whose decoding time grows with its scan
count), 8-bit colour or grey, complete, with a plain EXIF orientation and no XMP, within
DEVICE_MAX_PIXELS, DEVICE_MAX_SIDE and DEVICE_MAX_FILE_BYTES. Everything else decodes in the workers
as before. The main process checks what a worker sent again from the bytes (`device_jpeg`: a worker
may have been taken over by a file), decodes up to BATCH_PIXELS of them in one
`torchvision.io.decode_jpeg` call on the device, applies the EXIF orientation (torchvision applies it
on the CPU only), then resizes and normalises there with the maths of `data.transforms.preprocess`
("published": normalise, then antialiased bilinear resize of the float image; "fast": OpenCV's area
filter as a product of two weight matrices, or its bilinear, rounded to uint8 as OpenCV rounds, then
normalise). A file the device refuses, or whose pixels are not the size its header declared, goes to
one more capped worker. These decodes run in the main process, outside `--decode-timeout` and
`--decode-memory`: the limits above bound their time and memory instead. nvJPEG's chroma upsampling
differs from libjpeg's, so the inputs on a GPU are close to, not equal to, the CPU path's. On the CPU
the same code runs with libjpeg-turbo, which is how it is tested without a GPU.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from deepfake_moe.data.image_io import ImageLimits, read_header
from deepfake_moe.data.transforms import PreprocessConfig, resize_tensor

DEVICE_MODES = ("published", "fast")
DEVICE_MAX_PIXELS = 4096 * 4096  # larger images decode in the capped workers
DEVICE_MAX_SIDE = 8192
DEVICE_MAX_FILE_BYTES = 8 << 20  # bounds the files that wait in host memory for the device
BATCH_PIXELS = 64 << 20  # decoded pixels per call on the device
MAX_SCANS = 4  # a sequential JPEG has one scan per component at most
SEQUENTIAL_FRAMES = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
# what may come before the frame header: APP0-15, comments, quantisation and Huffman tables, restart interval
# (a marker libjpeg skips without a length, such as a restart marker, could hide a false frame header)
BEFORE_FRAME = frozenset([*range(0xE0, 0xF0), 0xFE, 0xDB, 0xC4, 0xDD])
# EXIF orientation -> the (3, H, W) tensor operation that shows the image upright (Pillow's exif_transpose)
ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1, -2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1, -2),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


class DeviceJpeg(NamedTuple):
    """A JPEG for the device to decode: the checked file, its orientation and the size its header declares."""

    data: np.ndarray  # uint8 bytes of the file
    orientation: int
    size: tuple[int, int]  # (width, height) its frame header declares

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def sequential_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the frame header of a sequential Huffman JPEG with a bounded number of scans;
    None for anything else (progressive, lossless, arithmetic-coded, an unexpected marker before the frame)."""
    if data[:2] != b"\xff\xd8" or data.count(b"\xff\xda") > MAX_SCANS:
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in SEQUENTIAL_FRAMES:
            if pos + 9 > len(data):
                return None
            height, width = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
            return (width, height) if width and height else None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker not in BEFORE_FRAME or length < 2:
            return None
        pos += 2 + length
    return None


def _fits(data: bytes) -> tuple[int, int] | None:
    """The size of a file the device may take: a complete sequential JPEG within the device's bounds."""
    if not 0 < len(data) <= DEVICE_MAX_FILE_BYTES or not data.endswith(b"\xff\xd9"):
        return None
    size = sequential_jpeg_size(data)
    if size is None or size[0] * size[1] > DEVICE_MAX_PIXELS or max(size) > DEVICE_MAX_SIDE:
        return None
    return size


def jpeg_for_device(data: bytes, name: str, limits: ImageLimits, backend: str = "pil") -> dict | None:
    """What a decoding worker passes on instead of pixels for a JPEG the device may decode (checked as the CPU
    path checks a file before decoding: ImageReadError for what it refuses); None: decode it here."""
    if _fits(data) is None:
        return None
    img = read_header(data, name, limits)
    orientation = img.getexif().get(0x0112, 1)
    if (img.format != "JPEG" or img.mode not in ("RGB", "L") or "xmp" in img.info or "adobe" in img.info
            or type(orientation) is not int or backend == "opencv" and orientation != 1):
        # CMYK; XMP, whose orientation OpenCV ignores; Adobe colour transforms; an orientation stored as a
        # fraction, or one OpenCV may read otherwise
        return None
    return {"jpeg": np.frombuffer(data, np.uint8), "orientation": orientation if orientation in ORIENT else 1}


def device_jpeg(result: dict) -> DeviceJpeg:
    """A decoding process's `jpeg_for_device` result, checked again from the bytes (the process read an
    untrusted file): a ValueError unless it is a JPEG the device may take and an orientation."""
    data, orientation = result.get("jpeg"), result.get("orientation")
    if set(result) != {"jpeg", "orientation"} or not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
            or data.ndim != 1 or type(orientation) is not int or orientation not in ORIENT:
        raise ValueError("not a JPEG's bytes and orientation")
    size = _fits(data.tobytes())
    if size is None:
        raise ValueError("not a JPEG the device decodes")
    return DeviceJpeg(data, orientation, size)


@functools.lru_cache(maxsize=8)  # at most 8192 x 512 floats each: images of a folder often share a size
def area_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of OpenCV's INTER_AREA shrink along one axis: each output pixel is the mean of
    the input pixels its span covers, partly covered ones weighted by the part."""
    scale = n_in / n_out
    edges = torch.arange(n_out + 1, dtype=torch.float64) * scale
    pixels = torch.arange(n_in, dtype=torch.float64)[None]
    cover = (torch.minimum(edges[1:, None], pixels + 1) - torch.maximum(edges[:-1, None], pixels)).clamp_min(0)
    return (cover / scale).float().to(device)


def resize_uint8_on_device(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """`data.transforms.resize_uint8` on a (3, H, W) uint8 tensor: OpenCV's area filter when shrinking, its
    bilinear otherwise, rounded to uint8 as OpenCV does (equal up to rounding)."""
    h, w = rgb.shape[-2:]
    if (h, w) == (size, size):
        return rgb
    x = rgb.float()
    if size < min(h, w):
        x = area_weights(h, size, x.device) @ x @ area_weights(w, size, x.device).T
    else:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return x.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)  # halves up, as OpenCV rounds


def preprocess_on_device(rgb: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """`data.transforms.preprocess` on a (3, H, W) uint8 tensor on any device: (3, S, S) float32 there."""
    if cfg.mode not in DEVICE_MODES:
        raise ValueError(f"preprocess mode {cfg.mode!r} is decoded on the CPU (data.transforms.preprocess)")
    mean = torch.tensor(cfg.mean, device=rgb.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, device=rgb.device).view(3, 1, 1)
    if cfg.mode == "fast":
        return (resize_uint8_on_device(rgb, cfg.input_size).float().div_(255.0) - mean) / std
    return resize_tensor((rgb.float().div_(255.0) - mean) / std, cfg.input_size)


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 RGB on `device` per file, in one call; None for a file the decoder refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the batch: find it
            out: list[torch.Tensor | None] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def decode_on_device(items: Sequence[DeviceJpeg], views: Sequence[PreprocessConfig], device: torch.device
                     ) -> list[tuple[tuple[torch.Tensor, ...], tuple[int, ...]] | None]:
    """Per item: (one (1, 3, S, S) input per view on `device`, the upright image's shape), or None where the
    device could not decode or preprocess it (its decoder refused the file, or memory ran out)."""
    images = _decode([torch.from_numpy(np.require(item.data, requirements="W")) for item in items], device)
    out: list = []
    for item, img in zip(items, images):
        if img is None or tuple(img.shape[-2:]) != item.size[::-1]:  # refused, or not the size its header said
            out.append(None)
            continue
        try:
            img = ORIENT[item.orientation](img)
            out.append((tuple(preprocess_on_device(img, v)[None] for v in views), (*img.shape[1:], 3)))
        except RuntimeError:  # out of memory on the device
            out.append(None)
    return out


def decode_jpegs(paths: Sequence[str | os.PathLike], cfg: PreprocessConfig, device: torch.device | str) -> torch.Tensor:
    """(B, 3, S, S) model inputs from trusted JPEG files, decoded and preprocessed on `device`, EXIF orientation
    not applied: the decoding floor of benchmarks/infer_published.py."""
    images = _decode([torch.from_numpy(np.fromfile(p, np.uint8)) for p in paths], torch.device(device))
    if any(img is None for img in images):
        raise ValueError("a file is not a JPEG the device decodes")
    return torch.stack([preprocess_on_device(img, cfg) for img in images])
