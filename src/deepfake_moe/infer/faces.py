"""Face mode: score each face's training-style crop instead of the whole image.

A face that fills a few per cent of a photo becomes a few pixels at the model's input size; its crop,
framed as the LFW crops the models were trained on (`augment.faces.crop_box`), keeps its detail.
An image's probability is the maximum over its faces (one manipulated face makes the image fake);
with no face found, the whole image is scored. The same functions serve `predict`, `explain`,
`evaluate` and the web server:

    crops, faces = face_crops(rgb)                               # crops (or [rgb]) and the faces found
    probs = predictor.score_arrays(crops)                        # (n_crops, n_experts)
    expert_probs, scores = aggregate_faces(probs, faces, rgb.shape)  # the image's, one FaceScore per face

(`Predictor.predict_image(rgb)` does the three.) `FaceCropFiles` + `collate_crops` do it for files in
decoding workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfake_moe.augment.faces import Box, Face, crop_box, crop_face, find_faces
from deepfake_moe.data.image_io import ImageReadError, read_image
from deepfake_moe.data.transforms import PreprocessConfig, preprocess_views
from deepfake_moe.infer.media import DEFAULT_MAX_FACES


@dataclass(frozen=True)
class FaceScore:
    box: Box  # (x, y, w, h) of the detector's box in the image
    detector_score: float
    probability: float  # the mixture's fake probability for this face's crop
    crop: Box  # the square that was scored


def face_crops(rgb: np.ndarray, max_faces: int = DEFAULT_MAX_FACES) -> tuple[list[np.ndarray], list[Face]]:
    """The crops to score: one per face (largest first, at most `max_faces`), or the whole image if none."""
    faces = find_faces(rgb)[:max_faces]
    if not faces:
        return [rgb], []
    return [np.ascontiguousarray(crop_face(rgb, f)) for f in faces], faces


def aggregate_faces(expert_probs: np.ndarray, faces: list[Face], image_shape: tuple[int, ...] | None
                    ) -> tuple[np.ndarray, tuple[FaceScore, ...]]:
    """(n_crops, n_experts) probabilities -> the image's expert probabilities (those of its most fake
    crop) and one FaceScore per face ((), when the whole image was scored)."""
    mixture = expert_probs.mean(axis=1)
    best = int(np.argmax(mixture))
    if not faces:
        return expert_probs[best], ()
    scores = tuple(FaceScore(f.box, f.score, float(p), crop_box(f, image_shape)) for f, p in zip(faces, mixture))
    return expert_probs[best], scores


def scored_side(scores: tuple[FaceScore, ...], image_shape: tuple[int, ...]) -> int:
    """The smaller side in pixels of what an image's probability was scored on: the crop of its most fake
    face (the one `aggregate_faces` takes), or the whole image. Below the model's input size, the model
    enlarges it and the score is less reliable."""
    if scores:
        return max(scores, key=lambda f: f.probability).crop[2]
    return min(image_shape[:2])


class FaceCropFiles(Dataset):
    """Decodes a file into the model inputs (one per view) of each face crop, or of the whole image when
    no face is found, with the faces and the image's shape; a failure becomes an error string."""

    def __init__(self, paths: Sequence[str], views: list[PreprocessConfig], backend: str, max_pixels: int,
                 max_faces: int = DEFAULT_MAX_FACES):
        self.paths = list(paths)
        self.views = list(views)
        self.backend = backend
        self.max_pixels = max_pixels
        self.max_faces = max_faces

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            rgb = read_image(self.paths[i], backend=self.backend, max_pixels=self.max_pixels)
            crops, faces = face_crops(rgb, self.max_faces)
            return i, [preprocess_views(c, self.views) for c in crops], "", (faces, rgb.shape)
        except ImageReadError as e:
            return i, None, e.reason, None
        except Exception as e:  # noqa: BLE001 - one odd file must not stop a million-image batch
            return i, None, f"{type(e).__name__}: {e}", None


def stack_inputs(inputs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """One batch per view from a list of per-crop input tuples."""
    return tuple(torch.stack(view) for view in zip(*inputs))


def collate_crops(items):
    """(indices decoded, one batch per view over all their crops, crops per image, (faces, shape) per image,
    [(index, error)])."""
    ok = [(i, crops, info) for i, crops, err, info in items if crops is not None]
    failed = [(i, err) for i, crops, err, info in items if crops is None]
    flat = [inputs for _, crops, _ in ok for inputs in crops]
    batch = stack_inputs(flat) if flat else None
    return [i for i, _, _ in ok], batch, [len(c) for _, c, _ in ok], [info for _, _, info in ok], failed


def face_crop_batches(paths: Sequence[str], views: list[PreprocessConfig], backend: str, max_pixels: int,
                      max_faces: int, batch_size: int, workers: int, pin_memory: bool = False):
    """Batches of `collate_crops` over `paths` (images a batch at a time, all their crops in it), decoded and
    searched for faces in `workers` DataLoader processes (in this one when the inputs fit one batch)."""
    from torch.utils.data import DataLoader

    from deepfake_moe.augment.faces import load_detector

    load_detector()  # once, here: forked decoding workers share it instead of each loading it
    workers = workers if len(paths) > batch_size else 0
    return DataLoader(
        FaceCropFiles(paths, views, backend, max_pixels, max_faces),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_crops,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
