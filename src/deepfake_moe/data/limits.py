"""What decoding an untrusted file may cost, and the kinds of refusal: plain settings, free of heavy imports
(every command's `--help` shows the defaults). `image_io` checks `ImageLimits` before any pixel memory
exists; `decode_pool` runs decodes under a `DecodeBudget`; both re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from deepfake_moe.errors import ConfigError

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
"""The documented formats; anything else is refused unless a caller widens the list."""
DEFAULT_MAX_PIXELS = 100_000_000
"""Above this an image is refused before decoding (decompression bombs): 100 MP, about 300 MB RGB."""


@dataclass(frozen=True)
class ImageLimits:
    """What a decode may cost; every check runs before the pixel memory is allocated."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = 50_000
    """Longest side in pixels (JPEG and WebP stop at 65,535 and 16,383 anyway)."""
    max_aspect: float = 50.0
    """Longest over shortest side: a 1 x 60000 strip is no photograph and upsamples to noise."""
    max_frames: int = 2_000
    """Animations with more frames are refused (only the first frame is ever decoded)."""
    max_file_bytes: int = 512 << 20

    def __post_init__(self):
        for name in ("max_pixels", "max_side", "max_aspect", "max_frames", "max_file_bytes"):
            value = getattr(self, name)
            aspect = name == "max_aspect"
            ok = isinstance(value, (int, float)) and (value >= 1 if aspect else value > 0)  # False for nan
            if not ok:
                raise ConfigError(f"image limit {name} (--{name.replace('_', '-')}) must be "
                                  f"{'>= 1' if aspect else '> 0'}, not {value}")
        if not self.formats:
            raise ConfigError("image limits: no image format is accepted")

    def with_formats(self, spec: str | None) -> ImageLimits:
        from deepfake_moe.data.image_io import parse_formats  # Pillow's list: imported when asked

        return self if not spec else replace(self, formats=parse_formats(spec))


class Failure(str, Enum):
    """Why a file gave no pixels, for programs (the server's HTTP status); `reason` says it in words."""

    MISSING = "missing"  # not found, a directory, no permission, an I/O error
    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image, in a format outside the list
    TOO_LARGE = "too_large"  # file size, pixels, a side, the aspect ratio, frames, a tile or strip
    TRUNCATED = "truncated"  # the data ends before (or cannot hold) what the header declares
    CORRUPT = "corrupt"  # the decoder failed on it
    TIMEOUT = "timeout"  # the decode pool stopped it at the per-file timeout
    MEMORY = "memory"  # it needed more than the decode pool's memory cap
    CRASHED = "crashed"  # the decoding process died on it

    @classmethod
    def parse(cls, value: str) -> Failure:
        """A kind from its text (a worker's report); unknown text is CRASHED, never an exception."""
        try:
            return cls(value)
        except ValueError:
            return cls.CRASHED


@dataclass(frozen=True)
class DecodeBudget:
    """What decoding may cost: memory for all workers together (above their own size), time per file."""

    memory_mb: int = 2048
    timeout_s: float = 8.0

    def __post_init__(self):
        if self.memory_mb < 64 or self.timeout_s <= 0:
            raise ConfigError(f"the decode budget needs at least 64 MB and a timeout above 0 s, "
                              f"not {self.memory_mb} MB and {self.timeout_s} s")

    def worker_cap_bytes(self, workers: int) -> int:
        return (self.memory_mb << 20) // max(1, workers)
