"""A small made-up labelled dataset in the challenge layout, for smoke tests of the whole pipeline.

Reals are smooth random colour fields; fakes are the same kind of field with a faint periodic
pattern added (the sort of upsampling trace generators leave). A tiny model learns the difference
in a few steps, so `train` on it shows the pipeline working end to end, never detector quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from deepfake_moe.io import atomic_write


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A blurred random RGB image with a random overall brightness (uint8, size x size x 3)."""
    noise = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    field = cv2.GaussianBlur(noise, (0, 0), size / 12).astype(np.int16)
    field = (field - field.mean()) * 3 + rng.integers(60, 196)
    return np.clip(field, 0, 255).astype(np.uint8)


def periodic_trace(size: int, period: int = 2, amplitude: int = 24) -> np.ndarray:
    ij = np.indices((size, size)).sum(0)
    return (((ij // (period // 2 or 1)) % 2) * 2 - 1)[..., None] * amplitude


def write_dataset(folder: str | os.PathLike, images: int = 64, size: int = 64, seed: int = 0) -> Path:
    """`folder`/ with `images` PNGs (half real, half fake) and `folder`_label.txt (img_name,target) beside it."""
    if images < 4 or images % 2:
        raise ValueError(f"images must be an even number >= 4, got {images}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    trace = periodic_trace(size)
    rows = []
    for i in range(images):
        label = i % 2
        img = smooth_field(rng, size)
        if label:
            img = np.clip(img.astype(np.int16) + trace, 0, 255).astype(np.uint8)
        name = f"{i:04d}.png"
        if not cv2.imwrite(str(folder / name), img[:, :, ::-1]):
            raise OSError(f"could not write {folder / name}")
        rows.append((name, label))
    labels = folder.parent / f"{folder.name}_label.txt"
    with atomic_write(labels, newline="") as f:
        pd.DataFrame(rows, columns=["img_name", "target"]).to_csv(f, index=False)
    return labels
