"""Videos: score uniformly sampled frames (their faces in face mode) and aggregate them into one row.

Frames stream from `data/video_io.py` and are preprocessed as they are decoded, so memory holds at
most one batch of model inputs whatever the video's length. A frame's probability is that of its
most fake view (face or whole frame); the video's is the mean of its top-k frame probabilities: a
manipulation in a few seconds of a long video still counts, and one odd frame does not decide.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepfake_moe.data.transforms import preprocess
from deepfake_moe.data.video_io import VideoReadError, sampled_frames
from deepfake_moe.infer.faces import FaceScore, aggregate_views, face_views

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


class _FrameBatcher:
    """Collects preprocessed views of frames and scores them a batch at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.pending: list[tuple[int, float, tuple, list, torch.Tensor]] = []
        self.frames: list[FrameScore] = []
        self.expert_probs: list[np.ndarray] = []

    def add(self, index: int, time: float, rgb: np.ndarray) -> None:
        p = self.predictor
        views, faces = face_views(rgb, p.max_faces) if p.faces else ([rgb], [])
        x = torch.stack([preprocess(v, p.config.preprocess) for v in views])
        self.pending.append((index, time, rgb.shape, faces, x))
        if sum(len(item[-1]) for item in self.pending) >= p.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        probs = self.predictor.score_tensor(torch.cat([item[-1] for item in self.pending])).numpy()
        counts = [len(item[-1]) for item in self.pending]
        for (index, time, shape, faces, _), p in zip(self.pending, np.split(probs, np.cumsum(counts)[:-1])):
            experts, face_scores = aggregate_views(p, faces, shape)
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
            for frame in frames:
                batcher.add(frame.index, frame.time, frame.rgb)
                bar.update(1)
            batcher.flush()
        except VideoReadError as e:
            return predictor.failed_row(path, e.reason)
        except Exception as e:  # noqa: BLE001 - a decoder failure mid-video is this video's error row
            return predictor.failed_row(path, f"{type(e).__name__}: {e}")
    experts = top_k_mean(np.stack(batcher.expert_probs), s.top_k)
    return predictor._row(path, experts, frames=tuple(batcher.frames))
