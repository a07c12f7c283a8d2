"""Training/evaluation data over a manifest: train-time augmentation, split rows, samplers.

Reproducibility: every augmentation draws from its own generator seeded by (seed, epoch,
position in the epoch's order), so a sample looks the same whatever the number of workers or
processes and after a resume. Unreadable images never stop training: the dataset returns an
error record, the collate function drops it and the loop counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from deepfake_moe.data.image_io import ImageReadError, read_image
from deepfake_moe.data.manifest import FAKE, REAL, split_columns
from deepfake_moe.data.transforms import PreprocessConfig, preprocess


@dataclass
class TrainAugmentConfig:
    """Train-time augmentation (applied in this order, each with its own probability)."""

    enabled: bool = True
    flip_p: float = 0.5
    color_p: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    resize_p: float = 0.3
    resize_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    """Rescale by a factor in this range (the model-size resize follows): a resample trace."""
    blur_p: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 1.5])
    jpeg_p: float = 0.3
    jpeg_quality: list[int] = field(default_factory=lambda: [50, 95])


def hflip(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    return rgb[:, ::-1] if rng.random() < cfg.flip_p else rgb


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    if rng.random() >= cfg.color_p:
        return rgb
    b, c, s = (1.0 + rng.uniform(-m, m) for m in (cfg.brightness, cfg.contrast, cfg.saturation))
    x = rgb.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rescale(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    if rng.random() >= cfg.resize_p:
        return rgb
    f = rng.uniform(*cfg.resize_scale)
    h, w = rgb.shape[:2]
    size = (max(8, round(w * f)), max(8, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=interp)


def gaussian_blur(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    if rng.random() >= cfg.blur_p:
        return rgb
    return cv2.GaussianBlur(np.ascontiguousarray(rgb), (0, 0), sigmaX=rng.uniform(*cfg.blur_sigma))


def jpeg_recompress(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    if rng.random() >= cfg.jpeg_p:
        return rgb
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return rgb
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


TRAIN_AUGMENTS: tuple[tuple[str, Callable[[np.ndarray, np.random.Generator, TrainAugmentConfig], np.ndarray]], ...] = (
    ("flip", hflip),
    ("color", color_jitter),
    ("resize", rescale),
    ("blur", gaussian_blur),
    ("jpeg", jpeg_recompress),  # last, as a real-world pipeline would save the image
)


def train_augment(rgb: np.ndarray, rng: np.random.Generator, cfg: TrainAugmentConfig) -> np.ndarray:
    """Apply the train-time augmentations in order; a pure function of (image, rng state, cfg)."""
    for _, step in TRAIN_AUGMENTS:
        rgb = step(rgb, rng, cfg)
    return np.ascontiguousarray(rgb)


SampleKey = tuple[int, int, int]
"""(row index, epoch, position in the epoch's global order): the sample's augmentation seed."""


class ManifestDataset(Dataset):
    """Rows of a manifest as (image tensor, label).

    Keys with an epoch are training samples: augmented, and a native-resolution view takes a random
    crop; plain row indices give the view's inference input (resized, or centre/tiled crops).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        preprocess_cfg: PreprocessConfig,
        augment_cfg: TrainAugmentConfig | None = None,
        image_backend: str = "pil",
        seed: int = 0,
    ):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocess_cfg = preprocess_cfg
        self.augment_cfg = augment_cfg if augment_cfg is not None and augment_cfg.enabled else None
        self.image_backend = image_backend
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, sample_seed = (key[0], key[1:]) if isinstance(key, tuple) else (int(key), None)
        try:
            rgb = read_image(self.paths[index], backend=self.image_backend)
        except ImageReadError as e:
            return self.failed(index, e.reason)
        rng = None
        if sample_seed is not None:  # a training sample: augmented, and a native view takes a random crop
            rng = np.random.default_rng([self.seed, *sample_seed])
            if self.augment_cfg is not None:
                rgb = train_augment(rgb, rng, self.augment_cfg)
        return {"image": preprocess(rgb, self.preprocess_cfg, rng), "label": int(self.labels[index]), "index": index}

    def failed(self, key: int | SampleKey, reason: str) -> dict[str, Any]:
        """The error record of an item whose decode was stopped (memory cap, timeout, crash)."""
        index = key[0] if isinstance(key, tuple) else int(key)
        return {"index": index, "error": f"{self.paths[index]}: {reason}"}


class PooledLoader:
    """DataLoader's place for a batch sampler: items are made in a `DecodePool` (memory cap and
    timeout per file, a crash costs one item), so training reads untrusted images as predict does.

    A decode the pool stops becomes the dataset's error record (`dataset.failed(key, reason)`).
    """

    def __init__(self, dataset, batch_sampler, collate_fn, workers: int, budget=None, pin_memory: bool = False):
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.workers, self.budget, self.pin_memory = workers, budget, pin_memory

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool

        batches = [list(b) for b in self.batch_sampler]
        pool = DecodePool(self.dataset.__getitem__, self.workers, self.budget)
        results = pool.map(key for b in batches for key in b)
        for keys in batches:
            items = []
            for key in keys:
                item = next(results)
                items.append(self.dataset.failed(key, item.reason) if isinstance(item, DecodeFailure) else item)
            batch = self.collate_fn(items)
            if self.pin_memory and batch["images"].numel():
                batch["images"] = batch["images"].pin_memory()
            yield batch


def collate_skipping_errors(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable samples; unreadable ones are listed in "errors" (never fatal)."""
    good = [it for it in items if "error" not in it]
    errors = [it["error"] for it in items if "error" in it]
    if good:
        images = torch.stack([it["image"] for it in good])
    else:
        images = torch.empty(0)
    return {
        "images": images,
        "labels": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "indices": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "errors": errors,
    }


class TrainBatchSampler(Sampler[list[SampleKey]]):
    """Per-epoch shuffled (or class-balanced, or weighted) batches for one process of `world_size`.

    Like DistributedSampler, every process computes the same global order from (seed, epoch)
    and takes every world_size-th element; unlike it, it can start mid-epoch (`start_batch`,
    for an exact resume) and can draw reals and fakes equally often (`balanced`) or each row in
    proportion to its `weights` (both: in proportion within its label), with replacement. The
    global order is cut to a multiple of world_size * batch_size (drop last).
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        balanced: bool = False,
        rank: int = 0,
        world_size: int = 1,
        weights: Sequence[float] | None = None,
    ):
        self.labels = np.asarray(labels)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (self.weights.shape != self.labels.shape or not (self.weights >= 0).all()):
            raise ValueError(f"weights must be one number >= 0 per label ({len(self.labels)}), got {self.weights.shape}")
        self.batch_size = batch_size
        self.seed = seed
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.stop_batch = self.batches_per_epoch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{len(self.labels)} training images are fewer than one batch "
                f"({batch_size} x {world_size} process(es))"
            )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.labels) // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0, stop_batch: int | None = None) -> None:
        """Yield batches start_batch .. stop_batch-1 of `epoch` (stop: e.g. a multiple of grad_accum)."""
        self.epoch = epoch
        self.start_batch = start_batch
        self.stop_batch = self.batches_per_epoch if stop_batch is None else min(stop_batch, self.batches_per_epoch)

    def global_order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        if self.balanced or self.weights is not None:
            weights = np.ones(n) if self.weights is None else self.weights.copy()
            if self.balanced:
                for c in (REAL, FAKE):
                    total = weights[self.labels == c].sum()
                    weights[self.labels == c] /= total if total > 0 else 1.0
            order = torch.multinomial(torch.as_tensor(weights), n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        return order.numpy()[: self.batches_per_epoch * self.batch_size * self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order = self.global_order(self.epoch)
        positions = np.arange(len(order))[self.rank :: self.world_size]
        for b in range(self.start_batch, self.stop_batch):
            pos = positions[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(int(order[p]), self.epoch, int(p)) for p in pos]

    def __len__(self) -> int:
        return max(0, self.stop_batch - self.start_batch)


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This process's share of rows 0..n-1 (no padding: no row is scored twice)."""
    mine = list(range(rank, n, world_size))
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def expert_rows(
    df: pd.DataFrame, split: int, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train mask, held-out mask) for the expert trained on split `split`; unlabelled rows in neither.

    With `split_<i>` columns: held out = split_<split> True (its validation cluster), train = the
    rest. Without: a random `val_fraction` of origins is held out (seeded by seed + split), so
    an image and everything derived from it fall on the same side.
    """
    labelled = df["label"].isin([REAL, FAKE]).to_numpy()
    cols = split_columns(df)
    if cols:
        name = f"split_{split}"
        if name not in cols:
            raise ValueError(f"the manifest has splits {cols}; an expert asks for split {split}")
        held = df[name].astype(bool).to_numpy()
    else:
        origins = np.array(sorted(df["origin"].astype(str).unique()))
        rng = np.random.default_rng(seed + split)
        n_val = max(1, round(len(origins) * val_fraction))
        val_origins = set(rng.choice(origins, size=n_val, replace=False).tolist())
        held = df["origin"].astype(str).isin(val_origins).to_numpy()
    return labelled & ~held, labelled & held
