"""Face mode: score each face's training-style crop instead of the whole image.

A face that fills a few per cent of a photo becomes a few pixels at the model's input size; its crop,
framed as the LFW crops the models were trained on (`augment.faces.crop_box`), keeps its detail.
An image's probability is the maximum over its faces (one manipulated face makes the image fake);
with no face found, the whole image is scored. The same functions serve `predict`, `explain`,
`evaluate` and the web server:

    crops, faces = face_crops(rgb)                               # crops (or [rgb]) and the faces found
    probs = predictor.score_arrays(crops)                        # (n_crops, n_experts)
    expert_probs, scores = aggregate_faces(probs, faces, rgb.shape)  # the image's, one FaceScore per face

(`Predictor.predict_image(rgb)` does the three.) `DecodeCrops` does it for files in capped decoding
processes (`data/decode_pool.py`), its results checked by `decode_crops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepfake_moe.augment.faces import CROP_GEOMETRY, Box, Face, crop_box, crop_face, find_faces
from deepfake_moe.data.image_io import ImageLimits, read_file, read_image_bytes
from deepfake_moe.data.transforms import PreprocessConfig, preprocess_views
from deepfake_moe.infer.device_decode import jpeg_for_device
from deepfake_moe.infer.media import DEFAULT_MAX_FACES
from deepfake_moe.model.groups import ExpertGroup, join


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


def aggregate_faces(expert_probs: np.ndarray, faces: list[Face], image_shape: tuple[int, ...] | None,
                    groups: list[ExpertGroup] | None = None) -> tuple[np.ndarray, tuple[FaceScore, ...]]:
    """(n_crops, n_experts) probabilities -> the image's expert probabilities (those of its most fake
    crop, by the mixture's rule for `groups`) and one FaceScore per face ((), when the whole image was scored)."""
    mixture = join(expert_probs, groups)
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


@dataclass(frozen=True)
class DecodeCrops:
    """A path to the model inputs of the crops it is scored through (each face's with `faces`, the whole
    image otherwise or when no face is found), its faces and its shape, packed by `encode_crops`: the task a
    decode-pool worker runs, under its caps. `decode_crops` checks what comes back."""

    views: tuple[PreprocessConfig, ...]
    backend: str
    limits: ImageLimits
    faces: bool = False
    max_faces: int = DEFAULT_MAX_FACES
    jpeg_to_device: bool = False  # pass ordinary JPEGs on undecoded, for the model's device (infer/device_decode.py)

    def __call__(self, path: str) -> dict:
        data = read_file(path, self.limits)
        if self.jpeg_to_device and not self.faces:
            checked = jpeg_for_device(data, path, self.limits, self.backend)
            if checked is not None:
                return checked
        rgb = read_image_bytes(data, path, self.backend, self.limits)
        return prepare_crops(rgb, self.views, self.faces, self.max_faces)


def prepare_crops(rgb: np.ndarray, views: Sequence[PreprocessConfig], faces: bool,
                  max_faces: int = DEFAULT_MAX_FACES) -> dict:
    """The model inputs of a decoded image's crops (each face's with `faces`, else the whole image's),
    packed by `encode_crops`."""
    if not faces:
        return encode_crops([preprocess_views(rgb, list(views))], [], rgb.shape)
    crops, found = face_crops(rgb, max_faces)
    return encode_crops([preprocess_views(c, list(views)) for c in crops], found, rgb.shape)


def encode_crops(inputs: list[tuple[torch.Tensor, ...]], faces: list[Face], shape: tuple[int, ...]) -> dict:
    """Crops' inputs and their faces as flat arrays: what crosses back from a decoding process."""
    out: dict = {f"view_{v}": batch for v, batch in enumerate(stack_inputs(inputs))}
    out["boxes"] = np.array([f.box for f in faces], np.int64).reshape(-1, 4)
    out["scores"] = np.array([f.score for f in faces], np.float64)
    out["detectors"] = ",".join(f.detector for f in faces)
    out["shape"] = np.array(shape, np.int64)
    return out


def decode_crops(packed: dict, configs: Sequence[PreprocessConfig]
                 ) -> tuple[tuple[torch.Tensor, ...], list[Face], tuple[int, ...]]:
    """Inverse of `encode_crops`: (one batch per view over the crops, the faces, the image's shape), checked
    as anything from a process that decoded an untrusted file: a ValueError if it does not fit together or
    is not what `configs` (the model's views) take."""
    try:
        views = tuple(packed[f"view_{v}"] for v in range(sum(k.startswith("view_") for k in packed)))
        boxes, scores, shape = (np.asarray(packed[k]) for k in ("boxes", "scores", "shape"))
        detectors = [d for d in str(packed["detectors"]).split(",") if d]
        n = len(detectors)
        typed = all(a.dtype.kind in "iu" for a in (boxes, shape)) and scores.dtype.kind == "f"
        fits = (typed and views and boxes.shape == (n, 4) and scores.shape == (n,) and shape.shape == (3,)
                and np.isfinite(scores).all() and all(len(v) == max(1, n) for v in views)
                and set(detectors) <= set(CROP_GEOMETRY))
    except (KeyError, TypeError) as e:  # a missing part, or a view without a length
        raise ValueError(f"incomplete face crops ({e})") from None
    if not fits:
        raise ValueError("face crops that do not fit together")
    _check_inputs(views, configs)
    faces = [Face(tuple(int(v) for v in b), float(s), d) for b, s, d in zip(boxes, scores, detectors)]
    return views, faces, tuple(int(v) for v in shape)


def _check_inputs(views: Sequence[torch.Tensor], configs: Sequence[PreprocessConfig]) -> None:
    """Model inputs from a decoding process, one batch per view, as `preprocess` makes them (float32, the
    view's shape after the batch dimension): a ValueError otherwise, before they join a batch."""
    if len(views) != len(configs):
        raise ValueError(f"{len(views)} model inputs for {len(configs)} views")
    for x, cfg in zip(views, configs):
        shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
        if shape != cfg.input_shape or x.dtype != torch.float32 or len(x) != len(views[0]):
            raise ValueError(f"a model input of shape {shape} where {cfg.input_shape} float32 was expected")


def stack_inputs(inputs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """One batch per view from a list of per-crop input tuples."""
    return tuple(torch.stack(view) for view in zip(*inputs))
