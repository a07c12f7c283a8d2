"""Uploads, held in memory only: a bounded multipart reader and a decoder that says which HTTP status a file earns.

Starlette's own form parser spools files over 1 MB to temporary files; uploads here never touch the
disk, so the body is parsed as it streams in with python-multipart's low-level parser.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header

from deepfake_moe.data.image_io import ImageReadError, _decode_pil
from deepfake_moe.serve.limits import MB, ServeLimits

FIELD = "file"


class UploadError(Exception):
    """A request or one file of it is refused; `status` is the HTTP status it earns."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass
class Upload:
    name: str
    data: bytearray = field(default_factory=bytearray)
    error: UploadError | None = None  # set when the file was refused while reading (its bytes dropped)


class _Collector:
    """python-multipart callbacks that gather the parts of field `file` into memory, within the limits."""

    def __init__(self, limits: ServeLimits):
        self.limits = limits
        self.uploads: list[Upload] = []
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._current: Upload | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers, self._current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") != FIELD:
            return  # other fields are ignored (their bytes still count toward the request limit)
        if len(self.uploads) >= self.limits.max_files:
            raise UploadError(413, f"too many files: at most {self.limits.max_files} per request")
        name = options.get(b"filename", b"").decode("utf-8", "replace") or f"file{len(self.uploads) + 1}"
        self._current = Upload(name)
        self.uploads.append(self._current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None or upload.error is not None:
            return
        upload.data += data[start:end]
        if len(upload.data) > self.limits.max_upload_bytes:
            upload.data = bytearray()
            upload.error = UploadError(
                413, f"file is larger than the upload limit of {_size(self.limits.max_upload_bytes)}"
            )


async def read_uploads(headers, body: AsyncIterator[bytes], limits: ServeLimits) -> list[Upload]:
    """The files of field `file`, in order. Raises UploadError for a request that cannot be read as a whole."""
    content_type, params = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(415, f"send the images as multipart/form-data, in the field '{FIELD}'")
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise UploadError(413, f"request body is larger than the limit of {_size(limits.max_request_bytes)}")
    collector = _Collector(limits)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise UploadError(413, f"request body is larger than the limit of {_size(limits.max_request_bytes)}")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's errors: a malformed body
        raise UploadError(400, f"malformed multipart body: {e}") from None
    if not collector.uploads:
        raise UploadError(400, f"no file in the field '{FIELD}'")
    return collector.uploads


def decode_upload(data: bytes, name: str, limits: ServeLimits, backend: str = "pil") -> np.ndarray:
    """RGB uint8 (H, W, 3) from an upload's bytes, with the reader's guards: format sniffed and checked
    against the whitelist (415), pixel count checked before decoding (413), decoding failures (400)."""
    if not data:
        raise UploadError(400, "empty file (0 bytes)")
    header = _identify(data, limits)
    if backend == "opencv":  # decoded as the published inference script does; PIL for what OpenCV cannot
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if arr is not None:
            return np.ascontiguousarray(arr[:, :, ::-1])
    try:
        return _decode_pil(name, header)
    except ImageReadError as e:
        raise UploadError(400, e.reason) from None


def _identify(data: bytes, limits: ServeLimits) -> Image.Image:
    accepted = ", ".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=limits.formats)
    except UnidentifiedImageError:
        raise UploadError(415, f"not an image in an accepted format ({accepted})") from None
    except Exception as e:  # noqa: BLE001 - a header no decoder can parse
        raise UploadError(400, f"cannot parse image header: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise UploadError(400, f"image has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise UploadError(413, f"image is {w}x{h} = {w * h:,} pixels, above the limit of {limits.max_pixels:,}")
    return img


def _size(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n:,} bytes"
