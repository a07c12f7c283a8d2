"""Batched prediction: parallel decoding, one output row for every input, errors included.

An input is scored whole, or through its face crops in face mode (`infer/faces.py`: the row takes the
most fake face), or through the sampled frames of a video (`infer/video.py`).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from deepfake_moe.augment.faces import load_detector
from deepfake_moe.data.decode_pool import DecodeBudget, DecodeFailure, DecodePool
from deepfake_moe.data.image_io import ImageLimits
from deepfake_moe.data.transforms import PreprocessConfig, preprocess_views
from deepfake_moe.data.video_io import is_video_path
from deepfake_moe.errors import ConfigError
from deepfake_moe.infer.device_decode import BATCH_PIXELS, DEVICE_MODES, DeviceJpeg, decode_on_device, device_jpeg
from deepfake_moe.infer.export import OnnxMixture
from deepfake_moe.infer.faces import (
    DecodeCrops,
    FaceScore,
    aggregate_faces,
    decode_crops,
    face_crops,
    scored_side,
)
from deepfake_moe.infer.media import DEFAULT_MAX_FACES, VideoSampling
from deepfake_moe.infer.plan import JPEG_DECODERS, choose_batch_size, choose_workers, input_size
from deepfake_moe.infer.video import FrameScore, score_video
from deepfake_moe.model.checkpoint import ModelConfig
from deepfake_moe.model.groups import join
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.model.uncertainty import uncertainty, verdicts
from deepfake_moe.runtime import autocast, check_precision, resolve_device, usable_cores

PROGRESS_MIN_IMAGES = 8


@dataclass
class PredictionRow:
    path: str
    probability: float  # nan when the image could not be scored
    verdict: str  # "fake", "real", "uncertain", or "" on error
    error: str = ""
    expert_probabilities: tuple[float, ...] = ()
    faces: tuple[FaceScore, ...] = ()  # face mode: every face scored (empty: the whole image was)
    frames: tuple[FrameScore, ...] = field(default=(), repr=False)  # videos: every sampled frame
    uncertainty: float = math.nan  # in [0, 1]; nan when not scored or the model has no fitted statistics
    side: int = 0  # smaller side in pixels of what the probability was scored on (image, face crop, frames); 0: none

    @property
    def face_count(self) -> int:
        return sum(len(f.faces) for f in self.frames) if self.frames else len(self.faces)


def collate(items):
    """(indices scored, one stacked batch per view or None, [(index, error)])."""
    ok = [(i, x) for i, x, err in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    batch = tuple(torch.stack(view) for view in zip(*(x for _, x in ok))) if ok else None
    return [i for i, _ in ok], batch, failed


def image_batches(paths: Sequence[str], views: Sequence[PreprocessConfig], backend: str, limits: ImageLimits,
                  faces: bool, max_faces: int, batch_size: int, workers: int, budget: DecodeBudget | None = None,
                  jpeg_device: torch.device | None = None):
    """Images decoded, searched for faces (with `faces`) and preprocessed in a `DecodePool` (memory cap and
    timeout per file; `workers=0`: in-process), `batch_size` images at a time, in input order: (indices
    decoded, one batch per view over all their crops, crops per image, (faces, shape) per image, [(index,
    error)]). With `jpeg_device`, ordinary JPEGs are checked in the pool and decoded on that device
    (`infer/device_decode.py`), and the batches are there. What `predict`, `calibrate` and `evaluate` score.

    The pool runs in the caller's thread, not in one beside the model: decoding workers forked by such a
    thread while PyTorch ran in the main one hung (every image of `calibrate` timed out in one run of three)."""
    if faces:
        load_detector()  # once, here: forked decoding workers share it instead of each loading it
    task = DecodeCrops(tuple(views), backend, limits, faces, max_faces, jpeg_to_device=jpeg_device is not None)
    device = _DeviceJpegs(task, jpeg_device, paths, workers, budget) if jpeg_device is not None else None
    ok: list[tuple[int, tuple]] = []
    failed: list[tuple[int, str]] = []
    try:
        for i, result in enumerate(DecodePool(task, workers, budget).map(paths)):
            if device is not None and isinstance(result, dict) and "jpeg" in result:
                device.add(i, result, ok, failed)
            else:
                _add_decoded(i, result, task.views, ok, failed)
            if len(ok) + len(failed) + (len(device.waiting) if device else 0) >= batch_size or i == len(paths) - 1:
                if device is not None:
                    device.flush(ok, failed)
                    ok.sort(key=lambda item: item[0])
                to = (lambda t: t.to(jpeg_device)) if jpeg_device is not None else (lambda t: t)
                batch = tuple(torch.cat([to(t) for t in view]) for view in zip(*(c[0] for _, c in ok))) if ok else None
                yield [j for j, _ in ok], batch, [len(c[0][0]) for _, c in ok], [c[1:] for _, c in ok], failed
                ok, failed = [], []
    finally:
        if device is not None:
            device.cpu.close()


def _add_decoded(i: int, result, views, ok: list, failed: list) -> None:
    """A decoding process's result for input i, checked, into `ok` (its crops) or `failed` (its error)."""
    if isinstance(result, DecodeFailure):
        failed.append((i, result.reason))
        return
    try:
        ok.append((i, decode_crops(result, views)))
    except ValueError as e:
        failed.append((i, f"the decoder returned a malformed result ({e})"))


class _DeviceJpegs:
    """JPEGs waiting for the device, decoded BATCH_PIXELS at a time; a file the device refuses goes back to a
    capped worker, which decodes it on the CPU."""

    def __init__(self, task: DecodeCrops, device: torch.device, paths: Sequence[str], workers: int,
                 budget: DecodeBudget | None):
        self.task, self.device, self.paths = task, device, paths
        self.waiting: list[tuple[int, DeviceJpeg]] = []
        self.pixels = 0
        budget = budget or DecodeBudget()
        share = max(64, budget.memory_mb // max(1, workers))  # one worker's share of the budget
        self.cpu = DecodePool(replace(task, jpeg_to_device=False), min(workers, 1), replace(budget, memory_mb=share))

    def add(self, i: int, result: dict, ok: list, failed: list) -> None:
        try:
            item = device_jpeg(result)
        except ValueError as e:
            failed.append((i, f"the decoder returned a malformed result ({e})"))
            return
        self.waiting.append((i, item))
        self.pixels += item.pixels
        if self.pixels >= BATCH_PIXELS:
            self.flush(ok, failed)

    def flush(self, ok: list, failed: list) -> None:
        if not self.waiting:
            return
        index, items = zip(*self.waiting)
        for i, got in zip(index, decode_on_device(items, self.task.views, self.device)):
            if got is None:
                _add_decoded(i, self.cpu.call(self.paths[i]), self.task.views, ok, failed)
            else:
                ok.append((i, (got[0], [], got[1])))
        self.waiting, self.pixels = [], 0


class Predictor:
    """Scores images with a mixture; `predict(paths)` returns one row per path, in order."""

    def __init__(
        self,
        model: Mixture | OnnxMixture,
        config: ModelConfig,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int | None = None,
        num_workers: int | None = None,
        progress: bool = False,
        limits: ImageLimits | None = None,
        channels_last: bool = True,
        decode_budget: DecodeBudget | None = None,
        max_pixels: int | None = None,
        faces: bool | None = None,
        max_faces: int = DEFAULT_MAX_FACES,
        video: VideoSampling | None = None,
        compile: bool = False,
        jpeg_decoder: str = "cpu",
    ):
        """`faces`: score face crops (None: when the model was trained on them, `config.face_crops`).
        `jpeg_decoder`: "device" decodes ordinary JPEGs on the model's device (`infer/device_decode.py`), "cpu"
        every file in the decoding workers."""
        check_precision(precision)
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.config = config
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size or choose_batch_size(input_size(config), self.device, getattr(model, "runtime", "torch"))
        self.num_workers = choose_workers(usable_cores(), self.device) if num_workers is None else num_workers
        self.progress = progress
        self.limits = limits or ImageLimits()
        if max_pixels:  # shorthand for limits with another pixel limit
            self.limits = replace(self.limits, max_pixels=max_pixels)
        self.max_pixels = self.limits.max_pixels
        self.decode_budget = decode_budget or DecodeBudget()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.faces = config.scores_faces(faces)
        if max_faces < 1:
            raise ValueError("max_faces must be >= 1")
        self.max_faces = max_faces
        self.video = video or VideoSampling()
        if isinstance(model, torch.nn.Module):
            model = model.eval().to(self.device, memory_format=self.memory_format)
        elif self.device.type != "cpu" or precision != "fp32":
            raise ConfigError("an exported model runs on the CPU at the precision it was compiled for: leave device and precision "
                              "at their defaults")
        self.model = model
        self.forward = model.expert_probabilities
        if compile and isinstance(model, torch.nn.Module):
            # CUDA graphs replay one fixed shape: every batch is padded to batch_size (score_tensor).
            self.forward = torch.compile(model.expert_probabilities, mode="reduce-overhead", dynamic=False)
        self.fixed_batch = compile
        self.jpeg_device = self._jpeg_device(jpeg_decoder)

    def _jpeg_device(self, choice: str) -> torch.device | None:
        """Where ordinary JPEGs are decoded: the model's device, or None for the decoding workers."""
        if choice not in JPEG_DECODERS:
            raise ConfigError(f"jpeg decoder {choice!r} is not one of {', '.join(JPEG_DECODERS)}")
        if choice == "cpu":
            return None
        if self.faces:
            raise ConfigError("--jpeg-decoder device: face mode decodes on the CPU, where the face detector runs; "
                              "use --jpeg-decoder cpu")
        if any(v.mode not in DEVICE_MODES for v in self.config.views()[0]):
            raise ConfigError("--jpeg-decoder device: an expert reads native-resolution crops, which are cut on the "
                              "CPU; use --jpeg-decoder cpu")
        return self.device

    @property
    def has_uncertainty(self) -> bool:
        return self.config.uncertainty is not None

    @torch.inference_mode()
    def score_tensor(self, *views: torch.Tensor) -> torch.Tensor:
        """One preprocessed batch per view ((B, 3, S, S) or (B, T, 3, S, S)) -> (B, n_experts) on the CPU."""
        if not isinstance(self.model, torch.nn.Module):
            return self.forward(*views)
        n = len(views[0])
        if self.fixed_batch and n < self.batch_size:
            views = tuple(torch.cat([v, v[-1:].expand(self.batch_size - n, *v.shape[1:])]) for v in views)
        xs = [self._to_device(v) for v in views]
        with autocast(self.precision, self.device):
            return self.forward(*xs)[:n].float().cpu()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    @torch.inference_mode()
    def score_batch(self, *views: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_experts) fake probabilities and (B,) uncertainty (nan without fitted statistics)."""
        if not self.has_uncertainty:
            probs = self.score_tensor(*views).numpy()
            return probs, np.full(len(probs), np.nan)
        if isinstance(self.model, torch.nn.Module):
            xs = [self._to_device(v) for v in views]
            with autocast(self.precision, self.device):
                p, d = self.model.expert_outputs(*xs)
        else:
            p, d = self.model.expert_outputs(*views)
        probs = p.float().cpu().numpy()
        return probs, uncertainty(probs, d.float().cpu().numpy(), self.config.uncertainty.reference, self.config.groups)

    def iter_predict(self, paths: Iterable[str]) -> Iterator[PredictionRow]:
        """Rows in input order, a batch at a time (for streaming output and resumable jobs)."""
        for is_video, group in itertools.groupby((str(p) for p in paths), key=is_video_path):
            if is_video:
                for path in group:
                    yield score_video(self, path)
            else:
                yield from self._iter_images(list(group))

    def _iter_images(self, paths: list[str]) -> Iterator[PredictionRow]:
        loader = image_batches(paths, self.config.views()[0], self.config.image_backend, self.limits, self.faces,
                               self.max_faces, self.batch_size, self.num_workers, self.decode_budget, self.jpeg_device)
        bar = None
        if self.progress and len(paths) >= PROGRESS_MIN_IMAGES:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), unit="img", file=sys.stderr, desc="predict")
        try:
            for ok_idx, batch, counts, infos, failed in loader:
                rows: dict[int, PredictionRow] = {}
                if batch is not None:
                    probs, unc = self.score_batch(*batch)
                    cuts = np.cumsum(counts)[:-1]
                    for i, p, u, (faces, shape) in zip(ok_idx, np.split(probs, cuts), np.split(unc, cuts), infos):
                        rows[i] = self.image_row(paths[i], p, u, faces, shape)
                for i, err in failed:
                    rows[i] = self.failed_row(paths[i], err)
                if bar is not None:  # before yielding: a consumer may stop after the last row
                    bar.update(len(rows))
                for i in sorted(rows):
                    yield rows[i]
        finally:
            if bar is not None:
                bar.close()

    def predict(self, paths: Iterable[str]) -> list[PredictionRow]:
        return list(self.iter_predict(paths))

    def score_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, n_experts) fake probabilities for decoded RGB uint8 arrays, as they are (no face detection)."""
        out = []
        views = self.config.views()[0]
        for start in range(0, len(images), self.batch_size):
            _, batch, _ = collate([(0, preprocess_views(img, views), "") for img in images[start : start + self.batch_size]])
            out.append(self.score_tensor(*batch).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.config.experts)), dtype=np.float32)

    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Fake probabilities for decoded RGB uint8 arrays (robustness sweeps, embedding in other code),
        face mode included."""
        if self.faces:
            return np.array([self.predict_image(rgb).probability for rgb in images], dtype=np.float32)
        return join(self.score_arrays(images), self.config.groups)

    def predict_image(self, rgb: np.ndarray, path: str = "") -> PredictionRow:
        """One decoded RGB uint8 image, scored as `predict` scores a file (face mode included): the web
        server's entry point."""
        crops, faces = face_crops(rgb, self.max_faces) if self.faces else ([rgb], [])
        views = self.config.views()[0]
        _, batch, _ = collate([(0, preprocess_views(img, views), "") for img in crops])
        probs, unc = self.score_batch(*batch)
        return self.image_row(path, probs, unc, faces, rgb.shape)

    def image_row(self, path: str, expert_probs: np.ndarray, unc: np.ndarray, faces: list, shape: tuple[int, ...]
                  ) -> PredictionRow:
        """An image's row from its crops' (n_crops, n_experts) probabilities and (n_crops,) uncertainties (one
        crop per face, or the whole image when `faces` is empty): the most fake crop's."""
        experts, scores = aggregate_faces(expert_probs, faces, shape, self.config.groups)
        return self._row(path, experts, scores, uncertainty=_of_most_fake(join(expert_probs, self.config.groups), unc),
                         side=scored_side(scores, shape))

    @staticmethod
    def failed_row(path: str, reason: str) -> PredictionRow:
        return PredictionRow(path, math.nan, "", reason)

    def _row(self, path: str, expert_probs: np.ndarray, faces: tuple[FaceScore, ...] = (),
             frames: tuple[FrameScore, ...] = (), uncertainty: float = math.nan, side: int = 0) -> PredictionRow:
        p = float(join(expert_probs, self.config.groups))
        verdict = str(verdicts(np.array([p]), np.array([uncertainty]), self.config.threshold,
                               self.config.uncertainty_threshold)[0])
        return PredictionRow(path, p, verdict, "", tuple(float(v) for v in expert_probs), faces, frames, uncertainty,
                             int(side))


def _of_most_fake(probs: np.ndarray, unc: np.ndarray) -> float:
    """The uncertainty of the crop whose probabilities the image takes (its most fake one, by `probs`)."""
    return float(unc[int(np.argmax(probs))]) if len(unc) else math.nan
