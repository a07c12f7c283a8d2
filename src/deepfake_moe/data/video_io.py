"""Video reading that streams: sampled frames one at a time, never the whole video in memory.

OpenCV's VideoCapture (FFmpeg inside opencv-python-headless) decodes MP4, MOV, AVI, MKV and WebM.
Every failure (missing, empty, not a video, no decodable frame, frames too large) becomes one
`VideoReadError` with a reason a user understands; callers turn it into an error row, as for images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deepfake_moe.data.image_io import Failure, MediaReadError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})
DEFAULT_FRAMES = 16
"""Frames sampled uniformly over a video when neither a count nor an interval is asked for."""
MAX_SAMPLED_FRAMES = 100_000
"""More sampled frames than this is refused (one every 0.1 s of a 3-hour video): ask for fewer."""
MAX_FRAME_COUNT = 50_000_000
"""A frame count above this (about 3 weeks at 25 fps) is a broken header, not a video."""
SEEK_GAP = 48
"""Between sampled frames further apart than this, seek instead of decoding every frame in between."""

# FFmpeg's own messages about a broken file ("moov atom not found") would interleave with the CSV on a
# terminal; the error row says why. Set the variable yourself to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class VideoReadError(MediaReadError):
    """A video could not be read (`reason` in a user's words, `kind` a Failure)."""


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps


@dataclass(frozen=True)
class Frame:
    index: int  # position in the video, from 0
    time: float  # seconds from the start
    rgb: np.ndarray  # (H, W, 3) uint8


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise VideoReadError(path, "file not found", Failure.MISSING)
    if p.is_dir():
        raise VideoReadError(path, "is a directory, not a video file", Failure.MISSING)
    if not os.access(p, os.R_OK):
        raise VideoReadError(path, "permission denied", Failure.MISSING)
    if p.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)", Failure.EMPTY)


def _open(path: str | os.PathLike, max_pixels: int) -> tuple[cv2.VideoCapture, VideoInfo]:
    _check_file(path)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # "can't be used to capture by name"
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        raise VideoReadError(path, "not a video file, a truncated one, or a video format that is not supported",
                             Failure.NOT_AN_IMAGE)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
    if width <= 0 or height <= 0:
        cap.release()
        raise VideoReadError(path, "video has no picture (no frame size in its header)", Failure.CORRUPT)
    if width * height > max_pixels:
        cap.release()
        raise VideoReadError(path, f"frames are {width}x{height} = {width * height:,} pixels, above the limit of "
                                   f"{max_pixels:,} (raise --max-pixels if the file is trusted)", Failure.TOO_LARGE)
    if not 0 < fps < 1000:
        fps = 25.0  # a missing or absurd rate: times are then approximate, sampling by count still holds
    if not 0 < count <= MAX_FRAME_COUNT:
        count = _count_frames(cap)
        cap.release()
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if count <= 0:
        cap.release()
        raise VideoReadError(path, "corrupt or truncated video: no frame could be decoded", Failure.TRUNCATED)
    return cap, VideoInfo(count, fps, width, height)


def _count_frames(cap: cv2.VideoCapture) -> int:
    """Frames counted by demuxing (headers without a count, e.g. some WebM streams); stops at the cap."""
    n = 0
    while n <= MAX_FRAME_COUNT and cap.grab():
        n += 1
    return n


def probe(path: str | os.PathLike, max_pixels: int = 100_000_000) -> VideoInfo:
    """Frame count, rate and size of a video (checks that it opens; decodes no picture)."""
    cap, info = _open(path, max_pixels)
    cap.release()
    return info


def sample_indices(info: VideoInfo, frames: int | None = None, every_seconds: float | None = None) -> list[int]:
    """Uniformly spaced frame indices: `frames` of them across the video, or one every `every_seconds`."""
    if frames is not None and every_seconds is not None:
        raise ValueError("sample by frame count or by interval, not both")
    if every_seconds is not None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        step = every_seconds * info.fps
        n = int(info.frame_count / step - 1e-9) + 1
        if n > MAX_SAMPLED_FRAMES:
            raise ValueError(f"one frame every {every_seconds} s samples {n:,} frames, over {MAX_SAMPLED_FRAMES:,}")
        return sorted({min(info.frame_count - 1, round(i * step)) for i in range(n)})
    n = DEFAULT_FRAMES if frames is None else frames
    if not 1 <= n <= MAX_SAMPLED_FRAMES:
        raise ValueError(f"frames must be in 1..{MAX_SAMPLED_FRAMES:,}, got {n}")
    if n >= info.frame_count:
        return list(range(info.frame_count))
    # the centre of each of n equal segments: never only the first frame, never past the end
    return sorted({int((i + 0.5) * info.frame_count / n) for i in range(n)})


def iter_frames(path: str | os.PathLike, indices: list[int], max_pixels: int = 100_000_000) -> Iterator[Frame]:
    """Decode the frames at `indices` (ascending), one at a time.

    A video whose stream ends before its header said (a cut-off file) yields the frames it has;
    one that yields none raises VideoReadError.
    """
    cap, info = _open(path, max_pixels)
    try:
        pos, produced = 0, 0
        for index in indices:
            if index - pos > SEEK_GAP:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                pos = index
            while pos < index and cap.grab():
                pos += 1
            ok, bgr = cap.read() if pos == index else (False, None)
            if not ok or bgr is None:
                break
            pos += 1
            produced += 1
            yield Frame(index, index / info.fps, np.ascontiguousarray(bgr[:, :, ::-1]))
        if not produced:
            raise VideoReadError(path, "corrupt or truncated video: no frame could be decoded", Failure.TRUNCATED)
    finally:
        cap.release()


def sampled_frames(path: str | os.PathLike, frames: int | None = None, every_seconds: float | None = None,
                   max_pixels: int = 100_000_000) -> tuple[VideoInfo, list[int], Iterator[Frame]]:
    """(info, the sampled indices, a stream of their frames)."""
    info = probe(path, max_pixels)
    indices = sample_indices(info, frames, every_seconds)
    return info, indices, iter_frames(path, indices, max_pixels)
