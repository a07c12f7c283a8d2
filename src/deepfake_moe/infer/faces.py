"""Face mode: score each face's training-style crop instead of the whole image.

A face that fills a few per cent of a photo becomes a few pixels at the model's input size; its crop,
framed as the LFW crops the models were trained on (`augment.faces.crop_box`), keeps its detail.
An image's probability is the maximum over its faces (one manipulated face makes the image fake);
with no face found, the whole image is scored. The same functions serve `predict`, `explain`,
`evaluate` and the web server:

    views, faces = face_views(rgb)                       # crops (or [rgb]) and the faces found
    probs = predictor.score_arrays(views)                # (n_views, n_experts)
    expert_probs, scores = aggregate_views(probs, faces)  # the image's experts, one FaceScore per face
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepfake_moe.augment.faces import Box, Face, crop_box, crop_face, find_faces
from deepfake_moe.infer.media import DEFAULT_MAX_FACES


@dataclass(frozen=True)
class FaceScore:
    box: Box  # (x, y, w, h) of the detector's box in the image
    detector_score: float
    probability: float  # the mixture's fake probability for this face's crop
    crop: Box  # the square that was scored


def face_views(rgb: np.ndarray, max_faces: int = DEFAULT_MAX_FACES) -> tuple[list[np.ndarray], list[Face]]:
    """The crops to score: one per face (largest first, at most `max_faces`), or the whole image if none."""
    faces = find_faces(rgb)[:max_faces]
    if not faces:
        return [rgb], []
    return [np.ascontiguousarray(crop_face(rgb, f)) for f in faces], faces


def aggregate_views(expert_probs: np.ndarray, faces: list[Face], image_shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, tuple[FaceScore, ...]]:
    """(n_views, n_experts) probabilities -> the image's expert probabilities (those of its most fake
    view) and one FaceScore per face ((), when the whole image was the only view)."""
    mixture = expert_probs.mean(axis=1)
    best = int(np.argmax(mixture))
    if not faces:
        return expert_probs[best], ()
    scores = tuple(FaceScore(f.box, f.score, float(p), crop_box(f, image_shape)) for f, p in zip(faces, mixture))
    return expert_probs[best], scores
