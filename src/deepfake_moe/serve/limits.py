"""What the server accepts and how much it takes on: every limit is a setting, checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass, replace

from deepfake_moe.data.limits import DEFAULT_FORMATS, DecodeBudget, ImageLimits
from deepfake_moe.errors import ConfigError

MB = 2**20


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 20 * MB  # per file; a larger file gets a 413 row
    max_request_bytes: int = 100 * MB  # the whole multipart body; beyond it the request is refused (413)
    max_files: int = 64  # files per request
    max_pixels: int | None = None  # refused before decoding (decompression bombs); None: the reader's default
    formats: tuple[str, ...] = DEFAULT_FORMATS  # sniffed from the bytes, never taken from the client's word
    timeout_s: float = 30.0  # per request, upload included
    queue_length: int = 256  # images admitted and not yet answered; beyond it 503
    max_batch: int = 32  # images scored together
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    decode_threads: int | None = None  # uploads decoded at once, each in its own capped process
    image: ImageLimits | None = None  # sides, aspect, frames (pixels, formats, bytes: the fields above); None: defaults
    decode: DecodeBudget | None = None  # memory of all decoding processes together, time per upload; None: defaults

    def __post_init__(self):
        self._fill_defaults()
        positive = {
            "max_upload_bytes": self.max_upload_bytes, "max_request_bytes": self.max_request_bytes,
            "max_files": self.max_files, "max_pixels": self.max_pixels, "timeout_s": self.timeout_s,
            "queue_length": self.queue_length, "max_batch": self.max_batch, "decode_threads": self.decode_threads,
        }
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad or self.max_wait_ms < 0:
            raise ConfigError(f"serve limits must be positive: {', '.join(bad) or f'max_wait_ms={self.max_wait_ms}'}")
        from PIL import Image

        Image.init()
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if unknown or not self.formats:
            raise ConfigError(f"serve limits: image formats {unknown or '(none)'} are not among PIL's: {sorted(Image.OPEN)}")

    def _fill_defaults(self) -> None:
        """Defaults that depend on the reader and the machine (imported here: `--help` must stay light)."""
        from deepfake_moe.data.image_io import DEFAULT_MAX_PIXELS
        from deepfake_moe.runtime import usable_cores

        if self.max_pixels is None:
            object.__setattr__(self, "max_pixels", DEFAULT_MAX_PIXELS)
        if self.decode_threads is None:  # as many as predict's decoding processes
            object.__setattr__(self, "decode_threads", min(4, usable_cores()))
        object.__setattr__(self, "formats", tuple(f.upper() for f in self.formats))
        object.__setattr__(self, "image", self.image or ImageLimits())
        object.__setattr__(self, "decode", self.decode or DecodeBudget())

    def image_limits(self) -> ImageLimits:
        """The reader's limits for an upload: `image`, with this server's formats, pixels and upload size."""
        return replace(self.image, formats=self.formats, max_pixels=self.max_pixels,
                       max_file_bytes=self.max_upload_bytes)
