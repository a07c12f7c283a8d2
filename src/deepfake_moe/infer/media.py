"""How faces and videos are scored: plain settings, free of heavy imports (the CLI's --help reads them)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FACES = 8
"""Faces scored per image or frame (the largest ones): a crowd photo must not cost a hundred model passes."""
DEFAULT_TOP_K = 5
"""A video's probability is the mean of its k most fake sampled frames."""
DEFAULT_VIDEO_TIMEOUT_S = 120.0
"""Seconds the model may wait in all for one video's frames (opening, seeking, decoding, face search): a
hostile or broken file gets an error row after this; 16 frames of a 4K video take a few seconds."""


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are scored and how they are combined."""

    frames: int | None = None  # this many frames, uniformly spaced (default: video_io.DEFAULT_FRAMES)
    every_seconds: float | None = None  # or one frame every so many seconds
    top_k: int = DEFAULT_TOP_K  # the video's probability: mean of the k most fake frames (0: all frames)
    timeout_s: float | None = DEFAULT_VIDEO_TIMEOUT_S  # decoding time limit per video (None: none)

    def __post_init__(self):
        if self.frames is not None and self.every_seconds is not None:
            raise ValueError("choose frames or every_seconds, not both")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ValueError(f"every_seconds must be > 0, got {self.every_seconds}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
