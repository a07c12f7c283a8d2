"""Command-line options for faces and videos, shared by `predict`, `explain`, `evaluate` and `serve`,
and the per-face / per-frame CSV files `predict` can write beside its one row per input."""

from __future__ import annotations

import argparse
import contextlib
import csv
from collections.abc import Iterator

from deepfake_moe.errors import ConfigError
from deepfake_moe.infer.media import DEFAULT_MAX_FACES, DEFAULT_TOP_K, DEFAULT_VIDEO_TIMEOUT_S, VideoSampling

FACE_COLUMNS = ["path", "frame", "time", "face", "x", "y", "width", "height", "detector_score", "probability",
                "crop_x", "crop_y", "crop_size"]
FRAME_COLUMNS = ["path", "frame", "time", "probability", "faces"]


def add_face_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--faces", action=argparse.BooleanOptionalAction, default=None,
                   help="score each detected face's crop (framed like the training crops) and take the most fake "
                   "face; the whole image is scored when no face is found. Default: on for models trained on face "
                   "crops (face_crops in model.yaml), else off; --no-faces turns it off")
    p.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES,
                   help=f"score at most this many faces per image or frame, the largest (default {DEFAULT_MAX_FACES})")


def add_video_options(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument("--frames", type=int, help="videos: score N frames spread uniformly (default 16)")
    how.add_argument("--every-seconds", type=float, help="videos: score one frame every S seconds")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help=f"videos: probability = mean of the K most fake frames (default {DEFAULT_TOP_K}; 0: all)")
    p.add_argument("--video-timeout", type=float, default=DEFAULT_VIDEO_TIMEOUT_S, metavar="S",
                   help="videos: give a video an error row once scoring has waited this many seconds in all for its "
                   f"frames to be decoded (default {DEFAULT_VIDEO_TIMEOUT_S:g}); the other inputs go on")


def media_kwargs(args: argparse.Namespace) -> dict:
    """Predictor keyword arguments for the face and video options."""
    if args.max_faces < 1:
        raise ConfigError("--max-faces must be >= 1")
    try:
        video = VideoSampling(frames=getattr(args, "frames", None), every_seconds=getattr(args, "every_seconds", None),
                              top_k=getattr(args, "top_k", DEFAULT_TOP_K),
                              timeout_s=getattr(args, "video_timeout", DEFAULT_VIDEO_TIMEOUT_S))
    except ValueError as e:
        raise ConfigError(str(e).replace("every_seconds", "--every-seconds").replace("top_k", "--top-k")
                          .replace("timeout_s", "--video-timeout").replace("frames", "--frames")) from None
    return {"faces": args.faces, "max_faces": args.max_faces, "video": video}


def face_records(path: str, row) -> Iterator[list]:
    """Rows of FACE_COLUMNS for one prediction row: its faces, or its frames' faces for a video."""
    groups = [(f.index, f"{f.time:.3f}", f.faces) for f in row.frames] if row.frames else [("", "", row.faces)]
    for frame, time, faces in groups:
        for k, face in enumerate(faces):
            x, y, w, h = face.box
            cx, cy, side, _ = face.crop
            yield [path, frame, time, k, x, y, w, h, f"{face.detector_score:.4f}", f"{face.probability:.6f}",
                   cx, cy, side]


def frame_records(path: str, row) -> Iterator[list]:
    for f in row.frames:
        yield [path, f.index, f"{f.time:.3f}", f"{f.probability:.6f}", len(f.faces)]


@contextlib.contextmanager
def side_outputs(faces_out: str | None, frames_out: str | None):
    """A function `write(path, row)` adding a row's faces and frames to their CSV files (each written atomically
    when the block ends without error)."""
    from deepfake_moe.io import atomic_write

    with contextlib.ExitStack() as stack:
        writers = []
        for out, columns, records in ((faces_out, FACE_COLUMNS, face_records), (frames_out, FRAME_COLUMNS,
                                                                                 frame_records)):
            if out:
                w = csv.writer(stack.enter_context(atomic_write(out, newline="")), lineterminator="\n")
                w.writerow(columns)
                writers.append((w, records))

        def write(path: str, row) -> None:
            for w, records in writers:
                w.writerows(records(path, row))

        yield write
