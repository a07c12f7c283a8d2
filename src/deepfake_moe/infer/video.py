"""Videos: score uniformly sampled frames (their faces in face mode) and aggregate them into one row.

Frames stream from `data/video_io.py` and are decoded, searched for faces and preprocessed in a
background thread while the model scores the previous batch (OpenCV and dlib release the GIL); memory
holds at most two batches of model inputs whatever the video's length. A frame's probability is that of its
most fake view (face or whole frame); the video's is the mean of its top-k frame probabilities: a
manipulation in a few seconds of a long video still counts, and one odd frame does not decide.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake_moe.augment.faces import load_detector
from deepfake_moe.data.transforms import preprocess_views
from deepfake_moe.data.video_io import VideoReadError, sampled_frames
from deepfake_moe.infer.faces import FaceScore, aggregate_faces, face_crops, stack_inputs

if TYPE_CHECKING:
    from deepfake_moe.infer.predictor import PredictionRow, Predictor


@dataclass(frozen=True)
class FrameScore:
    index: int  # frame number in the video, from 0
    time: float  # seconds from the start
    probability: float
    faces: tuple[FaceScore, ...] = ()


def top_k_mean(frame_probs: np.ndarray, top_k: int) -> np.ndarray:
    """(n_frames, n_experts) -> (n_experts,): the mean over the k frames with the highest mixture probability."""
    order = np.argsort(-frame_probs.mean(axis=1), kind="stable")
    return frame_probs[order[: top_k or len(order)]].mean(axis=0)


def prefetch(items: Iterator, depth: int) -> Iterator:
    """`items`, produced in a background thread at most `depth` ahead; its exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            q.put((done, e))

    thread = threading.Thread(target=produce, daemon=True, name="deepfake-moe-video")
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.1)


def _prepared(predictor: Predictor, frames) -> Iterator[tuple]:
    """(frame index, time, shape, faces, the model inputs of each crop) per decoded frame."""
    views = predictor.config.views()[0]
    for frame in frames:
        crops, faces = face_crops(frame.rgb, predictor.max_faces) if predictor.faces else ([frame.rgb], [])
        yield frame.index, frame.time, frame.rgb.shape, faces, [preprocess_views(c, views) for c in crops]


class _FrameBatcher:
    """Collects preprocessed views of frames and scores them a batch at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.pending: list[tuple] = []  # what `_prepared` yields
        self.frames: list[FrameScore] = []
        self.expert_probs: list[np.ndarray] = []

    def add(self, prepared: tuple) -> None:
        self.pending.append(prepared)
        if sum(len(item[-1]) for item in self.pending) >= self.predictor.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch = stack_inputs([inputs for item in self.pending for inputs in item[-1]])
        probs = self.predictor.score_tensor(*batch).numpy()
        counts = [len(item[-1]) for item in self.pending]
        for (index, time, shape, faces, _), p in zip(self.pending, np.split(probs, np.cumsum(counts)[:-1])):
            experts, face_scores = aggregate_faces(p, faces, shape)
            self.frames.append(FrameScore(index, round(time, 3), float(experts.mean()), face_scores))
            self.expert_probs.append(experts)
        self.pending = []


def score_video(predictor: Predictor, path: str) -> PredictionRow:
    """One row for a video: the top-k mean of its sampled frames, every frame in `row.frames`."""
    s = predictor.video
    try:
        _, indices, frames = sampled_frames(path, s.frames, s.every_seconds, predictor.max_pixels)
    except VideoReadError as e:
        return predictor.failed_row(path, e.reason)
    except ValueError as e:  # an interval that samples too many frames
        return predictor.failed_row(path, str(e))
    from tqdm import tqdm

    batcher = _FrameBatcher(predictor)
    with tqdm(total=len(indices), desc=Path(path).name[-30:], unit="frame", leave=False, file=sys.stderr,
              disable=not predictor.progress) as bar:
        try:
            if predictor.faces:
                load_detector()  # before the thread starts: loading it there would hold the GIL for seconds
            for prepared in prefetch(_prepared(predictor, frames), depth=predictor.batch_size):
                batcher.add(prepared)
                bar.update(1)
            batcher.flush()
        except VideoReadError as e:
            return predictor.failed_row(path, e.reason)
        except Exception as e:  # noqa: BLE001 - a decoder failure mid-video is this video's error row
            return predictor.failed_row(path, f"{type(e).__name__}: {e}")
    experts = top_k_mean(np.stack(batcher.expert_probs), s.top_k)
    return predictor._row(path, experts, frames=tuple(batcher.frames))
