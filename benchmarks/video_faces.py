"""Video and face-mode scoring speed against plain image scoring of the same frames, in one run.

A video of moving faces (scikit-image's astronaut, or LFW faces when $DEEPFAKE_MOE_LFW points at
lfw150.tar) is written with cv2.VideoWriter; every one of its frames is also saved as a PNG. With the
built-in default model (ONNX Runtime on the CPU, as `predict` runs it), it times:
  (a) the frames as PNG images, whole-image mode  -- the baseline
  (b) the frames as PNG images, face mode
  (c) the video, every frame, whole-frame mode
  (d) the video, every frame, face mode
and prints frames/s, faces/s and each ratio to (a), with the CPU's instruction sets.

    python benchmarks/video_faces.py [--frames 48] [--size 640x480]
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from deepfake_moe.augment.faces import crop_face, find_faces
from deepfake_moe.infer.export import cached_onnx
from deepfake_moe.infer.media import VideoSampling
from deepfake_moe.infer.predictor import Predictor
from deepfake_moe.infer.weights import load_weights
from deepfake_moe.runtime import describe_cpu, set_threads


def face_sources(n: int) -> list[np.ndarray]:
    lfw = os.environ.get("DEEPFAKE_MOE_LFW")
    if lfw and Path(lfw).is_file():
        with tarfile.open(lfw) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".jpg")][:: 97][:n]
            return [cv2.imdecode(np.frombuffer(tar.extractfile(m).read(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                    for m in members]
    from skimage import data

    rgb = data.astronaut()
    return [np.ascontiguousarray(crop_face(rgb, find_faces(rgb)[0]))]


def make_frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Frames of a face drifting over a background, the face ~1/3 of the frame height."""
    from skimage import data

    w, h = size
    sources = face_sources(8)
    side = h // 3
    bg = cv2.resize(data.coffee(), (w, h))
    frames = []
    for i in range(n):
        frame = bg.copy()
        face = cv2.resize(sources[(i // 6) % len(sources)], (side, side))
        x = int((w - side) * (0.5 + 0.4 * np.sin(i / 7)))
        y = (h - side) // 2
        frame[y : y + side, x : x + side] = face
        frames.append(frame)
    return frames


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    threads = set_threads()
    print(f"{describe_cpu()}; torch threads {threads}")
    model, config = load_weights(None)
    model = cached_onnx(model, config, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        frames = make_frames(args.frames, size)
        video = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
        pngs = []
        for i, f in enumerate(frames):
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
            pngs.append(str(Path(tmp) / f"{i:05d}.png"))
            cv2.imwrite(pngs[-1], f[:, :, ::-1])
        writer.release()
        every = VideoSampling(frames=args.frames)
        runs = {
            "(a) PNG frames, whole image": (pngs, False),
            "(b) PNG frames, faces": (pngs, True),
            "(c) video, whole frames": ([str(video)], False),
            "(d) video, faces": ([str(video)], True),
        }
        base = None
        print(f"{args.frames} frames of {size[0]}x{size[1]}, default model ({config.preprocess.input_size} px)")
        for name, (paths, faces) in runs.items():
            predictor = Predictor(model, config, num_workers=args.workers, faces=faces, video=every)
            predictor.predict(paths[:1])  # warm-up: models loaded, detector initialised
            seconds, rows = timed(lambda p=predictor, q=paths: p.predict(q))
            n_faces = sum(r.face_count for r in rows)
            fps = args.frames / seconds
            base = base or fps
            print(f"{name:32s} {fps:7.1f} frames/s  {n_faces / seconds:7.1f} faces/s  ({n_faces} faces)  "
                  f"x{fps / base:.2f} vs (a)")


if __name__ == "__main__":
    main()
