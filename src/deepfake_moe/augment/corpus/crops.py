"""Cutting a real photo into the corpus's square crops, and which crops have enough detail to keep."""

from __future__ import annotations

import numpy as np

MAX_TILES_PER_SIDE = 3  # a large photo is shrunk so its shorter side holds at most this many crops
# Crops of a photo with less pixel-scale detail than this (std of the Laplacian of grey levels: clear
# sky, smooth gradients, bokeh) are dropped: an edit there changes next to nothing, a fake that looks real.
MIN_DETAIL = 1.5


def resize(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    import cv2

    shrink = size_wh[0] < rgb.shape[1]
    return cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def crops_of(rgb: np.ndarray, size: int) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping size x size crops on a centred grid, after scaling the photo so its shorter
    side holds 1..MAX_TILES_PER_SIDE crops (small photos are scaled up to one crop)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    target_short = min(max(short, size), size * MAX_TILES_PER_SIDE)
    if target_short != short:
        s = target_short / short
        rgb = resize(rgb, (max(size, round(w * s)), max(size, round(h * s))))
        h, w = rgb.shape[:2]
    ny, nx = h // size, w // size
    y0, x0 = (h - ny * size) // 2, (w - nx * size) // 2
    return [(f"{r}-{c}", rgb[y0 + r * size : y0 + (r + 1) * size, x0 + c * size : x0 + (c + 1) * size]) for r in range(ny) for c in range(nx)]


def detail(rgb: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).std())
