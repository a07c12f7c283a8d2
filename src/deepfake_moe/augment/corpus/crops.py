"""Cutting a real photo into the corpus's square crops, and which crops have enough detail to keep."""

from __future__ import annotations

import numpy as np

MAX_TILES_PER_SIDE = 3  # a large photo is shrunk so its shorter side holds at most this many crops
# Crops of a photo with less pixel-scale detail than this (std of the Laplacian of grey levels: clear
# sky, smooth gradients, bokeh) are dropped: an edit there changes next to nothing, a fake that looks real.
MIN_DETAIL = 1.5


def shrink(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Area-downscale to `size_wh`. Reals are never enlarged: an interpolation trace on reals is
    exactly what an artefact detector learns to call fake, and real photos in the wild lack it."""
    import cv2

    if size_wh[0] > rgb.shape[1] or size_wh[1] > rgb.shape[0]:
        raise ValueError(f"would enlarge a real from {rgb.shape[1]}x{rgb.shape[0]} to {size_wh[0]}x{size_wh[1]}")
    return cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA)


def native_or_shrunk(rgb: np.ndarray, size: int) -> np.ndarray:
    """The image as it is when its longer side is at most `size`, else shrunk so that it is."""
    h, w = rgb.shape[:2]
    if max(h, w) <= size:
        return rgb
    s = size / max(h, w)
    return shrink(rgb, (max(1, round(w * s)), max(1, round(h * s))))


def crops_of(rgb: np.ndarray, size: int) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping size x size crops on a centred grid, after shrinking a large photo so its
    shorter side holds at most MAX_TILES_PER_SIDE crops. A photo smaller than one crop gives one
    centred square of its shorter side at native resolution: nothing is enlarged."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short < size:
        y0, x0 = (h - short) // 2, (w - short) // 2
        return [("0-0", rgb[y0 : y0 + short, x0 : x0 + short])]
    if short > size * MAX_TILES_PER_SIDE:
        s = size * MAX_TILES_PER_SIDE / short
        rgb = shrink(rgb, (max(size, round(w * s)), max(size, round(h * s))))
        h, w = rgb.shape[:2]
    ny, nx = h // size, w // size
    y0, x0 = (h - ny * size) // 2, (w - nx * size) // 2
    return [(f"{r}-{c}", rgb[y0 + r * size : y0 + (r + 1) * size, x0 + c * size : x0 + (c + 1) * size]) for r in range(ny) for c in range(nx)]


def detail(rgb: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).std())
