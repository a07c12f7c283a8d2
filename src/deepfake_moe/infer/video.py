"""Videos: score uniformly sampled frames (their faces in face mode) and aggregate them into one row.

Frames stream from `data/video_io.py` and are decoded, searched for faces and preprocessed in a
background thread while the model scores the previous batch (OpenCV and dlib release the GIL); memory
holds at most two batches of model inputs whatever the video's length. A frame's probability is that of its
most fake view (face or whole frame); the video's is the mean of its top-k frame probabilities: a
manipulation in a few seconds of a long video still counts, and one odd frame does not decide.

A video whose decoding (opening, seeking, decoding, face search) keeps the model waiting longer than
`VideoSampling.timeout_s` in all gets an error row and the next input goes on; the decoding thread,
which cannot be killed, is left behind as a daemon and ends when the decoder returns.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING

import numpy as np

from deepfake_moe.augment.faces import load_detector
from deepfake_moe.data.transforms import preprocess_views
from deepfake_moe.data.video_io import VideoReadError, sampled_frames
from deepfake_moe.infer.faces import FaceScore, aggregate_faces, face_crops, scored_side, stack_inputs
from deepfake_moe.infer.media import VideoSampling

if TYPE_CHECKING:
    from deepfake_moe.infer.predictor import PredictionRow, Predictor


@dataclass(frozen=True)
class FrameScore:
    index: int  # frame number in the video, from 0
    time: float  # seconds from the start
    probability: float
    faces: tuple[FaceScore, ...] = ()
    side: int = 0  # smaller side in pixels of what the frame's probability was scored on (frame or face crop)


def top_k_frames(frame_probs: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the k frames with the highest mixture probability ((n_frames, n_experts) in; 0: all)."""
    order = np.argsort(-frame_probs.mean(axis=1), kind="stable")
    return order[: top_k or len(order)]


# After the consumer stops, how long it waits for a producer to notice; one stuck in a decoder is left behind.
PRODUCER_GRACE_S = 2.0


def prefetch(items: Iterator, depth: int, timeout_s: float | None = None) -> Iterator:
    """`items`, produced in a background thread at most `depth` ahead; its exceptions re-raised here.

    TimeoutError once the consumer has waited `timeout_s` in all for items (None: no limit).
    """
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
    waited = 0.0
    try:
        while True:
            start = monotonic()
            try:
                item, error = q.get(timeout=None if timeout_s is None else max(0.0, timeout_s - waited))
            except queue.Empty:
                raise TimeoutError(f"waited {timeout_s:g} s for frames") from None
            waited += monotonic() - start
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        give_up = monotonic() + PRODUCER_GRACE_S
        while thread.is_alive() and monotonic() < give_up:  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.1)


def _prepared(path: str, sampling: VideoSampling, max_pixels: int, views, faces: bool, max_faces: int
              ) -> Iterator:
    """The sampled frame indices first, then (frame index, time, shape, faces, the model inputs of each crop)
    per decoded frame: all the work on the file, so that all of it runs under the video's time limit."""
    try:
        _, indices, frames = sampled_frames(path, sampling.frames, sampling.every_seconds, max_pixels)
    except ValueError as e:  # an interval that samples too many frames
        raise VideoReadError(path, str(e)) from None
    yield indices
    for frame in frames:
        crops, found = face_crops(frame.rgb, max_faces) if faces else ([frame.rgb], [])
        yield frame.index, frame.time, frame.rgb.shape, found, [preprocess_views(c, views) for c in crops]


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
            self.frames.append(FrameScore(index, round(time, 3), float(experts.mean()), face_scores,
                                          scored_side(face_scores, shape)))
            self.expert_probs.append(experts)
        self.pending = []


def score_video(predictor: Predictor, path: str) -> PredictionRow:
    """One row for a video: the top-k mean of its sampled frames, every frame in `row.frames`."""
    from tqdm import tqdm

    s = predictor.video
    if predictor.faces:
        load_detector()  # before the thread starts: loading it there would hold the GIL for seconds
    work = _prepared(path, s, predictor.max_pixels, predictor.config.views()[0], predictor.faces,
                     predictor.max_faces)
    stream = prefetch(work, depth=predictor.batch_size, timeout_s=s.timeout_s)
    batcher = _FrameBatcher(predictor)
    try:
        indices = next(stream)
        with tqdm(total=len(indices), desc=Path(path).name[-30:], unit="frame", leave=False, file=sys.stderr,
                  disable=not predictor.progress) as bar:
            for prepared in stream:
                batcher.add(prepared)
                bar.update(1)
        batcher.flush()
    except VideoReadError as e:
        return predictor.failed_row(path, e.reason)
    except TimeoutError:
        return predictor.failed_row(path, f"decoding took longer than {s.timeout_s:g} s (stopped; raise "
                                          "--video-timeout if the file is trusted)")
    except Exception as e:  # noqa: BLE001 - a decoder failure mid-video is this video's error row
        return predictor.failed_row(path, f"{type(e).__name__}: {e}")
    finally:
        stream.close()
    probs = np.stack(batcher.expert_probs)
    top = top_k_frames(probs, s.top_k)
    side = min(batcher.frames[i].side for i in top)  # of the frames the video's probability comes from
    return predictor._row(path, probs[top].mean(axis=0), frames=tuple(batcher.frames), side=side)
