"""Uploads, held in memory only: a bounded multipart reader, and the decode-pool task that decodes them with
the HTTP status each kind of refusal earns.

Starlette's own form parser spools files over 1 MB to temporary files; uploads here never touch the
disk, so the body is parsed as it streams in with python-multipart's low-level parser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from deepfake_moe.data.decode_pool import DecodeFailure
from deepfake_moe.data.image_io import Failure, ImageReader
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.infer.faces import prepare_crops
from deepfake_moe.infer.media import DEFAULT_MAX_FACES
from deepfake_moe.serve.limits import MB, ServeLimits

FIELD = "file"
STATUS = {
    Failure.UNSUPPORTED_FORMAT: 415, Failure.NOT_AN_IMAGE: 415,  # sniffed from the bytes
    Failure.TOO_LARGE: 413, Failure.MEMORY: 413,  # asks more than the limits grant
}
"""The HTTP status of each kind of refusal; the rest (empty, truncated, corrupt, too slow, crashed) is 422."""


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


@dataclass(frozen=True)
class DecodeUpload:
    """(an upload's bytes, whether to preprocess) -> its crops' model inputs with its faces (`encode_crops`: each
    face's crop in face mode, else the whole image), or the RGB array: the task the server's capped decoding
    processes run (`ImageReader`: the format identified from the content, every size the decoder will allocate
    checked before decoding)."""

    reader: ImageReader
    views: tuple[PreprocessConfig, ...]
    faces: bool = False
    max_faces: int = DEFAULT_MAX_FACES

    def __call__(self, item: tuple[bytes, bool]):
        data, preprocess = item
        rgb = self.reader(data)
        if not preprocess:
            return rgb
        return prepare_crops(rgb, self.views, self.faces, self.max_faces)


def refusal(failure: DecodeFailure) -> UploadError:
    """A failed decode as the UploadError its kind earns (STATUS; 422 for the rest)."""
    return UploadError(STATUS.get(failure.kind, 422), failure.reason)


def _size(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n:,} bytes"
