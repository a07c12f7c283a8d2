"""Videos: score uniformly sampled frames (their faces in face mode) and aggregate them into one row.

Frames stream from `data/video_io.py` and are decoded, searched for faces and preprocessed in a capped
decode-pool worker (`data/decode_pool.py`: a hostile video costs its own row) while the model scores the
previous batch; memory holds at most two batches of model inputs whatever the video's length. A frame's
probability is that of its most fake view (face or whole frame); the video's is the mean of its top-k frame
probabilities: a manipulation in a few seconds of a long video still counts, and one odd frame does not decide.

A video whose decoding (opening, seeking, decoding, face search) keeps the model waiting longer than
`VideoSampling.timeout_s` in all gets an error row and the next input goes on; its decoding worker is
killed (with 0 workers, the decoding thread, which cannot be killed, is left behind as a daemon and ends
when the decoder returns).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepfake_moe.augment.faces import load_detector
from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool, prefetch
from deepfake_moe.data.image_io import Failure
from deepfake_moe.data.transforms import PreprocessConfig
from deepfake_moe.data.video_io import VideoReadError, iter_frames, sampled_frames
from deepfake_moe.infer.faces import (
    FaceScore,
    aggregate_faces,
    decode_crops,
    prepare_crops,
    scored_side,
)
from deepfake_moe.infer.media import DEFAULT_MAX_FACES, VideoSampling
from deepfake_moe.model.groups import ExpertGroup, join

if TYPE_CHECKING:
    from deepfake_moe.infer.predictor import PredictionRow, Predictor


@dataclass(frozen=True)
class FrameScore:
    index: int  # frame number in the video, from 0
    time: float  # seconds from the start
    probability: float
    faces: tuple[FaceScore, ...] = ()
    side: int = 0  # smaller side in pixels of what the frame's probability was scored on (frame or face crop)


def top_k_frames(frame_probs: np.ndarray, top_k: int, groups: list[ExpertGroup] | None = None) -> np.ndarray:
    """Indices of the k frames with the highest mixture probability ((n_frames, n_experts) in; 0: all)."""
    order = np.argsort(-join(frame_probs, groups), kind="stable")
    return order[: top_k or len(order)]


@dataclass(frozen=True)
class SampleFrames:
    """A video's path to its sampled frames, each preprocessed (its face crops' inputs in face mode) and
    packed by `encode_crops` with its index and time, after a first result {"frames": n sampled}: the
    streaming task a decode-pool worker runs, so the decoder works under the pool's memory cap."""

    views: tuple[PreprocessConfig, ...]
    sampling: VideoSampling
    max_pixels: int
    faces: bool = False
    max_faces: int = DEFAULT_MAX_FACES

    def __call__(self, path: str) -> Iterator[dict]:
        s = self.sampling
        try:
            _, indices, frames = sampled_frames(path, s.frames, s.every_seconds, self.max_pixels)
        except ValueError as e:  # an interval that samples too many frames
            raise VideoReadError(path, str(e), Failure.TOO_LARGE) from None
        yield {"frames": len(indices)}
        for frame in frames:
            packed = prepare_crops(frame.rgb, self.views, self.faces, self.max_faces)
            yield {**packed, "index": frame.index, "time": frame.time}


@dataclass(frozen=True)
class ReadFrame:
    """(path, frame index) to that frame's RGB array: a decode-pool task (`explain` redraws a video's frame)."""

    max_pixels: int

    def __call__(self, item: tuple[str, int]) -> np.ndarray:
        return next(iter_frames(item[0], [int(item[1])], self.max_pixels)).rgb


def _unpacked(part: dict, configs: tuple[PreprocessConfig, ...]) -> tuple:
    """(frame index, time, shape, faces, one batch per view over its crops) from a SampleFrames result."""
    views, faces, shape = decode_crops(part, configs)
    return int(part["index"]), float(part["time"]), shape, faces, views


class _FrameBatcher:
    """Collects preprocessed views of frames and scores them a batch at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.pending: list[tuple] = []  # what `_unpacked` returns
        self.frames: list[FrameScore] = []
        self.expert_probs: list[np.ndarray] = []

    def add(self, prepared: tuple) -> None:
        self.pending.append(prepared)
        if sum(len(item[-1][0]) for item in self.pending) >= self.predictor.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch = tuple(torch.cat(view) for view in zip(*(item[-1] for item in self.pending)))
        probs = self.predictor.score_tensor(*batch).numpy()
        counts = [len(item[-1][0]) for item in self.pending]
        for (index, time, shape, faces, _), p in zip(self.pending, np.split(probs, np.cumsum(counts)[:-1])):
            experts, face_scores = aggregate_faces(p, faces, shape, self.predictor.config.groups)
            self.frames.append(FrameScore(index, round(time, 3), float(join(experts, self.predictor.config.groups)),
                                          face_scores,
                                          scored_side(face_scores, shape)))
            self.expert_probs.append(experts)
        self.pending = []


def score_video(predictor: Predictor, path: str) -> PredictionRow:
    """One row for a video: the top-k mean of its sampled frames, every frame in `row.frames`.

    Frames are decoded and preprocessed in a capped decode-pool worker (in this process with 0 workers),
    a batch ahead of the model; the pool's timeout applies to each frame, the video's (`--video-timeout`)
    to the model's wait for all of them."""
    s = predictor.video
    views = tuple(predictor.config.views()[0])
    if predictor.faces:
        load_detector()  # before the worker forks: it shares the loaded detector
    task = SampleFrames(views, s, predictor.max_pixels, predictor.faces, predictor.max_faces)
    with DecodePool(task, min(1, predictor.num_workers), predictor.decode_budget) as pool, \
            contextlib.closing(prefetch(pool.stream(path), depth=predictor.batch_size, timeout_s=s.timeout_s)
                               ) as stream:
        try:
            batcher = _scored_frames(predictor, path, stream, views)
        except TimeoutError:
            return predictor.failed_row(path, f"decoding took longer than {s.timeout_s:g} s (stopped; raise "
                                              "--video-timeout if the file is trusted)")
    if isinstance(batcher, DecodeFailure):
        return predictor.failed_row(path, batcher.reason)
    probs = np.stack(batcher.expert_probs)
    top = top_k_frames(probs, s.top_k, predictor.config.groups)
    side = min(batcher.frames[i].side for i in top)  # of the frames the video's probability comes from
    return predictor._row(path, probs[top].mean(axis=0), frames=tuple(batcher.frames), side=side)


def _scored_frames(predictor: Predictor, path: str, stream: Iterator, views) -> _FrameBatcher | DecodeFailure:
    """Every frame of a SampleFrames stream scored, or the failure that ended it."""
    head = next(stream)
    if not isinstance(head, dict):
        return head if isinstance(head, DecodeFailure) else DecodeFailure("the decoder returned a malformed result")
    from tqdm import tqdm

    batcher = _FrameBatcher(predictor)
    with tqdm(total=int(head.get("frames", 0)), desc=Path(path).name[-30:], unit="frame", leave=False,
              file=sys.stderr, disable=not predictor.progress) as bar:
        for part in stream:
            if isinstance(part, DecodeFailure):
                return part
            try:
                frame = _unpacked(part, views)
            except (ValueError, TypeError, KeyError) as e:
                return DecodeFailure(f"the decoder returned a malformed result ({e})", Failure.CRASHED)
            batcher.add(frame)
            bar.update(1)
        batcher.flush()
    return batcher
