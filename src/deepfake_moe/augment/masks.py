"""Region masks for edit families: face-landmark hulls when a face is found, random shapes otherwise.

A mask is a float32 alpha map in [0, 1] of shape (H, W): 1 inside the edited region, falling
off smoothly over a feathered edge, exactly 0 outside it. Every function is seeded by the
`np.random.Generator` it gets and returns a JSON-serialisable description of what it drew.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np

# Landmark index groups of the 68-point (iBUG 300-W) layout.
FACE_PARTS = {
    "face": list(range(0, 27)),  # jaw line and eyebrows: the whole inner face
    "lower_face": list(range(2, 15)) + list(range(29, 36)),
    "eyes": list(range(17, 27)) + list(range(36, 48)),
    "nose": list(range(27, 36)),
    "mouth": list(range(48, 68)),
}
SHAPES = ("ellipse", "polygon", "rectangle")


def _face_api():
    """(detect_faces, landmarks68) when landmarks can be had (dlib installed), else None."""
    try:
        from deepfake_moe.augment.faces import detect_faces, has_landmarks, landmarks68
    except ImportError:
        return None
    return (detect_faces, landmarks68) if has_landmarks() else None


_FACE_CACHE: OrderedDict[bytes, tuple | None] = OrderedDict()
_FACE_CACHE_SIZE = 64


def clear_face_cache() -> None:
    _FACE_CACHE.clear()


def face_landmarks(rgb: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The largest detected face's box and 68 landmarks, or None (no face, or no face module).

    Cached by image content: prepare runs several families and variants on each input in a row,
    and detection dominates their cost.
    """
    api = _face_api()
    if api is None:
        return None
    key = hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16, person=str(rgb.shape).encode()[:16]).digest()
    if key in _FACE_CACHE:
        _FACE_CACHE.move_to_end(key)
        return _FACE_CACHE[key]
    detect_faces, landmarks68 = api
    found = None
    boxes = detect_faces(rgb)
    if boxes:
        box = max(boxes, key=lambda b: b[2] * b[3])
        points = landmarks68(rgb, box)
        if points is not None:
            points = np.array(points, dtype=np.float32)
            points.setflags(write=False)  # shared through the cache
            found = tuple(int(v) for v in box), points
    _FACE_CACHE[key] = found
    if len(_FACE_CACHE) > _FACE_CACHE_SIZE:
        _FACE_CACHE.popitem(last=False)
    return found


def shape_mask(
    shape: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.05, 0.3), kind: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random ellipse, polygon or rectangle covering roughly `area` of the image (uint8 0/255)."""
    h, w = shape
    kind = kind or SHAPES[int(rng.integers(len(SHAPES)))]
    frac = float(rng.uniform(*area))
    aspect = float(rng.uniform(0.5, 2.0))
    # Axes of an ellipse of the wanted area and aspect, kept inside the image.
    ry = float(np.sqrt(frac * h * w / (np.pi * aspect)))
    rx = min(ry * aspect, w / 2 - 1)
    ry = min(ry, h / 2 - 1)
    rx, ry = max(rx, 2.0), max(ry, 2.0)
    cx = float(rng.uniform(rx, w - rx))
    cy = float(rng.uniform(ry, h - ry))
    mask = np.zeros((h, w), np.uint8)
    params: dict[str, Any] = {"shape": kind, "center": [round(cx, 2), round(cy, 2)], "radii": [round(rx, 2), round(ry, 2)]}
    if kind == "ellipse":
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (int(round(rx)), int(round(ry))), angle, 0, 360, 255, -1)
        params["angle"] = round(angle, 2)
    elif kind == "polygon":
        n = int(rng.integers(5, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n)
        pts = np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], 1)
        pts = np.clip(np.round(pts), 0, [w - 1, h - 1]).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255)
        params["vertices"] = pts.tolist()
    elif kind == "rectangle":
        x0, y0 = int(round(cx - rx)), int(round(cy - ry))
        x1, y1 = int(round(cx + rx)), int(round(cy + ry))
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1)
        params["box"] = [x0, y0, x1, y1]
    else:
        raise ValueError(f"unknown mask shape {kind!r}; use one of {SHAPES}")
    return mask, params


def stroke_mask(shape: tuple[int, int], rng: np.random.Generator, strokes: tuple[int, int] = (1, 4)) -> tuple[np.ndarray, dict]:
    """Free-form brush strokes, the kind of masks inpainting tools get from users."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(strokes[0], strokes[1] + 1))
    width = max(2, int(round(min(h, w) * float(rng.uniform(0.04, 0.1)))))
    lines = []
    for _ in range(n):
        x, y = float(rng.uniform(0.15, 0.85) * w), float(rng.uniform(0.15, 0.85) * h)
        pts = [(int(x), int(y))]
        for _ in range(int(rng.integers(2, 6))):
            angle = float(rng.uniform(0, 2 * np.pi))
            step = float(rng.uniform(0.05, 0.2)) * min(h, w)
            x = float(np.clip(x + step * np.cos(angle), 0, w - 1))
            y = float(np.clip(y + step * np.sin(angle), 0, h - 1))
            pts.append((int(x), int(y)))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, width)
        lines.append([list(p) for p in pts])
    return mask, {"shape": "strokes", "width": width, "strokes": lines}


def face_mask(shape: tuple[int, int], points: np.ndarray, rng: np.random.Generator, parts: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Convex hull of a chosen landmark group, randomly grown or shrunk (self-blended-image style)."""
    h, w = shape
    names = parts or list(FACE_PARTS)
    part = names[int(rng.integers(len(names)))]
    if part not in FACE_PARTS:
        raise ValueError(f"unknown face part {part!r}; use some of {list(FACE_PARTS)}")
    hull = cv2.convexHull(np.round(points[FACE_PARTS[part]]).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    size = max(1, int(np.sqrt(mask.astype(bool).sum())))
    k = int(round(size * float(rng.uniform(0.0, 0.15))))
    grow = bool(rng.random() < 0.5)
    if k >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        mask = cv2.dilate(mask, kernel) if grow else cv2.erode(mask, kernel)
    return mask, {"shape": "face_hull", "part": part, "morph": ("dilate" if grow else "erode") if k else "none", "morph_px": k}


def feather(mask: np.ndarray, rng: np.random.Generator, max_frac: float = 0.08) -> tuple[np.ndarray, dict]:
    """Soft edges: blur a binary mask inward so alpha is 1 deep inside and exactly 0 outside.

    The blur is applied to an eroded mask and clipped to the original, so the soft edge never
    leaks past the drawn region (the returned mask says honestly where pixels may change).
    """
    hard = mask > 0
    size = max(1, int(np.sqrt(hard.sum())))
    radius = int(round(size * float(rng.uniform(0.0, max_frac))))
    if radius < 1:
        return hard.astype(np.float32), {"feather_px": 0}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(mask, kernel)
    if not inner.any():
        inner = mask
    soft = cv2.GaussianBlur(inner.astype(np.float32) / 255.0, (0, 0), sigmaX=radius / 2 + 0.5)
    soft = np.where(hard, np.clip(soft / max(float(soft.max()), 1e-6), 0.0, 1.0), 0.0).astype(np.float32)
    return soft, {"feather_px": radius}


def region_mask(rgb: np.ndarray, rng: np.random.Generator, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The region an edit changes, as a feathered alpha map, and how it was drawn.

    Options: `faces` (default true: follow face landmarks when a face is found), `face_parts`
    (landmark groups to choose from, see FACE_PARTS), `area` ([low, high] image fraction of a
    random shape), `shape` (force ellipse/polygon/rectangle), `feather` (edge width as a fraction
    of the region's size). Without a face: a random shape. A mask never covers nothing.
    """
    h, w = rgb.shape[:2]
    params: dict[str, Any] = {}
    found = face_landmarks(rgb) if options.get("faces", True) else None
    if found is not None:
        box, points = found
        mask, params = face_mask((h, w), points, rng, options.get("face_parts"))
        params["face_box"] = list(box)
    else:
        mask = np.zeros((h, w), np.uint8)
    if not mask.any():
        mask, params = shape_mask((h, w), rng, tuple(options.get("area", (0.05, 0.3))), options.get("shape"))
    alpha, feather_params = feather(mask, rng, float(options.get("feather", 0.08)))
    params.update(feather_params)
    params["area"] = round(float((alpha > 0).mean()), 4)
    return alpha, params
